# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The enrollment database: a bare git repository (real git, no Ansible imports).

Layout (format "hcp.core.enrolldb" v1, docs/enrollment-db.md):
``ekpubhash/<h[0:2]>/<h[0:6]>/<h[0:32]>/`` holds one entry's files (``ekpubhash`` with
the full 64-hex hash, ``hostname``, ``ek.pub``, ``clientprofile``, assets, manifest);
``hn2ek/<sha256(hostname)[0:2]>.json`` are the shards of the hostname index (JSON arrays
of {hostname, ekpubhash} sorted by hostname); ``FORMAT`` names the format; ``GENERATION``
holds the commit's generation (the commit count of the first-parent history of ``main``).

Every write is one commit made with ``git fast-import`` under an exclusive lock: it
touches only the trees on the changed paths (flat cost as the DB grows, unlike an index
and a work tree) and moves the branch only after the whole commit is written, so a
crash or kill mid-operation leaves the branch at the previous commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.fileutil import exclusive_lock
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, MissingDependencyError

try:
    # google-re2: linear-time matching for the callers' hostname regexes (never Python's
    # backtracking re on a caller's pattern); pinned in requirements.txt.
    import re2
except ImportError:  # pragma: no cover - find() fails closed without it
    re2 = None

FORMAT = "hcp.core.enrolldb"
VERSION = 1
BRANCH = "main"
# Validators match the whole string (fullmatch; \A...\Z also for any caller using .match):
# a trailing $ would also match before a final newline.
EKPUBHASH_RE = re.compile(r"\A[0-9a-f]{64}\Z")
PREFIX_RE = re.compile(r"\A[0-9a-f]{0,64}\Z")
FILE_NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# Callers' hostname regexes (GET /v1/find): RE2 matches in time linear in the hostname, times
# the compiled program's size, which these bound (RE2 programs of at most 2000 instructions
# search a 253-character hostname in well under 0.1 ms; the memory bound keeps the 128 patterns
# re2 caches small).
MAX_REGEX_CHARS = 256
MAX_REGEX_PROGRAM = 2000
MAX_REGEX_MEMORY = 1 << 20
# RE2 refuses repetition counts above 1000 but wraps ones beyond 2**31 (a{4294967296} compiles
# to a pattern matching nothing): refuse any count above RE2's limit before compiling.
_REPEAT_RE = re.compile(r"\{([0-9]+)(?:,([0-9]*))?\}")
MAX_REGEX_REPEAT = 1000


class EnrollDbError(HcpError):
    """The enrollment DB cannot perform the operation."""


class AlreadyEnrolledError(EnrollDbError):
    """The EK, or the hostname, is already enrolled."""


class NotEnrolledError(EnrollDbError):
    """No entry matches."""


# The commit's generation (docs/enrollment-db.md): one decimal line at the root of every commit.
GENERATION_FILE = "GENERATION"
# how often (in commits) a writer asks ``git gc --auto`` to repack (see _commit)
GC_EVERY = 16
GENERATION_RE = re.compile(r"[1-9][0-9]{0,17}")


def compile_hostname_regex(pattern):
    """A caller's hostname regex compiled by RE2 (linear-time matching, no backreferences or
    look-around); EnrollDbError (400) when it is not a string of at most MAX_REGEX_CHARS
    characters, uses a repetition count above MAX_REGEX_REPEAT or does not compile;
    MissingDependencyError without google-re2 (fail closed: never Python's re)."""
    if not isinstance(pattern, str):
        raise EnrollDbError("hostname regex must be a string")
    if len(pattern) > MAX_REGEX_CHARS:
        raise EnrollDbError("hostname regex is longer than %d characters" % MAX_REGEX_CHARS)
    for match in _REPEAT_RE.finditer(pattern):
        if any(count and int(count) > MAX_REGEX_REPEAT for count in match.groups()):
            raise EnrollDbError("hostname regex repeats more than %d times" % MAX_REGEX_REPEAT)
    if re2 is None:
        raise MissingDependencyError("hostname regex search needs the Python library google-re2 (module re2), "
                                     "which is not installed")
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    options.max_mem = MAX_REGEX_MEMORY
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else ""
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise EnrollDbError("invalid hostname regex: %s" % str(detail)[:200]) from None
    except (ValueError, TypeError, OverflowError):  # UnicodeEncodeError: a lone surrogate
        raise EnrollDbError("invalid hostname regex: not encodable as UTF-8") from None
    if compiled.programsize > MAX_REGEX_PROGRAM:
        raise EnrollDbError("hostname regex is too complex (RE2 program larger than %d)" % MAX_REGEX_PROGRAM)
    return compiled


