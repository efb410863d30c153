# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The HCP JSON policy language: load-time validation, compiled, bounded evaluation.

Pure standard library. Semantics: docs/policy-language.md. Everything that can be checked
without the request data is checked by :func:`load_policy`, which reports every problem with
its location; evaluation is bounded (steps, call depth, data size and nesting) and fails
closed by raising :class:`PolicyEvaluationError`, never by accepting.
"""

from __future__ import annotations

import copy
import json
import re

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError

ACTIONS = ("accept", "reject", "jump", "call", "return", "next")
OTHERWISE = ("accept", "reject", "return", "next")
ON_RETURN = ("accept", "reject")
FILTER_KEYS = frozenset(("name", "action", "jump", "call", "scope", "on-return", "if", "otherwise", "next"))
TOP_KEYS = frozenset(("version", "start", "default", "filters"))
OPERANDS = {"exist": (), "equal": ("value",), "subset": ("value",), "elementof": ("value",),
            "contains": ("value",), "isinstance": ("type",)}
TYPES = {
    "null": "null", "None": "null", "string": "string", "str": "string", "number": "number",
    "int": "number", "object": "object", "dict": "object", "array": "array", "list": "array",
    "boolean": "boolean", "bool": "boolean",
}
PATH_RE = re.compile(r"\A(\.|(\.[A-Za-z0-9_<>-]+)+)\Z")
VAR_RE = re.compile(r"\{([A-Za-z0-9_]+)\}")

DEFAULT_LIMITS = {
    "max_call_depth": 32,
    "max_steps": 10000,
    "max_data_depth": 64,
    "max_data_bytes": 1024 * 1024,
}
# JSON text parse_json accepts (policy documents, request data; the data limits above apply after)
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 256
_ENV_PASSES = 10
_CACHE_SIZE = 64


class PolicyError(HcpError):
    """Base of the policy engine's errors."""


