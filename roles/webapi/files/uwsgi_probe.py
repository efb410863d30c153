#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""GET a path from a uwsgi app over its Unix socket (uwsgi protocol); exit 0 on HTTP 200.

Usage: uwsgi_probe.py SOCKET [PATH]. Used by role hcp.core.webapi as its health check, so
the probe needs neither TLS nor a client certificate, whatever the site's authentication.
"""

import socket
import struct
import sys


def main():
    sock_path = sys.argv[1]
    path = sys.argv[2] if len(sys.argv) > 2 else "/healthcheck"
    env = {
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": path,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "0",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "localhost",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "https",
        # the app's health details (paths, errors) are for this local caller only
        "HCP_LOCAL_PROBE": "1",
    }
    body = b"".join(
        struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode()
        for k, v in env.items()
    )
    packet = struct.pack("<BHB", 0, len(body), 0) + body
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(sock_path)
        conn.sendall(packet)
        chunks = []
        while True:
            data = conn.recv(65536)
            if not data:
                break
            chunks.append(data)
    response = b"".join(chunks).decode("utf-8", "replace")
    status_line = response.split("\r\n", 1)[0]
    print(status_line)
    print(response.split("\r\n\r\n", 1)[-1][:4000])
    parts = status_line.split()
    return 0 if len(parts) > 1 and parts[1] == "200" else 1


if __name__ == "__main__":
    sys.exit(main())
