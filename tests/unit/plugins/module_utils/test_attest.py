# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attestation protocol v1 end to end with real swtpm TPMs, real enrolled entries in a
real git DB, the server logic (attest.Attestor) and the client (attest_client.attest)."""
from __future__ import annotations

import base64
import copy
import json
import os
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tpm2_pytss import TSS2_Exception

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope
from ansible_collections.hcp.core.plugins.module_utils.tpm import quote as quote_mod
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.errors import PolicyNotSatisfiedError
from ansible_collections.hcp.core.plugins.module_utils.attestation import protocol

PROFILE = {"assets": ["hostname", "rootfs-key"]}


def _vendor_cas(swtpm):
    cas = []
    for path in swtpm.vendor_ca_files:
        with open(path, "rb") as handle:
            cas.extend(pki.load_certificates(handle.read()))
    return cas


def _config(swtpm, policy=None):
    ca_key, ca_cert = pki.create_ca("HCP test attest CA")
    return enroll.EnrollmentConfig(
        issuer=pki.Issuer(ca_key, [ca_cert]), signer=pki.Signer(pki.new_private_key("ec-p256")),
        postclient={"seal_policy": policy or {"type": "none"}}, vendor_cas=_vendor_cas(swtpm),
    )


def _enroll(db, config, tpm_fixture, hostname, profile=None):
    with tpm_fixture.open() as tpm:
        # PEM: ekpub.load_ek_public() strips DER input and breaks certificates ending in whitespace bytes
        cert = x509.load_der_x509_certificate(tpm.ek_certificate_der()).public_bytes(serialization.Encoding.PEM)
    h, host, files, _summary = enroll.build_entry(config, cert, hostname, profile or PROFILE)
    enroll.store_entry(db, config, h, host, files)
    return h, files


@pytest.fixture(scope="module")
def site(swtpm, tmp_path_factory):
    db = EnrollmentDb(str(tmp_path_factory.mktemp("attest") / "db"))
    db.init()
    config = _config(swtpm)
    h, files = _enroll(db, config, swtpm, "node1.example.test")
    return {"db": db, "config": config, "hash": h, "files": files, "key": os.urandom(32),
            "signer": config.signer.public_key_pem(), "cas": _vendor_cas(swtpm)}


def _attestor(site, **kwargs):
    kwargs.setdefault("signer_pub", site["signer"])
    kwargs.setdefault("vendor_cas", site["cas"])
    return attest.Attestor(lambda: site["db"], kwargs.pop("key", site["key"]), **kwargs)


def _evidence(tpm, started, nonce=None, pcrs=None):
    """A complete request as the client builds it (the AK is flushed afterwards)."""
    nonce = nonce or base64.b64decode(started["nonce"])
    bundle = quote_mod.quote(tpm, nonce, pcrs or started["pcrs"]["sha256"])
    return {"ticket": started["ticket"], "ekpub": base64.b64encode(tpm.ek_public().marshal()).decode(),
            "ek_cert": base64.b64encode(tpm.ek_certificate_der()).decode(), "quote": bundle}


def test_enrolled_host_attests_and_gets_its_assets(swtpm, site):
    server = _attestor(site)
    with swtpm.open() as tpm:
        result = attest_client.attest(tpm, attest_client.attestor_transport(server), site["signer"])
        expected_key = envelope.unseal(tpm, site["files"]["rootfs.key.sealed"])
    assert result["hostname"] == "node1.example.test" and result["ekpubhash"] == site["hash"]
    assert result["assets"]["rootfs.key"] == expected_key and len(expected_key) == 64
    assert result["assets"]["etc-hostname"] == b"node1.example.test\n"
    assert result["snapshot"] == site["db"].head() and result["pcr_extended"] is False
    view = attest_client.summary(result)
    assert {"name": "rootfs.key", "sensitive": True, "size": 64} in view["assets"]
    assert expected_key.hex() not in json.dumps(view)


def test_unenrolled_tpm_gets_404(other_swtpm, site):
    server = _attestor(site, ek_trust="tofu", vendor_cas=None)
    with other_swtpm.open() as tpm:
        with pytest.raises(attest_client.AttestServerError, match="not enrolled") as info:
            attest_client.attest(tpm, attest_client.attestor_transport(server), site["signer"])
    assert info.value.status == 404


def test_replayed_ticket_and_complete_are_rejected(swtpm, site, tmp_path):
    used = str(tmp_path / "used")
    server = _attestor(site, used_dir=used)
    replica = _attestor(site, used_dir=used)  # another replica sharing the key and used-ticket directory
    with swtpm.open() as tpm:
        started = server.initiate(site["hash"])
        request = _evidence(tpm, started)
        assert server.complete(copy.deepcopy(request))["ekpubhash"] == site["hash"]
        with pytest.raises(attest.ReplayError) as info:
            server.complete(copy.deepcopy(request))  # replayed complete
        assert info.value.status == 409
        with pytest.raises(attest.ReplayError):
            replica.complete(copy.deepcopy(request))  # replayed at another replica
        fresh_quote = _evidence(tpm, started)  # same ticket, new quote over its nonce
        with pytest.raises(attest.ReplayError):
            server.complete(fresh_quote)
    # without a shared directory a second replica only has its memory: documented (sticky routing)
    assert attest.USED_TICKETS_MARKER in os.listdir(used) and len(os.listdir(used)) == 2
    assert server.used.purge_directory(now=time.time() + 10 ** 6) == 1
    assert os.listdir(used) == [attest.USED_TICKETS_MARKER]  # the format marker is never purged


def test_used_ticket_store_format_is_checked(tmp_path):
    """The shared used-ticket directory names its format (FORMAT: hcp.core.used-tickets 1); a
    directory of another format or version is refused at start, never half understood."""
    used = tmp_path / "used"
    attest.UsedTickets(60, str(used))
    assert (used / "FORMAT").read_text() == "hcp.core.used-tickets 1\n"
    attest.UsedTickets(60, str(used))  # a second replica on the same store
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / ("ab" * 16)).write_bytes(b"")  # a store written before the marker: adopted
    attest.UsedTickets(60, str(legacy))
    assert (legacy / "FORMAT").read_text() == "hcp.core.used-tickets 1\n"
    (used / "FORMAT").write_text("hcp.core.used-tickets 2\n")
    with pytest.raises(attest.AttestError, match="another format"):
        attest.UsedTickets(60, str(used))


def test_stale_forged_and_foreign_tickets(swtpm, site):
    server = _attestor(site, max_ticket_age=60)
    with swtpm.open() as tpm:
        stale = server.initiate(site["hash"], now=time.time() - 61)
        with pytest.raises(attest.TicketExpiredError) as info:
            server.complete(_evidence(tpm, stale))
        assert info.value.status == 403
        started = server.initiate(site["hash"])
        request = _evidence(tpm, started)
    parts = request["ticket"].split(".")
    body = bytearray(base64.urlsafe_b64decode(parts[2]))
    body[20] ^= 1
    forged = dict(request, ticket="%s.%s.%s" % (parts[0], parts[1], base64.urlsafe_b64encode(bytes(body)).decode()))
    with pytest.raises(attest.TicketInvalidError, match="forged") as info:
        server.complete(forged)
    assert info.value.status == 401
    other = _attestor(site, key=os.urandom(32))
    with pytest.raises(attest.TicketInvalidError, match="unknown key"):
        other.complete(request)
    # key rotation: a server holding [new, old] accepts tickets of the old key
    rotated = _attestor(site, key=[os.urandom(32), site["key"]])
    assert rotated.complete(request)["ekpubhash"] == site["hash"]
    for bad in ("", "x" * 2000, "hcpt2.a.b", None):
        with pytest.raises(attest.TicketInvalidError):
            server.complete(dict(request, ticket=bad))


def test_wrong_nonce_tampered_quote_and_short_selection(swtpm, site):
    server = _attestor(site)
    with swtpm.open() as tpm:
        started = server.initiate(site["hash"])
        with pytest.raises(attest.QuoteRejectedError, match="nonce does not match"):
            server.complete(_evidence(tpm, started, nonce=os.urandom(16)))
        started = server.initiate(site["hash"])
        request = _evidence(tpm, started)
        request["quote"]["pcrs"]["sha256"]["0"] = "ab" * 32
        with pytest.raises(attest.QuoteRejectedError, match="PCR digest"):
            server.complete(request)
        started = server.initiate(site["hash"])
        with pytest.raises(attest.QuoteRejectedError, match="does not cover the requested"):
            server.complete(_evidence(tpm, started, pcrs=[0, 7]))
        started = server.initiate(site["hash"])
        request = _evidence(tpm, started)
    with pytest.raises(attest.AttestRequestError):
        server.complete(dict(request, ekpub=None))
    with pytest.raises(attest.AttestRequestError):
        server.complete("not a dict")
    with pytest.raises(attest.AttestRequestError):
        server.initiate("ABC")


def test_ek_checks(swtpm, other_swtpm, site):
    strict = _attestor(site)  # ek_trust vendor_ca is the default
    untrusting = _attestor(site, vendor_cas=[pki.create_ca("Not the vendor")[1]])
    with swtpm.open() as tpm, other_swtpm.open() as other:
        started = strict.initiate(site["hash"])
        request = _evidence(tpm, started)
        del request["ek_cert"]
        with pytest.raises(attest.EkRejectedError, match="EK certificate is required") as info:
            strict.complete(request)
        assert info.value.status == 403
        started = untrusting.initiate(site["hash"])
        with pytest.raises(attest.EkRejectedError, match="not trusted"):
            untrusting.complete(_evidence(tpm, started))
        started = strict.initiate(site["hash"])
        request = _evidence(tpm, started)
        request["ek_cert"] = base64.b64encode(other.ek_certificate_der()).decode()
        with pytest.raises(attest.EkRejectedError, match="does not certify this EK"):
            strict.complete(request)
        started = strict.initiate(site["hash"])
        request = _evidence(tpm, started)
        request["ekpub"] = base64.b64encode(other.ek_public().marshal()).decode()
        with pytest.raises(attest.EkRejectedError, match="does not match the ticket"):
            strict.complete(request)
        started = strict.initiate(site["hash"])
        assert strict.complete(_evidence(tpm, started))["ekpubhash"] == site["hash"]
    with pytest.raises(attest.AttestError, match="needs at least one TPM vendor CA"):
        _attestor(site, vendor_cas=[])


def test_allow_list_attestation(swtpm, site):
    """ek_trust allow_list: a listed EK attests without sending a certificate; delisted, it is refused."""
    listed = _attestor(site, ek_trust="allow_list", ek_allow_list=[site["hash"]], vendor_cas=None)
    delisted = _attestor(site, ek_trust="allow_list", ek_allow_list=["0" * 64], vendor_cas=None)
    with swtpm.open() as tpm:
        request = _evidence(tpm, listed.initiate(site["hash"]))
        del request["ek_cert"]
        assert listed.complete(request)["ekpubhash"] == site["hash"]
        request = _evidence(tpm, delisted.initiate(site["hash"]))
        with pytest.raises(attest.EkRejectedError, match="not on the EK allow list") as info:
            delisted.complete(request)
    assert info.value.status == 403


def test_response_is_useless_without_the_same_tpm_and_ak(swtpm, other_swtpm, site):
    server = _attestor(site)
    with swtpm.open() as tpm:
        started = server.initiate(site["hash"])
        response = server.complete(_evidence(tpm, started))  # its AK is flushed now
        blob = base64.b64decode(response["credential_blob"])
        secret = base64.b64decode(response["encrypted_secret"])
        assert b"rootfs" not in json.dumps(response).encode() and "manifest" not in json.dumps(response)
        with quote_mod.ephemeral_ak(tpm) as (ak, _pub):  # same EK, another AK: name differs
            with pytest.raises(TSS2_Exception, match="integrity|value|size"):
                envelope.activate_credential(tpm, ak, blob, secret)
    with other_swtpm.open() as other:
        with quote_mod.ephemeral_ak(other) as (ak, _pub):
            with pytest.raises(TSS2_Exception):
                envelope.activate_credential(other, ak, blob, secret)
    with pytest.raises(attest.AttestError, match="failed authentication"):
        protocol.decrypt_response(response, os.urandom(32))


def test_wrong_asset_signer(swtpm, site):
    wrong = pki.Signer(pki.new_private_key("ec-p256")).public_key_pem()
    with swtpm.open() as tpm:
        client_side = _attestor(site, signer_pub=None)
        with pytest.raises(attest_client.AttestClientError, match="trusted asset signer"):
            attest_client.attest(tpm, attest_client.attestor_transport(client_side), wrong)
        server_side = _attestor(site, signer_pub=wrong)
        with pytest.raises(attest_client.AttestServerError) as info:
            attest_client.attest(tpm, attest_client.attestor_transport(server_side), site["signer"])
    assert info.value.status == 503


def test_golden_pcrs_and_one_time_policy(new_swtpm, tmp_path):
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    config = _config(new_swtpm, policy={"type": "one_time"})
    with new_swtpm.open() as tpm:
        pcr16 = tpm.read_pcrs("sha256", [16])[16]
    profile = dict(PROFILE, attest={"pcrs": {"sha256": {"16": pcr16.hex()}}})
    h, _files = _enroll(db, config, new_swtpm, "golden.example.test", profile)
    site = {"db": db, "key": os.urandom(32), "signer": config.signer.public_key_pem(), "cas": _vendor_cas(new_swtpm)}
    assert attest.golden_pcrs(db.get(h)) == {"sha256": {"16": pcr16.hex()}}
    server = _attestor(site)
    transport = attest_client.attestor_transport(server)
    with new_swtpm.open() as tpm:
        result = attest_client.attest(tpm, transport, site["signer"])
        assert len(result["assets"]["rootfs.key"]) == 64 and result["pcr_extended"] is True
        # one-time: PCR 11 extended, the second unseal this boot is refused by the TPM policy
        with pytest.raises(PolicyNotSatisfiedError):
            attest_client.attest(tpm, transport, site["signer"])
        assert attest_client.attest(tpm, transport, site["signer"], unseal=False)["assets"]["etc-hostname"]
        tpm.extend_pcr(16, b"something changed")
        with pytest.raises(attest_client.AttestServerError, match="PCR policy not satisfied") as info:
            attest_client.attest(tpm, transport, site["signer"], unseal=False)
    assert info.value.status == 403
    narrow = _attestor(site, pcr_selection={"sha256": [0, 7]})
    with new_swtpm.open() as tpm:
        with pytest.raises(attest_client.AttestServerError, match="not covered by the quote"):
            attest_client.attest(tpm, attest_client.attestor_transport(narrow), site["signer"], unseal=False)


def test_used_ticket_purge_is_periodic_and_keeps_the_window(tmp_path):
    """Files are purged by time (at most every purge_interval per process), never within the
    window: a ticket used at another replica stays refused until it expires."""
    directory = str(tmp_path / "used")
    used = attest.UsedTickets(10, directory)
    other = attest.UsedTickets(10, directory)  # another worker or replica
    start = time.time()
    assert used.purge_interval == attest.MIN_PURGE_INTERVAL and used._next_purge > start  # pylint: disable=protected-access
    stale = os.path.join(directory, "0" * 32)
    open(stale, "wb").close()  # pylint: disable=consider-using-with
    os.utime(stale, (start - 3600, start - 3600))
    for i in range(2000):  # the old cadence purged every 1024 tickets
        used.consume("%032x" % (i + 1), start, now=start)
    assert os.path.exists(stale)  # not before the purge time
    with pytest.raises(attest.ReplayError, match="seen by a replica"):
        other.consume("%032x" % 5, start, now=start + 1)
    # mixed versions: a replica of an earlier version made an empty file, this one a directory;
    # each one's create fails on the other's entry
    open(os.path.join(directory, "e" * 32), "wb").close()  # pylint: disable=consider-using-with
    with pytest.raises(attest.ReplayError, match="seen by a replica"):
        used.consume("e" * 32, start, now=start + 1)
    with pytest.raises(FileExistsError):
        os.open(os.path.join(directory, "%032x" % 7), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    used._next_purge = start  # pylint: disable=protected-access  # the purge time has come
    used.consume("f" * 32, start, now=start + 1)  # the expired file goes, the 2001 in the window stay
    assert not os.path.exists(stale) and len(os.listdir(directory)) == 1 + 2002
    assert used._next_purge == start + 1 + used.purge_interval  # pylint: disable=protected-access
    with pytest.raises(attest.ReplayError, match="seen by a replica"):
        other.consume("f" * 32, start, now=start + 2)


def test_ticket_key_file_and_used_ticket_bounds(tmp_path):
    path = str(tmp_path / "ticket.key")
    kid = attest.write_ticket_key_file(path)
    keys = attest.load_ticket_keys(path)
    assert attest.key_id(keys[0]) == kid and oct(os.stat(path).st_mode & 0o777) == "0o600"
    (tmp_path / "bad.key").write_text("zz\n")
    with pytest.raises(attest.AttestError, match="line 1"):
        attest.load_ticket_keys(str(tmp_path / "bad.key"))
    used = attest.UsedTickets(10, max_entries=2)
    used.consume("a", 100, now=100)
    used.consume("b", 100, now=100)
    with pytest.raises(attest.AttestUnavailableError):
        used.consume("c", 100, now=101)
    used.consume("c", 120, now=120)  # a and b expired
    assert len(used) == 1
    with pytest.raises(attest.AttestError):
        attest.normalize_selection({"sha1": [0], "sha256": [1]})


def test_entry_cache_follows_the_snapshot_head(swtpm, tmp_path):
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    config = _config(swtpm)
    h, _files = _enroll(db, config, swtpm, "cache.example.test")
    site = {"db": db, "key": os.urandom(32), "signer": config.signer.public_key_pem(), "cas": _vendor_cas(swtpm)}
    transport = attest_client.attestor_transport(_attestor(site))
    with swtpm.open() as tpm:
        first = attest_client.attest(tpm, transport, site["signer"])
        ek_pem = x509.load_der_x509_certificate(tpm.ek_certificate_der()).public_bytes(serialization.Encoding.PEM)
        _h, host, files, _s = enroll.build_entry(config, ek_pem, "cache.example.test", PROFILE, operation="reenroll")
        enroll.store_entry(db, config, h, host, files, replace=True)  # re-enrollment: new head, new key
        second = attest_client.attest(tpm, transport, site["signer"])
    assert first["assets"]["rootfs.key"] != second["assets"]["rootfs.key"]
    assert second["snapshot"] == db.head() != first["snapshot"]
    db._git("pack-refs", "--all")
    assert not os.path.exists(os.path.join(db.path, "refs", "heads", "main"))
    assert db.head_from_refs() == db.head()
    assert EnrollmentDb(str(tmp_path)).head_from_refs() is None


@pytest.mark.parametrize("pcrs", [
    {"sha256": {"07": "00" * 32}}, {"sha256": {"7\n": "00" * 32}}, {"sha256": {"+7": "00" * 32}},
    {"sha256": {"24": "00" * 32}}, {"sha256": {"7": "00" * 32 + "\n"}}, {"sha256": {"7": "00" * 31}},
    {"sha256": {"7": " " + "00" * 32}}, {"md5": {"7": "00" * 16}}, {"sha256": ["7"]}, ["sha256"],
])
def test_golden_pcrs_are_read_with_the_one_strict_validator(pcrs):
    """The server read a profile's golden values with int()/bytes.fromhex, which accept a
    trailing newline, signs, leading zeros and spaces; now the validator of enrollment and
    envelopes (tpm/policy.parse_pcr_values) decides, whole-string."""
    files = {"clientprofile": json.dumps({"attest": {"pcrs": pcrs}}).encode()}
    with pytest.raises(protocol.PcrPolicyError):
        attest.golden_pcrs(files)


def test_golden_pcrs_normalised():
    files = {"clientprofile": json.dumps({"attest": {"pcrs": {"sha256": {"7": "AB" * 32, "0": "00" * 32}}}}).encode()}
    assert attest.golden_pcrs(files) == {"sha256": {"0": "00" * 32, "7": "ab" * 32}}
    assert attest.golden_pcrs({"clientprofile": b'{"attest": {"pcrs": {}}}'}) == {}
    assert attest.golden_pcrs({}) == {}


def test_cached_ak_still_has_every_quote_checked(swtpm, site):
    """The parsed AK is cached by its exact bytes (quote.AkCache) once an attestation completed;
    a quote by that cached AK still has its signature, nonce and PCR digest checked (the attack:
    replay a cached AK's old quote, or tamper with its TPMS_ATTEST), and a new AK is parsed and
    accepted at once."""
    server = _attestor(site)
    with swtpm.open() as tpm:
        ekpub = base64.b64encode(tpm.ek_public().marshal()).decode()
        cert = base64.b64encode(tpm.ek_certificate_der()).decode()
        with quote_mod.ephemeral_ak(tpm) as (ak, ak_public):
            def request(started, nonce=None):
                nonce = nonce or base64.b64decode(started["nonce"])
                bundle = quote_mod.quote_with_ak(tpm, ak, ak_public, nonce, started["pcrs"]["sha256"])
                return {"ticket": started["ticket"], "ekpub": ekpub, "ek_cert": cert, "quote": bundle}
            first = request(server.initiate(site["hash"]))
            assert server.complete(copy.deepcopy(first))["ekpubhash"] == site["hash"]
            assert len(server.aks) == 1 and server.aks.get(base64.b64decode(first["quote"]["ak_public"]))
            stale = request(server.initiate(site["hash"]))
            stale["quote"] = first["quote"]  # the cached AK's quote over an old nonce
            with pytest.raises(attest.QuoteRejectedError, match="nonce does not match"):
                server.complete(stale)
            tampered = request(server.initiate(site["hash"]))
            raw = bytearray(base64.b64decode(tampered["quote"]["attest"]))
            raw[-1] ^= 1
            tampered["quote"]["attest"] = base64.b64encode(bytes(raw)).decode()
            with pytest.raises(attest.QuoteRejectedError, match="signature does not verify"):
                server.complete(tampered)
            forged = request(server.initiate(site["hash"]))
            forged["quote"]["pcrs"]["sha256"]["0"] = "11" * 32
            with pytest.raises(attest.QuoteRejectedError, match="quoted PCR digest"):
                server.complete(forged)
            assert server.complete(request(server.initiate(site["hash"])))["ekpubhash"] == site["hash"]
        # a new AK (next boot, or a client without the AK cache): parsed afresh and accepted
        assert server.complete(_evidence(tpm, server.initiate(site["hash"])))["ekpubhash"] == site["hash"]
    assert len(server.aks) == 2


def test_golden_values_cache_follows_the_snapshot(new_swtpm, tmp_path):
    """Golden PCR values are parsed once per (snapshot, head, entry): a re-enrollment that
    changes them applies to the very next attestation (no stale golden values)."""
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    config = _config(new_swtpm)
    with new_swtpm.open() as tpm:
        pcr16 = tpm.read_pcrs("sha256", [16])[16]
        ek_pem = x509.load_der_x509_certificate(tpm.ek_certificate_der()).public_bytes(serialization.Encoding.PEM)
    h, _files = _enroll(db, config, new_swtpm, "golden2.example.test",
                        dict(PROFILE, attest={"pcrs": {"sha256": {"16": pcr16.hex()}}}))
    site = {"db": db, "key": os.urandom(32), "signer": config.signer.public_key_pem(), "cas": _vendor_cas(new_swtpm)}
    transport = attest_client.attestor_transport(_attestor(site))
    with new_swtpm.open() as tpm:
        assert attest_client.attest(tpm, transport, site["signer"], unseal=False)["ekpubhash"] == h
        profile = dict(PROFILE, attest={"pcrs": {"sha256": {"16": "ab" * 32}}})
        _h, host, files, _s = enroll.build_entry(config, ek_pem, "golden2.example.test", profile, operation="reenroll")
        enroll.store_entry(db, config, h, host, files, replace=True)
        with pytest.raises(attest_client.AttestServerError, match="PCR policy not satisfied"):
            attest_client.attest(tpm, transport, site["signer"], unseal=False)


def test_ek_trust_verdict_cache_is_bounded_in_time(swtpm, site):
    """A positive EK-certificate verdict is remembered per (EK, certificate bytes), only after a
    completed attestation, and for at most EK_CERT_CACHE_TTL: past it the chain is checked again
    (here: the vendor CA list it was checked against is gone, so the EK is refused)."""
    server = _attestor(site)
    with swtpm.open() as tpm:
        now = time.time()
        refused = _evidence(tpm, server.initiate(site["hash"], now=now))
        refused["ek_cert"] = base64.b64encode(b"\x30" + tpm.ek_certificate_der()[1:-1]).decode()
        with pytest.raises(attest.EkRejectedError):
            server.complete(refused, now=now)
        assert not server._ek_trusted  # pylint: disable=protected-access  # refusals are never remembered
        assert server.complete(_evidence(tpm, server.initiate(site["hash"], now=now)), now=now)
        assert len(server._ek_trusted) == 1  # pylint: disable=protected-access
        # the trust configuration is fixed for an Attestor's life; change it under the cache to
        # observe when the remembered verdict stops being used
        server.ek_trust._anchors, server.ek_trust._intermediates = [], []  # pylint: disable=protected-access
        server.ek_trust._cache.clear()  # pylint: disable=protected-access
        soon = now + 10
        assert server.complete(_evidence(tpm, server.initiate(site["hash"], now=soon)), now=soon)
        later = now + attest.EK_CERT_CACHE_TTL + 1
        with pytest.raises(attest.EkRejectedError, match="not trusted"):
            server.complete(_evidence(tpm, server.initiate(site["hash"], now=later)), now=later)


def test_ak_of_this_boot_is_cached_and_invalidated(swtpm, site, tmp_path, monkeypatch):
    """The client keeps its AK for the boot (attest_client.AkCache) and makes a new one when the
    boot id changes, when the TPM was restarted (its quotes show other reset/restart counters) or
    when the TPM refuses the cached blob; the server sees which AK signed (its AK cache is keyed
    by the AK's bytes)."""
    boot = tmp_path / "boot_id"
    boot.write_text("11111111-2222-3333-4444-555555555555\n")
    monkeypatch.setattr(attest_client, "BOOT_ID_PATH", str(boot))
    monkeypatch.setattr(attest_client, "_AK_MEMORY", {})
    state = tmp_path / "state"
    server = _attestor(site)
    transport = attest_client.attestor_transport(server)

    def attest_once():
        with swtpm.open() as tpm:
            result = attest_client.attest(tpm, transport, site["signer"], unseal=False, state_dir=str(state))
        assert result["ekpubhash"] == site["hash"]

    attest_once()
    attest_once()
    assert len(server.aks) == 1  # the same AK twice
    cached = json.loads((state / "ak.json").read_text())
    assert cached["format"] == "hcp.core.attest-ak" and oct((state / "ak.json").stat().st_mode & 0o777) == "0o600"
    attest_client._AK_MEMORY.clear()  # pylint: disable=protected-access  # a new process: the file serves
    attest_once()
    assert len(server.aks) == 1
    boot.write_text("99999999-2222-3333-4444-555555555555\n")  # reboot
    attest_once()
    assert len(server.aks) == 2
    swtpm.restart()  # a TPM restart without a reboot: the cached AK serves once, its quote shows it
    attest_once()
    assert len(server.aks) == 2
    attest_once()
    assert len(server.aks) == 3
    attest_once()
    assert len(server.aks) == 3
    # a damaged (or planted) blob: the TPM refuses it, the client creates an AK and goes on
    cached = json.loads((state / "ak.json").read_text())
    private = bytearray(base64.b64decode(cached["private"]))
    private[-1] ^= 1
    cached["private"] = base64.b64encode(bytes(private)).decode()
    (state / "ak.json").write_text(json.dumps(cached))
    attest_client._AK_MEMORY.clear()  # pylint: disable=protected-access
    attest_once()
    assert len(server.aks) == 4
    # without a boot id, no caching at all
    monkeypatch.setattr(attest_client, "BOOT_ID_PATH", str(tmp_path / "absent"))
    attest_once()
    attest_once()
    assert len(server.aks) == 6
