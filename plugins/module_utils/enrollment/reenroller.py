# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Re-enroller: regenerate every enrollment whose ``reenroll-hint`` is due (fresh
certificates and keys), with per-entry exponential backoff after a failure.

Run by the ``hcp-enroll-reenroll`` systemd timer as the DB user:
``python -m ansible_collections.hcp.core.plugins.module_utils.enrollment.reenroller CONFIG [STATE]``.
The state file (``hcp.core.reenroll-state`` v1, docs/enrollment-service.md) keeps, per
ekpubhash that failed, the failure count, the next attempt time and the last error; an
entry that succeeds or disappears leaves it. Exit status 1 when an attempt failed in
this run (the unit shows it), 0 otherwise.
"""

from __future__ import annotations

import datetime
import json
import os
import sys

from ansible_collections.hcp.core.plugins.module_utils.enrollment import service as enroll_service
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write

STATE_FORMAT = "hcp.core.reenroll-state"
STATE_VERSION = 1
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
CALLER = {"subject": "re-enroller"}


class ReenrollError(HcpError):
    """Bad state file or configuration of the re-enroller."""


def _utc(now=None):
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc).replace(microsecond=0)


def _parse_time(text):
    return datetime.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=datetime.timezone.utc)


def load_state(path):
    """The state document, or an empty one when ``path`` does not exist."""
    try:
        with open(path, "rb") as handle:
            doc = json.loads(handle.read())
    except FileNotFoundError:
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "entries": {}}
    except (OSError, ValueError) as exc:
        raise ReenrollError("cannot read re-enroller state %s: %s" % (path, exc))
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or doc.get("version") != STATE_VERSION:
        raise ReenrollError("%s is not a %s v%d document" % (path, STATE_FORMAT, STATE_VERSION))
    if not isinstance(doc.get("entries"), dict):
        raise ReenrollError("%s: entries must be an object" % path)
    return doc


def due_entries(db, now=None):
    """[(ekpubhash, due datetime)] of entries whose hint is due at ``now``, oldest first.
    An entry with an unreadable hint is due (regenerating it writes a good one)."""
    now = _utc(now)
    due = []
    for ekpubhash, raw in db.entry_files_named("reenroll-hint").items():
        try:
            when = _parse_time(json.loads(raw)["due"])
        except (ValueError, KeyError, TypeError):
            when = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
        if when <= now:
            due.append((ekpubhash, when))
    due.sort(key=lambda item: (item[1], item[0]))
    return due


def run(service, state_path, now=None, backoff_base=300, backoff_max=86400, limit=None):
    """Re-enroll what is due through ``service`` (an EnrollmentService performing in
    process). Returns {due, reenrolled, failed, deferred} (lists of ekpubhashes; ``failed``
    items carry the error text and the next attempt time)."""
    now = _utc(now)
    state = load_state(state_path)
    records = state["entries"]
    summary = {"due": 0, "reenrolled": [], "failed": [], "deferred": []}
    due = due_entries(service.db, now)
    summary["due"] = len(due)
    attempts = 0
    for ekpubhash, _when in due:
        record = records.get(ekpubhash)
        if record and _parse_time(record["next_attempt"]) > now:
            summary["deferred"].append(ekpubhash)
            continue
        if limit is not None and attempts >= limit:
            summary["deferred"].append(ekpubhash)
            continue
        attempts += 1
        try:
            service.perform({"op": "reenroll", "ekpubhash": ekpubhash, "caller": CALLER})
        except HcpError as exc:
            failures = (record or {}).get("failures", 0) + 1
            delay = min(backoff_base * 2 ** (failures - 1), backoff_max)
            next_attempt = (now + datetime.timedelta(seconds=delay)).strftime(TIME_FORMAT)
            records[ekpubhash] = {"failures": failures, "next_attempt": next_attempt, "last_error": str(exc)[:500]}
            summary["failed"].append({"ekpubhash": ekpubhash, "error": str(exc)[:500], "next_attempt": next_attempt})
            continue
        records.pop(ekpubhash, None)
        summary["reenrolled"].append(ekpubhash)
    due_set = set(h for h, _when in due)
    for ekpubhash in list(records):
        if ekpubhash not in due_set:
            records.pop(ekpubhash)
    atomic_write(state_path, (json.dumps(state, sort_keys=True, indent=1) + "\n").encode(), 0o600)
    return summary


def main(argv=None):
    """``reenroller CONFIG [STATE]``: one pass; prints the summary as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        sys.stderr.write("usage: reenroller CONFIG_JSON [STATE_FILE]\n")
        return 2
    try:
        with open(argv[0], "rb") as handle:
            config = json.loads(handle.read())
        config.pop("writer", None)  # the timer already runs as the DB user
        default_state = os.path.join(os.path.dirname(config["db"].rstrip("/")), "reenroll-state.json")
        state_path = argv[1] if len(argv) == 2 else default_state
        summary = run(enroll_service.EnrollmentService(config), state_path,
                      backoff_base=int(config.get("reenroll_backoff_base", 300)),
                      backoff_max=int(config.get("reenroll_backoff_max", 86400)),
                      limit=config.get("reenroll_limit"))
    except (HcpError, OSError, ValueError, KeyError) as exc:
        sys.stderr.write("re-enroller: %s\n" % exc)
        return 2
    sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
