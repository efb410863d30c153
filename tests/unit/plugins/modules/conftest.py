# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The harness running a module in process, as the module tests share it."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args


@pytest.fixture
def run_module(capsys):
    """A function run_module(module, args, raw=False) running module.main() with args as its
    module arguments: gives the JSON result it printed with "rc" set to its exit code (and "raw"
    set to the printed text when raw is true)."""

    def run(module, args, raw=False):
        with patch_module_args(args):
            with pytest.raises(SystemExit) as exit_info:
                module.main()
        text = capsys.readouterr().out
        out = json.loads(text)
        out["rc"] = exit_info.value.code
        if raw:
            out["raw"] = text
        return out
    return run
