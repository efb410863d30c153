# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Aggregate callback of benchmarks/fleet_1000.py (not part of the collection): wall times of the
plays and tasks and, per task, the sum and maximum of the per-host durations (from the worker's
start to its result), written as JSON to the file named by $HCP_FLEET_TIMES at the end."""

from __future__ import annotations

DOCUMENTATION = """
name: fleet_timer
type: aggregate
short_description: play and task timings for benchmarks/fleet_1000.py
description: Writes play and task wall times and per-host task durations as JSON to $HCP_FLEET_TIMES.
requirements: [enabled in callbacks_enabled]
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase

MAX_FAILURES = 20


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleet_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self.plays = []
        self.tasks = []
        self.by_uuid = {}
        self.starts = {}
        self.failures = []

    def _close_play(self, now):
        if self.plays and self.plays[-1]["end"] is None:
            self.plays[-1]["end"] = now

    def v2_playbook_on_play_start(self, play):
        now = time.time()
        self._close_play(now)
        self.plays.append({"name": play.get_name(), "start": now, "end": None})

    def v2_playbook_on_task_start(self, task, is_conditional):
        now = time.time()
        entry = self.by_uuid.get(task._uuid)  # pylint: disable=protected-access
        if entry is None:
            entry = {"play": self.plays[-1]["name"] if self.plays else "", "name": task.get_name(), "start": now,
                     "end": now, "ok": 0, "changed": 0, "failed": 0, "skipped": 0, "host_seconds": 0.0, "host_max": 0.0}
            self.by_uuid[task._uuid] = entry  # pylint: disable=protected-access
            self.tasks.append(entry)

    def v2_runner_on_start(self, host, task):
        self.starts[(host.get_name(), task._uuid)] = time.time()  # pylint: disable=protected-access

    def _result(self, result, outcome):
        now = time.time()
        task = result._task  # pylint: disable=protected-access
        host = result._host.get_name()  # pylint: disable=protected-access
        entry = self.by_uuid.get(task._uuid)  # pylint: disable=protected-access
        if entry is None:
            return
        entry[outcome] += 1
        if outcome == "ok" and result._result.get("changed"):  # pylint: disable=protected-access
            entry["changed"] += 1
        entry["end"] = max(entry["end"], now)
        started = self.starts.pop((host, task._uuid), None)  # pylint: disable=protected-access
        if started is not None:
            entry["host_seconds"] += now - started
            entry["host_max"] = max(entry["host_max"], now - started)
        if outcome == "failed" and len(self.failures) < MAX_FAILURES:
            self.failures.append({"host": host, "task": entry["name"],
                                  "msg": str(result._result.get("msg", ""))[:500]})  # pylint: disable=protected-access

    def v2_runner_on_ok(self, result):
        self._result(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result(result, "failed")

    def v2_runner_on_unreachable(self, result):
        self._result(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._result(result, "skipped")

    def v2_playbook_on_stats(self, stats):
        self._close_play(time.time())
        path = os.environ.get("HCP_FLEET_TIMES")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump({"plays": self.plays, "tasks": self.tasks, "failures": self.failures}, handle)
