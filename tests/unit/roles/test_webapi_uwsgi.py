# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The webapi role's uwsgi.ini.j2 in a real uwsgi: its listen queue.

nginx opens one connection to the app's unix socket per request; while every worker is busy they
wait in the socket's listen queue, and when the queue is full nginx's (non-blocking) connect fails
with EAGAIN and the client gets 502. The attack here is that burst: one worker kept busy by a
connection that sends nothing, then 300 more connections at once, each of which must be queued."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from ansible.template import trust_as_template

from ansible_collections.hcp.core.plugins.module_utils.web import hello_app
from ansible_collections.hcp.core.tests.unit.role_helpers import role_templar

ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "webapi")
UWSGI = shutil.which("uwsgi-core") or shutil.which("uwsgi")
PLUGIN = "/usr/lib/uwsgi/plugins/python3_plugin.so"
BURST = 300

pytestmark = pytest.mark.skipif(not UWSGI or not os.path.isfile(PLUGIN), reason="uwsgi-core and uwsgi-plugin-python3 are needed")


def render_ini(directory, **overrides):
    """The uwsgi ini as the role writes it for hello_app, with the socket in ``directory`` and the
    collection on uwsgi's python path (the role's venv holds it as a wheel)."""
    with open(os.path.join(ROLE, "templates", "uwsgi.ini.j2"), "r", encoding="utf-8") as handle:
        source = handle.read()
    variables = dict(webapi_name="t-uwsgi", webapi_app="hello_app", webapi_venv=sys.prefix, webapi_processes=1,
                     __webapi_socket=os.path.join(directory, "uwsgi.sock"))
    variables.update(overrides)
    ini = role_templar(ROLE, **variables).template(trust_as_template(source))
    # chown-socket names the service account and www-data: only the role's root unit can do that
    ini = re.sub(r"(?m)^chown-socket = .*\n", "", ini)
    collections = os.path.abspath(os.path.join(os.path.dirname(hello_app.__file__), *[".."] * 6))
    return ini + "pythonpath = %s\n" % collections


def _connect_burst(path, count):
    """Non-blocking connects (as nginx makes them) to the unix socket: (connected sockets, refused)."""
    opened, refused = [], 0
    for _number in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
            opened.append(sock)
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            refused += 1
    return opened, refused


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_listen_queue_holds_a_burst_while_the_worker_is_busy():
    directory = tempfile.mkdtemp(prefix="hcp-uwsgi-test-")
    ini = os.path.join(directory, "uwsgi.ini")
    with open(ini, "w", encoding="utf-8") as handle:
        handle.write(render_ini(directory))
    log = open(os.path.join(directory, "uwsgi.log"), "wb")  # pylint: disable=consider-using-with  # closed below
    proc = subprocess.Popen([UWSGI, "--ini", ini], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # pylint: disable=consider-using-with
    opened = []
    try:
        path = os.path.join(directory, "uwsgi.sock")
        deadline = time.monotonic() + 60
        while not os.path.exists(path) or b"spawned uWSGI worker 1" not in _read(log.name):
            assert proc.poll() is None and time.monotonic() < deadline, _read(log.name)
            time.sleep(0.1)
        busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        busy.connect(path)  # the only worker accepts it and waits for a request that never comes
        opened.append(busy)
        time.sleep(0.5)
        queued, refused = _connect_burst(path, BURST)
        opened.extend(queued)
        assert refused == 0, "%d of %d connections refused by a full listen queue" % (refused, BURST)
        assert "listen = 1024" in render_ini(directory).splitlines()  # the role's default, webapi_listen_queue
    finally:
        for sock in opened:
            sock.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)
