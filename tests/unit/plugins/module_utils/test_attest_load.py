# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""/v1/complete under cheap unauthenticated load: software EKs and software-signed quotes.

Anyone can ask for a ticket for any ekpubhash, so a fake EK (a software key) with a quote
signed by a software "AK" that claims TPM attributes passes every check up to the snapshot
read (only MakeCredential would stop it, after the read). These tests run that attack against
a real enrollment DB (git) whose reads are counted by a subclass, and the real TPM of an
enrolled host next to it."""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.tpm import quote as quote_mod
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import ekpubhash
from ansible_collections.hcp.core.plugins.module_utils.tpm.policy import TPM_ALG_IDS
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import load_ek_public

from ansible_collections.hcp.core.tests.unit.plugins.module_utils.test_attest import _config, _enroll, _evidence, _vendor_cas


class CountingDb(EnrollmentDb):
    """The real git-backed enrollment DB, counting the entry reads (git ls-tree + cat-file)."""

    reads = 0

    def get(self, ekpubhash, rev=None):
        CountingDb.reads += 1
        return super().get(ekpubhash, rev=rev)


def _tpm2b(data):
    return struct.pack(">H", len(data)) + data


def software_quote(nonce, selection):
    """A quote bundle of the hcp.core format over ``nonce`` signed by a software key whose
    TPM2B_PUBLIC claims the AK attributes (fixedTPM, restricted, ...): the attacker's quote."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = quote_mod.ak_template()
    numbers = key.public_key().public_numbers()
    public.publicArea.unique.ecc.x = numbers.x.to_bytes(32, "big")
    public.publicArea.unique.ecc.y = numbers.y.to_bytes(32, "big")
    pcrs = {}
    selections = b""
    concat = b""
    for bank, indices in sorted(selection.items()):
        bitmap = bytearray(3)
        for idx in indices:
            bitmap[idx // 8] |= 1 << (idx % 8)
            pcrs.setdefault(bank, {})[str(idx)] = os.urandom(32).hex()
        selections += struct.pack(">HB", TPM_ALG_IDS[bank], 3) + bytes(bitmap)
        concat += b"".join(bytes.fromhex(pcrs[bank][str(i)]) for i in sorted(indices))
    attest_raw = (struct.pack(">IH", quote_mod.TPM_GENERATED_VALUE, quote_mod.TPM_ST_ATTEST_QUOTE) + _tpm2b(b"")
                  + _tpm2b(nonce) + bytes(8 + 4 + 4 + 1 + 8) + struct.pack(">I", len(selection)) + selections
                  + _tpm2b(hashlib.sha256(concat).digest()))
    r, s = decode_dss_signature(key.sign(attest_raw, ec.ECDSA(hashes.SHA256())))
    signature = struct.pack(">HH", quote_mod.TPM_ALG_ECDSA, quote_mod.TPM_ALG_SHA256) + _tpm2b(r.to_bytes(32, "big")) \
        + _tpm2b(s.to_bytes(32, "big"))
    return {"format": quote_mod.QUOTE_FORMAT, "version": quote_mod.QUOTE_VERSION,
            "ak_public": base64.b64encode(public.marshal()).decode(), "attest": base64.b64encode(attest_raw).decode(),
            "signature": base64.b64encode(signature).decode(), "pcrs": pcrs}


def fake_completion(server):
    """(request, ekpubhash) of a complete request for a fresh software EK, with a ticket the
    server handed out for that EK and a software-signed quote over the ticket's nonce."""
    ek_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    h = ekpubhash(load_ek_public(ek_pem))
    started = server.initiate(h)
    bundle = software_quote(base64.b64decode(started["nonce"]), started["pcrs"])
    return {"ticket": started["ticket"], "ekpub": ek_pem, "quote": bundle}, h


@pytest.fixture
def counted_site(swtpm, tmp_path):
    db = CountingDb(str(tmp_path / "db"))
    db.init()
    config = _config(swtpm)
    h, _files = _enroll(db, config, swtpm, "real.example.test")
    CountingDb.reads = 0
    return {"db": db, "hash": h, "key": os.urandom(32), "signer": config.signer.public_key_pem(),
            "cas": _vendor_cas(swtpm)}


def _server(site, **kwargs):
    # trust on first use: these fake EKs carry no certificate; under the default (vendor_ca) they
    # would be refused before the git read this load test counts
    kwargs.setdefault("ek_trust", "tofu")
    return attest.Attestor(lambda: site["db"], site["key"], signer_pub=site["signer"], vendor_cas=site["cas"], **kwargs)


def test_software_ek_and_quote_reach_the_read_and_are_not_enrolled(counted_site):
    """The attack is real: without a TPM, a request gets through parsing and the ECDSA verify
    to the snapshot read (and is refused there)."""
    server = _server(counted_site)
    request, _h = fake_completion(server)
    with pytest.raises(attest.NotEnrolledError):
        server.complete(request)
    assert CountingDb.reads == 1


def test_flood_of_unknown_eks_does_not_evict_an_enrolled_host(swtpm, counted_site):
    """A flood of completions for unknown software EKs (more than the entry cache holds) leaves
    the enrolled host's cached entry (and its parsed EK) in place: its next attestation costs
    no git read. The misses are remembered in their own bounded cache."""
    server = _server(counted_site, entry_cache_size=4)
    server.entries.negative_size = 8
    transport = attest_client.attestor_transport(server)
    with swtpm.open() as tpm:
        attest_client.attest(tpm, transport, counted_site["signer"])
    assert CountingDb.reads == 1
    flood = [fake_completion(server) for _number in range(12)]
    for request, _h in flood:
        with pytest.raises(attest.NotEnrolledError):
            server.complete(request)
    assert CountingDb.reads == 13  # each unknown EK read once
    with swtpm.open() as tpm:
        result = attest_client.attest(tpm, transport, counted_site["signer"])
    assert result["ekpubhash"] == counted_site["hash"]
    assert CountingDb.reads == 13  # the enrolled entry was still cached
    assert server.entries.misses == 8 and len(server.entries) == 1
    # a remembered miss is answered without a read; an evicted one is read again
    for index, expect_reads in ((11, 13), (0, 14)):
        request, h = flood[index]
        again = copy.deepcopy(request)
        again["ticket"] = server.initiate(h)["ticket"]
        again["quote"] = software_quote(base64.b64decode(server.open_ticket(again["ticket"])["nonce"]),
                                        server.pcr_selection)
        with pytest.raises(attest.NotEnrolledError):
            server.complete(again)
        assert CountingDb.reads == expect_reads
    assert server.entries.misses == 8


def test_cheapest_checks_come_first(swtpm, counted_site, monkeypatch):
    """A forged, expired or replayed ticket or a malformed field never reaches the quote's
    signature verify nor the snapshot read; a valid ticket with a bad quote never reaches the
    read. Verifies are counted by wrapping the real verify_quote (it still runs)."""
    verifies = []
    real_verify = quote_mod.verify_quote

    def counting_verify(bundle, nonce, ak_public=None, **kwargs):
        verifies.append(1)
        return real_verify(bundle, nonce, ak_public, **kwargs)

    monkeypatch.setattr(attest.quote_mod, "verify_quote", counting_verify)
    server = _server(counted_site, max_ticket_age=60)
    with swtpm.open() as tpm:
        started = server.initiate(counted_site["hash"])
        good = _evidence(tpm, started)
    forged = dict(good, ticket=good["ticket"][:-6] + ("AAAAAA" if not good["ticket"].endswith("AAAAAA") else "BBBBBB"))
    with pytest.raises(attest.TicketInvalidError):
        server.complete(copy.deepcopy(forged))
    other_key = _server(dict(counted_site, key=os.urandom(32)))
    with pytest.raises(attest.TicketInvalidError):
        server.complete(dict(copy.deepcopy(good), ticket=other_key.initiate(counted_site["hash"])["ticket"]))
    with pytest.raises(attest.TicketExpiredError):
        server.complete(dict(copy.deepcopy(good), ticket=server.initiate(counted_site["hash"], now=1)["ticket"]))
    # malformed fields are refused before the ticket is even opened (and so not consumed)
    for bad in ({"ekpub": "A" * (attest.MAX_EK_CHARS + 1)}, {"eventlog": 5}, {"quote": "not a bundle"},
                {"ek_cert": ["x"]}, {"ticket": "x" * (attest.MAX_TICKET_CHARS + 1)}):
        with pytest.raises((attest.AttestRequestError, attest.TicketInvalidError, attest.QuoteRejectedError)):
            server.complete(dict(copy.deepcopy(good), **bad))
    assert len(server.used) == 0
    assert verifies == [] and CountingDb.reads == 0
    # a good ticket with another TPM's quote: verified (one verify), refused before the read
    bad_quote = dict(copy.deepcopy(good), quote=software_quote(os.urandom(16), server.pcr_selection))
    with pytest.raises(attest.QuoteRejectedError):
        server.complete(bad_quote)
    assert verifies == [1] and CountingDb.reads == 0
    # the ticket was used by that try: a replay stops before the verify
    with pytest.raises(attest.ReplayError):
        server.complete(copy.deepcopy(good))
    assert verifies == [1] and CountingDb.reads == 0
    with swtpm.open() as tpm:
        fresh = _evidence(tpm, server.initiate(counted_site["hash"]))
    assert server.complete(fresh)["ekpubhash"] == counted_site["hash"]
    assert verifies == [1, 1] and CountingDb.reads == 1
