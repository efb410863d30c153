"""Lab image only: a compile cache for Ansible's AnsiballZ payloads.

tools/lab-image.sh installs this file (and a .pth line importing it) into hcp-lab/debian:bookworm.
It is never in the bare base image, never in the collection, never on a real target.

Why: Ansible ships each module and its module_utils to the target as a zip that Python imports
with zipimport, which keeps no bytecode: every task on every host compiles
ansible.module_utils.basic & co. from source again. Measured in a lab container: 0.36 s of CPU
per module run, 0.22 s with this cache; on the 2-core lab machine that CPU is most of a molecule
scenario's time.

What: zipimport's compile step, for sources inside an AnsiballZ payload only, keeps the compiled
code under /var/cache/hcp-lab-pycache (root only, 0700), keyed by a SHA-256 of the Python version,
the path inside the zip and the source text. What runs is the code the module shipped, compiled
the same way (what CPython's .pyc files do for ordinary files); file names in tracebacks are
re-pointed to the current payload. Any error falls back to plain compilation.
"""

import os
import sys
import zipimport

_CACHE = "/var/cache/hcp-lab-pycache"
_MARK = "_payload.zip" + os.sep
_compile = getattr(zipimport, "_compile_source", None)


def _rename(code, filename):
    consts = tuple(_rename(c, filename) if isinstance(c, type(code)) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _cached_compile(pathname, source):
    if _MARK not in pathname or os.geteuid() != 0:
        return _compile(pathname, source)
    import hashlib  # pylint: disable=import-outside-toplevel
    import marshal  # pylint: disable=import-outside-toplevel

    inner = pathname.split(_MARK, 1)[1]
    digest = hashlib.sha256(("%d.%d\0%s\0" % (sys.version_info[0], sys.version_info[1], inner)).encode() + source)
    path = os.path.join(_CACHE, digest.hexdigest())
    try:
        with open(path, "rb") as f:
            return _rename(marshal.loads(f.read()), pathname)
    except (OSError, ValueError, EOFError, TypeError):
        pass
    code = _compile(pathname, source)
    try:
        os.makedirs(_CACHE, mode=0o700, exist_ok=True)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(tmp, "wb") as f:
            f.write(marshal.dumps(code))
        os.replace(tmp, path)
    except OSError:
        pass
    return code


if _compile is not None:
    zipimport._compile_source = _cached_compile  # pylint: disable=protected-access
