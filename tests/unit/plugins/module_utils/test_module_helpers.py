# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""module_helpers.mask_secret/unmask_secret on a real AnsibleModule: what exit_json/fail_json print."""
from __future__ import annotations

import base64
import json

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from ansible_collections.hcp.core.plugins.module_utils.module_helpers import mask_secret, secret_forms, unmask_secret, warn_masked

BINARY = bytes(range(240, 256)) + b"\x00tail"


def _printed(capsys, args, body):
    """Build a module with ``args`` (option ``pin`` is no_log), run ``body(module)`` (which exits),
    give the printed result as text."""
    with patch_module_args(args):
        module = AnsibleModule(argument_spec=dict(pin=dict(type="str", no_log=True)))
        with pytest.raises(SystemExit):
            body(module)
    return capsys.readouterr().out


def test_secret_forms():
    assert secret_forms(" pw-1 \n") == {" pw-1 \n", "pw-1", base64.b64encode(b" pw-1 \n").decode(),
                                        base64.urlsafe_b64encode(b" pw-1 \n").decode(), b" pw-1 \n".hex()}
    forms = secret_forms(BINARY)
    assert forms == {base64.b64encode(BINARY).decode(), base64.urlsafe_b64encode(BINARY).decode(), BINARY.hex()}
    assert secret_forms(b"") == set()


def test_masked_in_messages_in_every_form(capsys):
    secret = "hunter2-long-enough"

    def leak(module):
        mask_secret(module, secret, BINARY, None)
        warn_masked(module, "warning with %s" % base64.b64encode(secret.encode()).decode())
        module.fail_json(msg="failed on %s / %s / %s" % (secret, BINARY.hex(), base64.urlsafe_b64encode(BINARY).decode()),
                         detail=[base64.b64encode(BINARY).decode()])
    out = _printed(capsys, {}, leak)
    assert secret not in out and BINARY.hex() not in out and base64.b64encode(BINARY).decode() not in out
    assert base64.urlsafe_b64encode(BINARY).decode() not in out and base64.b64encode(secret.encode()).decode() not in out
    result = json.loads(out)
    assert result["msg"] == "failed on ******** / ******** / ********" and result["detail"] == ["VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"]
    assert "warning with ********" in out


def test_unmask_releases_what_is_returned_only(capsys):
    share = "hcpshare1." + base64.urlsafe_b64encode(BINARY).decode()

    def give(module):
        mask_secret(module, share, BINARY, "other-secret-value", "the-pin-value")
        # the share's text holds the base64url of BINARY: released too; a no_log option's value never
        unmask_secret(module, share, "returned with the-pin-value")
        module.exit_json(share=share, note="other-secret-value and the-pin-value", binary_hex=BINARY.hex())
    result = json.loads(_printed(capsys, {"pin": "the-pin-value"}, give))
    assert result["share"] == share
    assert result["note"] == "******** and ********"  # still masked: not returned, and a no_log option's value
    assert result["binary_hex"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
