# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import hashlib
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding

from ansible_collections.hcp.core.plugins.module_utils.tpm import device as tpm_mod
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import load_ek_public
from ansible_collections.hcp.core.plugins.module_utils.errors import TpmUnavailableError
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm, resolve_tcti


def test_resolve_tcti_prefers_argument_then_environment():
    env = {"TPM2TOOLS_TCTI": "swtpm:port=1", "HCP_TCTI": "swtpm:port=2"}
    assert resolve_tcti("device:/dev/tpm0", env) == "device:/dev/tpm0"
    assert resolve_tcti(None, env) == "swtpm:port=2"
    assert resolve_tcti(None, {"TPM2TOOLS_TCTI": "tabrmd:bus_type=system"}) == "tabrmd:bus_type=system"
    assert resolve_tcti(None, {}) == "device:/dev/tpmrm0"


def test_unknown_tcti_kind_is_rejected():
    with pytest.raises(TpmUnavailableError, match="unsupported TCTI 'tcp:1.2.3.4'"):
        resolve_tcti("tcp:1.2.3.4", {})


def test_unreachable_tcti_is_a_clear_error():
    port = __import__("socket").socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()  # nothing listens there now
    with pytest.raises(TpmUnavailableError, match="cannot reach the TPM at TCTI 'swtpm:host=127.0.0.1,port=%d'" % number):
        Tpm("swtpm:host=127.0.0.1,port=%d" % number)


def test_missing_device_is_a_clear_error():
    with pytest.raises(TpmUnavailableError, match="cannot reach the TPM"):
        Tpm("device:/nonexistent/tpmrm0")


def test_ek_public_and_hash(swtpm):
    with swtpm.open() as tpm:
        public = tpm.ek_public()
        digest = tpm.ekpubhash()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == hashlib.sha256(public.marshal()).hexdigest()
    # stable across connections, and the persistent EK equals the template-derived one
    with swtpm.open() as tpm:
        assert tpm.ekpubhash() == digest


def test_ek_certificate_matches_ek_and_vendor_ca(swtpm):
    with swtpm.open() as tpm:
        der = tpm.ek_certificate_der()
        digest = tpm.ekpubhash()
    cert = x509.load_der_x509_certificate(der)
    assert tpm_mod.ekpubhash(load_ek_public(der)) == digest
    issuer = x509.load_pem_x509_certificate(open(swtpm.vendor_ca_files[0], "rb").read())
    issuer.public_key().verify(
        cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm
    )


def test_pcr_read_and_extend(fresh_swtpm):
    with fresh_swtpm.open() as tpm:
        before = tpm.read_pcrs()
        assert sorted(before) == list(range(24)) and before[16] == b"\0" * 32
        tpm.extend_pcr(16, b"measured")
        after = tpm.read_pcrs("sha256", [16])
    expected = hashlib.sha256(b"\0" * 32 + hashlib.sha256(b"measured").digest()).digest()
    assert after[16] == expected


def test_capabilities(swtpm):
    with swtpm.open() as tpm:
        assert tpm.manufacturer() == "IBM"
        assert tpm.supports_encrypt_decrypt2() is True
        assert tpm.supports_command(0x0000019F) is False  # not a TPM 2.0 command code
        assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", tpm.firmware_version())


def test_bad_pcr_index():
    with pytest.raises(ValueError, match="out of range"):
        tpm_mod.parse_pcr_indices([24])
    assert tpm_mod.parse_pcr_indices("7, 0,7") == [0, 7]
