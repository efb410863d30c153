# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attester: attest with the local TPM and install the assets (no Ansible imports).

``run(...)`` is the one code path of the ``hcp.core.attest`` module and of the periodic
attester (``python -m ansible_collections.hcp.core.plugins.module_utils.attestation.attester CONFIG``,
run by a systemd timer): attest (with server failover), unseal, plan the installation, run
the pre-hooks when something will change, install, run the post-hooks.
Config format and exit codes: docs/attestation-client.md.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time

from ansible_collections.hcp.core.plugins.module_utils.attestation import install as asset_install
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, TpmUnavailableError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import safe_install
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm

CONFIG_FORMAT = "hcp.core.attester-config"
CONFIG_VERSION = 1
STATUS_FORMAT = "hcp.core.attester-status"
CONFIG_KEYS = frozenset(["format", "version", "servers", "ca_file", "signer_public_file", "tcti", "root", "rules",
                         "success_file", "pre_hooks", "post_hooks", "retries", "backoff_base", "backoff_max",
                         "timeout", "install", "site", "state_dir", "keyserver_credential_dir"])
HOOK_TIMEOUT = 300


class HookError(HcpError):
    """A pre- or post-hook command failed."""


class ConfigError(HcpError):
    """The attester configuration is invalid."""


def _run_hooks(kind, hooks, document):
    data = json.dumps(document, sort_keys=True).encode()
    for argv in hooks or ():
        try:
            proc = subprocess.run(list(argv), input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  timeout=HOOK_TIMEOUT, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise HookError("%s-hook %s could not run: %s" % (kind, argv[0], exc))
        if proc.returncode != 0:
            raise HookError("%s-hook %s failed (exit %d): %s" % (kind, argv[0], proc.returncode,
                                                                 proc.stderr.decode("utf-8", "replace").strip()[-500:]))


def run(tpm, servers, signer_public, ca_file=None, timeout=attest_client.DEFAULT_TIMEOUT, root="/", rules=None,
        install=True, check_mode=False, pre_hooks=None, post_hooks=None, site=None, state_dir=None,
        keyserver_credential_dir=None):
    """Attest with ``tpm`` and install the assets. Returns a secret-free dict: hostname,
    ekpubhash, server, snapshot, changed (bool), changed_assets, skipped, files, pcr_extended,
    post_hook_error (message or None). ``check_mode``: never unseals one-time assets, never
    extends PCR 11, writes nothing, runs no hook. A failing pre-hook raises HookError before
    anything is written; a failing post-hook is reported in ``post_hook_error``. ``state_dir``: where
    the highest accepted manifest generation is remembered (an older entry is refused; None: no check).
    ``keyserver_credential_dir``: also ask for a key-server credential and keep it there (0600);
    ``keyserver_credential`` in the answer is its summary (not_after, measurement, profile, path)."""
    one_time = attest_client.ONE_TIME_SKIP if check_mode else attest_client.ONE_TIME_SKIP_IF_USED
    result = attest_client.attest(tpm, servers, signer_public, ca_file=ca_file, timeout=timeout,
                                  extend_pcr=not check_mode, one_time=one_time, state_dir=state_dir,
                                  check_only=check_mode, keyserver_credential_dir=keyserver_credential_dir)
    out = {"hostname": result["hostname"], "ekpubhash": result["ekpubhash"], "server": result["server"],
           "snapshot": result["snapshot"], "pcr_extended": result["pcr_extended"], "changed": False,
           "changed_assets": [], "skipped": list(result["skipped"]), "files": [], "post_hook_error": None}
    if "keyserver_credential" in result:
        out["keyserver_credential"] = result["keyserver_credential"]
    if not install:
        return out
    unavailable = dict((s["name"], s["reason"]) for s in result["skipped"])
    actions = asset_install.plan(result["manifest"], result["assets"], root, rules, unavailable, site)
    will_change = [a.name for a in actions if a.changed]
    document = {"changed": will_change, "hostname": result["hostname"]}
    if will_change and not check_mode:
        _run_hooks("pre", pre_hooks, document)
    applied = asset_install.apply(actions, dry_run=check_mode, root=root)
    out.update(changed=bool(applied["changed"]), changed_assets=applied["changed"], files=applied["files"])
    names = set(s["name"] for s in out["skipped"])
    out["skipped"].extend(s for s in applied["skipped"] if s["name"] not in names)
    if applied["changed"] and not check_mode:
        try:
            _run_hooks("post", post_hooks, document)
        except HookError as exc:
            out["post_hook_error"] = str(exc)
    return out


def load_config(path):
    """The validated attester config (dict) from a JSON file; ConfigError otherwise."""
    try:
        with open(path, "rb") as handle:
            config = json.loads(handle.read())
    except OSError as exc:
        raise ConfigError("cannot read %s: %s" % (path, exc.strerror or exc))
    except ValueError as exc:
        raise ConfigError("%s is not JSON: %s" % (path, exc))
    if not isinstance(config, dict):
        raise ConfigError("the configuration must be a JSON object")
    if config.get("format") != CONFIG_FORMAT or config.get("version") != CONFIG_VERSION:
        raise ConfigError("the configuration must have format %r and version %d" % (CONFIG_FORMAT, CONFIG_VERSION))
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise ConfigError("unknown configuration keys: %s" % ", ".join(sorted(unknown)))
    servers = config.get("servers")
    if isinstance(servers, str):
        servers = [servers]
    if not isinstance(servers, list) or not servers or not all(isinstance(s, str) and s for s in servers):
        raise ConfigError("'servers' must be a non-empty list of URLs")
    if not isinstance(config.get("signer_public_file"), str):
        raise ConfigError("'signer_public_file' is required")
    for key in ("pre_hooks", "post_hooks"):
        hooks = config.get(key, [])
        if not isinstance(hooks, list) or not all(isinstance(h, list) and h and all(isinstance(a, str) for a in h)
                                                  for h in hooks):
            raise ConfigError("'%s' must be a list of argument lists" % key)
    out = dict(config, servers=servers)
    for key, default, kind in (("retries", 3, int), ("backoff_base", 5.0, float), ("backoff_max", 60.0, float),
                               ("timeout", float(attest_client.DEFAULT_TIMEOUT), float)):
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError("'%s' must be a non-negative number" % key)
        out[key] = kind(value)
    for key in ("state_dir", "keyserver_credential_dir"):
        if config.get(key) is not None and not (isinstance(config[key], str) and config[key].startswith("/")):
            raise ConfigError("'%s' must be an absolute path" % key)
    if not isinstance(config.get("rules", {}), dict):
        raise ConfigError("'rules' must be a mapping")
    return out


def _write_status(path, out):
    status = {"format": STATUS_FORMAT, "version": 1,
              "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    status.update((k, out[k]) for k in ("hostname", "ekpubhash", "server", "snapshot", "changed_assets", "skipped",
                                        "pcr_extended"))
    # root writes it: walked without following links (fileutil.safe_install), like the assets
    safe_install(path, (json.dumps(status, sort_keys=True) + "\n").encode(), 0o644)


