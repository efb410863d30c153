# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pki.make_crl and module hcp.core.crl on real files: the CRL verifies with the CA, lists
the revoked serials, is rewritten only when needed, and a foreign certificate is refused.
(nginx refusing a revoked client certificate: tests/unit/roles/test_webapi_nginx.py.)"""
from __future__ import annotations

import datetime
import os
import stat

import pytest
from cryptography import x509

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.modules import crl as crl_module


def _issuer():
    key, cert = pki.create_ca("HCP test CRL CA")
    return pki.Issuer(key, [cert])


def _client(issuer, name):
    return issuer.issue(pki.new_private_key().public_key(), "https-client", name)


def test_make_crl_lists_and_verifies():
    issuer = _issuer()
    one, two = _client(issuer, "one"), _client(issuer, "two")
    pem = pki.make_crl(issuer, [one, pki.certificate_pem(two), 12345])
    crl = x509.load_pem_x509_crl(pem)
    assert crl.is_signature_valid(issuer.certificate.public_key())
    assert sorted(e.serial_number for e in crl) == sorted([one.serial_number, two.serial_number, 12345])
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    # unchanged list, fresh CRL: nothing to do; a change: number + 1, old revocation date kept
    assert pki.make_crl(issuer, [12345, one, two], current=pem) is None
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    newer = x509.load_pem_x509_crl(pki.make_crl(issuer, [one, 12345], current=pem, now=later))
    assert newer.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert sorted(e.serial_number for e in newer) == sorted([one.serial_number, 12345])
    dates = dict((e.serial_number, e.revocation_date_utc) for e in crl)
    assert newer.get_revoked_certificate_by_serial_number(12345).revocation_date_utc == dates[12345]
    # renewed when it would expire within a third of its validity
    assert pki.make_crl(issuer, [one, two, 12345], current=pem, days=90,
                        now=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=61)) is not None


def test_make_crl_refuses_bad_input():
    issuer = _issuer()
    foreign = _client(_issuer(), "stranger")
    with pytest.raises(pki.PkiError, match="was not issued by"):
        pki.make_crl(issuer, [foreign])
    for bad in (0, -1, 1 << 160, True, 1.5):
        with pytest.raises(pki.PkiError, match="positive integer"):
            pki.make_crl(issuer, [bad])
    with pytest.raises(pki.PkiError, match="1 to 3650 days"):
        pki.make_crl(issuer, [], days=0)
    with pytest.raises(pki.PkiError, match="not a PEM CRL"):
        pki.make_crl(issuer, [], current=b"garbage")
    # a CRL of another CA in the file is replaced, not trusted
    other = pki.make_crl(_issuer(), [77])
    fresh = x509.load_pem_x509_crl(pki.make_crl(issuer, [77], current=other))
    assert fresh.is_signature_valid(issuer.certificate.public_key())


def test_crl_module(tmp_path, run_module):
    issuer = _issuer()
    ca_key, ca_cert = str(tmp_path / "ca.key"), str(tmp_path / "ca.pem")
    pki.atomic_write(ca_key, pki.private_key_pem(issuer.key), mode=0o600)
    pki.atomic_write(ca_cert, pki.certificate_pem(issuer.certificate), mode=0o644)
    leaf = _client(issuer, "retired")
    leaf_path = str(tmp_path / "retired.pem")
    pki.atomic_write(leaf_path, pki.certificate_pem(leaf), mode=0o644)
    dest = str(tmp_path / "clients.crl")
    args = {"ca_key_path": ca_key, "ca_cert_path": ca_cert, "dest": dest, "revoked": [leaf_path, "0x3f2a", "99"]}
    want = sorted(["0x%x" % leaf.serial_number, "0x3f2a", "0x63"])
    out = run_module(crl_module, dict(args, _ansible_check_mode=True))
    assert out["changed"] and out["serials"] == want and not os.path.exists(dest)
    out = run_module(crl_module, args, raw=True)
    assert out["rc"] == 0 and out["changed"] and out["serials"] == want
    assert "PRIVATE KEY" not in out["raw"] and out["crl"].startswith("-----BEGIN X509 CRL-----")
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o644
    with open(dest, "rb") as handle:
        before = handle.read()
    again = run_module(crl_module, args)
    assert not again["changed"] and again["serials"] == want
    with open(dest, "rb") as handle:
        assert handle.read() == before
    fewer = run_module(crl_module, dict(args, revoked=["99"]))
    assert fewer["changed"] and fewer["serials"] == ["0x63"]
    os.symlink(ca_key, str(tmp_path / "link.key"))
    refused = run_module(crl_module, dict(args, ca_key_path=str(tmp_path / "link.key")))
    assert refused["failed"] and "PRIVATE KEY" not in str(refused)
    missing = run_module(crl_module, dict(args, revoked=[str(tmp_path / "nope.pem")]))
    assert missing["failed"] and "nope.pem" in missing["msg"]
