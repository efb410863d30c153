# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet status page: one HTML view of ``hcp.core.attest.status`` v1 documents (one per
attestation server, docs/monitoring.md): hosts by state, last attestation age, failures with
their reason, replication health per server.

Rendered by Jinja2 with autoescaping on (host names and reasons are attacker-influenced: every
value goes through its HTML escaping, never string concatenation), and the page carries a
Content-Security-Policy that forbids every script, so even a value that escaped the escaping
could not run. No JavaScript, no external resource: the page works from a static file.
"""

from __future__ import annotations

import time

try:
    import jinja2
except ImportError:  # pragma: no cover - exercised by the sanity import test only
    jinja2 = None

from ansible_collections.hcp.core.plugins.module_utils.errors import MissingDependencyError

DEFAULT_STALE_AFTER = 3600
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
STATES = ("failed", "stale", "ok")

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<title>hcp.core fleet status</title>
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
.summary span { display: inline-block; padding: .4em .9em; margin-right: .5em; border-radius: 4px; font-weight: bold; }
table { border-collapse: collapse; margin-top: .5em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; font-size: .9em; }
th { background: #f0f0f0; }
.failed { background: #f8d7da; } .stale { background: #fff3cd; } .ok { background: #d4edda; }
.unhealthy { background: #f8d7da; } .healthy { background: #d4edda; }
code { font-size: .85em; }
</style>
</head>
<body>
<h1>Fleet status</h1>
<p>Generated {{ generated }} UTC from {{ servers|length }} attestation server(s); a host is stale without a successful
attestation for {{ stale_after }} s.</p>
<p class="summary" id="summary">
{% for state in states %}<span class="{{ state }}" data-state="{{ state }}" data-count="{{ counts[state] }}">{{ state }}: {{ counts[state] }}</span>
{% endfor %}</p>
{% for state in states %}
<h2 id="h-{{ state }}">{{ state|capitalize }} ({{ counts[state] }})</h2>
{% if groups[state] %}
<table id="hosts-{{ state }}" class="hosts">
<thead><tr><th>host</th><th>last success</th><th>last result</th><th>reason</th><th>server</th><th>EK</th></tr></thead>
<tbody>
{% for h in groups[state] %}<tr class="{{ state }}">
<td class="host">{{ h.host }}</td><td class="age">{{ h.success_age }}</td><td class="result">{{ h.last_result }}</td>
<td class="reason">{{ h.reason or "" }}</td><td class="server">{{ h.server }}</td><td><code>{{ h.ekpubhash[:16] }}</code></td></tr>
{% endfor %}</tbody>
</table>
{% else %}<p>none</p>{% endif %}
{% endfor %}
<h2 id="h-replication">Replication</h2>
<table id="replication">
<thead><tr><th>server</th><th>health</th><th>snapshot age</th><th>consecutive failures</th><th>generation</th><th>head</th></tr></thead>
<tbody>
{% for s in servers %}<tr class="{{ 'healthy' if s.healthy else 'unhealthy' }}" data-server="{{ s.name }}">
<td>{{ s.name }}</td><td class="health">{{ 'healthy' if s.healthy else 'unhealthy' }}</td><td>{{ s.age }}</td>
<td>{{ s.failures }}</td><td>{{ s.generation }}</td><td><code>{{ s.head }}</code></td></tr>
{% endfor %}</tbody>
</table>
</body>
</html>
"""


def _age(seconds):
    """A short human age: 42 s, 5 min, 3 h, 2 d; "never" for None."""
    if seconds is None:
        return "never"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return "%d %s ago" % (seconds // size, unit)
    return "%d s ago" % seconds


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def merge(documents, now, stale_after=DEFAULT_STALE_AFTER):
    """(hosts grouped by state, server rows) from status documents: per host the newest attempt
    of any server gives the result, the newest success of any server the age."""
    hosts = {}
    servers = []
    for doc in documents:
        server = doc.get("server") if isinstance(doc.get("server"), dict) else {}
        name = str(server.get("name") or "?")
        age = _number(server.get("snapshot_age_seconds"))
        servers.append({"name": name, "healthy": bool(server.get("healthy")), "age": _age(age),
                        "failures": _number(server.get("replication_failures")) or 0,
                        "generation": server.get("generation") if _number(server.get("generation")) is not None else "",
                        "head": str(server.get("snapshot_head") or "")[:12]})
        entries = doc.get("hosts") if isinstance(doc.get("hosts"), dict) else {}
        for host, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            fresh = {"host": str(host), "last_success": None, "last_attempt": None, "last_result": None, "reason": None,
                     "server": name, "ekpubhash": str(entry.get("ekpubhash") or "")}
            seen = hosts.setdefault(str(host), fresh)
            success, attempt = _number(entry.get("last_success")), _number(entry.get("last_attempt"))
            if success is not None and (seen["last_success"] is None or success > seen["last_success"]):
                seen["last_success"] = success
            if attempt is not None and (seen["last_attempt"] is None or attempt > seen["last_attempt"]):
                seen.update(last_attempt=attempt, last_result=str(entry.get("last_result") or ""),
                            reason=entry.get("reason") if isinstance(entry.get("reason"), str) else None, server=name)
    groups = dict((state, []) for state in STATES)
    for host in sorted(hosts.values(), key=lambda h: (h["last_success"] or 0, h["host"])):
        if host["last_result"] != "ok":
            state = "failed"
        elif host["last_success"] is None or now - host["last_success"] > stale_after:
            state = "stale"
        else:
            state = "ok"
        host["success_age"] = _age(None if host["last_success"] is None else now - host["last_success"])
        groups[state].append(host)
    return groups, servers


def render(documents, now=None, stale_after=DEFAULT_STALE_AFTER):
    """The page (str) for ``documents`` (status documents of one or more servers)."""
    if jinja2 is None:
        raise MissingDependencyError("the Python library 'jinja2' is required to render the status page")
    now = time.time() if now is None else now
    groups, servers = merge(documents, now, stale_after)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(
        csp=CSP, generated=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)), servers=servers, states=STATES,
        groups=groups, counts=dict((s, len(groups[s])) for s in STATES), stale_after=int(stale_after))
