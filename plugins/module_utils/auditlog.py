# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one audit log of the services (policy service, kadmin API, key-server): one JSON line per
call, appended to a file (created with ``mode``, never through a symbolic link) or written to
stderr (the journal, under systemd)."""

from __future__ import annotations

import json
import os
import sys
import threading


class AuditLog(object):
    """Appends one JSON line per ``write``. ``fields``: when given, only these keys of a record
    are written (missing ones as null), so nothing else a record holds can reach the log."""

    def __init__(self, path=None, mode=0o640, fields=None):
        self.path = path
        self.mode = mode
        self.fields = tuple(fields) if fields is not None else None
        self._lock = threading.Lock()

    def write(self, record):
        if self.fields is not None:
            record = dict((k, record.get(k)) for k in self.fields)
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock:
            if self.path:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, self.mode)
                with os.fdopen(fd, "a", encoding="utf-8") as handle:
                    handle.write(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