class PolicyValidationError(PolicyError):
    """The policy document is invalid; ``problems`` lists every problem with its location."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("invalid policy (%d problem%s): %s" % (
            len(self.problems), "" if len(self.problems) == 1 else "s", "; ".join(self.problems)))


class PolicyEvaluationError(PolicyError):
    """Evaluation could not reach a decision (limit hit, bad data, chain fell off); fail closed."""


class Decision:
    """The outcome of one evaluation. ``trace`` holds filter names, match results and actions
    only, never data values."""

    __slots__ = ("action", "rule", "trace", "reason")

    def __init__(self, action, rule, trace, reason):
        self.action = action
        self.rule = rule
        self.trace = trace
        self.reason = reason

    @property
    def accepted(self):
        return self.action == "accept"

    def as_dict(self):
        return {"decision": self.action, "accepted": self.accepted, "rule": self.rule,
                "reason": self.reason, "trace": list(self.trace)}

    def __repr__(self):
        return "Decision(action=%r, rule=%r)" % (self.action, self.rule)


# ---------------------------------------------------------------- values and paths

def _ckey(value):
    """A hashable key with JSON equality: key order ignored, list order kept, bool is not a
    number, ``"1"`` is not ``1``, ``1`` equals ``1.0``."""
    if value is None:
        return ("z",)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("l", tuple(_ckey(item) for item in value))
    if isinstance(value, dict):
        return ("d", frozenset((key, _ckey(item)) for key, item in value.items()))
    raise PolicyEvaluationError("value of unsupported type %s" % type(value).__name__)


_MISSING = object()


def _resolve(data, nodes):
    for node in nodes:
        if not isinstance(data, dict):
            return _MISSING
        data = data.get(node, _MISSING)
        if data is _MISSING:
            return _MISSING
    return data


def _path_nodes(path):
    return () if path == "." else tuple(path[1:].split("."))


def _type_of(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "other"


def _strip_comments(value):
    """Drop keys exactly ``_`` at any depth (iterative on the way down is not needed: depth
    is bounded by the caller's checks or by the JSON parser)."""
    if isinstance(value, dict):
        return {key: _strip_comments(item) for key, item in value.items() if key != "_"}
    if isinstance(value, list):
        return [_strip_comments(item) for item in value]
    return value


def _check_depth(value, limit):
    """Raise when nesting exceeds ``limit`` (iterative, level by level over the containers
    only, so hostile depth cannot recurse and leaves cost nothing but one type test)."""
    level, depth = ([value] if isinstance(value, (dict, list)) else []), 1
    while level:
        if depth > limit:
            raise PolicyEvaluationError("data nested deeper than %d levels" % limit)
        children = []
        for item in level:
            children.extend(item.values() if isinstance(item, dict) else item)
        level = [child for child in children if isinstance(child, (dict, list))]
        depth += 1


# ---------------------------------------------------------------- {VAR} expansion

def _expand_str(text, env):
    if "{" not in text:
        return text
    whole = VAR_RE.fullmatch(text)
    if whole and whole.group(1) in env and not isinstance(env[whole.group(1)], str):
        return copy.deepcopy(env[whole.group(1)])

    def repl(match):
        val = env.get(match.group(1))
        return val if isinstance(val, str) else match.group(0)
    return VAR_RE.sub(repl, text)


def _expand(value, env):
    if isinstance(value, str):
        return _expand_str(value, env)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            new_key = _expand_str(key, env)
            out[new_key if isinstance(new_key, str) else key] = _expand(item, env)
        return out
    if isinstance(value, list):
        return [_expand(item, env) for item in value]
    return value


def _prepare(value, env):
    """``_expand(_strip_comments(value), env)`` in one walk (``env`` may be empty: strip only)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "_":
                continue
            if env and "{" in key:
                new_key = _expand_str(key, env)
                key = new_key if isinstance(new_key, str) else key
            out[key] = _prepare(item, env)
        return out
    if isinstance(value, list):
        return [_prepare(item, env) for item in value]
    if env and isinstance(value, str):
        return _expand_str(value, env)
    return value


def _prepare_top(data, extra, env):
    """The top level of :func:`_prepare`, with ``extra`` (hookname, request_uid) written in the
    stripped data before expansion, in place of a key of the same name or after the others, as
    the engine always did (so a later key expanding to the same name still wins over it)."""
    items = []
    for key, item in data.items():
        if key == "_":
            continue
        if key in extra:
            items.append((key, _expand(extra[key], env) if env else extra[key]))
        else:
            items.append((key, _prepare(item, env)))
    items.extend((key, _expand(value, env) if env else value) for key, value in extra.items() if key not in data)
    out = {}
    for key, item in items:
        if env and "{" in key:
            new_key = _expand_str(key, env)
            key = new_key if isinstance(new_key, str) else key
        out[key] = item
    return out


def _variables(data):
    """``data.__env`` self-expanded to a fixpoint (at most 10 passes, else an error)."""
    env = data.get("__env") if isinstance(data, dict) else None
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise PolicyEvaluationError("__env must be an object")
    for _pass in range(_ENV_PASSES):
        new = _expand(env, env)
        if new == env:
            return env
        env = new
    raise PolicyEvaluationError("__env variables do not reach a fixpoint in %d passes" % _ENV_PASSES)


def _var_names(value, found=None):
    """Every NAME of a ``{NAME}`` in the strings (keys too) of ``value``."""
    found = set() if found is None else found
    if isinstance(value, str):
        found.update(VAR_RE.findall(value))
    elif isinstance(value, dict):
        for key, item in value.items():
            _var_names(key, found)
            _var_names(item, found)
    elif isinstance(value, list):
        for item in value:
            _var_names(item, found)
    return found


def _structure_has_vars(doc):
    """True when a filter name (a ``filters`` key or a ``name``), ``start`` or a jump/call/next
    target holds a {VAR}: then expansion can change the filter graph and the whole expanded
    policy is validated again."""
    if _has_vars(doc.get("start")):
        return True
    for key, value in doc["filters"].items():
        if _has_vars(key):
            return True
        for raw in value if isinstance(value, list) else [value]:
            if isinstance(raw, dict) and any(_has_vars(raw.get(ref)) for ref in ("name", "jump", "call", "next")):
                return True
    return False


def _has_vars(value):
    if isinstance(value, str):
        return VAR_RE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_vars(key) or _has_vars(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_vars(item) for item in value)
    return False


# ---------------------------------------------------------------- compilation

class _Filter:
    __slots__ = ("name", "loc", "action", "target", "scope", "on_return", "conds", "otherwise", "next")


def _compile_condition(cond, loc, problems):
    if not isinstance(cond, dict):
        problems.append("%s: a condition must be an object" % loc)
        return None
    ops = [key for key in cond if key in OPERANDS or (key.startswith("not-") and key[4:] in OPERANDS)]
    if len(ops) != 1:
        bad = [key for key in cond if key not in ("value", "type")]
        if not ops and bad:
            problems.append('%s: unknown condition "%s"' % (loc, bad[0]))
        else:
            problems.append("%s: a condition needs exactly one operator, found %d" % (loc, len(ops)))
        return None
    op = ops[0]
    negate = op.startswith("not-")
    base = op[4:] if negate else op
    ok = True
    for key in cond:
        if key != op and key not in OPERANDS[base]:
            problems.append('%s: unexpected key "%s" for condition "%s"' % (loc, key, op))
            ok = False
    for key in OPERANDS[base]:
        if key not in cond:
            problems.append('%s: condition "%s" needs "%s"' % (loc, op, key))
            ok = False
    path = cond[op]
    if not isinstance(path, str) or not PATH_RE.fullmatch(path):
        problems.append("%s.%s: invalid path %s" % (loc, op, json.dumps(path)))
        ok = False
    if not ok:
        return None
    nodes = _path_nodes(path)
    if base == "exist":
        def test(data):
            return _resolve(data, nodes) is not _MISSING
    elif base == "equal":
        want = _ckey(cond["value"])

        def test(data):
            got = _resolve(data, nodes)
            return got is not _MISSING and _ckey(got) == want
    elif base == "isinstance":
        if cond["type"] not in TYPES:
            problems.append("%s.type: unknown type %s (one of %s)" % (loc, json.dumps(cond["type"]), ", ".join(sorted(TYPES))))
            return None
        want_type = TYPES[cond["type"]]

        def test(data):
            got = _resolve(data, nodes)
            return got is not _MISSING and _type_of(got) == want_type
    elif base == "contains":
        want = _ckey(cond["value"])

        def test(data):
            got = _resolve(data, nodes)
            return isinstance(got, list) and any(_ckey(item) == want for item in got)
    else:  # subset, elementof
        if not isinstance(cond["value"], list):
            problems.append('%s.value: "%s" needs a list' % (loc, op))
            return None
        allowed = frozenset(_ckey(item) for item in cond["value"])
        if base == "subset":
            def test(data):
                got = _resolve(data, nodes)
                return isinstance(got, list) and all(_ckey(item) in allowed for item in got)
        else:
            def test(data):
                got = _resolve(data, nodes)
                return got is not _MISSING and _ckey(got) in allowed
    if negate:
        return lambda data: not test(data)
    return test


def _check_path(value, loc, problems, nullable=False):
    if nullable and value is None:
        return None
    if not isinstance(value, str) or not PATH_RE.fullmatch(value):
        problems.append("%s: invalid path %s" % (loc, json.dumps(value)))
        return None
    return _path_nodes(value)


def _compile_scope(scope, loc, problems):
    if isinstance(scope, str):
        nodes = _check_path(scope, loc, problems)
        return None if nodes is None else [("import", (), nodes, None)]
    if not isinstance(scope, list):
        problems.append("%s: scope must be a path string or a list of steps" % loc)
        return None
    steps = []
    shapes = {"set": ("value",), "delete": (), "import": ("source",), "union": ("source1", "source2")}
    for index, step in enumerate(scope):
        sloc = "%s[%d]" % (loc, index)
        if not isinstance(step, dict):
            problems.append("%s: a scope step must be an object" % sloc)
            continue
        kinds = [key for key in step if key in shapes]
        if len(kinds) != 1:
            problems.append("%s: a scope step needs exactly one of set, delete, import, union" % sloc)
            continue
        kind = kinds[0]
        bad = [key for key in step if key != kind and key not in shapes[kind]]
        missing = [key for key in shapes[kind] if key not in step]
        for key in bad:
            problems.append('%s: unexpected key "%s" in a %s step' % (sloc, key, kind))
        for key in missing:
            problems.append('%s: a %s step needs "%s"' % (sloc, kind, key))
        target = _check_path(step[kind], "%s.%s" % (sloc, kind), problems)
        if bad or missing or target is None:
            continue
        if kind == "set":
            steps.append(("set", target, step["value"], None))
        elif kind == "delete":
            steps.append(("delete", target, None, None))
        elif kind == "import":
            src = _check_path(step["source"], sloc + ".source", problems)
            if src is not None:
                steps.append(("import", target, src, None))
        else:
            src1 = _check_path(step["source1"], sloc + ".source1", problems, nullable=True)
            src2 = _check_path(step["source2"], sloc + ".source2", problems)
            if src2 is not None and (src1 is not None or step["source1"] is None):
                steps.append(("union", target, src1, src2))
    return steps


def _flatten_filters(filters, problems):
    """Name every filter: an object is one filter, a list is a chain with generated names and
    ``next`` links. Returns [(name, location, raw filter)] and the aliases {chain key: name of
    its first entry} (a chain's key always names its first entry, even when it has a name)."""
    entries = []
    aliases = {}
    for key, value in filters.items():
        if isinstance(value, dict):
            name = value.get("name", key)
            entries.append((name, "filters.%s" % key, value))
        elif isinstance(value, list):
            if not value:
                problems.append("filters.%s: an empty chain" % key)
                continue
            names = []
            for index, item in enumerate(value):
                loc = "filters.%s[%d]" % (key, index)
                if not isinstance(item, dict):
                    problems.append("%s: a filter must be an object" % loc)
                    names.append(None)
                    continue
                default = key if index == 0 else "%s_%d" % (key, index)
                names.append(item.get("name", default))
            if names[0] is not None and names[0] != key:
                aliases[key] = names[0]
            for index, item in enumerate(value):
                if names[index] is None:
                    continue
                if index + 1 < len(value) and "next" not in item and names[index + 1] is not None:
                    item = dict(item, next=names[index + 1])
                entries.append((names[index], "filters.%s[%d]" % (key, index), item))
        else:
            problems.append("filters.%s: must be an object (a filter) or a list (a chain)" % key)
    return entries, aliases


def _compile_filter(name, loc, raw, problems):
    """One filter (``raw`` after chain linking) compiled; problems appended to ``problems``."""
    flt = _Filter()
    flt.name, flt.loc = name, loc
    for key in raw:
        if key not in FILTER_KEYS:
            problems.append('%s: unknown key "%s"' % (loc, key))
    action = raw.get("action")
    if action not in ACTIONS:
        problems.append("%s.action: %s" % (loc, "required" if action is None else 'unknown action %s' % json.dumps(action)))
    flt.action = action
    flt.target = None
    if action in ("jump", "call"):
        flt.target = raw.get(action)
        if not isinstance(flt.target, str):
            problems.append('%s.%s: action "%s" needs a target filter name' % (loc, action, action))
    for key in ("jump", "call"):
        if key in raw and action != key:
            problems.append('%s.%s: only valid with action "%s"' % (loc, key, key))
    flt.scope = None
    if "scope" in raw:
        if action != "call":
            problems.append('%s.scope: only valid with action "call"' % loc)
        else:
            flt.scope = _compile_scope(raw["scope"], loc + ".scope", problems)
    flt.on_return = raw.get("on-return")
    if flt.on_return is not None:
        if action != "call":
            problems.append('%s.on-return: only valid with action "call"' % loc)
        elif flt.on_return not in ON_RETURN:
            problems.append("%s.on-return: must be accept or reject" % loc)
    flt.otherwise = raw.get("otherwise")
    if flt.otherwise is not None and flt.otherwise not in OTHERWISE:
        problems.append("%s.otherwise: must be one of %s" % (loc, ", ".join(OTHERWISE)))
    conds = raw.get("if", [])
    if isinstance(conds, dict):
        conds = [conds]
    flt.conds = []
    if not isinstance(conds, list):
        problems.append("%s.if: a condition or a list of conditions" % loc)
    else:
        for index, cond in enumerate(conds):
            test = _compile_condition(cond, "%s.if[%d]" % (loc, index), problems)
            if test is not None:
                flt.conds.append(test)
    if flt.otherwise is not None and not conds:
        problems.append("%s.otherwise: useless without if" % loc)
    flt.next = raw.get("next")
    if flt.next is not None and not isinstance(flt.next, str):
        problems.append("%s.next: must be a filter name" % loc)
        flt.next = None
    return flt


def _compile(doc, deferred_refs):
    """Validate and compile ``doc`` (comments stripped). Returns (start, default, filters).
    With ``deferred_refs``, references that still hold a ``{VAR}`` are not checked (the policy
    is re-validated after expansion at evaluation time)."""
    problems = []
    if not isinstance(doc, dict):
        raise PolicyValidationError(["(top): the policy must be a JSON object"])
    for key in doc:
        if key not in TOP_KEYS:
            problems.append('(top): unknown key "%s"' % key)
    if "version" in doc and (doc["version"] != 1 or isinstance(doc["version"], bool)):
        problems.append("version: unsupported version %s (this engine reads 1)" % json.dumps(doc["version"]))
    start = doc.get("start")
    if not isinstance(start, str):
        problems.append("start: required, a filter name (string)")
    default = doc.get("default", "reject")
    if default not in ("accept", "reject"):
        problems.append("default: must be accept or reject")
    filters = doc.get("filters")
    if not isinstance(filters, dict) or not filters:
        problems.append("filters: required, a non-empty object")
        raise PolicyValidationError(problems)

    compiled = {}
    entries, aliases = _flatten_filters(filters, problems)
    for name, loc, raw in entries:
        if not isinstance(name, str) or not name:
            problems.append("%s.name: must be a non-empty string" % loc)
            continue
        if name in compiled:
            problems.append('%s: duplicate filter name "%s" (also %s)' % (loc, name, compiled[name].loc))
            continue
        compiled[name] = _compile_filter(name, loc, raw, problems)
    for alias, name in aliases.items():
        if alias in compiled:
            problems.append('filters.%s: chain name "%s" is also the name of %s' % (alias, alias, compiled[alias].loc))
        elif name in compiled:
            compiled[alias] = compiled[name]

    def unresolved(ref):
        return ref not in compiled and not (deferred_refs and VAR_RE.search(ref))

    if isinstance(start, str) and unresolved(start):
        problems.append('start: no filter named "%s"' % start)
    for key, flt in compiled.items():
        if key != flt.name:
            continue  # a chain alias of a filter checked under its own name
        if isinstance(flt.target, str) and unresolved(flt.target):
            problems.append('%s.%s: no filter named "%s"' % (flt.loc, flt.action, flt.target))
        if flt.next is not None and unresolved(flt.next):
            problems.append('%s.next: no filter named "%s"' % (flt.loc, flt.next))
        if flt.next is None and "next" in _outcomes(flt):
            problems.append("%s: can continue to the next filter but has no next (end of chain)" % flt.loc)
    if not problems:
        for name in sorted(_stuck(compiled)):
            problems.append("%s: never exits (every path loops without accept, reject or return)" % compiled[name].loc)
    if problems:
        raise PolicyValidationError(problems)
    return start, default, compiled


def _outcomes(flt):
    """Actions this filter can take: on match, on no match, and after a call returns."""
    out = {flt.action}
    if flt.conds:
        out.add(flt.otherwise or "next")
    if flt.action == "call":
        out.add(flt.on_return or "next")
    return out


def _exit_alternatives(flt):
    """The actions whose outcome decides whether ``flt`` can exit: its action and, with an ``if``,
    what it does on no match (a call counts as exiting when its callee can exit)."""
    return (flt.action, flt.otherwise or "next") if flt.conds else (flt.action,)


def _stuck(compiled):
    """Filters from which no accept/reject/return (nor a call that may decide) is reachable.

    Backward reachability from the filters that exit by themselves, over the reversed
    jump/call/next edges: linear in the number of filters and edges, whatever the order of the
    filters (a fixpoint over the filter list was quadratic in chain length when callers
    precede callees). A reference to no filter (a ``{VAR}`` target checked after expansion)
    counts as an exit, as before."""
    callers = {}
    can_exit = set()
    todo = []
    for flt in compiled.values():
        if flt.name in callers:
            continue  # a chain alias of a filter already seen under its own name
        callers[flt.name] = []
    for name in callers:
        flt = compiled[name]
        for action in _exit_alternatives(flt):
            if action in ("accept", "reject", "return"):
                exits = True
            else:
                ref = {"jump": flt.target, "call": flt.target, "next": flt.next}.get(action)
                if ref is None:
                    continue
                exits = ref not in compiled
                if not exits:
                    callers[compiled[ref].name].append(name)
            if exits and name not in can_exit:
                can_exit.add(name)
                todo.append(name)
    while todo:
        for caller in callers[todo.pop()]:
            if caller not in can_exit:
                can_exit.add(caller)
                todo.append(caller)
    return set(callers) - can_exit


# ---------------------------------------------------------------- scope execution

def _write(obj, nodes, value):
    if not nodes:
        return value
    cursor = obj
    if not isinstance(cursor, dict):
        raise PolicyEvaluationError("scope: cannot write into a non-object")
    for node in nodes[:-1]:
        nxt = cursor.get(node)
        if nxt is None and node not in cursor:
            nxt = cursor[node] = {}
        if not isinstance(nxt, dict):
            raise PolicyEvaluationError("scope: cannot write through a non-object")
        cursor = nxt
    cursor[nodes[-1]] = value
    return obj


def _delete(obj, nodes):
    if not nodes:
        return {}
    parent = _resolve(obj, nodes[:-1])
    if isinstance(parent, dict):
        parent.pop(nodes[-1], None)
    return obj


def _union(first, second):
    if isinstance(first, dict) and isinstance(second, dict):
        out = dict(first)
        for key, value in second.items():
            out[key] = _union(out[key], value) if key in out else copy.deepcopy(value)
        return out
    if isinstance(first, list) and isinstance(second, list):
        out, seen = [], set()
        for item in first + second:
            key = _ckey(item)
            if key not in seen:
                seen.add(key)
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(second)


def _build_scope(steps, caller):
    built = {}
    for kind, target, arg1, arg2 in steps:
        if kind == "set":
            built = _write(built, target, copy.deepcopy(arg1))
        elif kind == "delete":
            built = _delete(built, target)
        elif kind == "import":
            value = _resolve(caller, arg1)
            if value is _MISSING:
                raise PolicyEvaluationError("scope: import source %s does not exist" % _fmt_path(arg1))
            built = _write(built, target, copy.deepcopy(value))
        else:
            second = _resolve(built, arg2)
            first = None if arg1 is None else _resolve(built, arg1)
            if second is _MISSING or first is _MISSING:
                raise PolicyEvaluationError("scope: union source does not exist")
            built = _write(built, target, _union(first, second) if arg1 is not None else copy.deepcopy(second))
    return built


def _fmt_path(nodes):
    return "." + ".".join(nodes)


# ---------------------------------------------------------------- the policy

class Policy:
    """A validated, compiled policy. Thread-safe for concurrent evaluations."""

    def __init__(self, doc, limits=None):
        self.document = doc
        self.limits = dict(DEFAULT_LIMITS)
        for key, value in (limits or {}).items():
            if key not in DEFAULT_LIMITS:
                raise PolicyError("unknown policy limit %s" % key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PolicyError("policy limit %s must be a positive integer" % key)
            self.limits[key] = value
        self.has_vars = _has_vars(doc)
        self.start, self.default, self.filters = _compile(doc, deferred_refs=self.has_vars)
        self._cache = {}
        # {VAR} expansion of the policy reads only the variables it names: the cache key
        self._var_names = tuple(sorted(_var_names(doc))) if self.has_vars else ()
        self._templates = None
        if self.has_vars and not _structure_has_vars(doc):
            # Names, start and every jump/call/next target are fixed: the load-time validation
            # above is the whole validation (no reference was deferred) and no expansion can
            # change the filter graph (actions, otherwise, on-return, operators, paths and
            # types cannot hold a {VAR}: they fail to load). Only the filters whose values
            # hold a {VAR} are compiled again per variable set, from their raw form.
            self._templates = self._template_filters(doc)

    def _template_filters(self, doc):
        """[(name, keys, var_conds, var_scope)] of the filters whose conditions or scope hold a
        {VAR} (``keys``: its name and chain aliases; ``var_conds``: [(index, location, raw
        condition)]), or None when a {VAR} sits anywhere else (the whole policy is then
        expanded and validated again per variable set, as before)."""
        keys_of = {}
        for key, flt in self.filters.items():
            keys_of.setdefault(flt.name, []).append(key)
        entries, _aliases = _flatten_filters(doc["filters"], [])
        templates = []
        for name, loc, raw in entries:
            if not _has_vars(raw):
                continue
            if any(_has_vars(value) for key, value in raw.items() if key not in ("if", "scope")):
                return None
            conds = raw.get("if", [])
            conds = [conds] if isinstance(conds, dict) else conds
            var_conds = [(index, "%s.if[%d]" % (loc, index), cond) for index, cond in enumerate(conds) if _has_vars(cond)]
            var_scope = raw["scope"] if _has_vars(raw.get("scope")) else None
            templates.append((name, keys_of[name], var_conds, var_scope))
        return templates

    @property
    def filter_names(self):
        return sorted({flt.name for flt in self.filters.values()})

    def _expand_filters(self, env):
        """(start, default, filters) with the {VAR}-holding conditions and scopes compiled from
        their expanded raw form; everything else (other filters, chain aliases, actions, links)
        is the load-time objects."""
        problems = []
        filters = dict(self.filters)
        for name, keys, var_conds, var_scope in self._templates:
            base = self.filters[name]
            flt = _Filter()
            for slot in _Filter.__slots__:
                setattr(flt, slot, getattr(base, slot))
            if var_conds:
                flt.conds = list(base.conds)
                for index, loc, cond in var_conds:
                    test = _compile_condition(_expand(cond, env), loc, problems)
                    flt.conds[index] = test
            if var_scope is not None:
                flt.scope = _compile_scope(_expand(var_scope, env), base.loc + ".scope", problems)
            for key in keys:
                filters[key] = flt
        if problems:  # not reachable from a policy that loaded; kept fail-closed
            raise PolicyValidationError(problems)
        return self.start, self.default, filters

    def _compiled_for(self, env):
        """The compiled policy for the variables ``env``.

        Cache (at most _CACHE_SIZE entries, cleared when full): keyed by the values (a string,
        else its JSON) of the variables the policy names (``self._var_names``), present in ``env`` or not, which is
        everything {VAR} expansion of the policy reads (_expand_str looks up only the names
        in the text), so equal keys give equal expanded policies. Nothing else invalidates it:
        a Policy never changes after load (a new policy file is a new Policy with an empty
        cache)."""
        if not self.has_vars:
            return self.start, self.default, self.filters
        key = tuple(("s", env[name]) if isinstance(env.get(name), str) else ("j", json.dumps(env[name], sort_keys=True))
                    if name in env else ("m",) for name in self._var_names)
        hit = self._cache.get(key)
        if hit is None:
            try:
                if self._templates is not None:
                    hit = self._expand_filters(env)
                else:
                    hit = _compile(_expand(self.document, env), deferred_refs=False)
            except PolicyValidationError as exc:
                raise PolicyEvaluationError("policy invalid after {VAR} expansion: %s" % "; ".join(exc.problems)) from None
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def check_data(self, data, size=None):
        """Reject data beyond the configured size and nesting limits (before evaluation)."""
        _check_depth(data, self.limits["max_data_depth"])
        if size is None:
            try:
                size = len(json.dumps(data, separators=(",", ":")).encode("utf-8"))
            except (TypeError, ValueError):
                raise PolicyEvaluationError("data is not JSON-serialisable") from None
        if size > self.limits["max_data_bytes"]:
            raise PolicyEvaluationError("data larger than %d bytes" % self.limits["max_data_bytes"])

    def evaluate(self, data, hookname=None, request_uid=None, _size=None):
        """Decide on ``data`` (a JSON object). ``hookname``/``request_uid``, when given, are
        written into the data as keys of the same name. Raises PolicyEvaluationError when no
        decision can be reached."""
        if not isinstance(data, dict):
            raise PolicyEvaluationError("data must be a JSON object")
        self.check_data(data, _size)
        extra = {}
        if hookname is not None:
            extra["hookname"] = hookname
        if request_uid is not None:
            extra["request_uid"] = request_uid
        raw_env = _strip_comments(data["__env"]) if "__env" in data else None
        env = _variables({"__env": raw_env})
        # one pass: comments stripped, then {VAR}s expanded (the same result as stripping the
        # whole data, writing hookname/request_uid, then expanding everything but __env)
        data = _prepare_top(data, extra, env)
        if env:
            data["__env"] = raw_env
        start, default, filters = self._compiled_for(env)
        trace = []
        state = {"steps": 0}
        result = self._run(filters, data, start, 0, trace, state)
        if result is None:
            return Decision(default, "default", trace, "no filter decided; policy default")
        return Decision(result[0], result[1], trace, result[2])

    def _run(self, filters, data, cursor, depth, trace, state):
        # ``depth``: the number of nested calls (0 at top level); max_call_depth of them are allowed
        if depth > self.limits["max_call_depth"]:
            raise PolicyEvaluationError("call depth exceeds %d" % self.limits["max_call_depth"])
        max_steps = self.limits["max_steps"]
        while True:
            state["steps"] += 1
            if state["steps"] > max_steps:
                raise PolicyEvaluationError("evaluation exceeds %d steps" % max_steps)
            flt = filters[cursor]
            matched = all(test(data) for test in flt.conds)
            action = flt.action if matched else (flt.otherwise or "next")
            trace.append({"filter": flt.name, "matched": matched, "action": action})
            if action in ("accept", "reject"):
                return action, flt.name, "filter matched" if matched else "filter did not match (otherwise)"
            if action == "return":
                return None
            if action == "jump":
                cursor = flt.target
                continue
            if action == "call":
                callee = data if flt.scope is None else _build_scope(flt.scope, data)
                result = self._run(filters, callee, flt.target, depth + 1, trace, state)
                if result is not None:
                    return result
                action = flt.on_return or "next"
                if action != "next":
                    trace.append({"filter": flt.name, "matched": True, "action": "on-return " + action})
                    return action, flt.name, "call returned; on-return"
            if flt.next is None:
                raise PolicyEvaluationError("filter %s: no next filter (fell off the chain)" % flt.name)
            cursor = flt.next


def parse_json(text, what="JSON", max_bytes=MAX_JSON_BYTES, max_depth=MAX_JSON_DEPTH):
    """The bounded decoder (``jsonutil.loads``: UTF-8, no NaN/Infinity, size and nesting
    bounds) raising PolicyError ``malformed <what>: <problem>``."""
    try:
        return jsonutil.loads(text, what, max_bytes=max_bytes, max_depth=max_depth)
    except jsonutil.JsonInputError as exc:
        raise PolicyError("malformed %s: %s" % (what, exc.detail)) from None


def load_policy(doc_or_json, limits=None):
    """A :class:`Policy` from a dict or JSON text/bytes; every problem raises at once as
    :class:`PolicyValidationError`."""
    if isinstance(doc_or_json, (str, bytes, bytearray)):
        try:
            doc = parse_json(doc_or_json, "policy JSON")
        except PolicyError as exc:
            raise PolicyValidationError(["(top): %s" % exc]) from None
    else:
        try:
            doc = json.loads(json.dumps(doc_or_json, allow_nan=False))
        except (TypeError, ValueError, RecursionError):
            raise PolicyValidationError(["(top): the policy is not plain JSON data"]) from None
    try:
        return Policy(_strip_comments(doc), limits)
    except RecursionError:
        raise PolicyValidationError(["(top): the policy is nested too deeply"]) from None


def evaluate_json(policy, text, hookname=None, request_uid=None):
    """Evaluate a raw request body: malformed JSON or oversize raises PolicyEvaluationError."""
    size = len(text.encode("utf-8")) if isinstance(text, str) else len(text)
    if size > policy.limits["max_data_bytes"]:
        raise PolicyEvaluationError("data larger than %d bytes" % policy.limits["max_data_bytes"])
    try:
        data = parse_json(text, "request JSON")
    except PolicyError as exc:
        raise PolicyEvaluationError(str(exc)) from None
    return policy.evaluate(data, hookname=hookname, request_uid=request_uid, _size=size)
