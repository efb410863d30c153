# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic, private file writes, root-safe installation into trees other users can change,
and an exclusive lock file (no Ansible imports)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import tempfile

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError


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


def create_new(path, data, mode=0o600):
    """Create ``path`` with ``data`` atomically and durably, never replacing anything: a private
    temporary file (O_EXCL | O_NOFOLLOW, ``mode``) in the same directory, fsynced, hard-linked to
    ``path`` (link(2) fails when ``path`` exists: FileExistsError, the existing file untouched),
    then the directory fsynced. Readers see nothing or the whole file."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, ".tmp-%s" % secrets.token_hex(8))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.unlink(tmp)


# --- root-safe installation -----------------------------------------------------------------
# A root process that writes into a tree other users can change (their homes, a directory a
# service account owns) must never resolve that path by name: a user can plant a symbolic
# link, or swap a directory root just made for a link, between two calls, and every
# path-based os.mkdir/chmod/chown/open would follow it. So every path below is walked
# component by component from "/" with openat(O_DIRECTORY | O_NOFOLLOW), each directory held
# as a descriptor, missing directories made with mkdirat and re-opened with O_NOFOLLOW, owner
# and mode changed with fchown/fchmod only, and files created with O_EXCL | O_NOFOLLOW under a
# temporary name in the held directory and renamed over the target with renameat (an existing
# inode is never chowned, chmodded or written: it may be a hard link to a file elsewhere).
# Written by hand because neither the standard library nor a maintained package offers an
# openat walk that creates directories and changes their ownership through descriptors
# (pathlib, shutil and tempfile all work on names).

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class UnsafePathError(HcpError):
    """A path was not written or read because following it could leave the intended tree: a
    component is a symbolic link or not a directory, a directory belongs to a user other than
    root and the file's owner or is writable by everyone, a file has several hard links."""


def _parts(path):
    if not isinstance(path, str) or not path.startswith("/"):
        raise UnsafePathError("%r is not an absolute path" % (path,))
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError("%s: '..' is not allowed" % path)
    return parts


def _owners(uid):
    """Who may own a directory on the path: root, this process and the file's owner."""
    owners = {0, os.geteuid()}
    if uid is not None and uid >= 0:
        owners.add(uid)
    return frozenset(owners)


def _check_dir(fd, path, owners):
    info = os.fstat(fd)
    if info.st_uid not in owners:
        raise UnsafePathError("%s belongs to uid %d, neither root nor the file's owner: refused" % (path, info.st_uid))
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise UnsafePathError("%s is writable by everyone: refused" % path)


def _refusal(dir_fd, name, path, exc, want_dir):
    """The clear error for an entry that could not be opened without following it."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return exc
    if stat.S_ISLNK(info.st_mode):
        return UnsafePathError("%s is a symbolic link: refused, nothing followed" % path)
    if want_dir and not stat.S_ISDIR(info.st_mode):
        return UnsafePathError("%s is not a directory" % path)
    if not want_dir and not stat.S_ISREG(info.st_mode):
        return UnsafePathError("%s is not a regular file" % path)
    return exc


def _close_on_error(fd, check, *args):
    try:
        check(fd, *args)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _made_dir(fd, path, spec):
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError("%s was replaced while it was being created: refused" % path)
    mode, uid, gid = spec
    os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)


def _open_dir_at(parent, name, path, make_dir, owners):
    try:
        fd = os.open(name, _O_DIR, dir_fd=parent)
    except FileNotFoundError:
        spec = make_dir(path) if make_dir is not None else None
        if spec is None:
            raise
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:  # made meanwhile by someone else: treated like any existing directory
            return _open_dir_at(parent, name, path, None, owners)
        try:  # the name may have been swapped since mkdirat: O_NOFOLLOW and an owner check
            fd = os.open(name, _O_DIR, dir_fd=parent)
        except OSError as exc:
            raise _refusal(parent, name, path, exc, True)
        return _close_on_error(fd, _made_dir, path, spec)
    except OSError as exc:  # ELOOP for a symbolic link, ENOTDIR for a file
        raise _refusal(parent, name, path, exc, True)
    return _close_on_error(fd, _check_dir, path, owners)


def open_dir_nofollow(path, make_dir=None, owners=frozenset([0])):
    """A descriptor (O_RDONLY) of the directory ``path``, walked from "/" without following
    any symbolic link; every directory on the way must belong to one of ``owners`` and not be
    writable by everyone (unless sticky), else UnsafePathError. ``make_dir(dir_path)``
    returns ``(mode, uid, gid)`` for a missing directory to create, or None (then
    FileNotFoundError). The caller closes the descriptor."""
    current = "/"
    fd = _close_on_error(os.open("/", _O_DIR), _check_dir, current, owners)
    try:
        for name in _parts(path):
            current = os.path.join(current, name)
            child = _open_dir_at(fd, name, current, make_dir, owners)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _split(path):
    directory, name = os.path.split(path)
    if name in ("", ".", ".."):
        raise UnsafePathError("%r does not name a file" % (path,))
    return directory or "/", name


def read_nofollow(path, max_size, uid=-1):
    """``(stat, data)`` of the existing regular file ``path`` read the safe way (see
    :func:`open_dir_nofollow`; ``uid``: the file's intended owner, who may own directories
    on the path). ``(None, None)`` when it (or a directory) does not exist; ``data`` is None
    when the file is larger than ``max_size`` bytes. Refuses a symbolic link, a non-regular
    file and a file with several hard links (it may be a file from elsewhere)."""
    directory, name = _split(path)
    try:
        dir_fd = open_dir_nofollow(directory, owners=_owners(uid))
    except FileNotFoundError:
        return None, None
    try:
        try:
            fd = os.open(name, _O_READ, dir_fd=dir_fd)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise _refusal(dir_fd, name, path, exc, False)
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePathError("%s is not a regular file" % path)
        if info.st_nlink != 1:
            raise UnsafePathError("%s has %d hard links: refused, it may be another file" % (path, info.st_nlink))
        if info.st_size > max_size:
            return info, None
        data = handle.read(max_size + 1)
    return info, (data if len(data) <= max_size else None)


def _new_temp(dir_fd, name):
    for _attempt in range(100):
        tmp = ".%s.%s" % (name[:200], secrets.token_hex(8))
        try:
            return tmp, os.open(tmp, _O_NEW, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise UnsafePathError("cannot create a temporary file next to %s" % name)


def safe_install(path, data, mode=0o600, uid=-1, gid=-1, make_dir=None, fsync=True):
    """Write ``data`` to ``path`` atomically as a process that must not follow paths other
    users can change (root installing into users' homes): the directory is walked with
    :func:`open_dir_nofollow` (directories on the way must belong to root, this process or
    ``uid``; missing ones are created through ``make_dir``, see there), a temporary file is
    created there with O_EXCL | O_NOFOLLOW and mode 0600, given ``uid``/``gid`` (-1: keep)
    and ``mode`` through its descriptor, written, fsynced, and renamed over ``path``. A
    symbolic link or non-regular file at ``path`` is refused (UnsafePathError); the inode of
    an existing file is never modified (the rename replaces it). Nothing is written on error."""
    directory, name = _split(path)
    dir_fd = open_dir_nofollow(directory, make_dir, _owners(uid))
    try:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISLNK(info.st_mode):
            raise UnsafePathError("%s is a symbolic link: refused, nothing followed" % path)
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise UnsafePathError("%s is not a regular file" % path)
        tmp, fd = _new_temp(dir_fd, name)
        try:
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            tmp = None
            if fsync:
                os.fsync(dir_fd)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
