# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The enrollment service's operations, independent of HTTP (no Ansible, no Flask).

Privilege separation: the web process (unprivileged user) reads the DB but never writes
it and never reads the CA or signer keys. Each write is a fresh process of the writer
command (``writer`` in the config, e.g. ``sudo -n -u hcp-enroll-db /opt/hcp/venv/bin/python
-m ...enroll_service``) that receives the request as JSON on stdin, runs as the DB user,
and answers JSON on stdout; its exit code is the outcome. Without ``writer`` (tests,
benchmarks, the CLI) writes run in-process.

Configuration (JSON, docs/enrollment-service.md): db, credentials_dir (ca.key, ca.pem,
signer.key, signer.pub.pem), preclient, postclient, realm, env, secrets_dir,
ek_trust (vendor_ca | allow_list | tofu, default vendor_ca), vendor_ca_dir, ek_allow_list, writer (argv) or
writer_socket (unix socket path), signer_pub, policy, authorized_clients, service_client_ca, reserved_names,
kerberos ({url, ca_file, client_cert, client_key, realm, timeout}: the kadmin API the ``keytab``
generator and unenrollment call with the service identity; docs/kerberos.md "Principal lifecycle").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.enrollment import asset_contract
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.enrollment import db as enroll_db
from ansible_collections.hcp.core.plugins.module_utils.enrollment import profile as enroll_profile
from ansible_collections.hcp.core.plugins.module_utils.enrollment.generators import keytab as keytab_generator
from ansible_collections.hcp.core.plugins.module_utils.kerberos.client import KadminApiError, KadminClient
from ansible_collections.hcp.core.plugins.module_utils.kerberos.errors import KadminError
from ansible_collections.hcp.core.plugins.module_utils.kerberos.principal import validate_realm
from ansible_collections.hcp.core.plugins.module_utils.policy import client as policy_client
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, InvalidEkError, MissingDependencyError
from ansible_collections.hcp.core.plugins.module_utils.tpm import ek_trust

# Exit codes of the writer process <-> HTTP statuses.
EXIT_STATUS = {0: 200, 2: 400, 3: 409, 4: 404, 5: 403, 6: 503}
MAX_REQUEST_BYTES = 256 * 1024


WRITER_TIMEOUT = 120
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


def _socket_write(path, request):
    """Send one request to the writer daemon (socket-activated, running as the DB user);
    returns (exit code, body)."""
    return socket_exchange(path, json.dumps(request).encode())


