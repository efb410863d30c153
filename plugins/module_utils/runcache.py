# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-run cache files: one playbook run's private files, shared by its forked workers.

A "run" is the ansible-playbook process: lookups run in forked workers whose parent it is
(``run_process``). A run file is named ``run-<pid>-<start time>-<digest>.json`` (plus a
``.lock`` beside it) in a 0700 per-user directory; the start time (``/proc/<pid>/stat``) tells
a live run from a dead one whose pid was reused, and ``purge_dead`` removes the files of runs
that ended. Used by the attested_secret lookup's payload cache (attestation/client.py) and the
key-server client's session cache (keyserver/client.py). No Ansible imports.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write

MAX_RUN_FILE_BYTES = 64 * 1024 * 1024


class RunCacheError(HcpError):
    """A run cache directory or file is not private to this user, or cannot be used."""


def process_start_time(pid):
    """Start time of process ``pid`` (clock ticks since boot, /proc/<pid>/stat field 22) or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read().decode("ascii", "replace")
        return int(data[data.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def run_process():
    """PID of the process whose lifetime is "one run": the parent when this process is a fork
    of it (ansible-playbook's workers share its command line), else this process itself (a
    lookup evaluated in the ansible-playbook process, or a plain program)."""
    own = _cmdline(os.getpid())
    return os.getppid() if own is not None and own == _cmdline(os.getppid()) else os.getpid()


def user_cache_dir(name):
    """Per-user directory ``hcp.core-<name>-<uid>`` under $XDG_RUNTIME_DIR (a tmpfs) when set, else
    the temp dir."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(base, "hcp.core-%s-%d" % (name, os.getuid()))


def private_dir(path, what="run cache directory", error_class=RunCacheError):
    """Create ``path`` 0700 if missing; ``error_class`` unless it is a directory (not a link) of
    this user that nobody else may read or write."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise error_class("cannot create the %s %s: %s" % (what, path, exc.strerror or exc))
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise error_class("the %s %s is not a private directory of this user" % (what, path))


def purge_dead(directory):
    """Remove the run files (``run-<pid>-<start>-<digest>.json|.lock``) of runs that ended; returns
    how many. Other names are left alone."""
    removed = 0
    for name in os.listdir(directory):
        parts = name.split("-")
        if len(parts) != 4 or parts[0] != "run" or not name.endswith((".json", ".lock")):
            continue
        try:
            pid = int(parts[1])
        except ValueError:
            continue
        if str(process_start_time(pid)) != parts[2]:
            try:
                os.unlink(os.path.join(directory, name))
                removed += 1
            except OSError:
                pass
    return removed


class RunFile(object):
    """One run's private file ``<directory>/run-<pid>-<start>-<digest of key>.json``.

    ``key``: text naming what is cached (options, server and certificate); ``run_pid``: the
    run (default run_process()). ``read()`` returns the bytes or None (O_NOFOLLOW, refused
    unless a 0600-or-stricter file of this user), ``write(data)`` writes atomically 0600 after
    purging dead runs' files, ``lock()`` is an exclusive flock shared by the run's workers."""

    def __init__(self, directory, key, run_pid=None, what="run cache", error_class=RunCacheError, max_bytes=MAX_RUN_FILE_BYTES):
        self.run_pid = run_pid or run_process()
        self.directory = directory
        self.start = process_start_time(self.run_pid)
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        self.path = os.path.join(directory, "run-%d-%s-%s.json" % (self.run_pid, self.start, digest))
        self.what = what
        self.error_class = error_class
        self.max_bytes = max_bytes

    def __repr__(self):
        return "RunFile(%r)" % self.path

    def ensure_dir(self):
        private_dir(self.directory, self.what + " directory", self.error_class)

    def read(self):
        """The file's bytes, or None when there is none (or it is larger than ``max_bytes``)."""
        self.ensure_dir()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self.error_class("cannot read the %s %s: %s" % (self.what, self.path, exc.strerror or exc))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            data = handle.read(self.max_bytes + 1)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise self.error_class("the %s %s is not private to this user" % (self.what, self.path))
        return None if len(data) > self.max_bytes else data

    def write(self, data):
        """Write ``data`` (0600, atomically) after removing the files of runs that ended."""
        self.ensure_dir()
        purge_dead(self.directory)
        atomic_write(self.path, data, 0o600)

    def lock(self):
        """An open file holding an exclusive flock on ``<run file>.lock`` (close it to release)."""
        self.ensure_dir()
        try:
            fd = os.open(self.path[:-5] + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise self.error_class("cannot lock the %s %s: %s" % (self.what, self.path, exc.strerror or exc))
        handle = os.fdopen(fd, "r+b")
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle
