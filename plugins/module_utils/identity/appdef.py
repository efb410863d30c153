# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Application definition files (format v1, docs/identity.md "Orchestrator adapter").

One file per application, ``<apps_dir>/<app>.json`` (default ``/etc/hcp/identity/apps``), root's,
0644, written by module hcp.core.app_identity and read by the orchestrator adapter
(identity/orchestrator.py), which vouches for the application to the identity provider when its
systemd unit runs as the named user::

    {"app": "billing", "unit": "billing.service", "user": "billing", "version": 1}

Every name is checked with ``re.fullmatch`` against a closed character set: the application name
becomes the last segment of the SPIFFE id ``spiffe://<site>/<host>/<app>`` and the file name; the
unit and user are compared with what systemd and /proc report. No Ansible imports."""

from __future__ import annotations

import json
import os
import re

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import UnsafePathError, read_nofollow

FORMAT_VERSION = 1
DEFAULT_APPS_DIR = "/etc/hcp/identity/apps"
# A definition is a few names: anything larger is not one.
MAX_DEFINITION_BYTES = 4096
# How many definitions the adapter reads from the directory (bounded work per poll).
MAX_DEFINITIONS = 1024

# A SPIFFE path segment and a file name: lower case (the identity provider's rule, provider.APP_RE),
# and no dot here ("." and ".." never, no extension games).
APP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# systemd unit names (systemd.unit(5)) of services, without "\" escapes and without templates' bare "@".
UNIT_NAME = re.compile(r"[A-Za-z0-9_:-][A-Za-z0-9_.:@-]{0,240}\.service")
# Debian's default NAME_REGEX (adduser.conf) for system users, bounded as useradd does (32).
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_KEYS = frozenset(["version", "app", "unit", "user"])


class DefinitionError(HcpError):
    """An application definition (or a name in it) is invalid. The message names the field and
    the rule, never more of the file than the offending name."""

    status = 400


def _check(value, pattern, what):
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        shown = value if isinstance(value, str) and len(value) <= 80 and value.isprintable() else "(not shown)"
        raise DefinitionError("%s %r is not valid: it must match %s" % (what, shown, pattern.pattern))
    return value


def check_app(app):
    """``app`` when it is a valid application name, else DefinitionError."""
    return _check(app, APP_NAME, "application name")


def check_unit(unit):
    """``unit`` when it is a valid systemd service name (``x.service``), else DefinitionError."""
    if isinstance(unit, str) and unit.startswith("@"):
        raise DefinitionError("unit %r is not valid: a template needs an instance name" % unit[:80])
    return _check(unit, UNIT_NAME, "unit")


def check_user(user):
    """``user`` when it is a valid user name, else DefinitionError."""
    return _check(user, USER_NAME, "user")


def make(app, unit, user):
    """The definition (a dict, format v1) of ``app`` run by systemd unit ``unit`` as ``user``."""
    return {"version": FORMAT_VERSION, "app": check_app(app), "unit": check_unit(unit), "user": check_user(user)}


def encode(definition):
    """The file's bytes: canonical JSON (sorted keys, one line, newline at the end), so that the
    same definition is always the same bytes (the module compares bytes)."""
    return (json.dumps(definition, sort_keys=True, separators=(", ", ": ")) + "\n").encode("ascii")


def parse(data, app=None):
    """The definition in ``data`` (bytes), checked: exactly the keys of format v1, valid names,
    and (``app`` given) the application the file is named after."""
    value = jsonutil.loads(data, what="application definition", max_bytes=MAX_DEFINITION_BYTES, max_depth=2)
    if not isinstance(value, dict):
        raise DefinitionError("application definition is not a JSON object")
    if set(value) != _KEYS:
        raise DefinitionError("application definition must have exactly the keys %s" % ", ".join(sorted(_KEYS)))
    if value["version"] != FORMAT_VERSION or isinstance(value["version"], bool):
        raise DefinitionError("application definition version is not %d" % FORMAT_VERSION)
    definition = make(value["app"], value["unit"], value["user"])
    if app is not None and definition["app"] != app:
        raise DefinitionError("application definition names %r, not %r (its file name)" % (definition["app"], app))
    return definition


def path_of(apps_dir, app):
    """The file of ``app`` in ``apps_dir`` (an absolute directory)."""
    if not isinstance(apps_dir, str) or not os.path.isabs(apps_dir):
        raise DefinitionError("the definitions directory must be an absolute path")
    return os.path.join(apps_dir, check_app(app) + ".json")


def read(apps_dir, app):
    """The definition of ``app`` from its file (read without following links, bounded), or None
    when there is no file."""
    path = path_of(apps_dir, app)
    info, data = read_nofollow(path, MAX_DEFINITION_BYTES)
    if info is None:
        return None
    if data is None:
        raise DefinitionError("%s is larger than %d bytes" % (path, MAX_DEFINITION_BYTES))
    return parse(data, app)


def load_all(apps_dir):
    """``(definitions, errors)``: every valid definition of ``apps_dir`` by application name, and a
    message per file that is not one (skipped: one bad file never hides the others). A missing
    directory is no definitions."""
    definitions, errors = {}, []
    try:
        names = sorted(os.listdir(apps_dir))
    except FileNotFoundError:
        return definitions, errors
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        if len(definitions) + len(errors) >= MAX_DEFINITIONS:
            errors.append("more than %d definitions in %s: the rest are ignored" % (MAX_DEFINITIONS, apps_dir))
            break
        app = name[:-len(".json")]
        try:
            definition = read(apps_dir, app)
        except (HcpError, UnsafePathError, OSError) as exc:
            errors.append("%s: %s" % (os.path.join(apps_dir, name)[:300], exc))
            continue
        if definition is not None:
            definitions[app] = definition
    return definitions, errors
