# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build the hcp.core library (the collection's plugins/module_utils) into one wheel.

Usage: build_library_wheel.py COLLECTION_DIR OUT_DIR [WHEELHOUSE]
Prints one JSON line: {"name", "version", "file", "path", "changed", "bundle"}.

With WHEELHOUSE, also writes OUT_DIR/hcp-wheelhouse.tar: the wheelhouse's requirements.txt and
dependency wheels in one uncompressed, reproducible tar, so a target that lacks them receives
one file (one transfer) instead of a copy per wheel over a slow connection.

The wheel installs the namespace ``ansible_collections.hcp.core.plugins.module_utils`` into
the runtime venv, so services import exactly the code the modules ship with. Its version is
the collection version plus a local label made of a hash of the sources
(``0.1.0+g1a2b3c4d5e6f``): any change to a source file is a new version, so pip replaces the
whole package and no stale file can linger on a target.

Written by hand rather than with setuptools/flit/build: a wheel is a zip with three metadata
files (PEP 427/PEP 376), and this way the build needs nothing but the controller's Python,
works offline, and is byte-for-byte reproducible (fixed timestamps, sorted entries), so
copying it to a target is idempotent. Older wheels of the library in OUT_DIR are removed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import tarfile
import tempfile
import zipfile

DIST = "hcp_core_lib"
PACKAGE = "ansible_collections/hcp/core/plugins/module_utils"
# 1980-01-01, the earliest timestamp a zip can carry: the same bytes on every build.
EPOCH = (1980, 1, 1, 0, 0, 0)


def collection_version(coll):
    """The collection's version: MANIFEST.json (installed) or galaxy.yml (source tree)."""
    manifest = os.path.join(coll, "MANIFEST.json")
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as f:
            return json.load(f)["collection_info"]["version"]
    with open(os.path.join(coll, "galaxy.yml"), encoding="utf-8") as f:
        for line in f:
            m = re.fullmatch(r"version:\s*['\"]?([0-9][0-9A-Za-z.+-]*)['\"]?\s*", line.rstrip("\n"))
            if m:
                return m.group(1)
    raise SystemExit("no version in %s/galaxy.yml" % coll)


def sources(src):
    """(relative path, bytes) of every .py file under src, sorted; caches and dotfiles left out."""
    out = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith("."):
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    out.append((os.path.relpath(path, src).replace(os.sep, "/"), f.read()))
    return out


def _atomic_write(path, write):
    """Write PATH (0644) through write(fileobj) into a temporary file beside it, then rename."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            write(raw)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build(coll, out_dir):
    src = os.path.join(coll, "plugins", "module_utils")
    files = sources(src)
    if not files:
        raise SystemExit("no Python sources under %s" % src)
    digest = hashlib.sha256()
    for rel, data in files:
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    version = "%s+g%s" % (collection_version(coll), digest.hexdigest()[:12])
    info = "%s-%s.dist-info" % (DIST, version)
    entries = [("%s/%s" % (PACKAGE, rel), data) for rel, data in files]
    entries.append((info + "/METADATA", (
        "Metadata-Version: 2.1\nName: %s\nVersion: %s\n"
        "Summary: hcp.core library (plugins/module_utils of the hcp.core collection)\n"
        "License: GPL-3.0-or-later\nRequires-Python: >=3.9\n" % (DIST.replace("_", "-"), version)).encode()))
    entries.append((info + "/WHEEL", (
        "Wheel-Version: 1.0\nGenerator: hcp.core build_library_wheel\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n").encode()))
    record = "".join("%s,%s,%d\n" % (name, record_hash(data), len(data)) for name, data in entries)
    record += info + "/RECORD,,\n"
    entries.append((info + "/RECORD", record.encode()))

    filename = "%s-%s-py3-none-any.whl" % (DIST, version)
    path = os.path.join(out_dir, filename)
    os.makedirs(out_dir, exist_ok=True)
    changed = not os.path.isfile(path)
    if changed:

        def write_zip(raw):
            with zipfile.ZipFile(raw, "w") as zf:
                for name, data in entries:
                    zi = zipfile.ZipInfo(name, date_time=EPOCH)
                    zi.compress_type = zipfile.ZIP_DEFLATED
                    zi.external_attr = 0o644 << 16
                    zf.writestr(zi, data)
        _atomic_write(path, write_zip)
    for other in os.listdir(out_dir):
        if other.startswith(DIST + "-") and other.endswith(".whl") and other != filename:
            os.unlink(os.path.join(out_dir, other))
    return {"name": DIST.replace("_", "-"), "version": version, "file": filename, "path": path, "changed": changed}


BUNDLE = "hcp-wheelhouse.tar"


def bundle(wheelhouse, out_dir):
    """Write OUT_DIR/hcp-wheelhouse.tar from the wheelhouse unless it already holds the same files."""
    names = sorted(n for n in os.listdir(wheelhouse)
                   if n == "requirements.txt" or (n.endswith(".whl") and not n.startswith(DIST + "-")))
    want = [(n, os.path.getsize(os.path.join(wheelhouse, n))) for n in names]
    path = os.path.join(out_dir, BUNDLE)
    try:
        with tarfile.open(path) as tf:
            if [(m.name, m.size) for m in tf.getmembers()] == want:
                return path
    except (OSError, tarfile.TarError):
        pass

    def write_tar(raw):
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for name in names:
                ti = tf.gettarinfo(os.path.join(wheelhouse, name), arcname=name)
                ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0o644, 0, 0, "root", "root"
                with open(os.path.join(wheelhouse, name), "rb") as f:
                    tf.addfile(ti, f)
    _atomic_write(path, write_tar)
    return path


def main(argv):
    if len(argv) not in (3, 4):
        raise SystemExit("usage: %s COLLECTION_DIR OUT_DIR [WHEELHOUSE]" % argv[0])
    result = build(os.path.realpath(argv[1]), argv[2])
    result["bundle"] = bundle(argv[3], argv[2]) if len(argv) == 4 else None
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
