# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Ansible face of the hcp.core library: shared option specs and error mapping.

This is the only module_utils file that knows about AnsibleModule; the core stays plain.
"""

from __future__ import annotations

import base64
import os

from ansible.module_utils.basic import missing_required_lib
from ansible.module_utils.common.parameters import remove_values

from ansible_collections.hcp.core.plugins.module_utils.errors import MissingDependencyError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write

# Each spec matches a doc fragment of the same name (plugins/doc_fragments/): one option path.
TCTI_ARGUMENT_SPEC = dict(
    tcti=dict(type="str"),
)

TPM_ARGUMENT_SPEC = dict(
    TCTI_ARGUMENT_SPEC,
    ek_type=dict(type="str", default="rsa", choices=["rsa", "ecc"]),
)

SERVICE_CLIENT_ARGUMENT_SPEC = dict(
    url=dict(type="str", required=True),
    ca_file=dict(type="path"),
    client_cert=dict(type="path"),
    client_key=dict(type="path", no_log=False),
    timeout=dict(type="int", default=30),
)

# The key-server clients (module keyserver_item, lookup keyserver; fragment hcp.core.keyserver on top of
# hcp.core.service_client): credential_dir holds the short-lived key-server credential the attestation
# client keeps (docs/keyserver.md, part 2), preferred over client_cert while it is valid.
KEYSERVER_ARGUMENT_SPEC = dict(
    SERVICE_CLIENT_ARGUMENT_SPEC,
    credential_dir=dict(type="path"),
)

ATTESTATION_ARGUMENT_SPEC = dict(
    servers=dict(type="list", elements="str", required=True, aliases=["url"]),
    ca_file=dict(type="path"),
    signer_public=dict(type="str"),
    signer_public_file=dict(type="path"),
    timeout=dict(type="int", default=30),
    state_dir=dict(type="path"),
)


# Modules that can return secret material (tpm_unseal, shamir_share, site_unseal) return it only
# with return_content=true; doc fragment hcp.core.secret
# (plugins/plugin_utils/action.py hides such a result).
RETURN_CONTENT_ARGUMENT_SPEC = dict(
    return_content=dict(type="bool", default=False),
)


def argument_spec(*specs, **options):
    """One argument spec from shared specs and the module's own ``options`` (which win)."""
    merged = {}
    for spec in specs:
        merged.update((name, dict(option)) for name, option in spec.items())
    merged.update(options)
    return merged


def service_client_args(get):
    """(url, ca_file, client_cert, client_key, timeout), the service clients' constructor arguments,
    in SERVICE_CLIENT_ARGUMENT_SPEC's order: ``get`` is a module's ``params`` or a lookup's ``get_option``."""
    get = get.__getitem__ if isinstance(get, dict) else get
    return tuple(get(name) for name in SERVICE_CLIENT_ARGUMENT_SPEC)


def fail_on_hcp_error(module, exc, msg=None, **extra):
    """fail_json with the library's message (or ``msg``), the error class, ``status_code`` when a
    service answered, and ``extra`` results; a missing library gets Ansible's standard hint."""
    if getattr(exc, "status", None) is not None:
        extra.setdefault("status_code", exc.status)
    if isinstance(exc, MissingDependencyError):
        msg = missing_required_lib(_library_named(str(exc))) + " (%s)" % exc
    module.fail_json(msg=msg or str(exc), error=type(exc).__name__, **extra)


def _library_named(message):
    """The library a MissingDependencyError message names ("the Python library 'x' is required...")."""
    start = message.find("'")
    end = message.find("'", start + 1)
    return message[start + 1:end] if 0 <= start < end else "tpm2-pytss"


def secret_forms(secret):
    """The strings under which ``secret`` (bytes or str) could show in a result or a message: its
    text (when it is UTF-8) as is and without surrounding whitespace, and the base64 and hex of
    its bytes. Empty strings are left out (masking "" would mask everything)."""
    data = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    forms = {base64.b64encode(data).decode("ascii"), base64.urlsafe_b64encode(data).decode("ascii"), data.hex()}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        forms.update((text, text.strip()))
    forms.discard("")
    return forms


def mask_secret(module, *secrets):
    """Register every secret in ``secrets`` (bytes or str; None is skipped) and its encodings
    (``secret_forms``) with ``module.no_log_values``: Ansible then replaces them with ``********``
    in every value the module returns, ``msg`` included, but not in ``module.warn`` texts
    (ansible-core 2.19 sends them unmasked): warn with ``warn_masked``. Call it as soon as the
    module holds the secret, whether or not it will return it."""
    masked = module.__dict__.setdefault("hcp_masked_secrets", set())
    for secret in secrets:
        if secret is not None:
            added = secret_forms(secret) - module.no_log_values  # a no_log option's value stays masked for good
            masked.update(added)
            module.no_log_values.update(added)


def unmask_secret(module, *values):
    """Release the masks ``mask_secret`` put inside ``values``, the strings a task asked for
    (``return_content``) exactly as they go into the result, so they reach its registered variable
    intact: every masked form found inside one of them is released (a form need not be the whole
    value: the base64url of a share's bytes is part of the share's text). Masks of no_log options
    stay. Call it just before ``exit_json``; the collection's action plugin
    (plugins/plugin_utils/action.py) then hides the whole result from the output."""
    masked = module.__dict__.get("hcp_masked_secrets", set())
    released = set(form for form in masked if any(form in value for value in values))
    masked.difference_update(released)
    module.no_log_values.difference_update(released)


def warn_masked(module, text):
    """``module.warn(text)`` with the masked values (no_log options, ``mask_secret``) replaced, as
    Ansible does for the result but not for warnings."""
    module.warn(remove_values(text, module.no_log_values))


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


__all__ = ["ATTESTATION_ARGUMENT_SPEC", "KEYSERVER_ARGUMENT_SPEC", "RETURN_CONTENT_ARGUMENT_SPEC",
           "SERVICE_CLIENT_ARGUMENT_SPEC", "TCTI_ARGUMENT_SPEC", "TPM_ARGUMENT_SPEC",
           "apply_file_attributes", "argument_spec", "fail_on_hcp_error", "mask_secret", "secret_forms", "service_client_args", "unmask_secret",
           "warn_masked", "write_private_file"]
