# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The on-disk protected share, on real swtpm processes."""
from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from ansible_collections.hcp.core.plugins.module_utils.unseal import shamir
from ansible_collections.hcp.core.plugins.module_utils.tpm import share_key
from ansible_collections.hcp.core.plugins.module_utils.errors import TpmUnavailableError
from ansible_collections.hcp.core.plugins.module_utils.unseal.share_store import (
    ProtectionUnavailableError,
    ShareFileFormatError,
    ShareStoreError,
    ShareUndecryptableError,
    inspect_share,
    read_share,
    write_share,
)
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm

NO_TPM = "swtpm:host=127.0.0.1,port=9"  # nothing listens on the discard port


def no_tpm():
    return Tpm(NO_TPM)


@pytest.fixture
def share():
    return shamir.split(b"site token " * 8, 3, 2)[1]


def _doc(path):
    with open(path, "rb") as handle:
        return json.loads(handle.read())


def test_tpm_round_trip_and_inspect(new_swtpm, tmp_path, share):
    path = str(tmp_path / "share.json")
    result = write_share(path, share, "require", tpm_factory=new_swtpm.open)
    assert (result.protection, result.handle, result.alert) == ("tpm", 0x81000002, None)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    doc = _doc(path)
    assert doc["format"] == "hcp.core.share" and doc["version"] == 1 and doc["hsm"] is None
    assert share.data not in base64.b64decode(doc["data"])
    facts = inspect_share(path)
    assert facts["protected_with_tpm"] is True and facts["protection"] == "tpm"
    assert facts["handle"] == "0x81000002" and facts["index"] == 2 and facts["set_id"] == share.set_id.hex()
    new_swtpm.restart()
    assert read_share(path, tpm_factory=new_swtpm.open) == share


def test_share_on_another_tpm_is_undecryptable(new_swtpm, other_swtpm, tmp_path, share):
    path = str(tmp_path / "share.json")
    write_share(path, share, "best-effort", tpm_factory=new_swtpm.open)
    with other_swtpm.open() as tpm:
        absent = share_key.find_share_key(tpm) is None
    if absent:
        with pytest.raises(ShareUndecryptableError, match="holds no share key"):
            read_share(path, tpm_factory=other_swtpm.open)
    # A share key of the same template at the same handle, but on another TPM (different name):
    with new_swtpm.open() as tpm:
        assert share_key.find_share_key(tpm) == 0x81000002
    doc = _doc(path)
    doc["tpm"]["key_name"] = "000b" + "00" * 32
    with open(path, "w") as handle:
        json.dump(doc, handle)
    with pytest.raises(ShareUndecryptableError, match="not the one that protected"):
        read_share(path, tpm_factory=new_swtpm.open)


def test_altered_ciphertext_is_undecryptable_not_a_format_error(new_swtpm, tmp_path, share):
    path = str(tmp_path / "share.json")
    write_share(path, share, "require", tpm_factory=new_swtpm.open)
    doc = _doc(path)
    blob = bytearray(base64.b64decode(doc["data"]))
    blob[40] ^= 0x01
    doc["data"] = base64.b64encode(bytes(blob)).decode()
    with open(path, "w") as handle:
        json.dump(doc, handle)
    with pytest.raises(ShareUndecryptableError, match="integrity check"):
        read_share(path, tpm_factory=new_swtpm.open)


def test_require_without_tpm_refuses_first_write_with_alert(tmp_path, share):
    path = str(tmp_path / "share.json")
    with pytest.raises(ProtectionUnavailableError, match="refusing") as info:
        write_share(path, share, "require", tpm_factory=no_tpm, hostname="ctl-1")
    alert = info.value.alert
    assert {k: alert[k] for k in ("name", "severity", "kind", "hostname")} == {
        "name": "tpm-protection-unavailable", "severity": "major", "kind": "security", "hostname": "ctl-1"}
    assert "no usable TPM" in alert["reason"]
    assert not os.path.exists(path)


def test_require_without_tpm_on_operational_host_falls_back_with_alert(tmp_path, share):
    path = str(tmp_path / "share.json")
    result = write_share(path, share, "require", tpm_factory=no_tpm, operational=True)
    assert result.protection == "plaintext" and result.alert["name"] == "tpm-protection-unavailable"
    assert inspect_share(path)["protected_with_tpm"] is False
    assert read_share(path) == share


def test_best_effort_without_tpm_is_plaintext_with_reason(tmp_path, share):
    path = str(tmp_path / "share.json")
    result = write_share(path, share, "best-effort", tpm_factory=no_tpm)
    assert (result.protection, result.alert) == ("plaintext", None) and "no usable TPM" in result.reason
    assert read_share(path, tpm_factory=no_tpm) == share


def test_never_stores_plaintext_even_with_a_tpm(swtpm, tmp_path, share):
    path = str(tmp_path / "share.json")
    result = write_share(path, share, "never", tpm_factory=swtpm.open)
    assert result.protection == "plaintext" and result.handle is None
    facts = inspect_share(path)
    assert (facts["protection"], facts["protected_with_tpm"], facts["handle"]) == ("plaintext", False, None)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_tpm_share_with_tpm_gone_reports_unavailable(new_swtpm, tmp_path, share):
    path = str(tmp_path / "share.json")
    write_share(path, share, "require", tpm_factory=new_swtpm.open)
    with pytest.raises(TpmUnavailableError):
        read_share(path, tpm_factory=no_tpm)


def test_corrupted_plaintext_share_is_a_format_error(tmp_path, share):
    path = str(tmp_path / "share.json")
    write_share(path, share, "never")
    doc = _doc(path)
    raw = bytearray(base64.b64decode(doc["data"]))
    raw[-1] ^= 0x80
    doc["data"] = base64.b64encode(bytes(raw)).decode()
    with open(path, "w") as handle:
        json.dump(doc, handle)
    with pytest.raises(shamir.ShareFormatError, match="integrity tag"):
        read_share(path)


@pytest.mark.parametrize("content, message", [
    (b"not json", "not a JSON share document"),
    (b'{"format": "other"}', "not an hcp.core.share document"),
    (b'{"format": "hcp.core.share", "version": 2}', "unsupported share file version 2"),
    (b'{"format": "hcp.core.share", "version": 1, "protection": "rot13"}', "unknown protection"),
    (b'{"format": "hcp.core.share", "version": 1, "protection": "plaintext", "data": "@@"}', "malformed"),
])
def test_bad_documents(tmp_path, content, message):
    path = tmp_path / "share.json"
    path.write_bytes(content)
    with pytest.raises(ShareFileFormatError, match=message):
        inspect_share(str(path))


def test_metadata_mismatch_is_detected(tmp_path, share):
    path = str(tmp_path / "share.json")
    write_share(path, share, "never")
    doc = _doc(path)
    doc["share"]["index"] = 3
    with open(path, "w") as handle:
        json.dump(doc, handle)
    with pytest.raises(ShareFileFormatError, match="metadata"):
        read_share(path)


def test_bad_arguments(tmp_path, share):
    with pytest.raises(ShareStoreError, match="protect_with_tpm"):
        write_share(str(tmp_path / "s"), share, "sometimes")
    with pytest.raises(ShareStoreError, match="shamir.Share"):
        write_share(str(tmp_path / "s"), share.to_text(), "never")
    with pytest.raises(ShareStoreError, match="no share file"):
        read_share(str(tmp_path / "absent"))
