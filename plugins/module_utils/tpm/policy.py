# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""TPM unseal policies: their JSON description, digest (computed without a TPM) and session.

Written by hand because the digest must be computed on TPM-less servers, and tpm2-pytss's
policy helper needs libtss2-policy, which Debian 12's tpm2-tss 3.2.1 does not ship. The
computation follows TPM 2.0 Part 3 (PolicyPCR 23.7, PolicyCommandCode 23.11):
``digest' = H(digest || TPM_CC || args)``, starting from all zeros.

Policy descriptions (the ``policy`` member of an envelope, see docs/envelope-format.md):

* ``{"type": "none"}``: no state condition;
* ``{"type": "pcr", "bank": "sha256", "pcrs": {"7": "<hex>", ...}}``: the listed PCRs must
  hold exactly these values;
* ``{"type": "one_time"}``: PCR 11 must be all zeros, i.e. unsealable once per boot if the
  caller extends PCR 11 after unsealing.

Every digest ends with PolicyCommandCode(ActivateCredential): the well-known key carries
adminWithPolicy, and the TPM only accepts an ADMIN-role policy bound to the command.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct

from ansible_collections.hcp.core.plugins.module_utils.errors import (
    EnvelopeFormatError,
    PolicyNotSatisfiedError,
)
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import PCR_BANKS, PCR_COUNT

TPM_CC_POLICY_PCR = 0x0000017F
TPM_CC_POLICY_COMMAND_CODE = 0x0000016C
TPM_CC_ACTIVATE_CREDENTIAL = 0x00000147
TPM_ALG_IDS = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}
ONE_TIME_PCR = 11
ONE_TIME_EXTEND_DATA = b"hcp.core one-time unseal"
POLICY_TYPES = ("none", "pcr", "one_time")
DIGEST_SIZES = dict((bank, hashlib.new(bank).digest_size) for bank in PCR_BANKS)
# Whole-string matches: a PCR index is 0-23 written in plain decimal (no sign, space, leading
# zero or non-ASCII digit, all of which int() accepts); a value is exactly the bank's digest in hex.
_INDEX_RE = re.compile(r"[0-9]|1[0-9]|2[0-3]")
_HEX_RE = dict((bank, re.compile("[0-9a-fA-F]{%d}" % (2 * size))) for bank, size in DIGEST_SIZES.items())


def parse_pcr_values(bank, pcrs, where="policy"):
    """``{str index: lowercase hex}`` (ascending) of one bank's PCR values, validated: ``bank``
    one of DIGEST_SIZES, ``pcrs`` a mapping of index (0-23: an int, or its plain decimal
    string) to the bank's digest (hex text or bytes). The one validator of PCR values, used
    for envelope policies and the golden values of enrollment profiles (``attest.pcrs``).
    Raises ValueError naming ``where`` and never echoing more than a short prefix of input."""
    if not isinstance(bank, str) or bank not in DIGEST_SIZES:
        raise ValueError("%s: unsupported PCR bank %r (expected one of %s)"
                         % (where, bank[:16] if isinstance(bank, str) else type(bank).__name__, ", ".join(DIGEST_SIZES)))
    if not isinstance(pcrs, dict):
        raise ValueError("%s: the %s PCRs must be a mapping of index to hex value" % (where, bank))
    out = {}
    for key, value in pcrs.items():
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if not isinstance(key, str) or not _INDEX_RE.fullmatch(key):
            raise ValueError("%s: bad PCR index %r (out of range or not plain decimal: expected 0-23)"
                             % (where, key[:8] if isinstance(key, str) else type(key).__name__))
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).hex()
        if not isinstance(value, str) or not _HEX_RE[bank].fullmatch(value):
            raise ValueError("%s: %s PCR %s value must be %d bytes (%d hex characters)"
                             % (where, bank, key, DIGEST_SIZES[bank], 2 * DIGEST_SIZES[bank]))
        if key in out:
            raise ValueError("%s: %s PCR %s is listed twice" % (where, bank, key))
        out[key] = value.lower()
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def golden_pcr_values(pcrs, where="attest.pcrs"):
    """The golden PCR values of an enrollment profile's ``attest.pcrs`` section (``{"sha256":
    {"7": "<hex>"}}``), validated by parse_pcr_values and normalised (``{bank: {index: lowercase
    hex}}``, banks without values left out); {} when ``pcrs`` is empty or None. The one walk
    over golden values: enrollment (enrollment/profile.golden_pcrs) and the attestation server
    (over the signed clientprofile of an entry) both call it. ValueError naming ``where``."""
    if not pcrs:
        return {}
    if not isinstance(pcrs, dict):
        raise ValueError("%s must be an object of bank to {index: hex value}" % where)
    out = {}
    for bank, values in pcrs.items():
        parsed = parse_pcr_values(bank, values, where=where)
        if parsed:
            out[bank] = parsed
    return out


