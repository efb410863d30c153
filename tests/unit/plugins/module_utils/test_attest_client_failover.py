# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""attest_client server failover and one-time modes with a real swtpm and in-process Attestors."""
from __future__ import annotations

import os

import pytest

from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.tests.unit.helpers import DEAD


def _refusing(path, body):
    return 503, {"error": "no snapshot"}


def test_failover_uses_one_server_and_lists_all_causes(attest_site, swtpm):
    good = attest_client.attestor_transport(attest_site.attestor)
    other_key = attest.Attestor(lambda: attest_site.db, os.urandom(32), signer_pub=attest_site.signer,
                                vendor_cas=attest_site.attestor.vendor_cas)
    mixed = attest_client.attestor_transport(other_key)
    with swtpm.open() as tpm:
        result = attest_client.attest(tpm, [_refusing, DEAD, good], attest_site.signer)
        assert result["server"] == "transport #3" and len(result["assets"]["rootfs.key"]) == 64
        assert result["skipped"] == []
        # the first working server does both round trips (its own ticket key)
        assert attest_client.attest(tpm, [mixed, good], attest_site.signer)["server"] == "transport #1"
        with pytest.raises(attest_client.AllServersFailedError) as info:
            attest_client.attest(tpm, [_refusing, DEAD], attest_site.signer)
        assert "transport #1: attestation server refused (503): no snapshot" in str(info.value)
        assert DEAD in str(info.value) and len(info.value.causes) == 2
        with pytest.raises(attest_client.AttestServerError) as single:
            attest_client.attest(tpm, _refusing, attest_site.signer)
        assert single.value.status == 503
        with pytest.raises(attest_client.AttestClientError, match="non-empty list"):
            attest_client.attest(tpm, [], attest_site.signer)
        with pytest.raises(attest_client.AttestClientError, match="one_time must be"):
            attest_client.attest(tpm, good, attest_site.signer, one_time="sometimes")
        fetched = attest_client.fetch(tpm, good, attest_site.signer)
        assert "rootfs.key.sealed" in fetched["files"] and "assets" not in fetched