def run_config(config, sleep=time.sleep):
    """Run the attester from a validated config, retrying transport failures with backoff."""
    try:
        with open(config["signer_public_file"], "rb") as handle:
            signer = handle.read()
    except OSError as exc:
        raise ConfigError("cannot read the asset signer key %s: %s" % (config["signer_public_file"], exc.strerror))
    attempt = 0
    while True:
        try:
            with Tpm(config.get("tcti")) as tpm:
                return run(tpm, config["servers"], signer, ca_file=config.get("ca_file"), timeout=config["timeout"],
                           root=config.get("root") or "/", rules=config.get("rules"),
                           install=config.get("install", True), pre_hooks=config.get("pre_hooks"),
                           post_hooks=config.get("post_hooks"), site=config.get("site"),
                           state_dir=config.get("state_dir"),
                           keyserver_credential_dir=config.get("keyserver_credential_dir"))
        except (TpmUnavailableError, attest_client.AttestClientError) as exc:
            if attempt >= config["retries"]:
                raise
            delay = min(config["backoff_max"], config["backoff_base"] * (2 ** attempt))
            sys.stderr.write("attester: attempt %d failed (%s); retrying in %gs\n" % (attempt + 1, exc, delay))
            attempt += 1
            sleep(delay)


def main(argv=None):
    """CLI: exit 0 on success, 1 on failure, 2 on a bad configuration."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m ansible_collections.hcp.core.plugins.module_utils.attestation.attester CONFIG\n")
        return 2
    try:
        config = load_config(argv[0])
    except ConfigError as exc:
        sys.stderr.write("attester: bad configuration: %s\n" % exc)
        return 2
    try:
        out = run_config(config)
    except ConfigError as exc:
        sys.stderr.write("attester: bad configuration: %s\n" % exc)
        return 2
    except HcpError as exc:
        sys.stderr.write("attester: failed: %s\n" % exc)
        return 1
    except OSError as exc:
        sys.stderr.write("attester: failed: %s\n" % (exc.strerror or exc))
        return 1
    line = dict((k, out[k]) for k in ("hostname", "server", "snapshot", "changed_assets", "skipped"))
    line["changed"] = line.pop("changed_assets")
    if out["post_hook_error"]:
        sys.stderr.write("attester: assets installed but %s\n" % out["post_hook_error"])
        return 1
    if config.get("success_file"):
        try:
            _write_status(config["success_file"], out)
        except (OSError, HcpError) as exc:
            sys.stderr.write("attester: cannot write %s: %s\n" % (config["success_file"], getattr(exc, "strerror", None) or exc))
            return 1
    sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
