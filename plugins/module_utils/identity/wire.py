# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wire protocol v1 of the identity provider and the security service (docs/identity.md,
"Wire protocol"): length-prefixed frames on host-local Unix stream sockets.

A frame is a fixed 24-byte header, then ``auth_len`` bytes of authentication, then
``body_len`` bytes of body. Header, network byte order, ``struct`` format ``>4sHHBBHII4s``:

====== ===== ============ ====================================================================
offset size field        meaning
====== ===== ============ ====================================================================
0      4     magic        ``b"HCPI"``
4      2     version      1
6      2     opcode       ``OPCODES`` (the same number in the answer)
8      1     auth_type    0 none, 1 JWT bearer (client calls), 2 trusted-side signature (admin calls)
9      1     content_type 0 JSON (1 CBOR: reserved, refused with 400)
10     2     status       0 in requests; the answer's status (0 ok, else 400/401/403/404/409/413/500/503)
12     4     auth_len     at most 8 KiB
16     4     body_len     at most 1 MiB (a server may set a lower bound)
20     4     reserved     zero
====== ===== ============ ====================================================================

The body is a JSON object (UTF-8), decoded by ``jsonutil.loads`` (bounded). An error answer's
body is ``{"error": "<code word>", "detail": "..."}`` and never carries a secret. A connection
may carry any number of request/answer pairs; a frame that cannot be parsed (bad magic, version,
reserved bytes, lengths beyond the bounds) is answered with its error and the connection closed.

