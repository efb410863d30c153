# -*- coding: utf-8 -*-
"""Offline stand-in for get-pip.py, seeded into ~/.ansible/test/cache/ by tools/seed-get-pip.sh.

ansible-test fetches get-pip.py from a host that is unreachable here. It runs this file with
argv like ``--disable-pip-version-check pip==24.2 --no-setuptools --no-wheel``: bootstrap pip
with ensurepip, then install the requested pip version from the configured index.
"""
from __future__ import annotations

import subprocess
import sys


def main():
    args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"],
                          stdout=subprocess.DEVNULL)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--upgrade", "--quiet"] + args)


if __name__ == "__main__":
    main()
