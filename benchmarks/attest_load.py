#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attestation at fleet speed through the production stack, measured fairly (issue 20): prints
figures, asserts nothing (not a test).

The stack: nginx (TLS; the webapi role's own site template nginx-site.conf.j2 and uwsgi.ini.j2,
rendered by Ansible's engine with the role's defaults and the attestation_server role's
settings) -> uwsgi (unix socket) -> attest_app, all in a temp dir on loopback. Only what a
benchmark on one loopback address needs differs from production, and is printed: the per-address
rate limit (limit_req stays on the path, with a rate this client cannot reach), the paths, the
user (nginx and uwsgi as the caller), and uwsgi's ``pythonpath`` (the repo's collections/).
The attestation configuration is the attestation_server role's (attest.json.j2): ek_trust
vendor_ca, a used-ticket directory, a metrics directory, max_ticket_age 120.

The fleet: HOSTS software TPMs (RSA-2048 EKs of TCG template L-1 with EK certificates from a
software vendor CA, ECC P-256 AKs with the TPM attributes, as in
tests/unit/plugins/module_utils/test_attest_load.py) enrolled in a real enrollment DB (git).
Evidence is recorded in advance: each complete body carries a ticket from a real ``initiate``
(the server's own Attestor code, the served ticket key) and a quote over its nonce signed in
software; each body is sent once (tickets are single-use).

The load generators:
  closed loop: wrk (Debian, compiled; keep-alive TLS) with a Lua script that alternates
    initiate and complete requests, complete bodies taken in turn from the recorded set, each
    once; every response is checked (200 and the expected body) and non-200 answers are counted
    and printed. Throughput = completed attestations (200 complete) / wrk's run time; p50/p99 are
    wrk's per-request latencies (initiate and complete mixed).
  open loop: a paced Python asyncio client (wrk2 is not packaged): attestation k is due at
    t0 + k/RATE, taken by the first free keep-alive TLS connection of a pool; its latency is from
    its due time to the complete's answer (initiate + complete), so a stalled server or a full pool
    counts against the latency (coordinated-omission correct). Its own CPU is printed.

Server CPU: utime + stime of every nginx and uwsgi process (masters and workers, /proc/<pid>/stat)
before and after each run, divided by the attestations done, next to the same run's crypto floor:
the minimal work of one attestation over pyca/cryptography on one core (EK TPM2B_PUBLIC parse,
AK parse, cached EK-certificate check, MakeCredential to the RSA EK, ECDSA P-256 quote verify,
AES-256-GCM of the released payload); the library's own calls for those steps are timed beside it.
Targets (issue 20): >= 3,000 attestations/s, server CPU <= 3 x floor, p99 <= 20 ms at 1,000/s.

Needs wrk (Debian package wrk), nginx-light, uwsgi-core and uwsgi-plugin-python3; without them it
prints a skip line and exits 0. Run from the repo root after `make install`:
  .venv/bin/python benchmarks/attest_load.py [--duration S] [--levels 1,16,64] [--rate 1000]
      [--hosts N] [--set webapi_var=value ...]   (--set: role variables, e.g. webapi_processes=4)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import hashlib
import hmac
import importlib.util
import json
import os
import re
import resource
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import warnings

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "collections"))
sys.path.insert(0, HERE)

import _stack  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.hcp.core.plugins.module_utils import pki  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm import quote as quote_mod  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_from_key, load_ek_public  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import ekpubhash  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm.ek_trust import EkTrust  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm.policy import TPM_ALG_IDS  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

ROLE = os.path.join(REPO, "roles", "webapi")
PROFILE = {"assets": ["hostname", "rootfs-key", "https-server", "issuer-ca"]}
# what the attestation_server role gives the webapi role (roles/attestation_server/tasks/main.yml)
ATTEST_SITE = {"webapi_app": "attest_app", "webapi_auth": "none", "webapi_max_body": "320k",
               "webapi_rate_limit_paths": ["/v1/initiate", "/v1/complete"], "webapi_processes": 2}
# the bench's one loopback client address would hit the role's 10r/s at once: the limit stays on
# the path (the same nginx work per request) at a rate this client cannot reach
BENCH_RATE_LIMIT = "1000000r/s"
# nginx counts requests of one millisecond as a burst: 64 connections answered at once exceed 20
BENCH_RATE_LIMIT_BURST = 100000
DUE_SLACK = 0.05


# -- the software fleet -------------------------------------------------------------------------

