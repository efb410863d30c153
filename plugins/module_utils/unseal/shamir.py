# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shamir secret sharing over GF(2^8) with identifiable shares (share format v1).

Hand-written on purpose: no well-kept library among our dependencies gives shares that
carry their index, threshold, share-set id and an integrity tag, nor a combiner that
names a corrupted, foreign or duplicated share instead of returning a wrong secret.
The field arithmetic is the textbook one (AES polynomial x^8+x^4+x^3+x+1, generator 3);
every byte position of the secret is shared independently with the same x coordinates,
which lets whole byte strings be multiplied by a field constant with ``bytes.translate``
and added with an integer XOR, so a 1 MiB secret is split at C speed.

Binary layout and text form: docs/shamir-share-format.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import os
import struct

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError

FORMAT_VERSION = 1
MAGIC = b"HCPS"
TEXT_PREFIX = "hcpshare1."
SET_ID_SIZE = 16
COMMITMENT_SIZE = 32
TAG_SIZE = 32
_HEADER = struct.Struct(">4sBBBB16sI32s")  # magic, version, index, threshold, count, set id, length, commitment
HEADER_SIZE = _HEADER.size
MAX_SHARES = 255
MAX_COMBINATIONS = 1000  # upper bound on subsets tried when the first combination is wrong
_COMMIT_LABEL = b"hcp.core shamir commitment v1"


class ShamirError(HcpError):
    """Base class of Shamir split/combine errors."""


class ShareFormatError(ShamirError):
    """A share is truncated, garbled or of an unknown format version."""


class ShareSetMismatchError(ShamirError):
    """Shares from different share sets (another site or generation) were mixed."""


class DuplicateShareError(ShamirError):
    """The same share index was given more than once."""


class NotEnoughSharesError(ShamirError):
    """Fewer valid shares than the threshold."""


class ShareIntegrityError(ShamirError):
    """Shares pass their own integrity tags but no subset reproduces the committed secret."""


# --- GF(2^8) tables -----------------------------------------------------------------
_EXP = [0] * 512
_LOG = [0] * 256
_v = 1
for _i in range(255):
    _EXP[_i] = _v
    _LOG[_v] = _i
    _v ^= (_v << 1) ^ (0x11B if _v & 0x80 else 0)  # multiply by the generator 3
    _v &= 0xFF
for _i in range(255, 512):
    _EXP[_i] = _EXP[_i - 255]
del _v, _i


def _mul(a, b):
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _inv(a):
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return _EXP[255 - _LOG[a]]


# _MUL_TABLES[c] maps every byte b to c*b: bytes.translate multiplies a whole string by c.
_MUL_TABLES = [bytes(_mul(c, b) for b in range(256)) for c in range(256)]


def _xor(a, b):
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _scale(data, c):
    return data.translate(_MUL_TABLES[c])


def _evaluate(coefficients, x):
    """Horner evaluation of the byte-wise polynomials at x; coefficients[0] is the secret."""
    acc = coefficients[-1]
    for coefficient in reversed(coefficients[:-1]):
        acc = _xor(_scale(acc, x), coefficient)
    return acc


def _interpolate(points, length):
    """Lagrange interpolation at x=0 of [(x, y_bytes)]."""
    acc = 0
    for i, (xi, yi) in enumerate(points):
        basis = 1
        for j, (xj, dummy) in enumerate(points):
            if i != j:
                basis = _mul(basis, _mul(xj, _inv(xj ^ xi)))
        acc ^= int.from_bytes(_scale(yi, basis), "big")
    return acc.to_bytes(length, "big")


def commitment(secret, set_id):
    """HMAC-SHA256 of the secret under a key derived from the share-set id."""
    key = hashlib.sha256(_COMMIT_LABEL + set_id).digest()
    return hmac.new(key, secret, hashlib.sha256).digest()


class Share:
    """One share of a split secret; ``repr`` never shows the share bytes."""

    __slots__ = ("index", "threshold", "count", "set_id", "secret_length", "commitment", "data", "version")

    def __init__(self, index, threshold, count, set_id, commitment_, data, version=FORMAT_VERSION):
        self.version = version
        self.index = index
        self.threshold = threshold
        self.count = count
        self.set_id = bytes(set_id)
        self.secret_length = len(data)
        self.commitment = bytes(commitment_)
        self.data = bytes(data)

    def __repr__(self):
        return "Share(index=%d, threshold=%d, count=%d, set_id=%s, secret_length=%d)" % (
            self.index, self.threshold, self.count, self.set_id.hex(), self.secret_length)

    def __eq__(self, other):
        return isinstance(other, Share) and self.to_bytes() == other.to_bytes()

    def __hash__(self):
        return hash(self.to_bytes())

    def _header(self):
        return _HEADER.pack(MAGIC, self.version, self.index, self.threshold, self.count, self.set_id,
                            self.secret_length, self.commitment)

    def to_bytes(self):
        body = self._header() + self.data
        return body + hashlib.sha256(body).digest()

    def to_text(self):
        return TEXT_PREFIX + base64.urlsafe_b64encode(self.to_bytes()).decode("ascii").rstrip("=")

    @classmethod
    def from_bytes(cls, blob, label="share"):
        """Parse and verify a binary share; ``label`` names it in errors."""
        if not isinstance(blob, (bytes, bytearray)):
            raise ShareFormatError("%s: expected bytes, got %s" % (label, type(blob).__name__))
        blob = bytes(blob)
        if len(blob) < HEADER_SIZE + TAG_SIZE:
            raise ShareFormatError("%s: truncated (%d bytes, header and tag alone need %d)"
                                   % (label, len(blob), HEADER_SIZE + TAG_SIZE))
        magic, version, index, threshold, count, set_id, length, commit = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise ShareFormatError("%s: not an hcp.core Shamir share (bad magic)" % label)
        if version != FORMAT_VERSION:
            raise ShareFormatError("%s: unsupported share format version %d (this library reads %d)"
                                   % (label, version, FORMAT_VERSION))
        if len(blob) != HEADER_SIZE + length + TAG_SIZE:
            raise ShareFormatError("%s: truncated or padded (%d bytes, header says %d)"
                                   % (label, len(blob), HEADER_SIZE + length + TAG_SIZE))
        body, tag = blob[:-TAG_SIZE], blob[-TAG_SIZE:]
        if not hmac.compare_digest(hashlib.sha256(body).digest(), tag):
            raise ShareFormatError("%s: integrity tag mismatch (corrupted share)" % label)
        if not (1 <= threshold <= count and 1 <= index <= MAX_SHARES):
            raise ShareFormatError("%s: inconsistent header (index %d, threshold %d, count %d)"
                                   % (label, index, threshold, count))
        return cls(index, threshold, count, set_id, commit, body[HEADER_SIZE:], version)

    @classmethod
    def from_text(cls, text, label="share"):
        """Parse the ``hcpshare1.<base64url>`` text form."""
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise ShareFormatError("%s: text form is not ASCII" % label) from None
        if not isinstance(text, str):
            raise ShareFormatError("%s: expected a share string, got %s" % (label, type(text).__name__))
        text = text.strip()
        if not text.startswith(TEXT_PREFIX):
            raise ShareFormatError("%s: missing the %r prefix" % (label, TEXT_PREFIX))
        payload = text[len(TEXT_PREFIX):]
        try:
            blob = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        except (binascii.Error, ValueError):
            raise ShareFormatError("%s: invalid base64url" % label) from None
        return cls.from_bytes(blob, label)


class CombineResult:
    """Recovered secret plus the share indices used and the shares excluded (with reasons)."""

    __slots__ = ("secret", "used", "excluded")

    def __init__(self, secret, used, excluded):
        self.secret = secret
        self.used = used
        self.excluded = excluded

    def __repr__(self):
        return "CombineResult(used=%r, excluded=%r)" % (self.used, self.excluded)


def split(secret, shares, threshold=None, set_id=None):
    """Split ``secret`` into ``shares`` shares of which ``threshold`` (default: majority) recover it."""
    if isinstance(secret, bytearray):
        secret = bytes(secret)
    if not isinstance(secret, bytes):
        raise ShamirError("secret must be bytes, got %s" % type(secret).__name__)
    if not isinstance(shares, int) or isinstance(shares, bool) or not 1 <= shares <= MAX_SHARES:
        raise ShamirError("share count must be an integer in 1..%d, got %r" % (MAX_SHARES, shares))
    if threshold is None:
        threshold = shares // 2 + 1
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= shares:
        raise ShamirError("threshold must be an integer in 1..%d (the share count), got %r" % (shares, threshold))
    if set_id is None:
        set_id = os.urandom(SET_ID_SIZE)
    if not isinstance(set_id, bytes) or len(set_id) != SET_ID_SIZE:
        raise ShamirError("set_id must be %d bytes" % SET_ID_SIZE)
    if len(secret) >= 2 ** 32:
        raise ShamirError("secret too long (at most 4 GiB - 1)")
    coefficients = [secret] + [os.urandom(len(secret)) for dummy in range(threshold - 1)]
    commit = commitment(secret, set_id)
    return [Share(x, threshold, shares, set_id, commit, _evaluate(coefficients, x)) for x in range(1, shares + 1)]


