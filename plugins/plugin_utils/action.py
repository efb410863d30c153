# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The action plugin of the modules that can return secret material (doc fragment hcp.core.secret).

A module cannot hide one value of its result: masking it (``no_log_values``) replaces it in the
registered variable too. So the module returns a secret only with ``return_content=true``, and
this action marks such a result ``_ansible_no_log`` (as ansible.builtin.include_vars does): the
output shows "the output has been hidden..." even when the task forgot ``no_log: true``, while the
registered variable keeps the value.
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action.normal import ActionModule as NormalActionModule


class SecretResultAction(NormalActionModule):
    """ansible.builtin.normal, plus: a result holding one of ``SECRET_KEYS`` is no_log (a failure,
    which holds none, stays readable); no async with ``return_content`` (the async job file on
    the host would hold the secret)."""

    SECRET_KEYS = ()

    def run(self, tmp=None, task_vars=None):
        wants_secret = boolean(self._task.args.get("return_content", False), strict=False)
        if wants_secret and self._task.async_val:
            raise AnsibleActionFail("%s: return_content=true cannot be used with async (the job's result file on the host "
                                    "would hold the secret)" % self._task.action)
        result = super().run(tmp, task_vars)
        if any(key in result for key in self.SECRET_KEYS):
            result["_ansible_no_log"] = True
        return result
