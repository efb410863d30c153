# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print (JSON list) which of the given requirements the running interpreter's environment
does not satisfy: the pins of a requirements file plus extra requirement strings, and,
recursively, what the installed distributions themselves require (markers evaluated).

Run by hcp.core.runtime with the venv's python (`python -c <this file's text> FILE [REQ...]`)
in place of `pip install --dry-run`: same answer for pinned wheels (a pin missing or at
another version, a dependency missing or out of range), without pip's start-up and resolver
(about 2 s of CPU per host per run). Exit status 0 with the list; anything else (no venv,
unreadable file) makes the role take the full install path.
"""

import json
import sys
from importlib import metadata

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a venv without `packaging` (it is in the wheelhouse): pip's copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name


def main(argv):
    lines = []
    with open(argv[1], encoding="utf-8") as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                lines.append(line)
    queue = [Requirement(text) for text in lines + list(argv[2:])]
    lacks, seen = [], set()
    while queue:
        req = queue.pop(0)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = canonicalize_name(req.name)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            lacks.append(str(req))
            continue
        if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
            lacks.append(str(req))
            continue
        queue.extend(Requirement(dep) for dep in dist.requires or [])
    print(json.dumps(lacks))


if __name__ == "__main__":
    main(sys.argv)
