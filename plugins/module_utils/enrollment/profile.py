# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Enrollment inputs: hostname checks, bounded profile parsing, the server-preclient ∪
client ∪ server-postclient merge, ``__env`` variables and ``{VAR}`` expansion.
Pure Python (no Ansible imports)."""

from __future__ import annotations

import json
import re

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.errors import EnvelopeFormatError, HcpError
from ansible_collections.hcp.core.plugins.module_utils.tpm import policy as tpm_policy

MAX_PROFILE_BYTES = 64 * 1024
MAX_PROFILE_DEPTH = 16
_LABEL_RE = re.compile(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_VAR_RE = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")
# The bank the default seal policy binds when the golden values name several (one PolicyPCR
# per envelope policy): sha256 first, the bank the attestation server quotes by default.
SEAL_BANK_ORDER = ("sha256", "sha384", "sha512", "sha1")


class ProfileError(HcpError):
    """A hostname or profile is not acceptable (HTTP 400)."""


def check_hostname(hostname):
    """The hostname, lowercased, if it is a valid RFC 1123 name; ProfileError otherwise
    (the reference accepted empty hostnames)."""
    if not isinstance(hostname, str) or not hostname.strip():
        raise ProfileError("hostname is empty")
    name = hostname.strip().lower().rstrip(".")
    if len(name) > 253:
        raise ProfileError("hostname is longer than 253 characters")
    for label in name.split("."):
        if not _LABEL_RE.fullmatch(label):
            raise ProfileError("hostname %r is not a valid DNS name (label %r)" % (hostname[:80], label[:63]))
    return name


def check_not_reserved(hostname, site_names=()):
    """ProfileError when ``hostname`` is a name reserved for the site's service identities
    (``orchestrator``, ``enrollsvc``, ``attest-*`` and ``site_names``; pki.reserved_service_name):
    its certificates would carry a service's name."""
    try:
        pki.check_reserved_name(hostname, site_names, "hostname")
    except pki.ReservedNameError as exc:
        raise ProfileError(str(exc)) from None
    return hostname


def _depth(value, limit, level=0):
    if level > limit:
        raise ProfileError("profile is nested deeper than %d levels" % limit)
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProfileError("profile keys must be strings")
            _depth(v, limit, level + 1)
    elif isinstance(value, list):
        for v in value:
            _depth(v, limit, level + 1)


def parse_profile(data, max_bytes=MAX_PROFILE_BYTES, max_depth=MAX_PROFILE_DEPTH):
    """A profile from JSON text/bytes or a dict: must be a JSON object, at most ``max_bytes``
    when serialised and ``max_depth`` deep; ProfileError otherwise."""
    if data is None or data == "" or data == b"":
        return {}
    if isinstance(data, (bytes, bytearray, str)):
        # the one bounded decoder: a deep or odd document is a ProfileError, never a
        # RecursionError in the writer daemon
        try:
            data = jsonutil.loads(data, "profile", max_bytes=max_bytes, max_depth=max_depth + 1)
        except jsonutil.JsonInputError as exc:
            if exc.reason == "depth":
                raise ProfileError("profile is nested deeper than %d levels" % max_depth) from None
            raise ProfileError(str(exc)) from None
    if not isinstance(data, dict):
        raise ProfileError("profile must be a JSON object")
    _depth(data, max_depth)
    if len(json.dumps(data)) > max_bytes:
        raise ProfileError("profile is larger than %d bytes" % max_bytes)
    return data


def merge(*profiles):
    """Recursive union, later profiles win: objects merge key by key, any other value
    (lists included) is replaced. Inputs are not modified."""
    result = {}
    for profile in profiles:
        result = _merge2(result, profile or {})
    return result


def _merge2(left, right):
    out = dict(left)
    for key, value in right.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge2(out[key], value)
        else:
            out[key] = json.loads(json.dumps(value))
    return out


