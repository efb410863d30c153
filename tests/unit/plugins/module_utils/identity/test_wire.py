# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wire protocol v1 on real Unix sockets: framing, bounds, slow writers, garbage, peer credentials."""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import struct
import tempfile
import time

import pytest

from ansible_collections.hcp.core.plugins.module_utils.identity import wire
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError
from ansible_collections.hcp.core.tests.unit.plugins.module_utils.identity.idhelpers import Child


def _handler(request):
    if request.name == "ping":
        return {"pong": True, "peer": list(request.peer), "auth_type": request.auth_type, "auth": request.auth.decode("ascii"),
                "echo": request.body}
    if request.name == "sign":
        raise IdentityError(403, "forbidden", "not you")
    if request.name == "verify":
        raise RecursionError("deep")
    if request.name == "list_keys":
        return {"x": float("nan")}  # not encodable as JSON
    raise IdentityError(400, "unknown-opcode", "no such operation")


@pytest.fixture
def server(tmp_path):
    srv = wire.serve(str(tmp_path / "s.sock"), _handler, mode=0o660, frame_timeout=0.5, idle_timeout=5)
    yield srv
    srv.close()


def _raw(path, data, read=True):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(3)
        sock.connect(path)
        sock.sendall(data)
        if not read:
            return None
        head = b""
        while len(head) < wire.HEADER_SIZE:
            chunk = sock.recv(wire.HEADER_SIZE - len(head))
            if not chunk:
                return head
            head += chunk
        _op, _at, _ct, status, alen, blen = wire.parse_header(head, request=False)
        body = b""
        while len(body) < alen + blen:
            body += sock.recv(alen + blen - len(body))
        return status, wire.decode_body(body)


def test_header_is_24_bytes_and_documented_layout():
    frame = wire.encode_frame(1, {"a": 1}, auth=b"tok", auth_type=wire.AUTH_JWT)
    assert wire.HEADER_SIZE == 24
    assert frame[:4] == b"HCPI"
    assert struct.unpack(">HHBBHII", frame[4:20]) == (1, 1, 1, 0, 0, 3, len(b'{"a":1}'))
    assert frame[20:24] == b"\0" * 4
    assert frame[24:27] == b"tok"


def test_call_roundtrip_with_peer_credentials_and_socket_mode(server):
    answer = wire.call(server.path, "ping", {"x": [1, 2]}, auth=b"abc", auth_type=wire.AUTH_JWT)
    assert answer["pong"] is True
    assert answer["peer"] == [os.getpid(), os.getuid(), os.getgid()]
    assert answer["auth"] == "abc" and answer["auth_type"] == 1 and answer["echo"] == {"x": [1, 2]}
    assert stat.S_IMODE(os.lstat(server.path).st_mode) == 0o660


def test_error_answers_carry_status_code_word_and_detail(server):
    with pytest.raises(IdentityError) as info:
        wire.call(server.path, "sign", {})
    assert (info.value.status, info.value.error, info.value.detail) == (403, "forbidden", "not you")
    with pytest.raises(IdentityError) as info:
        wire.call(server.path, 999, {})
    assert info.value.status == 400 and info.value.error == "unknown-opcode"


def test_handler_crash_is_a_500_without_detail_and_the_server_stays_up(server):
    for name in ("verify", "list_keys"):
        with pytest.raises(IdentityError) as info:
            wire.call(server.path, name, {})
        assert info.value.status == 500 and info.value.error == "internal"
        assert "deep" not in info.value.detail
    assert wire.call(server.path, "ping")["pong"]


@pytest.mark.parametrize("frame, status, error", [
    (b"XXXX" + b"\0" * 20, 400, "bad-frame"),
    (struct.pack(">4sHHBBHII4s", b"HCPI", 2, 1, 0, 0, 0, 0, 0, b"\0" * 4), 400, "bad-version"),
    (struct.pack(">4sHHBBHII4s", b"HCPI", 1, 1, 0, 0, 0, 0, 0, b"\0\0\0\1"), 400, "bad-frame"),
    (struct.pack(">4sHHBBHII4s", b"HCPI", 1, 1, 0, 0, 0, 0, 0xFFFFFFFF, b"\0" * 4), 413, "too-large"),
    (struct.pack(">4sHHBBHII4s", b"HCPI", 1, 1, 0, 0, 0, 0x10000, 0, b"\0" * 4), 413, "too-large"),
    (struct.pack(">4sHHBBHII4s", b"HCPI", 1, 1, 7, 0, 0, 0, 0, b"\0" * 4), 400, "bad-auth-type"),
    (struct.pack(">4sHHBBHII4s", b"HCPI", 1, 1, 0, 1, 0, 0, 0, b"\0" * 4), 400, "unsupported-content-type"),
    (struct.pack(">4sHHBBHII4s", b"HCPI", 1, 1, 0, 0, 200, 0, 0, b"\0" * 4), 400, "bad-frame"),
    (struct.pack(">4sHHBBHII4s", b"HCPI", 1, 1, 0, 0, 0, 0, 5, b"\0" * 4) + b"[1,2]", 400, "bad-body"),
    (struct.pack(">4sHHBBHII4s", b"HCPI", 1, 1, 0, 0, 0, 0, 4, b"\0" * 4) + b"\xff\xfe{}", 400, "bad-body"),
    (struct.pack(">4sHHBBHII4s", b"HCPI", 1, 1, 0, 0, 0, 0, 200, b"\0" * 4) + b"[" * 100 + b"]" * 100, 400, "bad-body"),
])
def test_bad_frames_are_answered_and_the_server_stays_up(server, frame, status, error):
    got_status, body = _raw(server.path, frame)
    assert (got_status, body["error"]) == (status, error)
    assert set(body) == {"error", "detail"}
    assert wire.call(server.path, "ping")["pong"]