Reads are bounded in time as well as size: a server waits ``idle_timeout`` for the first byte
of a request, then the whole frame must arrive within ``frame_timeout`` (a slow writer cannot
hold a thread); at most ``max_connections`` connections are served at once, and at most
``max_per_uid`` (a quarter of them) for one non-root peer uid (more are answered 503 ``busy``
and closed), so one application cannot starve the others by holding idle connections.
Written by hand because the standard library has no framed Unix-socket RPC and the well-kept
ones (gRPC, Thrift) are not in this project's dependencies.
"""

from __future__ import annotations

import collections
import grp
import json
import os
import socket
import stat
import struct
import sys
import threading
import time
import traceback

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError

MAGIC = b"HCPI"
VERSION = 1
HEADER = struct.Struct(">4sHHBBHII4s")
HEADER_SIZE = HEADER.size  # 24
RESERVED = b"\0\0\0\0"
MAX_AUTH = 8 * 1024
MAX_BODY = 1024 * 1024

AUTH_NONE = 0
AUTH_JWT = 1
AUTH_SIGNED = 2
AUTH_TYPES = (AUTH_NONE, AUTH_JWT, AUTH_SIGNED)
CONTENT_JSON = 0
CONTENT_CBOR = 1  # reserved

OK = 0
STATUSES = (OK, 400, 401, 403, 404, 409, 413, 500, 503)

# Opcode numbers are part of the protocol: never renumber, only add.
OPCODES = {
    "ping": 1,
    "share_trust_bundle": 2,
    # identity provider
    "add_client": 16,
    "prove_client": 17,
    "remove_client": 18,
    "fetch_token": 19,
    # security service
    "generate_key": 32,
    "import_key": 33,
    "export_public_key": 34,
    "destroy_key": 35,
    "list_keys": 36,
    "sign": 37,
    "verify": 38,
    "asymmetric_encrypt": 39,
    "asymmetric_decrypt": 40,
    "aead_encrypt": 41,
    "aead_decrypt": 42,
    "generate_random": 43,
}
OPCODE_NAMES = dict((number, name) for name, number in OPCODES.items())

DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_FRAME_TIMEOUT = 5.0
DEFAULT_MAX_CONNECTIONS = 128

Peer = collections.namedtuple("Peer", "pid uid gid")
_UCRED = struct.Struct("3i")


class Request(object):
    """One decoded request: ``opcode`` (int), ``name`` (its OPCODES name or None), ``auth_type``,
    ``auth`` (bytes), ``body`` (dict), ``peer`` (Peer(pid, uid, gid) from SO_PEERCRED)."""

    __slots__ = ("opcode", "name", "auth_type", "auth", "body", "peer")

    def __init__(self, opcode, auth_type, auth, body, peer):
        self.opcode = opcode
        self.name = OPCODE_NAMES.get(opcode)
        self.auth_type = auth_type
        self.auth = auth
        self.body = body
        self.peer = peer

    def __repr__(self):  # never the auth bytes
        return "Request(%s, peer=%r)" % (self.name or self.opcode, self.peer)


class _Closed(Exception):
    """The peer closed the connection (cleanly, between frames)."""


def encode_body(body):
    """The JSON bytes of a body (a dict)."""
    if not isinstance(body, dict):
        raise IdentityError(500, "internal", "a body must be a JSON object")
    return json.dumps(body, separators=(",", ":"), sort_keys=True, allow_nan=False).encode("utf-8")


def encode_frame(opcode, body, auth=b"", auth_type=AUTH_NONE, status=OK, content_type=CONTENT_JSON):
    """One frame as bytes (``body``: a dict, or bytes already encoded)."""
    data = body if isinstance(body, (bytes, bytearray)) else encode_body(body)
    auth = auth or b""
    if isinstance(auth, str):
        auth = auth.encode("ascii")
    if len(auth) > MAX_AUTH:
        raise IdentityError(413, "too-large", "the authentication field is larger than %d bytes" % MAX_AUTH)
    if len(data) > MAX_BODY:
        raise IdentityError(413, "too-large", "the body is larger than %d bytes" % MAX_BODY)
    return HEADER.pack(MAGIC, VERSION, opcode, auth_type, content_type, status, len(auth), len(data), RESERVED) + auth + data


def _recv_exact(sock, size, deadline):
    """``size`` bytes from ``sock`` before ``deadline`` (time.monotonic()); socket.timeout or EOFError."""
    chunks = []
    missing = size
    while missing:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("frame not complete in time")
        sock.settimeout(remaining)
        chunk = sock.recv(min(missing, 256 * 1024))
        if not chunk:
            raise EOFError("connection closed inside a frame")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def parse_header(raw, max_body=MAX_BODY, request=True):
    """(opcode, auth_type, content_type, status, auth_len, body_len) of a 24-byte header, or
    IdentityError 400/413 (the connection must then be closed: the stream cannot be resynchronised)."""
    magic, version, opcode, auth_type, content_type, status, auth_len, body_len, reserved = HEADER.unpack(raw)
    if magic != MAGIC:
        raise IdentityError(400, "bad-frame", "not an HCPI frame (bad magic)")
    if version != VERSION:
        raise IdentityError(400, "bad-version", "wire protocol version %d is not supported (this side speaks %d)" % (version, VERSION))
    if reserved != RESERVED:
        raise IdentityError(400, "bad-frame", "the reserved header bytes must be zero")
    if auth_len > MAX_AUTH:
        raise IdentityError(413, "too-large", "the authentication field is larger than %d bytes" % MAX_AUTH)
    if body_len > max_body:
        raise IdentityError(413, "too-large", "the body is larger than %d bytes" % max_body)
    if request:
        if status != OK:
            raise IdentityError(400, "bad-frame", "the status of a request must be 0")
        if auth_type not in AUTH_TYPES:
            raise IdentityError(400, "bad-auth-type", "authentication type %d is not defined" % auth_type)
    if content_type != CONTENT_JSON:
        raise IdentityError(400, "unsupported-content-type", "content type %d is not supported (0: JSON)" % content_type)
    return opcode, auth_type, content_type, status, auth_len, body_len


def decode_body(data, max_body=MAX_BODY):
    """The dict of a JSON body (an empty body is ``{}``), or IdentityError 400."""
    if not data:
        return {}
    try:
        value = jsonutil.loads(data, "the body", max_bytes=max_body, max_depth=16)
    except HcpError as exc:
        raise IdentityError(400, "bad-body", str(exc)) from None
    if not isinstance(value, dict):
        raise IdentityError(400, "bad-body", "the body must be a JSON object")
    return value


def peer_credentials(sock):
    """Peer(pid, uid, gid) of a connected Unix socket (SO_PEERCRED: the kernel's word, not the peer's)."""
    return Peer(*_UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)))


def _log(message):
    try:
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Server(object):
    """A listening Unix socket served by threads (see :func:`serve`)."""

    def __init__(self, path, handler, mode=0o660, group=None, max_body=MAX_BODY, idle_timeout=DEFAULT_IDLE_TIMEOUT,
                 frame_timeout=DEFAULT_FRAME_TIMEOUT, max_connections=DEFAULT_MAX_CONNECTIONS, max_per_uid=None, log=_log):
        if not os.path.isabs(path):
            raise IdentityError(500, "bad-config", "socket paths must be absolute: %r" % path)
        self.path = path
        self.handler = handler
        self.max_body = min(int(max_body), MAX_BODY)
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.log = log
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_per_uid = max_per_uid or max(1, max_connections // 4)
        self._per_uid = collections.Counter()
        self._closing = threading.Event()
        self._conns = set()
        self._conns_lock = threading.Lock()
        self.sock = self._bind(path, mode, group)
        self._thread = threading.Thread(target=self._accept_loop, name="hcpi-accept %s" % path, daemon=True)
        self._thread.start()

    @staticmethod
    def _bind(path, mode, group):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise IdentityError(500, "bad-config", "%s exists and is not a socket: refusing to replace it" % path)
            os.unlink(path)
        gid = -1
        if group is not None:
            gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # nobody may connect before the mode and group below are set
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        if gid != -1:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
        sock.listen(128)
        return sock

    def _accept_loop(self):
        while not self._closing.is_set():
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                if self._closing.is_set():
                    return
                time.sleep(0.05)
                continue
            try:
                peer = peer_credentials(conn)
            except OSError:
                conn.close()
                continue
            with self._conns_lock:
                crowded = peer.uid != 0 and self._per_uid[peer.uid] >= self.max_per_uid
                if not crowded:
                    self._per_uid[peer.uid] += 1
            if crowded:
                self._refuse(conn)
                continue
            if not self._slots.acquire(blocking=False):
                self._release_uid(peer.uid)
                self._refuse(conn)
                continue
            try:
                threading.Thread(target=self._serve_connection, args=(conn, peer), daemon=True).start()
            except RuntimeError:
                self._slots.release()
                self._release_uid(peer.uid)
                self._refuse(conn)

    def _release_uid(self, uid):
        with self._conns_lock:
            self._per_uid[uid] -= 1
            if self._per_uid[uid] <= 0:
                del self._per_uid[uid]

    @staticmethod
    def _refuse(conn):
        try:
            conn.settimeout(0.5)
            conn.sendall(encode_frame(0, IdentityError(503, "busy", "too many connections").body(), status=503))
        except OSError:
            pass
        finally:
            conn.close()

    def _serve_connection(self, conn, peer):
        with self._conns_lock:
            self._conns.add(conn)
        try:
            while not self._closing.is_set():
                try:
                    request = self._read_request(conn, peer)
                except _Closed:
                    return
                except IdentityError as exc:  # unparseable frame: answer, then close
                    self._send(conn, 0, exc.body(), exc.status)
                    return
                except (socket.timeout, EOFError, OSError):
                    return
                answer, status = self._dispatch(request)
                if not self._send(conn, request.opcode, answer, status):
                    return
        except Exception as exc:  # pylint: disable=broad-except  # a connection never kills the server
            self.log("hcpi %s: connection failed: %s" % (self.path, type(exc).__name__))
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass
            self._release_uid(peer.uid)
            self._slots.release()

    def _read_request(self, conn, peer):
        conn.settimeout(self.idle_timeout)
        try:
            first = conn.recv(HEADER_SIZE)
        except socket.timeout:
            raise _Closed() from None
        if not first:
            raise _Closed()
        deadline = time.monotonic() + self.frame_timeout
        raw = first + (_recv_exact(conn, HEADER_SIZE - len(first), deadline) if len(first) < HEADER_SIZE else b"")
        opcode, auth_type, _ctype, _status, auth_len, body_len = parse_header(raw, self.max_body)
        auth = _recv_exact(conn, auth_len, deadline) if auth_len else b""
        data = _recv_exact(conn, body_len, deadline) if body_len else b""
        return Request(opcode, auth_type, auth, data, peer)

    def _dispatch(self, request):
        try:
            request.body = decode_body(request.body, self.max_body)
            answer = self.handler(request)
            if answer is None:
                answer = {}
            encode_body(answer)  # fails here, not half-way through the send
            return answer, OK
        except IdentityError as exc:
            return exc.body(), exc.status if exc.status in STATUSES and exc.status else 500
        except Exception as exc:  # pylint: disable=broad-except  # every failure is an answer, never a dead daemon
            self.log("hcpi %s: internal error in %s: %s\n%s" % (
                self.path, request.name or request.opcode, type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__))))
            return IdentityError(500, "internal", "internal error (see the service's log)").body(), 500

    def _send(self, conn, opcode, body, status):
        try:
            frame = encode_frame(opcode, body, status=status)
        except (IdentityError, ValueError, TypeError):
            frame = encode_frame(opcode, IdentityError(500, "internal", "the answer could not be encoded").body(), status=500)
        try:
            conn.settimeout(self.frame_timeout)
            conn.sendall(frame)
            return True
        except OSError:
            return False

    def close(self):
        """Stop accepting, close open connections, remove the socket file."""
        if self._closing.is_set():
            return
        self._closing.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass

    shutdown = close

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def serve(path, handler, mode=0o660, group=None, **options):
    """Listen on the Unix socket ``path`` (mode ``mode``, group ``group``: a name or gid) and
    answer each request with ``handler(request)`` (a dict) in its own thread; ``handler``
    raises IdentityError for a refusal. Returns the running :class:`Server` (``close()``).
    ``options``: max_body, idle_timeout, frame_timeout, max_connections, max_per_uid, log."""
    return Server(path, handler, mode=mode, group=group, **options)


class Connection(object):
    """A client connection to one socket, reused across calls (not thread-safe: one per thread).
    A call on a connection the server has closed meanwhile (idle timeout, restart) reconnects once."""

    def __init__(self, path, timeout=5.0, max_body=MAX_BODY):
        self.path = path
        self.timeout = timeout
        self.max_body = max_body
        self.sock = None

    def _connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise IdentityError(0, "unreachable", "cannot connect to %s: %s" % (self.path, exc.strerror or type(exc).__name__)) from None
        self.sock = sock

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def call(self, opcode, body=None, auth=b"", auth_type=AUTH_NONE):
        """The answer body (dict) of one request; IdentityError(status, error, detail) for an
        error answer, IdentityError(0, ...) when the service cannot be reached or answers garbage."""
        if isinstance(opcode, str):
            opcode = OPCODES[opcode]
        frame = encode_frame(opcode, body or {}, auth=auth, auth_type=auth_type)
        reused = self.sock is not None
        if not reused:
            self._connect()
        try:
            return self._exchange(frame)
        except _Closed:
            self.close()
            if not reused:
                raise IdentityError(0, "unreachable", "%s closed the connection without an answer" % self.path) from None
        self._connect()  # the server closed an idle connection: once more on a new one
        try:
            return self._exchange(frame)
        except _Closed:
            self.close()
            raise IdentityError(0, "unreachable", "%s closed the connection without an answer" % self.path) from None

    def _exchange(self, frame):
        sock = self.sock
        try:
            sock.settimeout(self.timeout)
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may have answered before closing (503 busy, a frame error): read it
            try:
                first = sock.recv(HEADER_SIZE)
            except (BrokenPipeError, ConnectionResetError):
                first = b""
        except OSError as exc:
            self.close()
            raise IdentityError(0, "unreachable", "%s: %s" % (self.path, exc.strerror or type(exc).__name__)) from None
        if not first:
            raise _Closed()
        try:
            deadline = time.monotonic() + self.timeout
            raw = first + (_recv_exact(sock, HEADER_SIZE - len(first), deadline) if len(first) < HEADER_SIZE else b"")
            _op, _auth_type, _ct, status, auth_len, body_len = parse_header(raw, self.max_body, request=False)
            if auth_len:
                _recv_exact(sock, auth_len, deadline)
            data = _recv_exact(sock, body_len, deadline) if body_len else b""
            body = decode_body(data, self.max_body)
        except IdentityError as exc:
            self.close()
            raise IdentityError(0, "bad-answer", "%s answered with an unusable frame: %s" % (self.path, exc.detail)) from None
        except (socket.timeout, EOFError, OSError) as exc:
            self.close()
            raise IdentityError(0, "unreachable", "%s: no complete answer (%s)" % (self.path, type(exc).__name__)) from None
        if status != OK:
            error = body.get("error") if isinstance(body.get("error"), str) else None
            detail = body.get("detail") if isinstance(body.get("detail"), str) else ""
            if status == 503 and error == "busy":
                self.close()
            raise IdentityError(status, error, detail)
        return body


def call(path, opcode, body=None, auth=b"", auth_type=AUTH_NONE, timeout=5.0):
    """One request on a new connection to ``path``: the answer body (dict), or IdentityError
    (status, error, detail). ``opcode``: its number or its OPCODES name."""
    with Connection(path, timeout=timeout) as conn:
        return conn.call(opcode, body, auth=auth, auth_type=auth_type)


# -- daemon helpers shared by the identity components -------------------------------------------
REQUIRED = object()
MAX_CONFIG = 64 * 1024


def load_config(path, fields):
    """The validated configuration (a dict) of the JSON file ``path`` (at most 64 KiB, bounded
    decoding). ``fields``: ``{name: (types, default)}`` with ``REQUIRED`` as the default of a
    required key; unknown keys are refused; a key ending in ``_dir``, ``_path`` or ``socket``
    must be an absolute path (or None when its default is None). IdentityError 500 ``bad-config``."""
    def bad(detail):
        return IdentityError(500, "bad-config", "%s: %s" % (path, detail))
    if not isinstance(path, str) or not os.path.isabs(path):
        raise IdentityError(500, "bad-config", "the configuration file must be given by an absolute path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_CONFIG + 1)
    except OSError as exc:
        raise bad("cannot read it: %s" % (exc.strerror or exc)) from None
    try:
        data = jsonutil.loads(raw, "the configuration", max_bytes=MAX_CONFIG, max_depth=8)
    except HcpError as exc:
        raise bad(str(exc)) from None
    if not isinstance(data, dict):
        raise bad("the configuration must be a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise bad("unknown setting(s): %s" % ", ".join(unknown[:5]))
    config = {}
    for name, (types, default) in fields.items():
        if name not in data:
            if default is REQUIRED:
                raise bad("%s is required" % name)
            config[name] = default
            continue
        value = data[name]
        if value is None and default is None:
            config[name] = None
            continue
        allowed = types if isinstance(types, tuple) else (types,)
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise bad("%s has the wrong type" % name)
        if (name.endswith("_dir") or name.endswith("_path") or name.endswith("socket")) and not os.path.isabs(value):
            raise bad("%s must be an absolute path" % name)
        config[name] = value
    return config


def run_daemon(servers, tick=None, interval=1.0, stop=None):
    """Serve until SIGTERM/SIGINT (or ``stop``, a threading.Event, is set), calling ``tick()``
    every ``interval`` seconds (its failures are logged, never fatal); then close every server."""
    import signal
    stop = stop or threading.Event()

    def _stop(_signum, _frame):
        stop.set()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    try:
        while not stop.wait(interval):
            if tick is not None:
                try:
                    tick()
                except Exception as exc:  # pylint: disable=broad-except  # a failing tick never ends the daemon
                    _log("tick failed: %s: %s" % (type(exc).__name__, exc if isinstance(exc, HcpError) else ""))
    finally:
        for server in servers:
            server.close()
    return 0
