# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Ansible face of the hcp.core library: shared option specs and error mapping.

This is the only module_utils file that knows about AnsibleModule; the core stays plain.
"""

from __future__ import annotations

import os

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.hcp.core.plugins.module_utils.errors import MissingDependencyError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write

TPM_ARGUMENT_SPEC = dict(
    tcti=dict(type="str"),
    ek_type=dict(type="str", default="rsa", choices=["rsa", "ecc"]),
)


def fail_on_hcp_error(module, exc):
    """fail_json with the library's message; a missing library gets Ansible's standard hint."""
    if isinstance(exc, MissingDependencyError):
        module.fail_json(msg=missing_required_lib("tpm2-pytss") + " (%s)" % exc)
    module.fail_json(msg=str(exc), error=type(exc).__name__)


def _file_params(module, path):
    params = module.load_file_common_arguments(module.params, path=path)
    mode = params.get("mode") or "0600"
    if isinstance(mode, str):
        try:
            mode = int(mode, 8)
        except ValueError:
            module.fail_json(msg="mode must be octal, such as '0600', for %s" % path)
    params["mode"] = mode
    return params


def write_private_file(module, path, data, changed):
    """Write ``data`` atomically with the task's mode (default 0600), then apply owner/group.

    In check mode nothing is written. Returns the updated ``changed``.
    """
    params = _file_params(module, path)
    if not module.check_mode:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            module.fail_json(msg="destination directory %s does not exist" % directory)
        try:
            atomic_write(path, data, params["mode"] & 0o7777)
        except OSError as exc:
            module.fail_json(msg="cannot write %s: %s" % (path, exc.strerror or exc))
    return apply_file_attributes(module, path, changed, params)


def apply_file_attributes(module, path, changed, params=None):
    """Bring mode/owner/group of an existing ``path`` in line with the task (honours check mode)."""
    if params is None:
        params = _file_params(module, path)
    if os.path.exists(path):
        changed = module.set_fs_attributes_if_different(params, changed)
    return changed


__all__ = ["TPM_ARGUMENT_SPEC", "apply_file_attributes", "fail_on_hcp_error", "write_private_file"]