def _coerce(item, label):
    if isinstance(item, Share):
        return item
    if isinstance(item, str):
        return Share.from_text(item, label)
    if isinstance(item, (bytes, bytearray)):
        if bytes(item[:len(TEXT_PREFIX)]) == TEXT_PREFIX.encode("ascii"):
            return Share.from_text(bytes(item), label)
        return Share.from_bytes(item, label)
    raise ShareFormatError("%s: expected a Share, share text or share bytes, got %s" % (label, type(item).__name__))


def _recover(shares):
    return _interpolate([(s.index, s.data) for s in shares], shares[0].secret_length)


def _matches(shares):
    first = shares[0]
    return hmac.compare_digest(commitment(_recover(shares), first.set_id), first.commitment)


def combine_detailed(shares):
    """Recover the secret from shares (Share objects, text or bytes).

    Shares that fail their integrity tag are excluded when enough good ones remain;
    foreign and duplicated shares are refused. When the first ``threshold`` shares do
    not reproduce the committed secret, other subsets are tried (at most
    MAX_COMBINATIONS) and shares inconsistent with the recovered secret are excluded.
    """
    shares = list(shares)
    if not shares:
        raise NotEnoughSharesError("no shares given")
    parsed, excluded, format_errors = [], [], []
    for position, item in enumerate(shares, 1):
        label = "share #%d" % position
        try:
            parsed.append((label, _coerce(item, label)))
        except ShareFormatError as exc:
            format_errors.append(exc)
            excluded.append({"share": label, "index": None, "reason": str(exc)})
    if not parsed:
        raise ShareFormatError("; ".join(str(e) for e in format_errors))

    def set_key(share):
        return (share.set_id, share.threshold, share.count, share.secret_length, share.commitment)

    groups = {}
    for label, share in parsed:
        groups.setdefault(set_key(share), []).append(label)
    if len(groups) > 1:
        majority = max(groups.values(), key=len)
        foreign = [lbl for members in groups.values() if members is not majority for lbl in members]
        raise ShareSetMismatchError("shares from different share sets (another site or generation): %s differ from %s"
                                    % (", ".join(foreign), ", ".join(majority)))
    seen = {}
    for label, share in parsed:
        if share.index in seen:
            raise DuplicateShareError("%s and %s both carry share index %d" % (seen[share.index], label, share.index))
        seen[share.index] = label
    threshold = parsed[0][1].threshold
    if len(parsed) < threshold:
        if format_errors:
            raise ShareFormatError("%s; %d valid share(s) left, %d needed"
                                   % ("; ".join(str(e) for e in format_errors), len(parsed), threshold))
        raise NotEnoughSharesError("%d valid share(s), %d needed" % (len(parsed), threshold))
    good = None
    for tried, subset in enumerate(itertools.combinations(parsed, threshold)):
        if tried >= MAX_COMBINATIONS:
            break
        if _matches([s for dummy, s in subset]):
            good = list(subset)
            break
    if good is None:
        raise ShareIntegrityError("no subset of %d share(s) among %s reproduces the committed secret "
                                  "(shares altered with recomputed tags, or more bad shares than spare ones)"
                                  % (threshold, ", ".join("%s (index %d)" % (lbl, s.index) for lbl, s in parsed)))
    base = [s for dummy, s in good[:-1]]
    used = [s.index for dummy, s in good]
    for label, share in parsed:
        if share.index in used:
            continue
        if _matches(base + [share]):
            used.append(share.index)
        else:
            excluded.append({"share": label, "index": share.index,
                             "reason": "%s (index %d) is inconsistent with the committed secret" % (label, share.index)})
    return CombineResult(_recover([s for dummy, s in good]), sorted(used), excluded)


def combine(shares):
    """Recover the secret; see combine_detailed."""
    return combine_detailed(shares).secret
