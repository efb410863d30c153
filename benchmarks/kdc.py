#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""KDC figures, all in one run on loopback; prints a table, asserts nothing (not a test).

The KDC is the real packaged Heimdal 7.8 KDC (/usr/lib/heimdal-servers/kdc, the binary the
hcp.core.kdc role runs) serving a scratch realm made by tests/unit/krb_helpers.py Realm: its
kdc.conf comes from kerberos/config.py kdc_conf_sections, the same settings the role templates
(AES keys only, require-preauth, PKINIT with ``pkinit_dh_min_bits 1536``: the 2048-bit MODP group),
logging to a file. The lab KDC is not needed. PKINIT identities are RSA-2048 certificates of the
real enrollment generators (pkinit-kdc for the KDC, pkinit-user for the client) under an
RSA-2048 CA, as the role and the workstation flow use them.

* PKINIT AS-REQ/s with the forked Heimdal ``kinit -C FILE:cert,key`` (DH, and RSA key transport
  with ``--pk-use-enckey``), sequential and with N parallel clients. The client is always the
  forked CLI: python-gssapi (MIT) cannot do PKINIT, and Heimdal's libkrb5 has no Python binding;
  the fork floor below shows what the fork and the library start-up cost.
* TGS-REQ/s: the forked ``kgetcred --no-store`` with a TGT in a FILE ccache (nothing is cached,
  so every run asks the KDC), sequential and N parallel; and in process with python-gssapi (the
  MIT library) ``init_sec_context`` for a service principal, each context from a fresh MEMORY
  ccache holding only the TGT (so each one needs a TGS exchange), sequential and N threads.
* Floors of the same run: RSA-2048 sign (PKCS#1 v1.5, SHA-256) and verify, RSA decrypt, and
  DH on the MODP-2048 group (RFC 3526 group 14, the group the KDC offers with
  pkinit_dh_min_bits 1536), each with cryptography (OpenSSL) and with Heimdal's own libhcrypto
  (its ltm bignum code, which the KDC and kinit use: it does not link OpenSSL; called through
  ctypes, with a self-check), each added up to the public-key work one AS-REQ makes client and
  KDC do; and forking ``true`` and ``kinit --version`` (no KDC work).
* kadmin API principal creations/s through the real kadmin web app (krb_helpers KadminService:
  served over TLS by werkzeug in threads, client certificates as nginx passes them, every call
  policy-gated by the real policy app over TLS) with the one HTTPS client (kerberos/client.py
  KadminClient, one keep-alive connection); floors: the library (Kadmin.add: kadmin -l add and
  get, two forks) and ``kadmin -l add`` forked directly.

Clients and the KDC (one listener, one worker process per CPU) share this machine's CPUs; other
work on the machine lowers every rate (the load average is printed). The KDC rows also give the
CPU time the KDC processes used per request (from /proc) and the clients' (forked clients from
getrusage, in-process ones from this process's CPU time), which contention changes much less: a KDC
host's capacity is about its cores divided by the KDC's share. The crypto floors are per CPU second. Needs heimdal-kdc and
heimdal-clients; without them it prints a skip line and exits 0.
Run from the repo root after `make install` (or tools/stage.sh):
  nice -n 19 .venv/bin/python benchmarks/kdc.py [--seconds 2] [--clients 4]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "collections"))

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import dh, padding, rsa  # noqa: E402

from ansible_collections.hcp.core.plugins.module_utils import pki  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment import asset_contract  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment.asset_contract import GeneratorContext  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.kerberos.kadmin import Kadmin, find_kadmin  # noqa: E402
from ansible_collections.hcp.core.tests.unit.krb_helpers import KDC_BINARY, KINIT, REALM, KadminService, Realm  # noqa: E402