def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def vendor_ca():
    """(key, certificate) of a software TPM vendor CA (one self-signed CA, EK-certificate issuer)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("bench TPM vendor CA")).issuer_name(_name("bench TPM vendor CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def ek_certificate(ek_key, ca):
    """A TCG-profile EK certificate (empty subject, critical SAN directoryName, EKU tcg-kp-EKCertificate)."""
    tpm = x509.Name([x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.1"), "id:00001014"),
                     x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.2"), "bench"),
                     x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.3"), "id:20191023")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca[1].subject)
            .public_key(ek_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DirectoryName(tpm)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca[0].public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier(pki.OID_TCG_KP_EK_CERTIFICATE)]), critical=False)
            .sign(ca[0], hashes.SHA256()))


def _tpm2b(data):
    return struct.pack(">H", len(data)) + data


class SoftwareHost(object):
    """One enrolled host without a TPM: an RSA-2048 EK (template L-1) with its certificate, and
    an ECC P-256 "AK" whose TPM2B_PUBLIC claims the AK attributes; quotes are signed in software
    over fixed PCR values (the selection the server asks for)."""

    def __init__(self, ca, selection):
        self.ek_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ek_public = ek_public_from_key(self.ek_key.public_key())
        self.hash = ekpubhash(self.ek_public)
        self.cert = ek_certificate(self.ek_key, ca)
        self.ekpub = base64.b64encode(self.ek_public.marshal()).decode()
        self.ek_cert = base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()
        self.ak_key = ec.generate_private_key(ec.SECP256R1())
        public = quote_mod.ak_template()
        numbers = self.ak_key.public_key().public_numbers()
        public.publicArea.unique.ecc.x = numbers.x.to_bytes(32, "big")
        public.publicArea.unique.ecc.y = numbers.y.to_bytes(32, "big")
        self.ak_public = base64.b64encode(public.marshal()).decode()
        self.pcrs = {}
        selections = b""
        concat = b""
        for bank, indices in sorted(selection.items()):
            bitmap = bytearray(3)
            for idx in indices:
                bitmap[idx // 8] |= 1 << (idx % 8)
                self.pcrs.setdefault(bank, {})[str(idx)] = os.urandom(32).hex()
            selections += struct.pack(">HB", TPM_ALG_IDS[bank], 3) + bytes(bitmap)
            concat += b"".join(bytes.fromhex(self.pcrs[bank][str(i)]) for i in sorted(indices))
        self._head = struct.pack(">IH", quote_mod.TPM_GENERATED_VALUE, quote_mod.TPM_ST_ATTEST_QUOTE) + _tpm2b(b"")
        self._tail = bytes(8 + 4 + 4 + 1 + 8) + struct.pack(">I", len(selection)) + selections \
            + _tpm2b(hashlib.sha256(concat).digest())

    def quote(self, nonce):
        """A quote bundle (hcp.core.quote v1) over ``nonce``."""
        attest_raw = self._head + _tpm2b(nonce) + self._tail
        r, s = decode_dss_signature(self.ak_key.sign(attest_raw, ec.ECDSA(hashes.SHA256())))
        signature = struct.pack(">HH", quote_mod.TPM_ALG_ECDSA, quote_mod.TPM_ALG_SHA256) \
            + _tpm2b(r.to_bytes(32, "big")) + _tpm2b(s.to_bytes(32, "big"))
        return {"format": quote_mod.QUOTE_FORMAT, "version": quote_mod.QUOTE_VERSION, "ak_public": self.ak_public,
                "attest": base64.b64encode(attest_raw).decode(), "signature": base64.b64encode(signature).decode(),
                "pcrs": self.pcrs}


def record(recorder, hosts, count, offset=0):
    """``count`` complete bodies (bytes, one JSON line each), hosts taken in turn: a real initiate
    (the served ticket key) and a software quote over its nonce each."""
    bodies = []
    for number in range(count):
        host = hosts[(number + offset) % len(hosts)]
        started = recorder.initiate(host.hash)
        bodies.append(json.dumps({"ticket": started["ticket"], "ekpub": host.ekpub, "ek_cert": host.ek_cert,
                                  "quote": host.quote(base64.b64decode(started["nonce"]))},
                                 separators=(",", ":")).encode())
    return bodies


# -- the stack --------------------------------------------------------------------------------

def _write(path, data, mode=0o644):
    with open(path, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path


def _role_templar(**overrides):
    spec = importlib.util.spec_from_file_location("hcp_role_helpers", os.path.join(REPO, "tests", "unit", "role_helpers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.role_templar(ROLE, **overrides)


def render_role(template, variables):
    from ansible.template import trust_as_template  # pylint: disable=import-outside-toplevel  # controller side only

    with open(os.path.join(ROLE, "templates", template), "r", encoding="utf-8") as handle:
        source = handle.read()
    return _role_templar(**variables).template(trust_as_template(source))


# Debian 12's /etc/nginx/nginx.conf (the main file the role's site is included from), with the
# paths of the temp dir
NGINX_MAIN = """daemon off;
master_process on;
{user}worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 768; }}
http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    access_log {d}/access.log;
    gzip on;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {site};
}}
"""


class Stack(_stack.Processes):
    """nginx + uwsgi from the role's templates, serving attest_app with ``config_path``."""

    def __init__(self, workdir, config_path, cred, overrides):
        super().__init__(workdir)
        self.port = _stack.free_port()
        self.url = "https://localhost:%d" % self.port
        self.cred = cred
        os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(workdir, name), mode=0o700, exist_ok=True)
        me = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        self.variables = dict(ATTEST_SITE, webapi_name="attest", webapi_port=self.port, webapi_listen_address="127.0.0.1",
                              webapi_server_name="localhost", webapi_tls_cert_path=cred["server_cert"],
                              webapi_tls_key_path=cred["server_key"], webapi_rate_limit=BENCH_RATE_LIMIT, webapi_rate_limit_burst=BENCH_RATE_LIMIT_BURST,
                              webapi_user=me, webapi_group=me, webapi_venv=sys.prefix,
                              webapi_env={"HCP_ATTEST_CONFIG": config_path},
                              __webapi_nginx_log_dir=os.path.join(workdir, "logs"),
                              __webapi_socket=os.path.join(workdir, "uwsgi.sock"))
        self.variables.update(overrides)
        self.site = render_role("nginx-site.conf.j2", self.variables)
        ini = render_role("uwsgi.ini.j2", self.variables)
        if os.geteuid() != 0:  # chown-socket to www-data needs root
            ini = re.sub(r"(?m)^chown-socket = .*\n", "", ini)
        self.ini = ini + "pythonpath = %s\n" % os.path.join(REPO, "collections")
        self.processes = int(self.variables["webapi_processes"])
        self.threads = int(self.variables.get("webapi_threads", 1))

    def start(self):
        site = _write(os.path.join(self.workdir, "site.conf"), self.site)
        ini = _write(os.path.join(self.workdir, "uwsgi.ini"), self.ini)
        conf = _write(os.path.join(self.workdir, "nginx.conf"), NGINX_MAIN.format(
            d=self.workdir, site=site, user="user root;\n" if os.geteuid() == 0 else ""))
        self._spawn([_stack.find("uwsgi-core", "uwsgi"), "--ini", ini], "uwsgi.log")
        self._spawn([_stack.find("nginx"), "-p", self.workdir, "-e", os.path.join(self.workdir, "error.log"), "-c", conf], "nginx.log")
        return self.wait_healthy(self.url, self.cred["ca_cert"])

    def pids(self):
        """{pid: "uwsgi" or "nginx"} of every process of the stack (the two masters and their descendants)."""
        parents = _stack.parents()
        found = dict((p.pid, os.path.basename(p.args[0]).split("-")[0]) for p in self.procs if p.poll() is None)
        grew = True
        while grew:
            more = dict((pid, found[ppid]) for pid, ppid in parents.items() if ppid in found and pid not in found)
            grew = bool(more)
            found.update(more)
        return found

    def cpu(self):
        """{pid: (program, utime + stime in seconds)} of the stack's processes."""
        times = {}
        for pid, program in self.pids().items():
            fields = _stack.proc_stat(pid)
            if fields:
                times[pid] = (program, _stack.cpu_seconds(fields))
        return times


