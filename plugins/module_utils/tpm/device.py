# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Access to a TPM through tpm2-pytss: TCTI selection, EK, PCRs, capabilities.

Plain Python, no Ansible imports: modules, lookups, services and tests all use this.
Every handle and session this module creates is flushed in ``finally`` because the
swtpm TCTI has no resource manager and only three object and three session slots.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re

from ansible_collections.hcp.core.plugins.module_utils.errors import (
    InvalidEkError,
    MissingDependencyError,
    TpmError,
    TpmUnavailableError,
)

# libtss2 logs expected "NV index not defined" probes at ERROR level: silence it unless
# the operator asked for logs explicitly.
os.environ.setdefault("TSS2_LOG", "all+NONE")

try:
    from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception
    from tpm2_pytss.constants import (
        ESYS_TR,
        TPM2_ALG,
        TPM2_CAP,
        TPM2_CC,
        TPM2_PT,
        TPM2_SE,
        TPM2_SU,
        TPMA_OBJECT,
        TPMA_SESSION,
    )
    from tpm2_pytss.types import (
        TPM2B_SENSITIVE_CREATE,
        TPML_DIGEST_VALUES,
        TPML_PCR_SELECTION,
        TPMT_HA,
        TPMT_SYM_DEF,
        TPMU_HA,
    )
    from tpm2_pytss.utils import NVReadEK, create_ek_template
except ImportError as exc:  # pragma: no cover - reported by require_tpm2_pytss()
    TPM2_PYTSS_IMPORT_ERROR = exc
else:
    TPM2_PYTSS_IMPORT_ERROR = None

DEFAULT_TCTI = "device:/dev/tpmrm0"
TCTI_ENV_VARS = ("HCP_TCTI", "TPM2TOOLS_TCTI", "TCTI")
TCTI_KINDS = ("device", "swtpm", "mssim", "tabrmd", "cmd", "libtpms")

# TCG EK Credential Profile: low-range EK certificate NV indices and persistent handles.
EK_TYPES = {
    "rsa": {"template": "EK-RSA2048", "cert_index": 0x01C00002, "handle": 0x81010001},
    "ecc": {"template": "EK-ECC256", "cert_index": 0x01C0000A, "handle": 0x81010002},
}
# Attributes every EK carries (TCG EK profile templates L-1/L-2): a restricted decrypt
# storage key that never leaves its TPM.
EK_REQUIRED_ATTRS = ("FIXEDTPM", "FIXEDPARENT", "SENSITIVEDATAORIGIN", "ADMINWITHPOLICY", "RESTRICTED", "DECRYPT")

PCR_BANKS = ("sha1", "sha256", "sha384", "sha512")
PCR_COUNT = 24


def require_tpm2_pytss():
    """Raise MissingDependencyError when tpm2-pytss (and libtss2) cannot be imported."""
    if TPM2_PYTSS_IMPORT_ERROR is not None:
        raise MissingDependencyError(
            "the Python package tpm2-pytss (and the libtss2 runtime libraries) is required: %s"
            % TPM2_PYTSS_IMPORT_ERROR
        )


def resolve_tcti(tcti=None, environ=None):
    """Return the TCTI string to use: the argument, else $HCP_TCTI/$TPM2TOOLS_TCTI/$TCTI, else the kernel RM.

    Accepted forms: ``device:/dev/tpmrm0``, ``swtpm:host=127.0.0.1,port=2321``,
    ``swtpm:path=/run/swtpm/sock`` (Unix socket), ``tabrmd:bus_type=system``, ``mssim:...``.
    """
    environ = os.environ if environ is None else environ
    if not tcti:
        for name in TCTI_ENV_VARS:
            if environ.get(name):
                tcti = environ[name]
                break
        else:
            tcti = DEFAULT_TCTI
    tcti = tcti.strip()
    kind = tcti.split(":", 1)[0]
    if kind not in TCTI_KINDS:
        raise TpmUnavailableError(
            "unsupported TCTI %r: expected one of %s followed by ':<config>'" % (tcti, ", ".join(TCTI_KINDS))
        )
    return tcti


def parse_pcr_indices(pcrs):
    """Normalise a PCR list given as ints, digit strings or a comma-separated string."""
    if isinstance(pcrs, str):
        pcrs = [p for p in re.split(r"[,\s]+", pcrs.strip()) if p]
    out = []
    for pcr in pcrs:
        try:
            idx = int(pcr)
        except (TypeError, ValueError):
            raise ValueError("PCR index %r is not an integer" % (pcr,))
        if not 0 <= idx < PCR_COUNT:
            raise ValueError("PCR index %d is out of range 0-%d" % (idx, PCR_COUNT - 1))
        if idx not in out:
            out.append(idx)
    return sorted(out)