def entry_dir(ekpubhash):
    """The entry directory of a full ekpubhash."""
    return "ekpubhash/%s/%s/%s" % (ekpubhash[:2], ekpubhash[:6], ekpubhash[:32])


def hostname_shard(hostname):
    """The hostname index shard holding ``hostname``."""
    return "hn2ek/%s.json" % hashlib.sha256(hostname.encode("utf-8")).hexdigest()[:2]


def read_head(git_dir, branch=BRANCH):
    """The commit id of ``branch`` read from the ref files (no git process), or None."""
    try:
        with open(os.path.join(git_dir, "refs", "heads", branch), "r", encoding="ascii") as handle:
            head = handle.read().strip()
        if len(head) in (40, 64):
            return head
    except (OSError, UnicodeDecodeError):
        pass
    try:
        with open(os.path.join(git_dir, "packed-refs"), "r", encoding="ascii") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) == 2 and parts[1] == "refs/heads/" + branch:
                    return parts[0]
    except (OSError, UnicodeDecodeError):
        pass
    return None


class EnrollmentDb(object):
    """A bare git repository at ``path``; writers serialise on ``<path>/hcp-enrolldb.lock``."""

    def __init__(self, path, git="git"):
        self.path = os.path.abspath(path)
        self.git_bin = git
        self.ref = "refs/heads/" + BRANCH

    # -- git plumbing -------------------------------------------------------------
    def _git(self, *args, **kwargs):
        cmd = [self.git_bin, "--git-dir", self.path] + list(args)
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
        proc = subprocess.run(cmd, capture_output=True, env=env, check=False, **kwargs)
        if proc.returncode != 0:
            raise EnrollDbError(
                "git %s failed in %s: %s" % (args[0], self.path, proc.stderr.decode("utf-8", "replace").strip()[:500])
            )
        return proc.stdout

    def exists(self):
        """True when the repository exists and has the DB format."""
        return os.path.isfile(os.path.join(self.path, "HEAD")) and self.head() is not None

    def head(self):
        """The commit id of the branch, or None before the first commit."""
        try:
            return self._git("rev-parse", "--verify", "-q", self.ref).decode().strip() or None
        except EnrollDbError:
            return None

    def init(self):
        """Create the repository with its FORMAT commit; True if created, False if it existed."""
        if os.path.isfile(os.path.join(self.path, "HEAD")) and self.head():
            self._check_format()
            return False
        os.makedirs(self.path, mode=0o750, exist_ok=True)
        self._git("init", "-q", "--bare", "--initial-branch", BRANCH)
        self._git("config", "gc.autoDetach", "false")
        self._git("config", "receive.denyNonFastForwards", "true")
        # erepl serves the DB read-only over git-http-backend: never accept a push.
        self._git("config", "http.receivepack", "false")
        fmt = json.dumps({"format": FORMAT, "version": VERSION}, sort_keys=True).encode() + b"\n"
        with self.lock():
            if not self.head():
                self._commit("init: %s v%d" % (FORMAT, VERSION), {"FORMAT": fmt}, (), parent=False)
        return True

    def _check_format(self):
        raw = self.read_file("FORMAT")
        try:
            doc = json.loads(raw)
        except (TypeError, ValueError):
            doc = None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise EnrollDbError("%s is not an hcp.core enrollment DB" % self.path)
        if doc.get("version") != VERSION:
            raise EnrollDbError("enrollment DB %s has format version %r; this code reads %d" % (self.path, doc.get("version"), VERSION))

    def head_from_refs(self, branch=BRANCH):
        """The commit id of ``branch`` read from the ref files (no git process: the attestation
        server asks once per request), or None."""
        return read_head(self.path, branch)

    def _generation_from(self, raw, rev):
        """The generation of ``rev`` from its ``GENERATION`` bytes ``raw`` (None: absent, then
        counted as :meth:`generation` does)."""
        if raw is None:
            return self.generation(rev=rev) if rev else 0
        text = raw.decode("ascii", "replace").strip()
        if not GENERATION_RE.fullmatch(text):
            raise EnrollDbError("%s holds a malformed %s" % (self.path, GENERATION_FILE))
        return int(text)

    def generation(self, rev=None):
        """The generation of ``rev`` (default: the branch head): the number of commits in its
        first-parent history, 0 before the first commit. Read from ``GENERATION`` (written by every
        commit); a commit from before that file counts its history once (``git rev-list --count``)."""
        raw = self.read_file(GENERATION_FILE, rev=rev)
        if raw is not None:
            return self._generation_from(raw, rev)
        if rev is None and self.head() is None:
            return 0
        return int(self._git("rev-list", "--count", "--first-parent", rev or self.ref).decode("ascii").strip())

    def lock(self):
        """Exclusive writer lock (across processes)."""
        return exclusive_lock(os.path.join(self.path, "hcp-enrolldb.lock"), 0o640)

    def _commit(self, message, files, deletes, parent=True, author="hcp-enrollment <hcp@localhost>", generation=None):
        """One commit: ``deletes`` (paths or directories) then ``files`` {path: bytes}, with
        ``GENERATION`` set to ``generation`` (default: the parent's + 1; call under the lock).
        The stream ends with ``done``: if the writer dies before it, fast-import aborts and
        the branch does not move."""
        if generation is None:
            generation = self.generation() + 1 if parent else 1
        files = dict(files)
        files[GENERATION_FILE] = b"%d\n" % generation
        now = int(time.time())
        msg = message.encode("utf-8")
        proc = subprocess.Popen(
            [self.git_bin, "--git-dir", self.path, "fast-import", "--quiet", "--done"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(os.environ, LC_ALL="C"),
        )
        try:
            out = proc.stdin
            out.write(b"commit %s\n" % self.ref.encode())
            out.write(b"committer %s %d +0000\n" % (author.encode("utf-8"), now))
            out.write(b"data %d\n%s\n" % (len(msg), msg))
            if parent:
                out.write(b"from %s^0\n" % self.ref.encode())
            for path in deletes:
                out.write(b"D %s\n" % path.encode("utf-8"))
            for path in sorted(files):
                data = files[path]
                out.write(b"M 100644 inline %s\ndata %d\n" % (path.encode("utf-8"), len(data)))
                out.write(data)
                out.write(b"\n")
            out.write(b"done\n")
            out.close()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        err = proc.stderr.read()
        proc.wait()
        if proc.returncode != 0:
            raise EnrollDbError("commit failed in %s: %s" % (self.path, err.decode("utf-8", "replace").strip()[:500]))
        # fast-import writes one pack per commit; ``gc --auto`` repacks once there are more than
        # gc.autoPackLimit (50) of them. Asking it every GC_EVERY commits instead of after each
        # one keeps the pack count below 50 + GC_EVERY and saves a git process per commit.
        if generation % GC_EVERY == 0:
            self._git("gc", "--auto", "--quiet")
        return self.head_from_refs() or self.head()

    # -- reads ----------------------------------------------------------------
    def read_file(self, path, rev=None):
        """Bytes of ``path`` at ``rev`` (default: branch head), or None when absent."""
        try:
            return self._git("cat-file", "blob", "%s:%s" % (rev or self.ref, path))
        except EnrollDbError:
            return None

    def read_files(self, paths, rev=None):
        """{path: bytes or None (absent, or not a file)} of ``paths`` at ``rev`` (default: the
        branch head) with one git process (``read_file`` takes one per path)."""
        if not paths:
            return {}
        rev = rev or self.ref
        names = ["%s:%s" % (rev, path) for path in paths]
        for name in names:
            if "\n" in name or not name.isprintable():
                raise EnrollDbError("invalid path %r" % (name,))
        out = self._git("cat-file", "--batch", input="".join(name + "\n" for name in names).encode("utf-8"))
        result, pos = {}, 0
        for path, name in zip(paths, names):
            header_end = out.index(b"\n", pos)
            header = out[pos:header_end].split(b" ")
            if header[-1] == b"missing" or len(header) != 3:
                result[path] = None
                pos = header_end + 1
                continue
            size = int(header[2])
            start = header_end + 1
            result[path] = out[start:start + size] if header[1] == b"blob" else None
            pos = start + size + 1
        return result

    def _ls(self, path, recursive=False, rev=None):
        args = ["ls-tree", "-z", "--full-tree"]
        if recursive:
            args.append("-r")
        out = self._git(*(args + [rev or self.ref, "--", path]))
        rows = []
        for rec in out.split(b"\0"):
            if rec:
                meta, name = rec.split(b"\t", 1)
                mode, kind, oid = meta.split(b" ")
                rows.append((kind.decode(), oid.decode(), name.decode("utf-8")))
        return rows

    def _read_blobs(self, oids):
        """Contents of many blobs with one git process."""
        if not oids:
            return []
        out = self._git("cat-file", "--batch", input=b"".join(o.encode() + b"\n" for o in oids))
        result, pos = [], 0
        for _oid in oids:
            header_end = out.index(b"\n", pos)
            size = int(out[pos:header_end].split(b" ")[2])
            start = header_end + 1
            result.append(out[start:start + size])
            pos = start + size + 1
        return result

    def _index(self, rev=None):
        """The whole hostname index: list of {hostname, ekpubhash}."""
        rows = [r for r in self._ls("hn2ek/", rev=rev) if r[0] == "blob"]
        entries = []
        for data in self._read_blobs([r[1] for r in rows]):
            entries.extend(json.loads(data))
        entries.sort(key=lambda e: (e["hostname"], e["ekpubhash"]))
        return entries

    @staticmethod
    def _prefix_base(prefix):
        """The tree to list for the entries whose ekpubhash starts with ``prefix`` (checked)."""
        if not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix):
            raise EnrollDbError("ekpubhash prefix must be lowercase hex (at most 64 characters)")
        if len(prefix) >= 6:
            return "ekpubhash/%s/%s/" % (prefix[:2], prefix[:6])
        if len(prefix) >= 2:
            return "ekpubhash/%s/" % prefix[:2]
        return "ekpubhash/"

    def _entry_hashes(self, prefix, rev=None):
        """Full ekpubhashes of entries whose hash starts with ``prefix``."""
        rows = [r for r in self._ls(self._prefix_base(prefix), recursive=True, rev=rev) if r[2].endswith("/ekpubhash")]
        rows = [r for r in rows if r[2].split("/")[3].startswith(prefix[:32])]
        hashes = [h.decode().strip() for h in self._read_blobs([r[1] for r in rows])]
        return sorted(h for h in hashes if h.startswith(prefix))

    def entry_files_named(self, name, rev=None):
        """{ekpubhash: bytes} of the file ``name`` in every entry that has one (one ls-tree
        and one cat-file whatever the DB size; the re-enroller reads every reenroll-hint so)."""
        rows = [r for r in self._ls("ekpubhash/", recursive=True, rev=rev) if r[0] == "blob" and r[2].count("/") == 4]
        wanted, hash_oids = {}, {}
        for _kind, oid, path in rows:
            directory, base = path.rsplit("/", 1)
            if base == name:
                wanted[directory] = oid
            if base == "ekpubhash":
                hash_oids[directory] = oid
        dirs = sorted(d for d in wanted if d in hash_oids)
        blobs = self._read_blobs([hash_oids[d] for d in dirs] + [wanted[d] for d in dirs])
        hashes = [h.decode().strip() for h in blobs[:len(dirs)]]
        return dict(zip(hashes, blobs[len(dirs):]))

    def get(self, ekpubhash, rev=None):
        """{file name: bytes} of one entry, or None."""
        rows = self._ls(entry_dir(ekpubhash) + "/", rev=rev)
        blobs = [r for r in rows if r[0] == "blob"]
        files = dict(zip([r[2].rsplit("/", 1)[1] for r in blobs], self._read_blobs([r[1] for r in blobs])))
        if files.get("ekpubhash", b"").strip().decode() != ekpubhash:
            return None
        return files

    def query(self, prefix="", nofiles=False, rev=None):
        """Entries whose ekpubhash starts with ``prefix``: [{ekpubhash, hostname, files}], sorted
        by ekpubhash. One ls-tree and one batched blob read whatever the number of entries (an
        entry's file names come from the listing; only its ekpubhash and hostname files are
        read): with two git processes per entry, as before, the whole query took 10 s at 1,000
        hosts (benchmarks/fleet_1000.py)."""
        entries = {}
        for kind, oid, path in self._ls(self._prefix_base(prefix), recursive=True, rev=rev):
            if kind != "blob" or path.count("/") != 4:  # ekpubhash/aa/aabbcc/<entry>/<file>
                continue
            directory, name = path.rsplit("/", 1)
            if directory.split("/")[3].startswith(prefix[:32]):
                entries.setdefault(directory, {})[name] = oid
        wanted = [(d, n) for d in sorted(entries) for n in ("ekpubhash", "hostname") if n in entries[d]]
        blobs = dict(zip(wanted, self._read_blobs([entries[d][n] for d, n in wanted])))
        result = []
        for directory in sorted(entries):
            if (directory, "ekpubhash") not in blobs:
                continue
            ekpubhash = blobs[(directory, "ekpubhash")].decode().strip()
            if not ekpubhash.startswith(prefix):
                continue
            consistent = entry_dir(ekpubhash) == directory  # else: what get() refuses, an entry without files
            entry = {"ekpubhash": ekpubhash,
                     "hostname": blobs.get((directory, "hostname"), b"").decode().strip() if consistent else ""}
            if not nofiles:
                entry["files"] = sorted(entries[directory]) if consistent else []
            result.append(entry)
        return sorted(result, key=lambda e: e["ekpubhash"])

    def find(self, hostname_regex, rev=None):
        """Entries whose hostname matches ``hostname_regex`` anywhere (RE2 syntax, at most
        MAX_REGEX_CHARS characters; matched in linear time): [{hostname, ekpubhash}]."""
        pattern = compile_hostname_regex(hostname_regex)
        return [e for e in self._index(rev=rev) if pattern.search(e["hostname"])]

    def by_hostname(self, hostname, rev=None):
        """The ekpubhash enrolled for ``hostname``, or None (reads one index shard)."""
        data = self.read_file(hostname_shard(hostname), rev=rev)
        for e in json.loads(data) if data else []:
            if e["hostname"] == hostname:
                return e["ekpubhash"]
        return None

    # -- writes ---------------------------------------------------------------
    @staticmethod
    def _shard_bytes(rows):
        """The stored form of an index shard (sorted, so equal content gives equal blobs)."""
        rows = sorted(rows, key=lambda r: (r["hostname"], r["ekpubhash"]))
        return (json.dumps(rows, sort_keys=True, indent=0) + "\n").encode()

    def _shard_rows(self, path):
        data = self.read_file(path)
        return json.loads(data) if data else []

    @staticmethod
    def _check_files(files):
        for name, data in files.items():
            if not isinstance(name, str) or not FILE_NAME_RE.fullmatch(name) or not isinstance(data, bytes):
                raise EnrollDbError("invalid entry file %r" % (name,))

    @staticmethod
    def _check_manifest_generation(files, generation):
        """A stored manifest must carry the generation of the commit that stores it (the writer
        stamps it under the lock: ``finalize``), so clients can rely on it to refuse a rollback."""
        if "manifest.json" not in files:
            return
        try:
            manifest = jsonutil.loads(files["manifest.json"], what="the manifest")
        except jsonutil.JsonInputError:
            manifest = None
        stamped = manifest.get("generation") if isinstance(manifest, dict) else None
        if isinstance(stamped, bool) or stamped != generation:
            raise EnrollDbError("the entry's manifest has generation %r, its commit gets %d (stamp it with finalize)"
                                % (stamped, generation))

    def add(self, ekpubhash, hostname, files, message=None, replace=False, finalize=None):
        """Store an entry (``files``: {name: bytes}, without ekpubhash/hostname which are
        written here). 409-type AlreadyEnrolledError when the EK or the hostname is taken
        (``replace=True``: re-enrollment of the same EK and hostname replaces the files).
        ``finalize(generation)``: called under the lock with the generation the commit gets;
        returns files (the signed manifest) merged over ``files``. A ``manifest.json`` must carry
        that generation.
        Returns the new commit id."""
        if not isinstance(ekpubhash, str) or not EKPUBHASH_RE.fullmatch(ekpubhash):
            raise EnrollDbError("ekpubhash must be 64 lowercase hex characters")
        self._check_files(files)
        base = entry_dir(ekpubhash)
        with self.lock():
            # one git process reads what the checks need, at the head this writer builds on
            # (the lock is held: nothing moves it until the commit below)
            head = self.head_from_refs() or self.head()
            shard = hostname_shard(hostname)
            current = self.read_files([base + "/ekpubhash", shard, GENERATION_FILE], rev=head) if head else {}
            existing = current.get(base + "/ekpubhash")
            if existing is not None and existing.strip().decode() != ekpubhash:
                raise EnrollDbError("ekpubhash prefix collision with %s" % existing.strip().decode())
            shard_rows = json.loads(current[shard]) if current.get(shard) else []
            owner = next((e["ekpubhash"] for e in shard_rows if e["hostname"] == hostname), None)
            if replace:
                if existing is None:
                    raise NotEnrolledError("no enrollment for ekpubhash %s" % ekpubhash)
                if owner != ekpubhash:
                    raise EnrollDbError("re-enrollment of %s may not change its hostname" % ekpubhash)
            else:
                if existing is not None:
                    raise AlreadyEnrolledError("TPM %s is already enrolled" % ekpubhash)
                if owner is not None:
                    raise AlreadyEnrolledError("hostname %s is already enrolled with TPM %s" % (hostname, owner))
            generation = self._generation_from(current.get(GENERATION_FILE), head) + 1
            if finalize is not None:
                files = dict(files)
                files.update(finalize(generation))
                self._check_files(files)
            self._check_manifest_generation(files, generation)
            out = dict(("%s/%s" % (base, k), v) for k, v in files.items())
            out[base + "/ekpubhash"] = ekpubhash.encode() + b"\n"
            out[base + "/hostname"] = hostname.encode() + b"\n"
            deletes = []
            if replace:
                deletes.append(base)
            else:
                out[shard] = self._shard_bytes(shard_rows + [{"hostname": hostname, "ekpubhash": ekpubhash}])
            verb = "reenroll" if replace else "add"
            return self._commit(message or "%s: %s %s" % (verb, hostname, ekpubhash), out, deletes, generation=generation)

    def delete(self, prefix, message=None):
        """Delete every entry whose ekpubhash starts with ``prefix`` (non-empty) in one
        commit; returns the deleted entries [{ekpubhash, hostname}]."""
        if not prefix:
            raise EnrollDbError("refusing to delete with an empty ekpubhash prefix")
        with self.lock():
            victims = self.query(prefix, nofiles=True)
            if not victims:
                raise NotEnrolledError("no enrollment matches ekpubhash prefix %s" % prefix)
            deletes, shards = [], {}
            for v in victims:
                deletes.append(entry_dir(v["ekpubhash"]))
                path = hostname_shard(v["hostname"])
                rows = shards[path] if path in shards else self._shard_rows(path)
                shards[path] = [r for r in rows if (r["hostname"], r["ekpubhash"]) != (v["hostname"], v["ekpubhash"])]
            files = dict((path, self._shard_bytes(rows)) for path, rows in shards.items())
            self._commit(message or "delete: %s" % " ".join(v["ekpubhash"] for v in victims), files, deletes)
            return victims

    def janitor(self):
        """Rebuild the hostname index from the entries; commit only when it differs.
        Returns the number of shards rewritten."""
        with self.lock():
            entries = self.query("", nofiles=True)
            shards = {}
            for e in entries:
                shards.setdefault(hostname_shard(e["hostname"]), []).append({"hostname": e["hostname"], "ekpubhash": e["ekpubhash"]})
            files = dict((path, self._shard_bytes(rows)) for path, rows in shards.items())
            current = dict((r[2], r[1]) for r in self._ls("hn2ek/") if r[0] == "blob")
            stale = [p for p in current if p not in files]
            changed = dict((p, d) for p, d in files.items() if self.read_file(p) != d)
            if not stale and not changed:
                return 0
            self._commit("janitor: rebuild hostname index", changed, stale)
            return len(changed) + len(stale)

    def log(self, limit=20):
        """The latest commits: [{commit, time, message}] (the audit trail)."""
        out = self._git("log", "-n", str(limit), "--format=%H%x00%ct%x00%s", self.ref).decode("utf-8", "replace")
        return [dict(zip(("commit", "time", "message"), line.split("\0"))) for line in out.splitlines() if line]


def main(argv=None):
    """``python -m ...enroll_db init PATH`` (create if absent; prints {"created", "head"}) or
    ``... log PATH [N]`` (the audit trail as JSON lines)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] not in ("init", "log"):
        sys.stderr.write("usage: enroll_db init PATH | enroll_db log PATH [N]\n")
        return 2
    db = EnrollmentDb(argv[1])
    try:
        if argv[0] == "init":
            created = db.init()
            sys.stdout.write(json.dumps({"created": created, "head": db.head()}) + "\n")
        else:
            for entry in db.log(limit=int(argv[2]) if len(argv) > 2 else 20):
                sys.stdout.write(json.dumps(entry, sort_keys=True) + "\n")
    except (EnrollDbError, ValueError, OSError) as exc:
        sys.stderr.write("enroll_db: %s\n" % exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