def socket_exchange(path, payload):
    """One exchange with the writer daemon: ``payload`` (the request's bytes) in, (exit code,
    body) out. The tests send hostile bytes through it, as a compromised web process could."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(WRITER_TIMEOUT)
            conn.connect(path)
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            chunks, size = [], 0
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise ServiceError("enrollment writer answer too large", 500)
                chunks.append(chunk)
    except OSError as exc:
        raise ServiceError("enrollment writer unreachable: %s" % (exc.strerror or exc), 500)
    try:
        framed = jsonutil.loads(b"".join(chunks), "enrollment writer answer", max_bytes=MAX_RESPONSE_BYTES)
        return int(framed["exit"]), framed["result"]
    except (jsonutil.JsonInputError, ValueError, KeyError, TypeError):
        raise ServiceError("enrollment writer gave no valid answer", 500)


class ServiceError(HcpError):
    """An operation failed with an HTTP-like ``status`` (400, 403, 404, 409, 500)."""

    status = 500


class ServiceConfigError(ServiceError):
    """The configuration cannot work (e.g. a ``policy.url`` that is not https://): raised when
    the service is built, so the web app and the writer refuse to start instead of failing
    every request."""

    status = 500


def check_policy_config(conf):
    """Validate config ``policy`` at start-up; ServiceConfigError naming the problem.

    ``{"file": path}`` or ``{"url": "https://...", "ca_file", "client_cert", "client_key",
    "timeout"}``. A URL is checked by building the PolicyClient (no request is made): an
    ``http://`` or other URL, or a missing ``requests``, stops the service here."""
    if not conf:
        return
    if not isinstance(conf, dict):
        raise ServiceConfigError("configuration policy must be a JSON object with file or url")
    if conf.get("file"):
        if not isinstance(conf["file"], str):
            raise ServiceConfigError("configuration policy.file must be a path (string)")
        return
    if not isinstance(conf.get("url"), str):
        raise ServiceConfigError("configuration policy needs file (a path) or url (https://...)")
    for key in ("ca_file", "client_cert", "client_key"):
        if conf.get(key) is not None and not isinstance(conf[key], str):
            raise ServiceConfigError("configuration policy.%s must be a path (string)" % key)
    timeout = conf.get("timeout", 5)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
        raise ServiceConfigError("configuration policy.timeout must be a number of seconds in (0, 600]")
    try:
        _policy_client(conf)
    except HcpError as exc:  # PolicyUnavailableError (scheme), MissingDependencyError
        raise ServiceConfigError("configuration policy.url refused: %s" % exc) from None


def check_ek_trust_config(config):
    """The EkTrust of the configuration (keys ek_trust, vendor_ca_dir, ek_allow_list), built at
    start-up: vendor_ca (the default) without a vendor CA, allow_list without entries, the old
    ``require_ek_cert: false`` stop the service here (ServiceConfigError), fail closed."""
    try:
        mode, vendor_dir, allow_list = ek_trust.trust_from_config(config)
        return ek_trust.EkTrust(mode, vendor_dir or [], allow_list)
    except ek_trust.EkTrustConfigError as exc:
        raise ServiceConfigError("configuration EK trust refused: %s" % exc) from None


KERBEROS_KEYS = frozenset(["url", "ca_file", "client_cert", "client_key", "realm", "timeout"])


def check_kerberos_config(conf, realm=None):
    """The ``keytab`` generator's side of the kadmin API (generators.keytab.HostPrincipals) from
    config ``kerberos`` ({"url": "https://...", "ca_file", "client_cert", "client_key", "realm",
    "timeout"}), or None without one. Checked at start-up (no request is made): an ``http://``
    URL, a missing client certificate (the service identity), an invalid realm or one that is
    not the configuration's ``realm`` stop the service here (ServiceConfigError)."""
    if conf is None:
        return None
    if not isinstance(conf, dict):
        raise ServiceConfigError("configuration kerberos must be a JSON object")
    unknown = sorted(set(conf) - KERBEROS_KEYS)
    if unknown:
        raise ServiceConfigError("configuration kerberos: unknown keys %s" % ", ".join(ascii(k)[:40] for k in unknown[:5]))
    url = conf.get("url")
    if not isinstance(url, str) or not url.startswith("https://"):
        raise ServiceConfigError("configuration kerberos.url must be the kadmin API's https:// URL")
    for key in ("client_cert", "client_key"):
        if not isinstance(conf.get(key), str) or not os.path.isabs(conf[key]):
            raise ServiceConfigError("configuration kerberos.%s must be an absolute path (the enrollment service's "
                                     "service identity toward the kadmin API)" % key)
    if conf.get("ca_file") is not None and (not isinstance(conf["ca_file"], str) or not os.path.isabs(conf["ca_file"])):
        raise ServiceConfigError("configuration kerberos.ca_file must be an absolute path")
    timeout = conf.get("timeout", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
        raise ServiceConfigError("configuration kerberos.timeout must be a number of seconds in (0, 600]")
    try:
        krb_realm = validate_realm(conf.get("realm"))
    except KadminError as exc:
        raise ServiceConfigError("configuration kerberos.realm: %s" % exc) from None
    if realm is not None and krb_realm != realm:
        raise ServiceConfigError("configuration kerberos.realm must be the configuration's realm %s" % ascii(realm)[:80])
    try:
        client = KadminClient(url, ca_file=conf.get("ca_file"), client_cert=conf["client_cert"],
                              client_key=conf["client_key"], timeout=timeout)
        return keytab_generator.HostPrincipals(client, krb_realm)
    except (KadminApiError, KadminError, MissingDependencyError) as exc:
        raise ServiceConfigError("configuration kerberos refused: %s" % exc) from None


def _policy_client(conf):
    return policy_client.PolicyClient(conf["url"], ca_file=conf.get("ca_file"), client_cert=conf.get("client_cert"),
                                      client_key=conf.get("client_key"), timeout=conf.get("timeout", 5))


def classify(exc):
    """HTTP status of a library exception."""
    if isinstance(exc, (ServiceError, keytab_generator.KerberosEnrollmentError)):
        return exc.status
    if isinstance(exc, jsonutil.JsonInputError):
        return 400
    if isinstance(exc, MissingDependencyError):
        return 503
    if isinstance(exc, enroll.PolicyRejectedError):
        return 403
    if isinstance(exc, enroll_db.AlreadyEnrolledError):
        return 409
    if isinstance(exc, enroll_db.NotEnrolledError):
        return 404
    if isinstance(exc, (enroll_profile.ProfileError, asset_contract.GeneratorError, InvalidEkError, enroll_db.EnrollDbError)):
        return 400
    return 500


def _reserved_names(config):
    """Config ``reserved_names``: the site's service client names (list of strings)."""
    names = config.get("reserved_names") or []
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ServiceConfigError("configuration reserved_names must be a list of non-empty strings")
    return names


def _read(path, required=True):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        if required:
            raise ServiceError("cannot read %s: %s" % (path, exc.strerror), 500)
        return None


class EnrollmentService(object):
    """Operations over one enrollment DB, from the JSON configuration ``config``."""

    def __init__(self, config):
        check_policy_config(config.get("policy"))
        self.ek_trust = check_ek_trust_config(config)
        self.kerberos = check_kerberos_config(config.get("kerberos"), config.get("realm"))
        self.config = config
        self.db = enroll_db.EnrollmentDb(config["db"])
        self._enroll_config = None

    # -- reads (any process) -------------------------------------------------------
    def asset_signer(self):
        # signer_pub: a copy the web user may read when credentials_dir is closed to it.
        return _read(self.config.get("signer_pub") or os.path.join(self.config["credentials_dir"], "signer.pub.pem"))

    def query(self, prefix, nofiles=False):
        """Entries by ekpubhash prefix; with files, each carries its client profile (what
        the client sent, not secret) so clients can enroll idempotently."""
        entries = self.db.query(prefix.lower(), nofiles=nofiles)
        if not nofiles:
            for entry in entries:
                raw = self.db.read_file(enroll_db.entry_dir(entry["ekpubhash"]) + "/clientprofile")
                entry["clientprofile"] = json.loads(raw) if raw else None
        return {"entries": entries}

    def find(self, regex):
        return {"entries": self.db.find(regex)}

    def health(self):
        return {"status": "ok", "db_head": self.db.head()}

    # -- writes (the writer process) -------------------------------------------
    def enrollment_config(self):
        if self._enroll_config is None:
            c = self.config
            cred = c["credentials_dir"]
            # the enrollment CA never names a certificate after a service identity
            reserved = _reserved_names(c)
            issuer = pki.Issuer.from_pem(_read(os.path.join(cred, "ca.key")), _read(os.path.join(cred, "ca.pem")),
                                         reserved_names=reserved)
            signer = pki.Signer(pki.load_private_key(_read(os.path.join(cred, "signer.key"))))
            secrets = {}
            if c.get("secrets_dir") and os.path.isdir(c["secrets_dir"]):
                for name in sorted(os.listdir(c["secrets_dir"])):
                    path = os.path.join(c["secrets_dir"], name)
                    if os.path.isfile(path) and not name.startswith("."):
                        secrets[name] = _read(path)
            self._enroll_config = enroll.EnrollmentConfig(
                issuer, signer, preclient=c.get("preclient"), postclient=c.get("postclient"), realm=c.get("realm"),
                env=c.get("env"), secrets=secrets, vendor_cas=self.ek_trust.vendor_cas, ek_trust=self.ek_trust.mode,
                ek_allow_list=self.ek_trust.allow_list or None, reserved_names=reserved, kerberos=self.kerberos,
            )
        return self._enroll_config

    def policy_check(self, operation):
        """The ``enrollsvc::add_request`` hook from config ``policy``: {"file": path} (in
        process) or {"url", "ca_file", "client_cert", "client_key", "timeout"}; None = no
        policy service. An unreachable or failing service rejects (fail closed)."""
        conf = self.config.get("policy")
        if not conf:
            return None

        def check(params):
            try:
                # built per request (as before); its configuration was checked at start-up, so
                # what fails here is the service itself (or its policy file): refused, 403
                checker = policy_client.LocalPolicy(conf["file"]) if conf.get("file") else _policy_client(conf)
                result = checker.check("enrollsvc::add_request", "%s-%s" % (operation, uuid.uuid4().hex), params)
            except HcpError as exc:
                raise enroll.PolicyRejectedError("policy service unavailable, enrollment refused: %s" % exc)
            if not result.accepted:
                raise enroll.PolicyRejectedError("enrollment rejected by policy (rule %s)" % (result.rule,))
        return check

    def _write(self, request):
        if self.config.get("writer_socket"):
            code, body = _socket_write(self.config["writer_socket"], request)
        elif self.config.get("writer"):
            proc = subprocess.run(self.config["writer"], input=json.dumps(request).encode(), capture_output=True,
                                  timeout=WRITER_TIMEOUT, check=False)
            code = proc.returncode
            try:
                body = jsonutil.loads(proc.stdout or b"{}", "enrollment writer answer", max_bytes=MAX_RESPONSE_BYTES)
            except jsonutil.JsonInputError:
                body = {}
        else:
            return self.perform(request)
        if code != 0:
            body = body if isinstance(body, dict) else {}
            raise ServiceError(body.get("error") or "enrollment writer failed", EXIT_STATUS.get(code, 500))
        return body

    def add(self, ekpub, hostname, profile, caller=None):
        return self._write({"op": "add", "ekpub": ekpub, "hostname": hostname, "profile": profile, "caller": caller})

    def reenroll(self, ekpubhash, caller=None):
        return self._write({"op": "reenroll", "ekpubhash": ekpubhash, "caller": caller})

    def delete(self, prefix, caller=None):
        return self._write({"op": "delete", "prefix": prefix, "caller": caller})

    def janitor(self):
        return self._write({"op": "janitor"})

    def _not_enrolled(self, ekpubhash, hostname):
        """``before_generate`` of an add: refuse (409) a TPM or hostname already enrolled before
        any generator runs, so a refused enrollment never re-keys the enrolled host's principals.
        db.add checks again under the DB lock."""
        head = self.db.head_from_refs() or self.db.head()
        shard = enroll_db.hostname_shard(hostname)
        current = self.db.read_files([enroll_db.entry_dir(ekpubhash) + "/ekpubhash", shard], rev=head) if head else {}
        if current.get(enroll_db.entry_dir(ekpubhash) + "/ekpubhash") is not None:
            raise enroll_db.AlreadyEnrolledError("TPM %s is already enrolled" % ekpubhash)
        rows = json.loads(current[shard]) if current.get(shard) else []
        owner = next((e["ekpubhash"] for e in rows if e["hostname"] == hostname), None)
        if owner is not None:
            raise enroll_db.AlreadyEnrolledError("hostname %s is already enrolled with TPM %s" % (hostname, owner))

    def _principals(self, data, ekpubhash, hostname):
        """The Kerberos principals of an entry's ``keytab-principals`` record ``data`` ([] when
        None). An entry with principals on a service without ``kerberos``: ServiceError 503."""
        if data is None:
            return []
        if self.kerberos is None:
            raise ServiceError("entry %s has Kerberos principals but this service has no kerberos configuration: "
                               "refused, nothing changed" % ekpubhash, 503)
        return self.kerberos.recorded(data, hostname, "entry %s" % ekpubhash)

    def _delete(self, prefix, who):
        """Unenrollment. With Kerberos principals in the entries, each entry is deleted on its
        own: first its principals through the kadmin API (one already gone counts as deleted),
        then the entry, in one commit. Fail closed: when the kadmin API refuses or cannot be
        reached, the entry stays (503/403) and the delete can simply be run again."""
        owned = []
        for victim in self.db.query(prefix, nofiles=True) if prefix else []:
            record = self.db.read_file(enroll_db.entry_dir(victim["ekpubhash"]) + "/" + keytab_generator.PRINCIPALS_ASSET)
            owned.append((victim, self._principals(record, victim["ekpubhash"], victim["hostname"])))
        if not any(names for _v, names in owned):  # db.delete refuses an empty prefix, or finds nothing
            return self.db.delete(prefix, message="delete: %s by %s" % (prefix, who))
        deleted = []
        for victim, names in owned:
            if names:
                self.kerberos.remove(names)
            deleted.extend(self.db.delete(victim["ekpubhash"], message="delete: %s by %s (principals %s deleted)"
                                          % (victim["ekpubhash"], who, " ".join(names) or "none")))
        return deleted

    def perform(self, request):
        """Run one write request in this process (the writer side)."""
        op = request.get("op")
        caller = request.get("caller") if isinstance(request.get("caller"), dict) else None
        who = (caller or {}).get("subject") or "local"
        if not isinstance(who, str):
            raise ServiceError("caller subject must be a string", 400)
        if op == "add":
            ekpub = request.get("ekpub")
            if not isinstance(ekpub, str):
                raise ServiceError("ekpub must be text (PEM, base64 TPM2B_PUBLIC or PEM certificate)", 400)
            data = ekpub.encode()
            if "-----BEGIN" not in ekpub:
                import base64  # pylint: disable=import-outside-toplevel

                try:
                    data = base64.b64decode(ekpub, validate=True)
                except ValueError:
                    raise ServiceError("ekpub is neither PEM nor base64", 400)
            h, host, files, summary = enroll.build_entry(
                self.enrollment_config(), data, request.get("hostname"), request.get("profile"),
                policy_check=self.policy_check("add"), caller=caller, before_generate=self._not_enrolled)
            enroll.store_entry(self.db, self.enrollment_config(), h, host, files, message="add: %s %s by %s" % (host, h, who))
            return summary
        if op == "reenroll":
            h = request.get("ekpubhash") or ""
            if not isinstance(h, str) or not enroll_db.EKPUBHASH_RE.fullmatch(h):
                raise ServiceError("ekpubhash must be 64 lowercase hex characters", 400)
            current = self.db.get(h)
            if current is None:
                raise enroll_db.NotEnrolledError("no enrollment for ekpubhash %s" % h)
            host = current["hostname"].decode().strip()
            before = self._principals(current.get(keytab_generator.PRINCIPALS_ASSET), h, host)
            _h, _host, files, summary = enroll.build_entry(
                self.enrollment_config(), current["ek.pub"], host, current.get("clientprofile"), operation="reenroll",
                policy_check=self.policy_check("reenroll"), caller=caller)
            # principals the entry had and the new profile no longer asks for: deleted now
            # (fail closed), before the entry that no longer lists them is stored
            if before:
                after = set(self.kerberos.recorded(files[keytab_generator.PRINCIPALS_ASSET], host, "new entry")
                            if keytab_generator.PRINCIPALS_ASSET in files else [])
                self.kerberos.remove([p for p in before if p not in after])
            enroll.store_entry(self.db, self.enrollment_config(), h, host, files,
                               message="reenroll: %s %s by %s" % (host, h, who), replace=True)
            return summary
        if op == "delete":
            prefix = request.get("prefix") or ""
            if not isinstance(prefix, str):
                raise ServiceError("ekpubhash prefix must be a string", 400)
            prefix = prefix.lower()
            return {"entries": self._delete(prefix, who)}
        if op == "janitor":
            return {"rewritten_shards": self.db.janitor()}
        raise ServiceError("unknown operation %r" % (op,), 400)


def handle(config_path, raw, service=None):
    """One writer request: (exit code, JSON-able body). Never raises: bad input is a 4xx code,
    anything unexpected (a bug; RecursionError, MemoryError...) code 1 with a fixed message,
    the exception on stderr (the journal). ``service`` (an EnrollmentService) is reused when
    given: keys stay loaded."""
    try:
        if service is None:
            service = writer_service(config_path)
        request = jsonutil.loads(raw, "writer request", max_bytes=MAX_REQUEST_BYTES)
        if not isinstance(request, dict):
            raise ServiceError("request must be a JSON object", 400)
        return 0, service.perform(request)
    except HcpError as exc:
        status = classify(exc)
        return dict((v, k) for k, v in EXIT_STATUS.items()).get(status, 1), {"error": str(exc)}
    except ValueError as exc:  # UnicodeError included; the message may quote the input: not shown
        return 2, {"error": "invalid writer request (%s)" % type(exc).__name__}
    # one request never kills the writer daemon
    except Exception as exc:  # pylint: disable=broad-except
        sys.stderr.write("enrollment writer: request failed: %s: %s\n" % (type(exc).__name__, str(exc)[:500]))
        return 1, {"error": "enrollment writer failed"}


def writer_service(config_path):
    """The in-process service of the writer side (never re-spawns a writer)."""
    config = json.loads(_read(config_path))
    config.pop("writer", None)
    config.pop("writer_socket", None)
    return EnrollmentService(config)


def _read_request(conn):
    chunks, size = [], 0
    while size <= MAX_REQUEST_BYTES:
        chunk = conn.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def serve(config_path, listen_fd=3):
    """The writer daemon (unit hcp-enroll-writer.service, as the DB user): accept connections
    on the listening socket systemd passes as fd 3 and answer each request in turn with
    {"exit": code, "result": body} (writer protocol v1). One process for all writes: keys
    and libraries are loaded once; writes are serialised anyway by the DB lock."""
    if os.environ.get("LISTEN_FDS") != "1" or os.environ.get("LISTEN_PID") not in (None, str(os.getpid())):
        raise ServiceError("--serve needs exactly one listening socket from systemd (LISTEN_FDS=1)", 500)
    listener = socket.socket(fileno=listen_fd)
    service = writer_service(config_path)
    while True:
        conn, _addr = listener.accept()
        with conn:
            try:
                conn.settimeout(WRITER_TIMEOUT)
                code, body = handle(config_path, _read_request(conn), service)
                try:
                    answer = json.dumps({"exit": code, "result": body}).encode()
                except (TypeError, ValueError, RecursionError):
                    answer = json.dumps({"exit": 1, "result": {"error": "enrollment writer failed"}}).encode()
                conn.sendall(answer)
            except OSError:
                continue  # the client went away; its request may or may not have been applied


def main(argv=None):
    """Writer entry points: ``python -m ...enroll_service CONFIG`` (one request on stdin, the
    body on stdout, the outcome as exit status: config ``writer``) or ``... --serve CONFIG``
    (the socket-activated daemon: config ``writer_socket``)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--serve":
        try:
            serve(argv[1])
        except (HcpError, ValueError) as exc:
            sys.stderr.write("enrollment writer: %s\n" % exc)
            return 1
        return 0
    if len(argv) != 1:
        code, body = 2, {"error": "usage: enroll_service CONFIG_JSON < request.json | enroll_service --serve CONFIG_JSON"}
    else:
        code, body = handle(argv[0], sys.stdin.buffer.read(MAX_REQUEST_BYTES + 1))
    sys.stdout.write(json.dumps(body))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