def pcr_selection_string(bank, indices):
    """The tpm2-tools style selection string, e.g. ``sha256:0,7,11``."""
    if bank not in PCR_BANKS:
        raise ValueError("unsupported PCR bank %r: expected one of %s" % (bank, ", ".join(PCR_BANKS)))
    return "%s:%s" % (bank, ",".join(str(i) for i in indices))


def _attr_names(attrs):
    return [name for name in EK_REQUIRED_ATTRS if not attrs & getattr(TPMA_OBJECT, name)]


def check_ek_public(public):
    """Raise InvalidEkError unless ``public`` (TPM2B_PUBLIC) has the EK's type and attributes."""
    area = public.publicArea
    missing = _attr_names(area.objectAttributes)
    if missing:
        raise InvalidEkError("not an endorsement key: attributes %s are not set" % ", ".join(missing).lower())
    if area.objectAttributes & TPMA_OBJECT.SIGN_ENCRYPT:
        raise InvalidEkError("not an endorsement key: it is a signing key")
    if area.type == TPM2_ALG.RSA:
        bits = area.parameters.rsaDetail.keyBits
        if bits < 2048 or len(bytes(area.unique.rsa)) * 8 != bits:
            raise InvalidEkError("RSA EK must be at least 2048 bits with a matching modulus (got %d)" % bits)
    elif area.type == TPM2_ALG.ECC:
        if not bytes(area.unique.ecc.x) or not bytes(area.unique.ecc.y):
            raise InvalidEkError("ECC EK has an empty public point")
    else:
        raise InvalidEkError("EK type %s is not RSA or ECC" % TPM2_ALG(area.type))
    if area.nameAlg not in (TPM2_ALG.SHA256, TPM2_ALG.SHA384):
        raise InvalidEkError("EK name algorithm %s is not sha256 or sha384" % TPM2_ALG(area.nameAlg))
    return public


def ekpubhash(public):
    """SHA-256 of the EK public in TPM2B_PUBLIC form, 64 lowercase hex characters."""
    return hashlib.sha256(public.marshal()).hexdigest()


def tss_rc(exc):
    """The TPM/TSS response code of a TSS2_Exception (0 if unknown)."""
    return int(getattr(exc, "rc", 0) or 0)


