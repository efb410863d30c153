# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key-server's ACL (format v1, docs/keyserver.md): per name prefix, who may store,
retrieve, delete and list. Default deny: a name no rule covers, an action a rule does not list,
a caller no entry matches are all refused.

    {"format": "hcp.core.keyserver-acl", "version": 1,
     "rules": [{"prefix": "datica-test/", "store": [{"cn": "deploy.example.test"}],
                "retrieve": [{"profile": "vm"}, {"cn": "node1.example.test", "measurement": "pcrs-sha256:..."}],
                "list": [{"cn": "deploy.example.test"}], "delete": []}]}

The rule with the longest prefix that starts the name decides (a string prefix of the name).
An entry matches when every key it gives (``cn``, ``profile``, ``measurement``) equals the
caller's (common name of its certificate, the profile label and measurement of its key-server
binding, pki.verify_keyserver_client); entries of an action are alternatives.
"""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.keyserver.errors import AccessDenied, AclError
from ansible_collections.hcp.core.plugins.module_utils.keyserver.names import (
    LABEL_RE,
    MEASUREMENT_RE,
    check_not_reserved,
    validate_prefix,
)

ACL_FORMAT = "hcp.core.keyserver-acl"
ACL_VERSION = 1
ACTIONS = ("store", "retrieve", "delete", "list")
MATCH_KEYS = ("cn", "profile", "measurement")
MAX_ACL_BYTES = 1024 * 1024
MAX_RULES = 4096
MAX_ENTRIES = 256
MAX_CN_CHARS = 255


def _entry(value, where):
    if not isinstance(value, dict) or not value:
        raise AclError("%s must be a non-empty object with cn, profile and/or measurement" % where)
    unknown = sorted(set(value) - set(MATCH_KEYS))
    if unknown:
        raise AclError("%s: unknown key %s (known: %s)" % (where, ascii(str(unknown[0])[:32]), ", ".join(MATCH_KEYS)))
    cn = value.get("cn")
    if cn is not None and (not isinstance(cn, str) or not cn or len(cn) > MAX_CN_CHARS or not cn.isprintable()):
        raise AclError("%s: cn must be a printable string of 1 to %d characters" % (where, MAX_CN_CHARS))
    profile = value.get("profile")
    if profile is not None and (not isinstance(profile, str) or not LABEL_RE.fullmatch(profile)):
        raise AclError("%s: profile must match [a-z0-9][a-z0-9_.-]{0,63}" % where)
    measurement = value.get("measurement")
    if measurement is not None and (not isinstance(measurement, str) or not MEASUREMENT_RE.fullmatch(measurement)):
        raise AclError("%s: measurement must be pcrs-sha256:<64 lowercase hex>" % where)
    return dict((k, value[k]) for k in MATCH_KEYS if k in value)


def parse_acl(data):
    """The ACL from JSON ``data`` (bytes/str/dict); AclError naming the first problem."""
    if not isinstance(data, dict):
        try:
            data = jsonutil.loads(data, "ACL", max_bytes=MAX_ACL_BYTES, max_depth=6)
        except HcpError as exc:
            raise AclError(str(exc)) from None
    if not isinstance(data, dict) or data.get("format") != ACL_FORMAT or data.get("version") != ACL_VERSION:
        raise AclError("the ACL must be an object with format %s and version %d" % (ACL_FORMAT, ACL_VERSION))
    unknown = sorted(set(data) - {"format", "version", "rules", "comment"})
    if unknown:
        raise AclError("ACL: unknown key %s" % ascii(str(unknown[0])[:32]))
    rules = data.get("rules")
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise AclError("ACL rules must be a list of at most %d rules" % MAX_RULES)
    parsed = {}
    for index, rule in enumerate(rules):
        where = "ACL rule %d" % index
        if not isinstance(rule, dict):
            raise AclError("%s must be an object" % where)
        unknown = sorted(set(rule) - set(ACTIONS) - {"prefix", "comment"})
        if unknown:
            raise AclError("%s: unknown key %s (known: prefix, %s)" % (where, ascii(str(unknown[0])[:32]), ", ".join(ACTIONS)))
        try:
            prefix = validate_prefix(rule.get("prefix"), "%s prefix" % where)
            check_not_reserved(prefix)
        except HcpError as exc:
            raise AclError(str(exc)) from None
        if prefix in parsed:
            raise AclError("%s: prefix %s is listed twice" % (where, prefix))
        allowed = {}
        for action in ACTIONS:
            entries = rule.get(action, [])
            if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
                raise AclError("%s: %s must be a list of at most %d entries" % (where, action, MAX_ENTRIES))
            allowed[action] = [_entry(e, "%s %s entry %d" % (where, action, i)) for i, e in enumerate(entries)]
        parsed[prefix] = allowed
    return Acl(parsed)


class Acl(object):
    """A parsed ACL: ``decide`` and ``check``."""

    def __init__(self, rules):
        self.rules = rules
        self._by_length = sorted(rules, key=len, reverse=True)

    def rule_for(self, name):
        """The prefix of the rule deciding ``name``, or None (no rule: everything denied)."""
        for prefix in self._by_length:
            if name.startswith(prefix):
                return prefix
        return None

    def allowed(self, caller, action, name):
        """True when the ACL lets ``caller`` ({"cn", "profile", "measurement"}) do ``action`` on ``name``."""
        prefix = self.rule_for(name)
        if prefix is None:
            return False
        for entry in self.rules[prefix][action]:
            if all(caller.get(key) is not None and caller.get(key) == value for key, value in entry.items()):
                return True
        return False

    def check(self, caller, action, name):
        """AccessDenied unless allowed (the message names the rule, never who else is allowed)."""
        if not self.allowed(caller, action, name):
            prefix = self.rule_for(name)
            raise AccessDenied("%s of %s denied for %s by the ACL (%s; default deny)" % (
                action, name, ascii(str(caller.get("cn"))[:64]),
                "rule %s" % prefix if prefix is not None else "no rule covers this name"))


def load_acl(path):
    """The ACL in the file at ``path``; AclError when unreadable or malformed."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_ACL_BYTES + 1)
    except OSError as exc:
        raise AclError("cannot read the key-server ACL %s: %s" % (path, exc.strerror)) from None
    return parse_acl(data)