KGETCRED = "/usr/bin/kgetcred"
USER = "bench"
SERVICE = "HTTP/svc1.hcp.test@" + REALM
# RFC 3526 group 14 (2048-bit MODP, generator 2): Heimdal's "rfc3526-MODP-group14" moduli entry,
# the group its KDC picks with pkinit_dh_min_bits 1536.
MODP_2048 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)


def rate(func, seconds):
    """(calls/s, calls) of ``func`` run back to back for ``seconds``."""
    count, start = 0, time.perf_counter()
    while True:
        func()
        count += 1
        now = time.perf_counter()
        if now - start >= seconds:
            return count / (now - start), count


def cpu_rate(func, seconds):
    """Calls of ``func`` per second of this process's CPU time, run back to back for ``seconds`` of
    wall time: single-threaded in-process work, so other load on the machine changes it little."""
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        func()
        count += 1
    return count / max(time.process_time() - cpu, 1e-9)


def parallel_rate(make_worker, clients, seconds):
    """(calls/s, calls) of ``clients`` threads, each running its own ``make_worker(index)`` callable
    back to back for ``seconds``; a worker's exception is re-raised here."""
    counts, errors = [0] * clients, []
    stop = threading.Event()

    def loop(index):
        func = make_worker(index)
        try:
            while not stop.is_set():
                func()
                counts[index] += 1
        except Exception as exc:  # pylint: disable=broad-exception-caught
            errors.append(exc)
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts) / elapsed, sum(counts)


def run_ok(argv, env):
    """Run a client; RuntimeError with its stderr when it fails (a benchmark of failures is no figure)."""
    result = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            check=False, timeout=60)
    if result.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (argv[0], result.returncode, result.stderr.decode("utf-8", "replace")[-300:]))