def test_huge_body_is_refused_before_it_is_read(server):
    with pytest.raises(IdentityError) as info:
        wire.encode_frame(1, b"x" * (wire.MAX_BODY + 1))
    assert info.value.status == 413
    header = struct.pack(">4sHHBBHII4s", b"HCPI", 1, 1, 0, 0, 0, 0, wire.MAX_BODY + 1, b"\0" * 4)
    status, body = _raw(server.path, header)
    assert status == 413 and body["error"] == "too-large"


def test_slow_writer_is_dropped_and_does_not_block_others(server):
    with socket.socket(socket.AF_UNIX) as slow:
        slow.connect(server.path)
        slow.sendall(b"HCPI\0")  # then nothing: the frame must complete within frame_timeout (0.5 s)
        started = time.monotonic()
        assert wire.call(server.path, "ping")["pong"]  # another client is served meanwhile
        slow.settimeout(5)
        assert slow.recv(100) == b""  # closed by the server
        assert time.monotonic() - started < 3


def test_connection_reuse_and_reconnect_after_server_restart(tmp_path):
    path = str(tmp_path / "r.sock")
    srv = wire.serve(path, _handler)
    conn = wire.Connection(path)
    try:
        assert conn.call("ping")["pong"]
        assert conn.call("ping")["pong"]
        srv.close()
        srv = wire.serve(path, _handler)
        assert conn.call("ping")["pong"]  # the old connection was closed: one reconnect
    finally:
        conn.close()
        srv.close()
    with pytest.raises(IdentityError) as info:
        wire.call(path, "ping")
    assert info.value.status == 0 and info.value.error == "unreachable"


def test_bind_refuses_to_replace_a_non_socket(tmp_path):
    path = tmp_path / "file"
    path.write_text("keep me")
    with pytest.raises(IdentityError) as info:
        wire.serve(str(path), _handler)
    assert info.value.status == 500
    assert path.read_text() == "keep me"


def test_too_many_connections_answer_503(tmp_path):
    srv = wire.serve(str(tmp_path / "b.sock"), _handler, max_connections=2, idle_timeout=5)
    holders = []
    try:
        for _idx in range(2):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(srv.path)
            holders.append(sock)
        time.sleep(0.2)
        with pytest.raises(IdentityError) as info:
            wire.call(srv.path, "ping")
        assert info.value.status == 503 and info.value.error == "busy"
        holders.pop().close()
        time.sleep(0.2)
        assert wire.call(srv.path, "ping")["pong"]
    finally:
        for sock in holders:
            sock.close()
        srv.close()


def test_one_uid_cannot_hold_every_connection(tmp_path):
    run = tempfile.mkdtemp(prefix="hcpi-", dir="/tmp")
    os.chmod(run, 0o711)
    srv = wire.serve(os.path.join(run, "u.sock"), _handler, mode=0o666, max_connections=8, idle_timeout=5)

    def hog():
        held = []
        for _idx in range(3):  # max_per_uid = 8 // 4 = 2: the third is refused
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(srv.path)
            held.append(sock)
        time.sleep(0.2)
        held[-1].settimeout(3)
        head = held[-1].recv(24)
        return struct.unpack(">H", head[10:12])[0] if len(head) == 24 else None

    try:
        assert Child(hog).go()["value"] == 503
        assert wire.call(srv.path, "ping")["pong"]  # another uid (root) is still served
    finally:
        srv.close()
        shutil.rmtree(run, ignore_errors=True)


def test_fuzz_random_frames_never_kill_the_server(server):
    rng = random.Random(19)
    for _round in range(300):
        kind = rng.randrange(4)
        if kind == 0:
            data = os.urandom(rng.randrange(1, 200))
        else:
            body = os.urandom(rng.randrange(0, 64)) if kind == 1 else rng.choice([b"{}", b'{"a":', b"null", b'{"a":1e999}', b'"\\ud800"'])
            data = struct.pack(">4sHHBBHII4s", b"HCPI", rng.choice([1, 1, 1, 0, 65535]), rng.randrange(65536), rng.randrange(4),
                               rng.choice([0, 0, 1]), rng.choice([0, 0, 1]), 0, len(body), rng.choice([b"\0" * 4] * 3 + [b"zz\0\0"])) + body
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(server.path)
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
        except OSError:
            pass
    assert wire.call(server.path, "ping")["pong"]
