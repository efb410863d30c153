# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic, private file writes and an exclusive lock file (no Ansible imports)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile


@contextlib.contextmanager
def exclusive_lock(path, mode=0o600):
    """Hold an exclusive flock on ``path`` (created with ``mode``) for the ``with`` block, across processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_if_exists(path):
    """File bytes, or None when the file does not exist."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def atomic_write(path, data, mode=0o600, fsync=True):
    """Write ``data`` to ``path`` atomically: a temporary file created with ``mode`` in the
    same directory (so secrets are never readable by others, not even briefly), fsynced,
    then renamed over the target. A failure leaves the old file untouched.
    ``fsync=False``: still atomic for readers, but not durable across a power loss (for
    data rewritten often that may be lost, such as metrics counters)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            fd = None
            handle.write(data)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            os.unlink(tmp)
