# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key-server's auth-challenge: proof of possession of the private key of the caller's
attested certificate, then a short-lived session token bound to that certificate.

A challenge and a session token are the same fixed-size, MACed (HMAC-SHA256 under a key derived
from the store's master key, so every worker process of the service accepts them) structure::

    kind (1: b"C" challenge / b"S" session) | layout version (1) | time (8, big-endian seconds:
    issued for a challenge, expiry for a session) | nonce (16) | certificate SHA-256 (32) | MAC (32)

encoded base64url without padding (120 characters). The client signs
``SIGNING_CONTEXT + raw challenge`` with its certificate's key (ECDSA P-256/SHA-256, Ed25519 or
RSA PKCS#1 v1.5/SHA-256: pki.verify_signature). An answer is accepted once: the nonce is then
recorded in ``used_dir`` (a file created with O_EXCL: shared by every worker) until the challenge
expires; at most ``max_used`` such records exist at a time (beyond: 503, retry later), so the
replay memory is bounded. Only an answer with a valid signature is recorded: a caller without
the key cannot fill it. Hand-written (a few lines over hmac/os) because the exact binding to
the certificate and the shared replay memory are what matter here; no library offers them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import time

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.keyserver.errors import AuthError, KeyServerError

SIGNING_CONTEXT = b"hcp.core.keyserver auth-challenge v1\0"
LAYOUT = 1
KIND_CHALLENGE = b"C"
KIND_SESSION = b"S"
_BODY = struct.Struct(">ccQ16s32s")
TOKEN_BYTES = _BODY.size + 32
TOKEN_CHARS = 120
DEFAULT_CHALLENGE_TTL = 60
DEFAULT_SESSION_TTL = 300
DEFAULT_MAX_USED = 4096
CLOCK_SKEW = 5
MAX_SIGNATURE_BYTES = 1024


class SessionExpired(AuthError):
    """A session token that is no longer (or not) valid for this certificate: answer with a new challenge."""

    status = 401


def _encode(raw):
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode(token, what):
    if not isinstance(token, str) or len(token) != TOKEN_CHARS:
        raise AuthError("%s is malformed (not a %d-character token)" % (what, TOKEN_CHARS))
    try:
        raw = base64.urlsafe_b64decode(token + "==")
    except (ValueError, TypeError):
        raise AuthError("%s is malformed (not base64url)" % what) from None
    if len(raw) != TOKEN_BYTES:
        raise AuthError("%s is malformed" % what)
    return raw


class Authenticator(object):
    """Issues and checks challenges and session tokens. ``key``: 32 bytes (KeyStore.auth_key);
    ``used_dir``: the replay memory (created 0700); ``clock``: seconds since the epoch."""

    def __init__(self, key, used_dir, challenge_ttl=DEFAULT_CHALLENGE_TTL, session_ttl=DEFAULT_SESSION_TTL,
                 max_used=DEFAULT_MAX_USED, clock=time.time):
        self._key = key
        self.used_dir = used_dir
        self.challenge_ttl = challenge_ttl
        self.session_ttl = session_ttl
        self.max_used = max_used
        self.clock = clock
        os.makedirs(used_dir, mode=0o700, exist_ok=True)

    def _mac(self, body):
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def _make(self, kind, when, fingerprint):
        body = _BODY.pack(kind, bytes([LAYOUT]), int(when), os.urandom(16), bytes.fromhex(fingerprint))
        return _encode(body + self._mac(body))

    def _open(self, token, kind, fingerprint, what):
        raw = _decode(token, what)
        body, mac = raw[:_BODY.size], raw[_BODY.size:]
        if not hmac.compare_digest(self._mac(body), mac):
            raise AuthError("%s was not issued by this key-server (forged or altered)" % what)
        got_kind, layout, when, nonce, cert = _BODY.unpack(body)
        if got_kind != kind or layout != bytes([LAYOUT]):
            raise AuthError("%s is not a %s" % (what, "challenge" if kind == KIND_CHALLENGE else "session token"))
        if not hmac.compare_digest(cert, bytes.fromhex(fingerprint)):
            raise AuthError("%s was issued to another certificate" % what)
        return raw, when, nonce

    def challenge(self, fingerprint):
        """A new challenge for the certificate with SHA-256 ``fingerprint`` (hex)."""
        return self._make(KIND_CHALLENGE, self.clock(), fingerprint)

    def answer(self, fingerprint, public_key, challenge, signature):
        """Check an answer (``signature``: bytes) to ``challenge`` by the certificate
        ``fingerprint`` whose key is ``public_key``; a new session token (str). AuthError (403)
        for a forged, altered, foreign, expired, badly signed or replayed answer."""
        raw, issued, nonce = self._open(challenge, KIND_CHALLENGE, fingerprint, "the challenge")
        now = self.clock()
        if issued > now + CLOCK_SKEW or now - issued > self.challenge_ttl:
            raise AuthError("the challenge has expired (answer within %d seconds): ask again" % self.challenge_ttl)
        if not isinstance(signature, bytes) or not 0 < len(signature) <= MAX_SIGNATURE_BYTES:
            raise AuthError("the challenge answer's signature is missing or too long")
        try:
            pki.verify_signature(public_key, SIGNING_CONTEXT + raw, signature)
        except HcpError:
            raise AuthError("the challenge answer is not signed with the key of the client certificate") from None
        self._remember(nonce, now)
        return self._make(KIND_SESSION, now + self.session_ttl, fingerprint)

    def session(self, fingerprint, token):
        """Check a session token for the certificate ``fingerprint``; SessionExpired (401: a new
        challenge follows) when it expired, AuthError (403) when forged or foreign."""
        _raw, expires, _nonce = self._open(token, KIND_SESSION, fingerprint, "the session token")
        if self.clock() >= expires:
            raise SessionExpired("the session has expired: answer a new challenge")
        return int(expires - self.clock())

    def _remember(self, nonce, now):
        path = os.path.join(self.used_dir, nonce.hex())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise AuthError("the challenge was already answered (replayed answer): refused") from None
        except OSError as exc:
            raise KeyServerError("cannot record the answered challenge: %s" % (exc.strerror or exc), 503) from None
        os.close(fd)
        self._purge(now)

    def _purge(self, now):
        """Forget answers whose challenge expired; 503 when max_used unexpired answers are held."""
        entries = os.listdir(self.used_dir)
        if len(entries) <= self.max_used // 2:
            return
        live = 0
        for entry in entries:
            path = os.path.join(self.used_dir, entry)
            try:
                if now - os.lstat(path).st_mtime > self.challenge_ttl + CLOCK_SKEW:
                    os.unlink(path)
                else:
                    live += 1
            except OSError:
                pass
        if live > self.max_used:  # the answer stays consumed: a replay of it is refused later too
            raise KeyServerError("too many authentications in the last %d seconds: retry later" % self.challenge_ttl, 503)