class KdcCpu(object):
    """CPU seconds (user + system) used so far by the KDC process ``proc`` and its worker
    processes, read from /proc: the KDC's own cost per request, whatever else runs."""

    def __init__(self, proc):
        self.pid = proc.pid
        self.tick = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _stat(pid):
        try:
            with open("/proc/%s/stat" % pid, "r", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return int(fields[1]), int(fields[11]) + int(fields[12])  # ppid, utime + stime (man 5 proc)

    def seconds(self):
        ticks = 0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = self._stat(entry)
                if stat is not None and (int(entry) == self.pid or stat[0] == self.pid):
                    ticks += stat[1]
        return ticks / self.tick

    def measure(self, func, *args):
        """(rate, calls) of func(*args) and the note: the KDC's CPU milliseconds per call, and the
        clients' (forked clients reaped meanwhile, or this process for in-process clients)."""
        before, children, own = self.seconds(), _children_cpu(), time.process_time()
        per_s, calls = func(*args)
        kdc = (self.seconds() - before) * 1000 / max(calls, 1)
        forked = (_children_cpu() - children) * 1000 / max(calls, 1)
        client = forked if forked > 0 else (time.process_time() - own) * 1000 / max(calls, 1)
        return per_s, calls, "%d, CPU ms each: KDC %.1f, client %.1f" % (calls, kdc, client), kdc


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- floors -----------------------------------------------------------------------------------

def _as_req_work(sign, verify, decrypt, dh_op):
    """Per second, the public-key work of one PKINIT AS-REQ, from the seconds of one operation each:
    {"as_req_dh", "as_req_rsa"} for client and KDC together, {"kdc_dh", "kdc_rsa"} for the KDC's
    share. Both ways the client signs its AuthPack and verifies the KDC's signature and
    certificate; the KDC verifies the client's signature and certificate and signs its reply. DH:
    each side also makes a key and computes the shared secret. Key transport: the KDC encrypts the
    reply key to the client's RSA key (a public operation, counted as a verify) and the client
    decrypts it."""
    return {"as_req_dh": 1 / (2 * sign + 4 * verify + 2 * dh_op), "as_req_rsa": 1 / (2 * sign + 5 * verify + decrypt),
            "kdc_dh": 1 / (sign + 2 * verify + dh_op), "kdc_rsa": 1 / (sign + 3 * verify)}


def openssl_floor(seconds):
    """{name: ops/s} of the public-key operations of a PKINIT AS-REQ with cryptography (OpenSSL)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key()
    message = os.urandom(512)
    signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    sealed = public.encrypt(os.urandom(32), padding.PKCS1v15())
    group = dh.DHParameterNumbers(MODP_2048, 2).parameters()
    peer = group.generate_private_key().public_key()
    ops = {
        "sign": cpu_rate(lambda: key.sign(message, padding.PKCS1v15(), hashes.SHA256()), seconds),
        "verify": cpu_rate(lambda: public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256()), seconds),
        "decrypt": cpu_rate(lambda: key.decrypt(sealed, padding.PKCS1v15()), seconds),
        "dh": cpu_rate(lambda: group.generate_private_key().exchange(peer), seconds),
    }
    ops.update(_as_req_work(*(1 / ops[k] for k in ("sign", "verify", "decrypt", "dh"))))
    return ops


class _HcDH(ctypes.Structure):  # pylint: disable=too-few-public-methods
    """The leading fields of libhcrypto's struct DH (hcrypto/dh.h, OpenSSL 0.9.8's layout); checked
    below by both sides computing the same secret."""

    _fields_ = [("pad", ctypes.c_int), ("version", ctypes.c_int), ("p", ctypes.c_void_p), ("g", ctypes.c_void_p),
                ("length", ctypes.c_long), ("pub_key", ctypes.c_void_p), ("priv_key", ctypes.c_void_p)]


def heimdal_floor(seconds):
    """{name: ops/s} of the same operations in Heimdal's own libhcrypto (its ltm bignum code: what
    the KDC and kinit use; it does not link OpenSSL), through ctypes: the library has no Python
    binding. Raw PKCS#1 v1.5 private encrypt / public decrypt of a SHA-256 DigestInfo-sized block
    (what a signature and its verification cost), and DH keygen + shared secret on MODP-2048.
    None when the library is missing or a self-check fails."""
    try:
        lib = ctypes.CDLL("libhcrypto.so.5")
    except OSError:
        return None
    vp = ctypes.c_void_p
    lib.hc_d2i_RSAPrivateKey.restype = vp
    lib.hc_d2i_RSAPrivateKey.argtypes = [vp, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]
    for name in ("hc_RSA_private_encrypt", "hc_RSA_public_decrypt", "hc_RSA_public_encrypt", "hc_RSA_private_decrypt"):
        getattr(lib, name).argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, vp, ctypes.c_int]
    lib.hc_RSA_free.argtypes = [vp]
    lib.hc_DH_new.restype = vp
    lib.hc_DH_free.argtypes = [vp]
    lib.hc_DH_generate_key.argtypes = [vp]
    lib.hc_DH_compute_key.argtypes = [ctypes.c_char_p, vp, vp]
    lib.hc_BN_hex2bn.argtypes = [ctypes.POINTER(vp), ctypes.c_char_p]
    lib.hc_BN_num_bits.argtypes = [vp]
    pkcs1 = 1  # RSA_PKCS1_PADDING
    der = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    cursor = ctypes.c_char_p(der)
    key = lib.hc_d2i_RSAPrivateKey(None, ctypes.byref(cursor), len(der))
    if not key:
        return None
    block = os.urandom(51)  # a SHA-256 DigestInfo is 51 bytes
    signed, back = ctypes.create_string_buffer(256), ctypes.create_string_buffer(256)
    sealed = ctypes.create_string_buffer(256)
    group_hex = b"%X" % MODP_2048

    def new_dh():
        handle = lib.hc_DH_new()
        fields = _HcDH.from_address(handle)
        p, g = vp(), vp()
        lib.hc_BN_hex2bn(ctypes.byref(p), group_hex)
        lib.hc_BN_hex2bn(ctypes.byref(g), b"02")
        fields.p, fields.g = p, g
        if lib.hc_DH_generate_key(handle) != 1:
            raise RuntimeError("hc_DH_generate_key failed")
        return handle, fields
    try:
        peer, peer_fields = new_dh()
        ours, our_fields = new_dh()
        secrets = ctypes.create_string_buffer(256), ctypes.create_string_buffer(256)
        if (lib.hc_RSA_private_encrypt(len(block), block, signed, key, pkcs1) != 256
                or lib.hc_RSA_public_decrypt(256, signed.raw, back, key, pkcs1) != len(block) or back.raw[:len(block)] != block
                or lib.hc_RSA_public_encrypt(32, block[:32], sealed, key, pkcs1) != 256
                or lib.hc_BN_num_bits(peer_fields.pub_key) < 2000
                or lib.hc_DH_compute_key(secrets[0], peer_fields.pub_key, ours) != 256
                or lib.hc_DH_compute_key(secrets[1], our_fields.pub_key, peer) != 256 or secrets[0].raw != secrets[1].raw):
            return None
        lib.hc_DH_free(ours)

        def dh_once():
            handle, _fields = new_dh()
            lib.hc_DH_compute_key(secrets[0], peer_fields.pub_key, handle)
            lib.hc_DH_free(handle)
        ops = {
            "sign": cpu_rate(lambda: lib.hc_RSA_private_encrypt(len(block), block, signed, key, pkcs1), seconds),
            "verify": cpu_rate(lambda: lib.hc_RSA_public_decrypt(256, signed.raw, back, key, pkcs1), seconds),
            "decrypt": cpu_rate(lambda: lib.hc_RSA_private_decrypt(256, sealed.raw, back, key, pkcs1), seconds),
            "dh": cpu_rate(dh_once, seconds),
        }
        lib.hc_DH_free(peer)
    finally:
        lib.hc_RSA_free(key)
    ops.update(_as_req_work(*(1 / ops[k] for k in ("sign", "verify", "decrypt", "dh"))))
    return ops


def _heimdal_floor_child(seconds):
    """heimdal_floor() run in a child process (``--hcrypto-floor``): a libhcrypto that does not
    match what the ctypes declarations expect may crash, which must not end the benchmark; and
    libhcrypto stays out of this process, which loads MIT's libraries. Its figures, or why not."""
    try:
        result = subprocess.run([sys.executable, os.path.abspath(__file__), "--hcrypto-floor", "--seconds", str(seconds)],
                                stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=120)
    except subprocess.TimeoutExpired:
        return "the libhcrypto floor timed out"
    if result.returncode != 0:
        return "the libhcrypto floor failed (exit status %d)" % result.returncode
    ops = json.loads(result.stdout)
    return ops if ops else "libhcrypto.so.5 missing or its self-check failed"


