# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key-server's audit log: one JSON line per call (who, what, decision), never item data."""

from __future__ import annotations

import json
import os
import sys
import threading

AUDIT_FIELDS = ("time", "request_uid", "caller", "caller_fingerprint", "profile", "measurement", "action", "name",
                "item_version", "decision", "status", "reason")


class AuditLog(object):
    """Appends to ``path`` (created 0600, never through a symbolic link) or writes to stderr.
    Only AUDIT_FIELDS are written, whatever the record holds: item data cannot reach the log."""

    def __init__(self, path=None):
        self.path = path
        self._lock = threading.Lock()

    def write(self, record):
        line = json.dumps(dict((k, record.get(k)) for k in AUDIT_FIELDS), sort_keys=True) + "\n"
        with self._lock:
            if self.path:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as handle:
                    handle.write(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
