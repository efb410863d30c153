# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

from tpm2_pytss.constants import ESYS_TR
from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

from ansible_collections.hcp.core.plugins.module_utils.tpm import share_key


def test_share_key_lifecycle_survives_restart(new_swtpm):
    with new_swtpm.open() as tpm:
        assert share_key.find_share_key(tpm) is None
        handle, created = share_key.ensure_share_key(tpm)
        assert (handle, created) == (0x81000002, True)
        assert share_key.ensure_share_key(tpm) == (0x81000002, False)
        blob = share_key.encrypt(tpm, handle, b"a share" * 400)  # several EncryptDecrypt2 chunks
        assert b"a share" not in blob
    new_swtpm.restart()
    with new_swtpm.open() as tpm:
        assert share_key.find_share_key(tpm) == 0x81000002
        assert share_key.decrypt(tpm, 0x81000002, blob) == b"a share" * 400


def test_foreign_object_at_the_first_handle_is_skipped(new_swtpm):
    with new_swtpm.open() as tpm:
        foreign = tpm.ectx.create_primary(
            TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse("ecc256"), ESYS_TR.OWNER
        )[0]
        tpm.ectx.evict_control(ESYS_TR.OWNER, foreign, 0x81000002)
        tpm.flush(foreign)
        handle, created = share_key.ensure_share_key(tpm)
        assert (handle, created) == (0x81000003, True)
        assert share_key.decrypt(tpm, handle, share_key.encrypt(tpm, handle, b"x")) == b"x"