def build_env(hostname, ekpubhash, realm=None, extra=None):
    """The ``__env`` variables of an enrollment. ``extra`` (server configuration) may add
    variables but not override the ENROLL_* identity ones."""
    short, _dot, domain = hostname.partition(".")
    env = dict(extra or {})
    env.update(
        {
            "ENROLL_HOSTNAME": hostname,
            "ENROLL_HOSTNAME_SHORT": short,
            "ENROLL_DOMAIN": domain,
            "ENROLL_DOMAIN_DC": ",".join("DC=%s" % p for p in domain.split(".")) if domain else "",
            "ENROLL_ID": ekpubhash,
            "ENROLL_REALM": realm or (env.get("ENROLL_REALM") or domain.upper()),
        }
    )
    return env


def expand(value, env, path="profile"):
    """``{VAR}`` replaced by ``env[VAR]`` in every string (keys included). An unknown
    upper-case variable is an error (fail closed: no half-expanded names in certificates)."""
    if isinstance(value, str):
        def repl(match):
            name = match.group(1)
            if name not in env:
                raise ProfileError("unknown variable {%s} at %s" % (name, path))
            return str(env[name])
        return _VAR_RE.sub(repl, value)
    if isinstance(value, dict):
        return dict((expand(k, env, path), expand(v, env, "%s.%s" % (path, k))) for k, v in value.items())
    if isinstance(value, list):
        return [expand(v, env, "%s[%d]" % (path, i)) for i, v in enumerate(value)]
    return value


def effective_profile(client_profile, hostname, ekpubhash, preclient=None, postclient=None, realm=None, extra_env=None):
    """Merge, inject ``__env``, expand. The client cannot set ``__env`` (server-only)."""
    client = dict(client_profile or {})
    client.pop("__env", None)
    merged = merge(preclient, client, postclient)
    env = build_env(hostname, ekpubhash, realm=realm, extra=merge((preclient or {}).get("__env"), (postclient or {}).get("__env"), extra_env))
    merged["__env"] = env
    return expand(merged, env)


def golden_pcrs(profile):
    """The golden PCR values of a profile, ``attest.pcrs`` (``{"sha256": {"7": "<hex>"}}``),
    validated and normalised (``{bank: {index: lowercase hex}}``, banks without values left
    out), or {} when there are none. ProfileError on a malformed section: bank names, PCR
    indices (0-23, plain decimal) and digest lengths are checked by whole-string matches
    (``tpm/policy.parse_pcr_values``, the same validator as envelope policies)."""
    section = profile.get("attest")
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ProfileError("profile 'attest' must be an object")
    pcrs = section.get("pcrs")
    if pcrs is None:
        return {}
    if not isinstance(pcrs, dict):
        raise ProfileError("profile attest.pcrs must be an object of bank to {index: hex value}")
    try:
        return tpm_policy.golden_pcr_values(pcrs, where="profile attest.pcrs")
    except ValueError as exc:
        raise ProfileError(str(exc)) from None


def seal_policy(profile):
    """The unseal policy of every sensitive asset of an enrollment (a normalised policy
    description, docs/envelope-format.md):

    * an explicit ``seal_policy`` (``"none"``, ``"one_time"``, ``{"type": "pcr", ...}``) as given;
    * otherwise, when the profile has golden PCR values (``attest.pcrs``), a ``pcr`` policy
      binding those values, so the TPM itself refuses to unseal in any other boot state (one
      bank: the first of SEAL_BANK_ORDER the golden values name; the attestation server
      still checks every bank it quotes);
    * otherwise ``{"type": "none"}``.

    ``seal_policy: null`` counts as absent. ProfileError on a malformed policy or golden values."""
    golden = golden_pcrs(profile)
    explicit = profile.get("seal_policy")
    if explicit is not None:
        try:
            return tpm_policy.normalize_policy(explicit)
        except EnvelopeFormatError as exc:
            raise ProfileError("profile 'seal_policy': %s" % exc) from None
    for bank in SEAL_BANK_ORDER:
        if bank in golden:
            return tpm_policy.normalize_policy({"type": "pcr", "bank": bank, "pcrs": golden[bank]})
    return {"type": "none"}