def crypto_floors(seconds, figures, table):
    labels = (("sign", "RSA-2048 sign (PKCS#1 v1.5)"), ("verify", "RSA-2048 verify"), ("decrypt", "RSA-2048 decrypt"),
              ("dh", "DH MODP-2048 key + shared secret"), ("as_req_dh", "PKINIT DH public-key work, client + KDC"),
              ("kdc_dh", "PKINIT DH public-key work, KDC's share"), ("as_req_rsa", "PKINIT RSA public-key work, client + KDC"),
              ("kdc_rsa", "PKINIT RSA public-key work, KDC's share"))
    for library, ops in (("OpenSSL", openssl_floor(seconds)), ("Heimdal hcrypto", _heimdal_floor_child(seconds))):
        if isinstance(ops, str):
            table.append(("floor: %s" % library, None, "skip: %s" % ops))
            continue
        for key, label in labels:
            figures["%s_%s" % (library.split()[0].lower(), key)] = ops[key]
            table.append(("floor: %s, %s" % (label, library), ops[key], "per CPU second; %.2f ms CPU each" % (1000 / ops[key])))


# -- the realm --------------------------------------------------------------------------------

def _generate(name, profile, issuer, hostname):
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    ctx = GeneratorContext(hostname, "ab" * 32, b"\x00\x01ek", profile, {"ENROLL_REALM": REALM}, issuer, {}, now)
    return dict((asset.name, asset) for asset in asset_contract.get_generator(name).generate(ctx))