class Tpm(object):
    """An open connection to one TPM. Use as a context manager::

        with Tpm("swtpm:host=127.0.0.1,port=2321") as tpm:
            print(tpm.ekpubhash())
    """

    def __init__(self, tcti=None, ek_type="rsa"):
        require_tpm2_pytss()
        if ek_type not in EK_TYPES:
            raise InvalidEkError("unsupported EK type %r: expected rsa or ecc" % (ek_type,))
        self.tcti = resolve_tcti(tcti)
        self.ek_type = ek_type
        self._tcti_ctx = None
        self.ectx = None
        self._ek = None
        self._ek_transient = False
        self._ek_public = None
        self._ek_cert = None
        self._ek_keep = 0
        self._ek_kept = []
        try:
            self._tcti_ctx = TCTILdr.parse(self.tcti)
            self.ectx = ESAPI(self._tcti_ctx)
        except (TSS2_Exception, OSError, RuntimeError) as exc:
            self.close()
            raise TpmUnavailableError("cannot reach the TPM at TCTI %r: %s" % (self.tcti, exc))

    # -- lifetime -------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        if self.ectx is not None:
            if self._ek is not None and self._ek_transient:
                self.flush(self._ek)
            self._ek = None
            try:
                self.ectx.close()
            except Exception:  # pylint: disable=broad-except  # best effort on teardown
                pass
            self.ectx = None
        if self._tcti_ctx is not None:
            try:
                self._tcti_ctx.close()
            except Exception:  # pylint: disable=broad-except
                pass
            self._tcti_ctx = None

    def flush(self, handle):
        """Flush a transient object or session, ignoring handles the TPM already dropped."""
        if handle is None:
            return
        try:
            self.ectx.flush_context(handle)
        except TSS2_Exception:
            pass

    def shutdown(self):
        """TPM2_Shutdown(STATE): call before stopping a TPM simulator so it is not a DA failure."""
        self.ectx.shutdown(TPM2_SU.STATE)

    # -- sessions -------------------------------------------------------------------------
    def policy_session(self, trial=False):
        """Start an unsalted SHA-256 policy session (the caller flushes it)."""
        kind = TPM2_SE.TRIAL if trial else TPM2_SE.POLICY
        return self.ectx.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, kind, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256
        )

    @contextlib.contextmanager
    def ek_session(self):
        """A policy session satisfying the EK's PolicySecret(TPM_RH_ENDORSEMENT), for one command.

        Fresh and flushed on exit, unless inside keep_ek_session(): there one session (with
        continueSession) serves every EK use, PolicySecret re-run before each (the TPM resets a
        policy session's state after it authorised a command), saving a start and a flush per
        use. A use whose block raised flushes that session (its state is then unknown)."""
        kept = self._ek_kept
        session = kept.pop() if kept else None
        fresh = session is None
        if fresh:
            session = self.policy_session()
            if self._ek_keep:
                self.ectx.trsess_set_attributes(session, TPMA_SESSION.CONTINUESESSION)
        done = False
        try:
            self.ectx.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            yield session
            done = True
        finally:
            if done and self._ek_keep:
                self._ek_kept.append(session)
            else:
                self.flush(session)

    @contextlib.contextmanager
    def keep_ek_session(self):
        """Inside this block, ek_session() reuses one policy session (flushed at the end): an
        attestation authorises the EK three times or more (AK load, ActivateCredential, unseals)."""
        self._ek_keep += 1
        try:
            yield self
        finally:
            self._ek_keep -= 1
            if not self._ek_keep:
                while self._ek_kept:
                    self.flush(self._ek_kept.pop())

    @contextlib.contextmanager
    def salted_session(self):
        """An HMAC session salted to the EK with AES-128-CFB parameter encryption both ways.

        Used so that secrets passed to or returned by the TPM never cross the bus in clear.
        """
        session = self.ectx.start_auth_session(
            self.ek(), ESYS_TR.NONE, TPM2_SE.HMAC, TPMT_SYM_DEF.parse("aes128cfb"), TPM2_ALG.SHA256
        )
        try:
            self.ectx.trsess_set_attributes(
                session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT
            )
            yield session
        finally:
            self.flush(session)

    # -- EK -------------------------------------------------------------------------------
    def ek_template(self):
        """(certificate DER or None, TPM2B_PUBLIC template) per the TCG EK credential profile."""
        spec = EK_TYPES[self.ek_type]
        return create_ek_template(spec["template"], NVReadEK(self.ectx))

    def ek(self):
        """ESYS_TR of the EK: the persistent one at the TCG handle when it matches the template, else a new primary."""
        if self._ek is not None:
            return self._ek
        spec = EK_TYPES[self.ek_type]
        # the template lookup reads the EK certificate from NV: keep it for ek_certificate_der()
        self._ek_cert, template = self.ek_template()
        try:
            handle = self.ectx.tr_from_tpmpublic(spec["handle"])
            public, _name, _qname = self.ectx.read_public(handle)
            if self._same_key_kind(public, template):
                self._ek, self._ek_public, self._ek_transient = handle, public, False
                return handle
            self.ectx.tr_close(handle)
        except TSS2_Exception:
            pass  # no persistent EK: derive it from the endorsement seed
        with self._tpm_errors("create the EK"):
            handle, public, _cd, _ch, _tk = self.ectx.create_primary(
                TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
            )
        self._ek, self._ek_public, self._ek_transient = handle, public, True
        return handle

    @staticmethod
    def _same_key_kind(public, template):
        area, tmpl = public.publicArea, template.publicArea
        return (
            area.type == tmpl.type
            and area.nameAlg == tmpl.nameAlg
            and int(area.objectAttributes) == int(tmpl.objectAttributes)
            and bytes(area.authPolicy) == bytes(tmpl.authPolicy)
        )

    def ek_public(self):
        """The EK public area as TPM2B_PUBLIC."""
        self.ek()
        return self._ek_public

    def ekpubhash(self):
        return ekpubhash(self.ek_public())

    def ek_certificate_der(self):
        """The EK certificate (DER) from its NV index, or None when the TPM has none."""
        self.ek()
        return trim_der(self._ek_cert) if self._ek_cert else None

    # -- PCRs -----------------------------------------------------------------------------
    def read_pcrs(self, bank="sha256", indices=None):
        """Current PCR values: {index: bytes}. The TPM returns at most 8 per call."""
        indices = list(range(PCR_COUNT)) if indices is None else parse_pcr_indices(indices)
        values = {}
        remaining = list(indices)
        while remaining:
            sel = TPML_PCR_SELECTION.parse(pcr_selection_string(bank, remaining))
            with self._tpm_errors("read PCRs"):
                _counter, sel_out, digests = self.ectx.pcr_read(sel)
            got = _selected_indices(sel_out, bank)
            if not got:
                raise TpmError("the TPM has no %s PCR bank (or none of PCRs %s)" % (bank, remaining))
            for idx, digest in zip(got, digests):
                values[idx] = bytes(digest)
            remaining = [i for i in remaining if i not in values]
        return values

    def extend_pcr(self, index, data, bank="sha256"):
        """Extend PCR ``index`` with the ``bank`` digest of ``data``."""
        index = parse_pcr_indices([index])[0]
        digest = hashlib.new(bank, data).digest()
        alg = getattr(TPM2_ALG, bank.upper())
        values = TPML_DIGEST_VALUES([TPMT_HA(hashAlg=alg, digest=TPMU_HA(**{bank: digest}))])
        with self._tpm_errors("extend PCR %d" % index):
            self.ectx.pcr_extend(getattr(ESYS_TR, "PCR%d" % index), values)

    # -- capabilities ---------------------------------------------------------------------
    def _fixed_property(self, prop):
        _more, data = self.ectx.get_capability(TPM2_CAP.TPM_PROPERTIES, prop, 1)
        for item in data.data.tpmProperties:
            if item.property == prop:
                return int(item.value)
        return None

    def manufacturer(self):
        """Manufacturer ID as its 4-character ASCII form (e.g. ``IBM`` for swtpm)."""
        value = self._fixed_property(TPM2_PT.MANUFACTURER) or 0
        return value.to_bytes(4, "big").rstrip(b"\0 ").decode("ascii", "replace")

    def firmware_version(self):
        # TPM_PT_FIRMWARE_VERSION_1/_2 (PT_FIXED + 11/12); tpm2-pytss names neither
        hi = self._fixed_property(TPM2_PT.FIXED + 11) or 0
        lo = self._fixed_property(TPM2_PT.FIXED + 12) or 0
        return "%d.%d.%d.%d" % (hi >> 16, hi & 0xFFFF, lo >> 16, lo & 0xFFFF)

    def supports_command(self, command_code):
        """True if the TPM implements ``command_code``.

        GetCapability(COMMANDS, cc) returns the next implemented command at or above cc,
        so the returned command index must be compared.
        """
        _more, data = self.ectx.get_capability(TPM2_CAP.COMMANDS, int(command_code), 1)
        commands = list(data.data.command)
        return bool(commands) and (int(commands[0]) & 0xFFFF) == (int(command_code) & 0xFFFF)

    def supports_encrypt_decrypt2(self):
        return self.supports_command(TPM2_CC.EncryptDecrypt2)

    # -- error mapping --------------------------------------------------------------------
    @contextlib.contextmanager
    def _tpm_errors(self, what):
        try:
            yield
        except TSS2_Exception as exc:
            raise TpmError("TPM failed to %s: %s (rc 0x%x)" % (what, exc, tss_rc(exc)))


