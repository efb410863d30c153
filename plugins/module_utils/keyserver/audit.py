# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key-server's audit log: one JSON line per call (who, what, decision), never item data."""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.module_utils import auditlog

AUDIT_FIELDS = ("time", "request_uid", "caller", "caller_fingerprint", "profile", "measurement", "attested", "action", "name",
                "item_version", "decision", "status", "reason")


class AuditLog(auditlog.AuditLog):
    """The shared audit log, appending to ``path`` (created 0600) or stderr; only AUDIT_FIELDS are
    written, whatever the record holds: item data cannot reach the log."""

    def __init__(self, path=None):
        super().__init__(path, mode=0o600, fields=AUDIT_FIELDS)