def cpu_delta(before, after):
    """{program: seconds of CPU} the stack used between two Stack.cpu() snapshots (new processes
    in full), with "total"."""
    used = {"nginx": 0.0, "uwsgi": 0.0}
    for pid, (program, value) in after.items():
        used[program] = used.get(program, 0.0) + value - before.get(pid, (program, 0.0))[1]
    used["total"] = sum(used.values())
    return used


# -- the closed loop: wrk + Lua -----------------------------------------------------------------

WRK_LUA = r"""
-- benchmarks/attest_load.py: initiate and complete in turn on keep-alive TLS connections;
-- complete bodies from the file <prefix><thread number>, each sent once; every answer checked.
local bodies, nbodies, used, turn = {}, 0, 0, 0
local initiate_req, headers
ok_initiate, ok_complete, exhausted, unexpected, non200 = 0, 0, 0, 0, 0
statuses, samples, nsamples = {}, {}, 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  for line in io.lines(args[1] .. tid) do
    nbodies = nbodies + 1
    bodies[nbodies] = line
  end
  headers = {["Content-Type"] = "application/json"}
  initiate_req = wrk.format("POST", "/v1/initiate", headers, args[2])
end

function request()
  turn = turn + 1
  if turn % 2 == 1 then return initiate_req end
  used = used + 1
  if used > nbodies then
    exhausted = exhausted + 1
    return initiate_req
  end
  local body = bodies[used]
  bodies[used] = nil
  return wrk.format("POST", "/v1/complete", headers, body)
end

local function sample(text)
  if nsamples < 5 then
    nsamples = nsamples + 1
    samples[nsamples] = string.gsub(string.sub(text, 1, 300), "[\r\n]", " ")
  end
end

function response(status, hdrs, body)
  if status == 200 then
    if string.find(body, '"ciphertext"', 1, true) then
      ok_complete = ok_complete + 1
    elseif string.find(body, '"ticket"', 1, true) then
      ok_initiate = ok_initiate + 1
    else
      unexpected = unexpected + 1
      sample("200 " .. body)
    end
  else
    non200 = non200 + 1
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
    sample(key .. " " .. body)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("HCP summary duration_us=%d requests=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout))
  io.write(string.format("HCP latency p50_us=%d p90_us=%d p99_us=%d max_us=%d\n", latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max))
  for _, t in ipairs(threads) do
    io.write(string.format("HCP thread ok_initiate=%d ok_complete=%d exhausted=%d unexpected=%d non200=%d\n",
      t:get("ok_initiate"), t:get("ok_complete"), t:get("exhausted"), t:get("unexpected"), t:get("non200")))
    for code, count in pairs(t:get("statuses")) do
      io.write(string.format("HCP status %s %d\n", code, count))
    end
    for _, text in ipairs(t:get("samples")) do
      io.write("HCP sample " .. text .. "\n")
    end
  end
end
"""


