#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render every systemd unit template of the roles and measure it with systemd-analyze.

Each roles/*/templates/*.{service,socket,timer}.j2 is rendered with Ansible's own template
engine (the same Jinja2 environment, filters and lookups as the template module, trim_blocks
on) and the role's defaults/ and vars/, plus the few required values a playbook gives
(VARIANTS below: one rendering per way a role is used, e.g. hcp.core.webapi once per app).
Then, per rendered unit:
  systemd-analyze verify --man=no     every warning is reported (only "Command ... is not
                                      executable" for a program missing on THIS host is
                                      tolerated, and listed)
  systemd-analyze security --offline=true   the exposure score (0 = best, 10 = worst)

Usage: tools/unit-security.py [--compare REF] [--keep DIR]
  --compare REF   also render the templates of git REF (e.g. origin/main) and print
                  before/after scores side by side (the table in docs/hardening.md)
  --keep DIR      write the rendered units into DIR (to read or diff them)
Run from the repository root with the project venv (ansible-core) on PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings

from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT_SUFFIXES = (".service.j2", ".socket.j2", ".timer.j2")
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"

# Values a playbook gives the roles (required variables, or the choice a variant stands for).
# Variant name -> (role, extra variables). Units of a role without a variant use its defaults.
VARIANTS = {
    "attestation_client:device": ("attestation_client", {"attestation_client_tcti": "device:/dev/tpmrm0"}),
    "attestation_client:swtpm": ("attestation_client", {"attestation_client_tcti": "swtpm:host=127.0.0.1,port=2321"}),
    "attestation_server": ("attestation_server", {}),
    "enrollment_server:local-policy": ("enrollment_server", {}),
    "kdc:primary": ("kdc", {"kdc_realm": "EXAMPLE.TEST", "kdc_secondaries": ["kdc2.example"]}),
    "kdc:secondary": ("kdc", {"kdc_realm": "EXAMPLE.TEST", "kdc_mode": "secondary", "kdc_primary": "kdc1.example"}),
    "enrollment_server:policy-url": ("enrollment_server", {"enrollment_server_policy": {"url": "https://policy.example:8445"}}),
    "swtpm:tcp": ("swtpm", {"swtpm_transport": "tcp"}),
    "swtpm:unix": ("swtpm", {"swtpm_transport": "unix"}),
    "webapi:enrollsvc": ("webapi", {"webapi_name": "enrollsvc", "webapi_app": "enroll_app", "webapi_port": 8443}),
    "webapi:attest": ("webapi", {"webapi_name": "attest", "webapi_app": "attest_app", "webapi_port": 8444}),
    "webapi:policy": ("webapi", {"webapi_name": "policy", "webapi_app": "policy_app", "webapi_port": 8445}),
    "webapi:control-tower": ("webapi", {"webapi_name": "control-tower", "webapi_app": "control_tower_app", "webapi_port": 8446}),
    "webapi:kdc": ("webapi", {"webapi_name": "kdc", "webapi_app": "kadmin_app", "webapi_port": 8447, "webapi_network": "localhost"}),
}


def _vars_file(loader, path):
    """A role's defaults/ or vars/ file as Ansible loads it (its strings are templates)."""
    if not os.path.exists(path):
        return {}
    return loader.load_from_file(path, trusted_as_template=True) or {}


def unit_templates(root):
    """{role: [template file names]} of every unit template under root/roles."""
    out = {}
    for role in sorted(os.listdir(os.path.join(root, "roles"))):
        tdir = os.path.join(root, "roles", role, "templates")
        if os.path.isdir(tdir):
            names = sorted(n for n in os.listdir(tdir) if n.endswith(UNIT_SUFFIXES))
            if names:
                out[role] = names
    return out


def render(root, role, name, extra):
    """The unit template roles/<role>/templates/<name> rendered as the template module would."""
    role_path = os.path.join(root, "roles", role)
    variables = {"ansible_managed": "Ansible managed", "inventory_hostname": "host.example", "playbook_dir": "/srv/site"}
    loader = DataLoader()
    variables.update(_vars_file(loader, os.path.join(role_path, "defaults", "main.yml")))
    variables.update(_vars_file(loader, os.path.join(role_path, "vars", "main.yml")))
    variables.update(extra)
    variables["role_path"] = role_path
    variables["ansible_search_path"] = [role_path]
    templar = Templar(loader=loader, variables=variables)
    templar = templar.copy_with_new_env(searchpath=[os.path.join(role_path, "templates"), role_path])
    with open(os.path.join(role_path, "templates", name), encoding="utf-8") as handle:
        source = handle.read()
    return templar.template(trust_as_template(source), escape_backslashes=False, overrides={"trim_blocks": True})


_PLUGINS = []


def _init_plugins():
    """FQCN lookups (ansible.builtin.template) need Ansible's collection loader, set up once."""
    if not _PLUGINS:
        with warnings.catch_warnings():  # under ansible-test the finder is already installed
            warnings.simplefilter("ignore")
            init_plugin_loader()
        _PLUGINS.append(True)


def render_all(root):
    """{variant label: {unit file name: text}} for every unit template of every role."""
    _init_plugins()
    out = {}
    templates = unit_templates(root)
    covered = set()
    for label, (role, extra) in VARIANTS.items():
        if role in templates:
            covered.add(role)
            out[label] = {_unit_name(role, name, extra): render(root, role, name, extra) for name in templates[role]}
    for role in set(templates) - covered:
        out[role] = {}
        for name in templates[role]:
            for extra in _loop_items(root, role, name):
                out[role][_unit_name(role, name, extra)] = render(root, role, name, extra)
    return out


# Unit templates a role installs once per item of a list in its vars (loop_control: item):
# {(role, template): vars/main.yml list name}; each item's key "unit" names the unit.
LOOPED = {("identity", "hcp-identity.service.j2"): "__identity_components"}


def _loop_items(root, role, name):
    key = LOOPED.get((role, name))
    if key is None:
        return [{}]
    items = _vars_file(DataLoader(), os.path.join(root, "roles", role, "vars", "main.yml"))[key]
    return [{"item": dict(item)} for item in items]


def _unit_name(role, name, extra):
    unit = name[:-len(".j2")]
    if "item" in extra:  # a LOOPED template: the item names its unit
        return extra["item"]["unit"] + ".service"
    if role == "webapi":  # installed as hcp-webapi-<name>.service
        unit = unit.replace("hcp-webapi", "hcp-webapi-" + extra["webapi_name"])
    return unit


def _analyze(*args):
    if not os.access(SYSTEMD_ANALYZE, os.X_OK):
        raise RuntimeError("%s is missing: install systemd (>= 252) to check the units" % SYSTEMD_ANALYZE)
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, check=False, timeout=120)


MISSING_COMMAND = re.compile(r"\A(\S+): Command (\S+) is not executable: No such file or directory\Z")


def verify(directory, units):
    """Problems `systemd-analyze verify` reports for the units (files in directory), as lines;
    and the programs missing on this host (tolerated: the roles install them on the target)."""
    proc = _analyze("verify", "--man=no", "--generators=no", *[os.path.join(directory, u) for u in units])
    problems, missing = [], set()
    for line in (proc.stdout + proc.stderr).splitlines():
        match = MISSING_COMMAND.match(line.strip())
        if match and not os.path.exists(match.group(2)):
            missing.add(match.group(2))
        elif line.strip():
            problems.append(line.strip())
    if proc.returncode != 0 and not missing and not problems:
        problems.append("systemd-analyze verify exited %d" % proc.returncode)
    return problems, sorted(missing)


EXPOSURE = re.compile(r"Overall exposure level for (\S+): ([0-9.]+) (\S+)")


def exposure(path):
    """(score, label) of `systemd-analyze security --offline=true` for one service file."""
    proc = _analyze("security", "--offline=true", "--no-pager", path)
    match = EXPOSURE.search(proc.stdout)
    if proc.returncode != 0 or not match:
        raise RuntimeError("systemd-analyze security %s failed: %s" % (path, (proc.stderr or proc.stdout).strip()[-2000:]))
    return float(match.group(2)), match.group(3)


def measure(rendered, directory):
    """Writes the units into directory/<variant>/ and returns
    {(variant, unit): {"score", "label", "problems", "missing"}}."""
    out = {}
    for label, units in rendered.items():
        vdir = os.path.join(directory, label.replace(":", "_"))
        os.makedirs(vdir, exist_ok=True)
        for unit, text in units.items():
            with open(os.path.join(vdir, unit), "w", encoding="utf-8") as handle:
                handle.write(text)
        problems, missing = verify(vdir, sorted(units))
        for unit in units:
            row = {"problems": [p for p in problems if unit in p], "missing": missing, "score": None, "label": ""}
            if unit.endswith(".service"):
                row["score"], row["label"] = exposure(os.path.join(vdir, unit))
            out[(label, unit)] = row
        unclaimed = [p for p in problems if not any(u in p for u in units)]
        if unclaimed:
            out[(label, "*")] = {"problems": unclaimed, "missing": missing, "score": None, "label": ""}
    return out


def _checkout(ref, directory):
    os.makedirs(directory)
    archive = subprocess.run(["git", "-C", REPO, "archive", ref, "roles"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout, check=True)
    return directory


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--compare", metavar="REF", help="git ref whose units are the 'before' column")
    parser.add_argument("--keep", metavar="DIR", help="write the rendered units here")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="hcp-units.")
    try:
        after = measure(render_all(REPO), args.keep or os.path.join(work, "after"))
        before = {}
        if args.compare:
            old = _checkout(args.compare, os.path.join(work, "old"))
            before = measure(render_all(old), os.path.join(work, "before"))
        failed = False
        print("| variant | unit | before | after |" if args.compare else "| variant | unit | exposure |")
        print("|---|---|---|---|" if args.compare else "|---|---|---|")
        for (label, unit), row in sorted(after.items()):
            for problem in row["problems"]:
                failed = True
                print("VERIFY %s %s: %s" % (label, unit, problem), file=sys.stderr)
            if row["score"] is None:
                continue
            now = "%.1f %s" % (row["score"], row["label"])
            if args.compare:
                old_row = before.get((label, unit))
                then = "%.1f %s" % (old_row["score"], old_row["label"]) if old_row and old_row["score"] is not None else "-"
                print("| %s | %s | %s | %s |" % (label, unit, then, now))
            else:
                print("| %s | %s | %s |" % (label, unit, now))
        missing = sorted({m for row in after.values() for m in row["missing"]})
        if missing:
            print("(not installed on this host, so verify could not check them: %s)" % ", ".join(missing), file=sys.stderr)
        return 1 if failed else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