def _write(path, data, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def pkinit_realm(workdir):
    """(Realm with PKINIT on, the client's FILE:cert,key identity) in ``workdir``."""
    key, cert = pki.create_ca("hcp bench CA", kind="rsa-2048")
    issuer = pki.Issuer(key, [cert])
    ca_file = _write(os.path.join(workdir, "ca.pem"), pki.certificate_pem(cert), 0o644)
    kdc = _generate("pkinit-kdc", {}, issuer, "kdc1.hcp.test")
    kdc_cert = _write(os.path.join(workdir, "pkinit-kdc.pem"), kdc["pkinit-kdc.pem"].data, 0o644)
    kdc_key = _write(os.path.join(workdir, "pkinit-kdc.key"), kdc["pkinit-kdc.key"].data)
    user = _generate("pkinit-user", {"certificates": {"pkinit-user": {"users": [USER]}}}, issuer, "ws1.hcp.test")
    user_cert = _write(os.path.join(workdir, "user.pem"), user["user-%s.pem" % USER].data, 0o644)
    user_key = _write(os.path.join(workdir, "user.key"), user["user-%s.key" % USER].data)
    realm = Realm(os.path.join(workdir, "realm"), pkinit={"identity_cert": kdc_cert, "identity_key": kdc_key, "anchors": ca_file},
                  pkinit_anchors=ca_file)
    realm.kadmin.add(USER)
    realm.kadmin.add(SERVICE)
    return realm, "FILE:%s,%s" % (user_cert, user_key)


def client_env(realm, ccache):
    return {"PATH": "/usr/bin:/bin", "KRB5_CONFIG": realm.krb5_conf, "KRB5CCNAME": "FILE:" + ccache}


# -- the measurements -------------------------------------------------------------------------

def pkinit_rates(realm, kdc_cpu, identity, workdir, args, figures, table):
    for key, label, extra in (("dh", "DH", ()), ("rsa", "RSA key transport", ("--pk-use-enckey",))):

        def make(index, key=key, extra=extra):
            env = client_env(realm, os.path.join(workdir, "as-%s-%d" % (key, index)))
            argv = [KINIT, "-C", identity] + list(extra) + ["%s@%s" % (USER, REALM)]
            return lambda: run_ok(argv, env)
        figures["pkinit_%s_seq" % key], _calls, note, cpu = kdc_cpu.measure(rate, make(0), args.seconds)
        figures["pkinit_%s_kdc_cpu_ms" % key] = cpu
        table.append(("PKINIT AS-REQ, %s, forked kinit, sequential" % label, figures["pkinit_%s_seq" % key], note))
        figures["pkinit_%s_par" % key], _calls, note, cpu = kdc_cpu.measure(parallel_rate, make, args.clients, args.seconds)
        table.append(("PKINIT AS-REQ, %s, forked kinit, %d parallel" % (label, args.clients), figures["pkinit_%s_par" % key], note))


def tgs_rates(realm, kdc_cpu, identity, workdir, args, figures, table):
    tgt = os.path.join(workdir, "tgt")
    env = client_env(realm, tgt)
    run_ok([KINIT, "-C", identity, "%s@%s" % (USER, REALM)], env)

    def make_forked(_index):
        argv = [KGETCRED, "--no-store", SERVICE]
        return lambda: run_ok(argv, env)
    figures["tgs_forked_seq"], _calls, note, cpu = kdc_cpu.measure(rate, make_forked(0), args.seconds)
    table.append(("TGS-REQ, forked kgetcred --no-store, sequential", figures["tgs_forked_seq"], note))
    figures["tgs_forked_par"], _calls, note, cpu = kdc_cpu.measure(parallel_rate, make_forked, args.clients, args.seconds)
    table.append(("TGS-REQ, forked kgetcred --no-store, %d parallel" % args.clients, figures["tgs_forked_par"], note))
    try:
        import gssapi  # pylint: disable=import-outside-toplevel
    except ImportError:
        table.append(("TGS-REQ, python-gssapi in process", None, "skip: python-gssapi is not installed"))
        return
    os.environ["KRB5_CONFIG"] = realm.krb5_conf  # the MIT library reads it once per context
    base = gssapi.Credentials(usage="initiate", store={"ccache": "FILE:" + tgt})
    target = gssapi.Name(SERVICE, gssapi.NameType.kerberos_principal)

    def make_gss(index):
        counter = iter(range(10 ** 9))

        def once():
            # a new MEMORY ccache holding only the TGT: the context needs a TGS exchange
            store = {"ccache": "MEMORY:hcp-bench-%d-%d" % (index, next(counter))}
            base.store(store=store, overwrite=True)
            creds = gssapi.Credentials(usage="initiate", store=store)
            gssapi.SecurityContext(name=target, creds=creds, usage="initiate").step()
        return once
    before = _tgs_count(realm)
    figures["tgs_gssapi_seq"], _calls, note, cpu = kdc_cpu.measure(rate, make_gss(0), args.seconds)
    figures["tgs_kdc_cpu_ms"] = cpu
    asked = _tgs_count(realm) - before
    table.append(("TGS-REQ, python-gssapi (MIT) init_sec_context, sequential", figures["tgs_gssapi_seq"],
                  "%s; %d TGS-REQs in the KDC log" % (note, asked)))
    figures["tgs_gssapi_par"], _calls, note, cpu = kdc_cpu.measure(parallel_rate, make_gss, args.clients, args.seconds)
    table.append(("TGS-REQ, python-gssapi (MIT) init_sec_context, %d threads" % args.clients, figures["tgs_gssapi_par"], note))


def _tgs_count(realm):
    """TGS-REQs the KDC logged (one "TGS-REQ <client> from" line each)."""
    with open(realm.kdc_log, "r", encoding="utf-8", errors="replace") as handle:
        return sum(1 for line in handle if " TGS-REQ " in line and " from " in line)


def _new_connections(client):
    """Connections the client's urllib3 pools have opened so far."""
    manager = client.http.session.get_adapter(client.url).poolmanager
    return sum(manager.pools[key].num_connections for key in list(manager.pools.keys()))


def kadmin_rates(workdir, args, figures, table):
    service = KadminService(os.path.join(workdir, "kadmin"))
    try:
        # The helper's kadmin is a recording sh wrapper (for the tests' assertions); the role runs
        # kadmin.heimdal itself, so the wrapper is replaced by the binary (one fork less per call).
        os.unlink(service.realm.binary)
        os.symlink(find_kadmin(), service.realm.binary)
        client = service.client()
        counter = iter(range(10 ** 9))
        client.add("bench-warm")
        before = _new_connections(client)
        figures["kadmin_api_add"], calls = rate(lambda: client.add("bench-api-%d" % next(counter)), args.seconds)
        table.append(("kadmin API add (KadminClient, keep-alive, policy-gated)", figures["kadmin_api_add"],
                      "%d, %d new TLS connections" % (calls, _new_connections(client) - before)))
        kadmin = Kadmin(service.realm.conf, REALM)
        figures["kadmin_library_add"], calls = rate(lambda: kadmin.add("bench-lib-%d" % next(counter)), args.seconds)
        table.append(("floor: Kadmin.add (kadmin -l add + get, 2 forks)", figures["kadmin_library_add"], "%d" % calls))
        env = {"PATH": "/usr/bin:/bin", "KRB5_CONFIG": service.realm.conf, "LC_ALL": "C"}
        argv = [find_kadmin(), "-l", "-c", service.realm.conf, "-r", REALM, "add", "--random-key", "--use-defaults", "--"]
        figures["kadmin_forked_add"], calls = rate(lambda: run_ok(argv + ["bench-cli-%d" % next(counter)], env), args.seconds)
        table.append(("floor: kadmin -l add forked directly", figures["kadmin_forked_add"], "%d" % calls))
        argv = [find_kadmin(), "-l", "-c", service.realm.conf, "-r", REALM, "get", "--", "bench-warm"]
        figures["kadmin_forked_get"], calls = rate(lambda: run_ok(argv, env), args.seconds)
        table.append(("floor: kadmin -l get forked directly (no change)", figures["kadmin_forked_get"], "%d" % calls))
    finally:
        service.close()


def fork_floors(args, figures, table):
    env = {"PATH": "/usr/bin:/bin"}
    figures["fork_true"], calls = rate(lambda: run_ok(["/bin/true"], env), args.seconds)
    table.append(("floor: fork+exec of true", figures["fork_true"], "%d" % calls))
    children = _children_cpu()
    figures["fork_kinit_version"], calls = rate(lambda: run_ok([KINIT, "--version"], env), args.seconds)
    table.append(("floor: fork+exec of kinit --version (no KDC work)", figures["fork_kinit_version"],
                  "%d, CPU ms each: client %.1f" % (calls, (_children_cpu() - children) * 1000 / calls)))
    figures["fork_true_par"], calls = parallel_rate(lambda _i: lambda: run_ok(["/bin/true"], env), args.clients, args.seconds)
    table.append(("floor: fork+exec of true, %d parallel" % args.clients, figures["fork_true_par"], "%d" % calls))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time of each row (default 2)")
    parser.add_argument("--clients", type=int, default=4, help="parallel clients of the parallel rows (default 4)")
    parser.add_argument("--hcrypto-floor", action="store_true", help=argparse.SUPPRESS)  # the child of _heimdal_floor_child
    args = parser.parse_args(argv)
    if args.hcrypto_floor:
        print(json.dumps(heimdal_floor(args.seconds)))
        return 0
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the served apps' request lines
    # the floor measures finite-field DH on purpose: the group the KDC uses
    warnings.filterwarnings("ignore", message="Diffie-Hellman over finite fields")
    missing = [path for path in (KDC_BINARY, KINIT, KGETCRED) if not os.access(path, os.X_OK)]
    if missing:
        print("skip: missing %s (heimdal-kdc, heimdal-clients)" % ", ".join(missing))
        return 0
    load = os.getloadavg()
    print("KDC figures: Heimdal 7.8 KDC on loopback, %d CPUs, load average %.2f before the run, nice %d"
          % (os.cpu_count() or 0, load[0], os.nice(0)))
    figures, table = {}, []
    crypto_floors(min(args.seconds, 1.0), figures, table)
    fork_floors(args, figures, table)
    workdir = tempfile.mkdtemp(prefix="hcp-bench-kdc.")
    try:
        realm, identity = pkinit_realm(workdir)
        with realm.kdc() as proc:
            kdc_cpu = KdcCpu(proc)
            pkinit_rates(realm, kdc_cpu, identity, workdir, args, figures, table)
            tgs_rates(realm, kdc_cpu, identity, workdir, args, figures, table)
        kadmin_rates(workdir, args, figures, table)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(row[0]) for row in table)
    print("%-*s %9s     %s" % (width, "", "rate", "calls in the run / note"))
    for label, value, note in table:
        print("%-*s %9s /s  %s" % (width, label, "%.0f" % value if value is not None else "-", note))
    print(json.dumps(dict((k, round(v, 1)) for k, v in figures.items()), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