def run_wrk(stack, workdir, bodies, connections, duration, threads=1):
    """One wrk run; a dict of its figures (wrk's own CPU included)."""
    threads = max(1, min(threads, connections))
    prefix = os.path.join(workdir, "bodies-c%d." % connections)
    for number in range(threads):
        _write(prefix + str(number + 1), b"\n".join(bodies[number::threads]) + b"\n")
    script = _write(os.path.join(workdir, "attest_load.lua"), WRK_LUA)
    # any enrolled EK will do for the initiate requests: the first body's
    initiate_body = json.dumps({"ekpubhash": _body_hash(bodies[0])})
    argv = [_stack.find("wrk"), "-t", str(threads), "-c", str(connections), "-d", "%ds" % duration, "--timeout", "10s",
            "-s", script, stack.url, "--", prefix, initiate_body]
    before = stack.cpu()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        output = proc.stdout.read().decode(errors="replace")
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    after = stack.cpu()
    result = {"connections": connections, "server_cpu": cpu_delta(before, after), "client_cpu": usage.ru_utime + usage.ru_stime,
              "statuses": {}, "samples": [], "ok_initiate": 0, "ok_complete": 0, "exhausted": 0, "unexpected": 0,
              "non200": 0, "recorded": len(bodies)}
    for line in output.splitlines():
        if not line.startswith("HCP "):
            continue
        kind, rest = line[4:].split(" ", 1)
        if kind in ("summary", "latency", "thread"):
            for item in rest.split():
                key, value = item.split("=")
                result[key] = result.get(key, 0) + int(value) if kind == "thread" else int(value)
        elif kind == "status":
            code, count = rest.split()
            result["statuses"][code] = result["statuses"].get(code, 0) + int(count)
        elif kind == "sample":
            result["samples"].append(rest)
    if "duration_us" not in result:
        raise RuntimeError("wrk failed (%s): %s" % (proc.returncode, output[-2000:]))
    seconds = result["duration_us"] / 1e6
    result["rate"] = result["ok_complete"] / seconds
    result["cpu_per_attestation"] = result["server_cpu"]["total"] / max(1, result["ok_complete"])
    result["nginx_share"] = result["server_cpu"]["nginx"] / max(1e-9, result["server_cpu"]["total"])
    return result


def _body_hash(body):
    request = json.loads(body)
    return ekpubhash(load_ek_public(request["ekpub"]))


# -- the open loop: paced asyncio client --------------------------------------------------------

async def _http(reader, writer, path, body):
    writer.write(b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                 % (path.encode(), len(body)) + body)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _sep, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        data = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data += await reader.readexactly(size + 2)
            if size == 0:
                break
        return status, data
    return status, await reader.readexactly(length or 0)