def normalize_policy(policy):
    """Validate a policy description and return its canonical form (sorted PCRs, lowercase hex)."""
    if policy is None:
        return {"type": "none"}
    if isinstance(policy, str):
        policy = {"type": policy}
    if not isinstance(policy, dict):
        raise EnvelopeFormatError("policy must be a mapping with a 'type', not %s" % type(policy).__name__)
    kind = policy.get("type", "none")
    if kind not in POLICY_TYPES:
        raise EnvelopeFormatError("unknown policy type %r: expected one of %s" % (kind, ", ".join(POLICY_TYPES)))
    extra = set(policy) - {"type", "bank", "pcrs"}
    if extra:
        raise EnvelopeFormatError("unknown policy keys: %s" % ", ".join(sorted(extra)))
    if kind != "pcr":
        if "pcrs" in policy or "bank" in policy:
            raise EnvelopeFormatError("policy type %r takes no 'pcrs' or 'bank'" % kind)
        return {"type": kind}
    bank = policy.get("bank", "sha256")
    pcrs = policy.get("pcrs")
    if not isinstance(pcrs, dict) or not pcrs:
        raise EnvelopeFormatError("a 'pcr' policy needs a non-empty 'pcrs' mapping of index to hex value")
    try:
        out = parse_pcr_values(bank, pcrs)
    except ValueError as exc:
        raise EnvelopeFormatError(str(exc))
    return {"type": "pcr", "bank": bank, "pcrs": out}


def policy_pcrs(policy):
    """(bank, {index: bytes}) the policy requires, or (None, {}) for a policy without PCRs."""
    policy = normalize_policy(policy)
    if policy["type"] == "one_time":
        return "sha256", {ONE_TIME_PCR: b"\0" * 32}
    if policy["type"] == "pcr":
        return policy["bank"], {int(k): bytes.fromhex(v) for k, v in policy["pcrs"].items()}
    return None, {}


def pcr_selection_bytes(bank, indices):
    """Marshalled TPML_PCR_SELECTION with one bank (sizeofSelect 3 for 24 PCRs)."""
    bitmap = bytearray(PCR_COUNT // 8)
    for idx in indices:
        bitmap[idx // 8] |= 1 << (idx % 8)
    return struct.pack(">IHB", 1, TPM_ALG_IDS[bank], len(bitmap)) + bytes(bitmap)


def pcr_composite_digest(bank, values):
    """H(PCR values concatenated in ascending index order): the PolicyPCR/quote pcrDigest."""
    return hashlib.new(bank, b"".join(values[i] for i in sorted(values))).digest()


def policy_digest(policy, name_alg="sha256"):
    """The policy digest (bytes) a TPM session reaches after satisfying ``policy``."""
    bank, values = policy_pcrs(policy)
    digest = b"\0" * hashlib.new(name_alg).digest_size
    if values:
        digest = hashlib.new(
            name_alg,
            digest + struct.pack(">I", TPM_CC_POLICY_PCR) + pcr_selection_bytes(bank, values)
            + pcr_composite_digest(bank, values),
        ).digest()
    return hashlib.new(
        name_alg, digest + struct.pack(">II", TPM_CC_POLICY_COMMAND_CODE, TPM_CC_ACTIVATE_CREDENTIAL)
    ).digest()


def check_pcrs(policy, current):
    """Raise PolicyNotSatisfiedError naming the PCRs whose ``current`` values differ from the policy."""
    bank, wanted = policy_pcrs(policy)
    if not wanted:
        return
    bad = sorted(i for i, v in wanted.items() if not hmac.compare_digest(current.get(i, b""), v))
    if not bad:
        return
    if normalize_policy(policy)["type"] == "one_time":
        raise PolicyNotSatisfiedError(
            "one-time policy not satisfied: PCR 11 is no longer zero (already unsealed once this boot)"
        )
    raise PolicyNotSatisfiedError(
        "PCR policy not satisfied: %s PCR(s) %s differ from the sealed values" % (bank, ", ".join(map(str, bad)))
    )


def apply_policy(tpm, session, policy):
    """Run the policy commands in ``session`` on ``tpm`` (the TPM uses its current PCR values)."""
    from tpm2_pytss.constants import TPM2_CC  # pylint: disable=import-outside-toplevel
    from tpm2_pytss.types import TPM2B_DIGEST, TPML_PCR_SELECTION  # pylint: disable=import-outside-toplevel

    bank, values = policy_pcrs(policy)
    if values:
        selection = TPML_PCR_SELECTION.parse("%s:%s" % (bank, ",".join(str(i) for i in sorted(values))))
        tpm.ectx.policy_pcr(session, TPM2B_DIGEST(), selection)
    tpm.ectx.policy_command_code(session, TPM2_CC.ActivateCredential)


def one_time_used(tpm):
    """Whether PCR 11 was extended this boot (one-time envelopes cannot be unsealed any more)."""
    value = tpm.read_pcrs("sha256", [ONE_TIME_PCR])[ONE_TIME_PCR]
    return any(bytearray(value))


def close_one_time(tpm):
    """Extend PCR 11, so one-time envelopes cannot be unsealed again until the TPM restarts.
    The one place that does it: module tpm_unseal (through envelope.unseal_once) and the attestation client."""
    tpm.extend_pcr(ONE_TIME_PCR, ONE_TIME_EXTEND_DATA)
