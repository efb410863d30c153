# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WSGI applications of hcp.core (hosted by role hcp.core.webapi under uwsgi + nginx).

Each submodule exposes a module-level callable ``application`` built by a factory that
reads its configuration file from an environment variable.
"""

from __future__ import annotations