async def _open_loop(port, ca_file, initiate_body, bodies, rate, pool):
    context = ssl.create_default_context(cafile=ca_file)
    conns = [await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost") for _i in range(pool)]
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    latencies, failures, samples = [], {}, []
    t0 = loop.time() + 0.2
    # an overloaded server would take minutes to drain the queue: attestations not started by then
    # are counted as unfinished (their latency is at least the time left, reported as such)
    deadline = t0 + 2 * len(bodies) / rate + 5
    unfinished = []

    async def worker(reader, writer):
        while True:
            number = await queue.get()
            if number is None:
                return
            if loop.time() > deadline:
                unfinished.append(number)
                continue
            due = t0 + number / rate
            first, answer1 = await _http(reader, writer, "/v1/initiate", initiate_body)
            second, answer2 = await _http(reader, writer, "/v1/complete", bodies[number])
            latencies.append(loop.time() - due)
            for status, answer in ((first, answer1), (second, answer2)):
                if status != 200:
                    failures[status] = failures.get(status, 0) + 1
                    if len(samples) < 5:
                        samples.append("%d %s" % (status, answer[:300].decode(errors="replace")))

    workers = [asyncio.ensure_future(worker(r, w)) for r, w in conns]
    for number in range(len(bodies)):
        delay = t0 + number / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(number)
    behind = loop.time() - (t0 + (len(bodies) - 1) / rate)
    for _w in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = loop.time() - t0
    for _r, writer in conns:
        writer.close()
    return latencies, failures, samples, elapsed, behind, len(unfinished), deadline - t0


def run_open_loop(stack, bodies, rate, pool):
    initiate_body = json.dumps({"ekpubhash": _body_hash(bodies[0])}).encode()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    before = stack.cpu()
    latencies, failures, samples, elapsed, behind, unfinished, limit = asyncio.run(
        _open_loop(stack.port, stack.cred["ca_cert"], initiate_body, bodies, rate, pool))
    after = stack.cpu()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    # the unfinished ones count as (at least) the time they were given
    ordered = sorted(latencies + [limit] * unfinished)
    return {"rate": rate, "count": len(bodies), "done_rate": len(latencies) / elapsed, "unfinished": unfinished, "p50": _pct(ordered, 0.50),
            "p99": _pct(ordered, 0.99), "max": ordered[-1], "failures": failures, "samples": samples,
            "server_cpu": cpu_delta(before, after), "behind": behind, "pool": pool,
            "client_cpu": (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)}


def _pct(ordered, fraction):
    return ordered[max(0, min(len(ordered) - 1, int(round(len(ordered) * fraction)) - 1))]


# -- the crypto floor ---------------------------------------------------------------------------

def _kdfa(key, label, context_u, context_v, bits):
    """TPM KDFa (SP 800-108 counter mode, HMAC-SHA256), TPM 2.0 Part 1 11.4.10.2."""
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        out += hmac.new(key, struct.pack(">I", counter) + label + b"\x00" + context_u + context_v
                        + struct.pack(">I", bits), hashlib.sha256).digest()
    return out[:bits // 8]


def make_credential_rsa(ek_key, credential, name):
    """MakeCredential to an RSA EK (AES-128-CFB, SHA-256) over cryptography alone: the floor's share."""
    seed = os.urandom(32)
    secret = ek_key.encrypt(seed, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                                               label=b"IDENTITY\x00"))
    sym = _kdfa(seed, b"STORAGE", name, b"", 128)
    encryptor = Cipher(algorithms.AES(sym), modes.CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(_tpm2b(credential)) + encryptor.finalize()
    hmac_key = _kdfa(seed, b"INTEGRITY", b"", b"", 256)
    outer = hmac.new(hmac_key, enc_identity + name, hashlib.sha256).digest()
    return _tpm2b(outer) + enc_identity, secret


def crypto_floor(body, cert_der, payload, rounds=400):
    """Median CPU seconds (this thread's CPU time: the machine may be shared, the server's figure is
    CPU time as well) of the minimal work of one attestation (one core, pyca/cryptography): parse
    the EK (TPM2B_PUBLIC: RSA modulus) and the AK (ECC point), the cached EK-certificate check
    (hash of the DER, a dict hit, the certificate's key against the EK), MakeCredential to the EK,
    the quote's ECDSA P-256 verify (attest parse: nonce), AES-256-GCM of the released payload."""
    request = json.loads(body)
    ek_raw = base64.b64decode(request["ekpub"])
    ak_raw = base64.b64decode(request["quote"]["ak_public"])
    attest_raw = base64.b64decode(request["quote"]["attest"])
    sig_raw = base64.b64decode(request["quote"]["signature"])
    cache = {hashlib.sha256(cert_der).digest(): time.time() + 3600}
    ek_spki = x509.load_der_x509_certificate(cert_der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    timings = []
    for _i in range(rounds):
        t0 = time.thread_time()
        modulus = ek_raw[-256:]  # TPM2B_PUBLIC of template L-1 ends with the 256-byte modulus
        ek_key = rsa.RSAPublicNumbers(65537, int.from_bytes(modulus, "big")).public_key()
        x_len = struct.unpack(">H", ak_raw[-68:-66])[0]
        ak_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + ak_raw[-66:-34] + ak_raw[-32:])
        if x_len != 32 or cache.get(hashlib.sha256(cert_der).digest(), 0) < time.time():
            raise RuntimeError("floor inputs")
        if ek_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != ek_spki:
            raise RuntimeError("floor EK")
        nonce_len = struct.unpack(">H", attest_raw[8:10])[0]
        _nonce = attest_raw[10:10 + nonce_len]
        r = int.from_bytes(sig_raw[6:38], "big")
        s = int.from_bytes(sig_raw[40:72], "big")
        ak_key.verify(encode_dss_signature(r, s), attest_raw, ec.ECDSA(hashes.SHA256()))
        ak_name = b"\x00\x0b" + hashlib.sha256(ak_raw[2:]).digest()
        key = os.urandom(32)
        make_credential_rsa(ek_key, key, ak_name)
        AESGCM(key).encrypt(os.urandom(12), payload, b"")
        timings.append(time.thread_time() - t0)
    return statistics.median(timings)


def library_floor(body, cert_der, payload, vendor_cas, rounds=200):
    """Median CPU seconds of the library's own calls for the same steps (load_ek_public, the cached
    EkTrust check, quote.verify_quote, envelope.make_credential_to_ek, AES-GCM), and the share of each."""
    request = json.loads(body)
    trust = EkTrust("vendor_ca", vendor_cas)
    attest_raw = base64.b64decode(request["quote"]["attest"])
    nonce = attest_raw[10:10 + struct.unpack(">H", attest_raw[8:10])[0]]
    steps = {"ek parse": [], "ek cert (cached)": [], "verify_quote": [], "make_credential": [], "aes-gcm": []}
    for _i in range(rounds):
        t0 = time.thread_time()
        public = load_ek_public(request["ekpub"])
        t1 = time.thread_time()
        trust.check_attestation(ekpubhash(public), public.to_pem(), cert_der)
        t2 = time.thread_time()
        proven = quote_mod.verify_quote(request["quote"], nonce)
        t3 = time.thread_time()
        key = os.urandom(32)
        envelope.make_credential_to_ek(public, key, bytes.fromhex(proven["ak_name"]))
        t4 = time.thread_time()
        AESGCM(key).encrypt(os.urandom(12), payload, b"")
        t5 = time.thread_time()
        for name, (a, b) in zip(steps, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
            steps[name].append(b - a)
    return dict((name, statistics.median(values)) for name, values in steps.items())


# -- the run ------------------------------------------------------------------------------------

def _parse_set(items):
    overrides = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("webapi_"):
            raise SystemExit("--set takes webapi_<var>=<YAML value>, got %r" % item)
        overrides[name] = yaml.safe_load(value)
    return overrides


def build_site(workdir, count, state_files=True):
    """(vendor CA certs, hosts, config path, credentials, recorder, signer, payload of host 0)."""
    ca = vendor_ca()
    vendor_dir = os.path.join(workdir, "vendor-ca")
    os.makedirs(vendor_dir, mode=0o700)
    _write(os.path.join(vendor_dir, "vendor.pem"), ca[1].public_bytes(serialization.Encoding.PEM))
    cred = pki.bootstrap_site_credentials(os.path.join(workdir, "cred"), "bench", ["localhost"], [])["paths"]
    ca_key, ca_cert = pki.create_ca("bench enrollment CA")
    signer = pki.Signer(pki.new_private_key())
    config = enroll.EnrollmentConfig(issuer=pki.Issuer(ca_key, [ca_cert]), signer=signer,
                                     postclient={"seal_policy": {"type": "none"}}, vendor_cas=[ca[1]])
    db = EnrollmentDb(os.path.join(workdir, "db"))
    db.init()
    selection = attest.normalize_selection(attest.DEFAULT_PCR_SELECTION)
    hosts = []
    for number in range(count):
        host = SoftwareHost(ca, selection)
        pem = host.cert.public_bytes(serialization.Encoding.PEM)
        h, name, files, _s = enroll.build_entry(config, pem, "host%03d.bench.example.test" % number, PROFILE)
        enroll.store_entry(db, config, h, name, files)
        hosts.append(host)
    entry = db.get(hosts[0].hash)
    payload = json.dumps({"files": dict((n, base64.b64encode(d).decode()) for n, d in entry.items())}).encode()
    signer_pub = _write(os.path.join(workdir, "signer.pub.pem"), signer.public_key_pem())
    ticket_key_file = os.path.join(workdir, "ticket.key")
    attest.write_ticket_key_file(ticket_key_file)
    for name in ("used-tickets", "metrics"):
        os.makedirs(os.path.join(workdir, name), mode=0o700)
    # roles/attestation_server/templates/attest.json.j2 with its defaults
    config = {"db": db.path, "ticket_key_file": ticket_key_file, "asset_signer_pub": signer_pub, "vendor_ca_dir": vendor_dir,
              "ek_trust": "vendor_ca", "max_ticket_age": attest.DEFAULT_MAX_TICKET_AGE,
              "used_ticket_dir": os.path.join(workdir, "used-tickets"), "max_snapshot_age": 600,
              "metrics_dir": os.path.join(workdir, "metrics"), "keyserver_credential_minutes": 10}
    if not state_files:  # --no-state-files: used tickets in memory only, metrics per process
        del config["used_ticket_dir"], config["metrics_dir"]
    config_path = _write(os.path.join(workdir, "attest.json"), json.dumps(config))
    recorder = attest.Attestor(lambda: db, attest.load_ticket_keys(ticket_key_file), vendor_cas=[ca[1]])
    return [ca[1]], hosts, config_path, cred, recorder, payload


def _failures(result):
    parts = ["%s x%d" % (code, count) for code, count in sorted(result.get("statuses", result.get("failures", {})).items())]
    for key in ("connect", "read", "write", "timeout", "unexpected", "exhausted"):
        if result.get(key):
            parts.append("%s errors %d" % (key, result[key]))
    return ", ".join(parts) or "-"


def run(args, workdir):
    overrides = _parse_set(args.set)
    t0 = time.perf_counter()
    vendor_cas, hosts, config_path, cred, recorder, payload = build_site(workdir, args.hosts, not args.no_state_files)
    setup_s = time.perf_counter() - t0
    stack = Stack(workdir, config_path, cred, overrides)
    results = []
    try:
        health = stack.start()
        t0 = time.perf_counter()
        warm = record(recorder, hosts, max(64, 8 * len(hosts) * stack.processes))
        record_us = (time.perf_counter() - t0) * 1e6 / len(warm)
        run_wrk(stack, workdir, warm, 8, 3)  # each worker: app load, entry + EK-certificate caches of the fleet
        offset = 0
        cert_der = hosts[0].cert.public_bytes(serialization.Encoding.DER)
        floor_body = record(recorder, hosts, 1)[0]  # host 0's (the floor checks no ticket age)
        for connections in args.levels:
            for repeat in range(args.repeat):
                bodies = record(recorder, hosts, args.max_rate * args.duration, offset)
                offset += len(bodies)
                result = run_wrk(stack, workdir, bodies, connections, args.duration)
                result["repeat"] = repeat
                # the floor of this run: measured right after it (the stack idle), the load of the
                # machine's other work being about the same
                result["floor"] = crypto_floor(floor_body, cert_der, payload, rounds=150)
                results.append(result)
        open_loop = None
        if args.rate:
            bodies = record(recorder, hosts, args.rate * args.open_seconds, offset)
            open_loop = run_open_loop(stack, bodies, args.rate, args.pool)
    finally:
        stack.stop()
    floor = crypto_floor(floor_body, hosts[0].cert.public_bytes(serialization.Encoding.DER), payload)
    library = library_floor(floor_body, hosts[0].cert.public_bytes(serialization.Encoding.DER), payload, vendor_cas)
    report(args, stack, health, setup_s, record_us, results, open_loop, floor, library, overrides)


def report(args, stack, health, setup_s, record_us, results, open_loop, floor, library, overrides):
    print("attestation (protocol v1) under load: wrk %s (keep-alive TLS) -> nginx (role webapi site, worker_processes "
          "auto) -> uwsgi (%d processes x %d threads) -> attest_app; loopback, %d cores, all on one machine "
          "(load average %.1f)" % (_wrk_version(), stack.processes, stack.threads, os.cpu_count() or 0, os.getloadavg()[0]))
    print("  fleet: %d software TPMs (RSA-2048 EK + vendor-CA EK certificate, ECC P-256 AK), ek_trust vendor_ca, "
          "used-ticket and metrics directories; site set up in %.1f s; %.0f us to record one body; snapshot %s" % (
              args.hosts, setup_s, record_us, (health.get("head") or "?")[:12]))
    print("  differs from production: limit_req rate %s burst %d (role default 10r/s burst 20 per address), paths in a temp dir, runs as %s%s%s" % (
        BENCH_RATE_LIMIT, BENCH_RATE_LIMIT_BURST, "root" if os.geteuid() == 0 else "the caller",
        "; NO used_ticket_dir / metrics_dir (--no-state-files)" if args.no_state_files else "",
        "; --set " + ", ".join("%s=%s" % kv for kv in sorted(overrides.items())) if overrides else ""))
    print("  crypto floor (one core, cryptography: EK+AK parse, cached EK cert check, MakeCredential, ECDSA verify, "
          "AES-GCM; CPU time): %.0f us = %.0f /s at the end; each run's own in its row" % (floor * 1e6, 1 / floor))
    print("  the library's calls for those steps (CPU): %s = %.0f us" % (
        ", ".join("%s %.0f" % (k, v * 1e6) for k, v in library.items()), sum(library.values()) * 1e6))
    print("  closed loop (wrk, %d s per run; latency per request, initiate and complete mixed):" % args.duration)
    columns = ("conns", "attest/s", "p50 ms", "p99 ms", "max ms", "server us/att", "(nginx)", "floor us", "x floor",
               "wrk us/att", "non-200 / errors")
    print("  %5s %9s %8s %8s %8s %14s %8s %9s %8s %11s  %s" % columns)
    for r in results:
        print("  %5d %9.0f %8.2f %8.2f %8.1f %14.0f %8.0f %9.0f %7.2fx %11.0f  %s" % (
            r["connections"], r["rate"], r["p50_us"] / 1e3, r["p99_us"] / 1e3, r["max_us"] / 1e3,
            r["cpu_per_attestation"] * 1e6, r["cpu_per_attestation"] * r["nginx_share"] * 1e6, r["floor"] * 1e6,
            r["cpu_per_attestation"] / r["floor"],
            r["client_cpu"] * 1e6 / max(1, r["ok_complete"]), _failures(r)))
        for text in r["samples"]:
            print("        e.g. %s" % text)
    best = max(results, key=lambda r: r["rate"]) if results else None
    if open_loop:
        o = open_loop
        done = max(1, o["count"] - o["unfinished"])
        print("  open loop (paced asyncio client, %d keep-alive TLS connections, latency from each attestation's due "
              "time: coordinated-omission correct): offered %d/s for %d attestations, done %.0f/s, p50 %.1f ms, "
              "p99 %.1f ms, max %.1f ms (%d unfinished at the deadline, counted at it); server %.0f us/att; client CPU "
              "%.0f us/att; pacer behind %.0f ms; non-200: %s" % (
                  o["pool"], o["rate"], o["count"], o["done_rate"], o["p50"] * 1e3, o["p99"] * 1e3, o["max"] * 1e3,
                  o["unfinished"], o["server_cpu"]["total"] * 1e6 / done, o["client_cpu"] * 1e6 / done, max(0, o["behind"]) * 1e3,
                  _failures(o)))
        for text in o["samples"]:
            print("        e.g. %s" % text)
    if best:
        ratios = sorted(r["cpu_per_attestation"] / r["floor"] for r in results if r["ok_complete"]) or [float("nan")]
        print("  against issue 20's targets: throughput %.0f/s of 3,000 (%.3fx); server CPU %.1f-%.1fx its run's floor of "
              "<= 3x; p99 at %d/s offered %s of <= 20 ms" % (
                  best["rate"], best["rate"] / 3000, ratios[0], ratios[-1], args.rate,
                  ("%.1f ms" % (open_loop["p99"] * 1e3)) if open_loop else "not measured"))


def _wrk_version():
    try:
        out = subprocess.run([_stack.find("wrk"), "-v"], capture_output=True, check=False, timeout=10).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return "?"
    found = re.search(r"wrk (\S+)", out)
    return found.group(1) if found else "?"


def main():
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per closed-loop run")
    parser.add_argument("--levels", default="1,16,64", help="wrk connection counts")
    parser.add_argument("--repeat", type=int, default=1, help="runs per level")
    parser.add_argument("--max-rate", type=int, default=3000, help="bodies recorded per second of a run")
    parser.add_argument("--rate", type=int, default=1000, help="open-loop attestations/s (0: none)")
    parser.add_argument("--open-seconds", type=int, default=5)
    parser.add_argument("--pool", type=int, default=64, help="open-loop connections")
    parser.add_argument("--hosts", type=int, default=16, help="software TPMs enrolled")
    parser.add_argument("--no-state-files", action="store_true",
                        help="no used_ticket_dir nor metrics_dir (production has both): their file writes measured apart")
    parser.add_argument("--set", action="append", help="webapi_<var>=<YAML> for the role templates")
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",") if x]
    missing = _stack.missing_tools(extra=("wrk",))
    if missing:
        print("SKIP attest_load: missing %s (Debian: apt-get install wrk nginx-light uwsgi-core uwsgi-plugin-python3)"
              % ", ".join(missing))
        return 0
    with tempfile.TemporaryDirectory(prefix="hcp-attest-load-") as workdir:
        os.chmod(workdir, 0o755)
        run(args, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