def pcr_bitmap_indices(bitmap):
    """PCR indices set in a TPMS_PCR_SELECTION bitmap (bit i of byte n is PCR 8n+i)."""
    return [byte_idx * 8 + bit for byte_idx, byte in enumerate(bitmap) for bit in range(8) if byte & (1 << bit)]


def _selected_indices(selection, bank):
    alg = getattr(TPM2_ALG, bank.upper())
    out = []
    for sel in selection.pcrSelections[: selection.count]:
        if sel.hash == alg:
            out.extend(pcr_bitmap_indices(bytes(sel.pcrSelect)[: sel.sizeofSelect]))
    return out


def trim_der(data):
    """Cut NV padding after a DER SEQUENCE (EK certificate NV indices are often padded)."""
    data = bytes(data)
    if len(data) < 2 or data[0] != 0x30:
        return data
    first = data[1]
    if first < 0x80:
        return data[: 2 + first]
    nbytes = first & 0x7F
    length = int.from_bytes(data[2:2 + nbytes], "big")
    return data[: 2 + nbytes + length]


def tpm_error_code(exc):
    """The TPM error number of a TSS2_Exception, with format-one handle/parameter/session bits dropped."""
    rc = tss_rc(exc)
    if rc & 0xFFFF0000:  # raised by a TSS layer, not by the TPM
        return rc
    if rc & 0x80:  # format one: the number is bits 0-5, the position is in bits 6 and 8-11
        return 0x80 | (rc & 0x3F)
    return rc & 0xFFF


def rc_is(exc, rc):
    """True if a TSS2_Exception carries the TPM response code ``rc``."""
    return tpm_error_code(exc) == int(rc)


__all__ = [
    "DEFAULT_TCTI",
    "EK_TYPES",
    "Tpm",
    "check_ek_public",
    "ekpubhash",
    "parse_pcr_indices",
    "pcr_selection_string",
    "require_tpm2_pytss",
    "resolve_tcti",
    "rc_is",
    "trim_der",
]
