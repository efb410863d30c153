# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet as the enrollment DB sees it (no Ansible imports; docs/fleet.md).

- Reading: every entry of the DB (``read_db``, one pinned commit, a fixed number of git
  processes whatever the fleet size) or of the enrollment API (``read_api``), reduced to public
  fields: hostname, ekpubhash, a white-listed part of the client profile, the manifest's
  metadata. Never an asset, a sealed envelope or a key.
- Attestation status (``parse_status``): the ``hcp.core.attest.status`` v1 document
  (``{hosts: {hostname: {last_success, last_result, reason}}}``), merged over several servers.
- Classification (``classify``): the inventory plugin's groups attested / stale / failed /
  unenrolled_in_inventory.
- Reconciliation (``reconcile_plan``, ``reconcile``): which entries leave the DB because their
  host left the inventory, with a cap checked before anything is removed.
"""

from __future__ import annotations

import datetime
import re

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.enrollment import db as enroll_db
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError

STATUS_FORMAT = "hcp.core.attest.status"
STATUS_VERSION = 1
MAX_STATUS_BYTES = 32 * 1024 * 1024
MAX_STATUS_HOSTS = 100000
MAX_REASON_CHARS = 256
# Client profile members the inventory may show (none holds a secret or a secret's name; the
# others, e.g. ``secrets`` (operator secret names) or ``krb5_conf``, are never exported).
PROFILE_FIELDS_ALLOWED = ("assets", "certificates", "ssh_host_keys", "reenroll", "seal_policy", "attest")
PROFILE_FIELDS_DEFAULT = ("assets", "reenroll", "seal_policy")
# Manifest members shown (metadata only: its ``files`` digests and asset list are not needed).
MANIFEST_FIELDS = ("generation", "operation", "created", "seal_policy")
DEFAULT_MAX_REMOVALS = 5
_HOSTNAME_RE = re.compile(r"\A(?=.{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z")
_TIME_RE = re.compile(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z\Z")
_DURATION_RE = re.compile(r"\A([0-9]{1,9})\s*([smhdw]?)\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class FleetError(HcpError):
    """A fleet source (DB, API, status document) or a reconciliation request is not usable."""


class ReconcileCapError(FleetError):
    """More removals than the cap allows: nothing was removed."""


def normalize_hostname(name):
    """The form the enrollment service stores (profile.check_hostname): stripped, lower case,
    no trailing dot; None when that is not a valid DNS name."""
    if not isinstance(name, str):
        return None
    norm = name.strip().lower().rstrip(".")
    return norm if _HOSTNAME_RE.fullmatch(norm) else None


def parse_duration(value):
    """Seconds of ``value``: an integer, or a string ``<n>[s|m|h|d|w]`` (FleetError otherwise)."""
    if isinstance(value, bool):
        raise FleetError("a duration must be a number of seconds or <n>[s|m|h|d|w], not %r" % (value,))
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION_RE.fullmatch(value) if isinstance(value, str) else None
        if not match:
            raise FleetError("a duration must be a number of seconds or <n>[s|m|h|d|w], not %r" % (str(value)[:40],))
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise FleetError("a duration must be positive")
    return seconds


def parse_time(value, what):
    """Seconds since the epoch of an RFC 3339 UTC time ``YYYY-MM-DDTHH:MM:SS[.f]Z`` or of an
    integer; None for None; FleetError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise FleetError("%s: not a time" % what)
    if isinstance(value, (int, float)):
        if not 0 <= value < 1 << 40:
            raise FleetError("%s: time out of range" % what)
        return float(value)
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
        raise FleetError("%s: not a time of the form YYYY-MM-DDTHH:MM:SSZ" % what)
    try:
        moment = datetime.datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise FleetError("%s: not a valid date" % what) from None
    return moment.timestamp()


def format_time(seconds):
    """``YYYY-MM-DDTHH:MM:SSZ`` of epoch seconds (None for None)."""
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _profile_view(profile, fields):
    if not isinstance(profile, dict):
        return {}
    return dict((k, profile[k]) for k in fields if k in profile)


def check_profile_fields(fields):
    """``fields`` as a tuple when every one is in PROFILE_FIELDS_ALLOWED; FleetError otherwise."""
    fields = tuple(PROFILE_FIELDS_DEFAULT if fields is None else fields)
    refused = [f for f in fields if f not in PROFILE_FIELDS_ALLOWED]
    if refused:
        raise FleetError("profile fields %s may not be exported (allowed: %s)"
                         % (", ".join(map(str, refused)), ", ".join(PROFILE_FIELDS_ALLOWED)))
    return fields


def _decode_json(raw, what):
    if raw is None:
        return None
    try:
        return jsonutil.loads(raw, what, max_bytes=jsonutil.DEFAULT_MAX_BYTES)
    except jsonutil.JsonInputError:
        return None


def read_db(path, profile_fields=None):
    """The entries of the enrollment DB at ``path`` (bare git repository, read-only: no lock, one
    pinned commit): ``{"source", "head", "entries": [{hostname, ekpubhash, profile, manifest}]}``
    sorted by hostname. Four git processes whatever the number of entries."""
    fields = check_profile_fields(profile_fields)
    db = enroll_db.EnrollmentDb(path)
    head = db.head()
    if head is None:
        raise FleetError("%s is not an enrollment DB (no branch %s)" % (db.path, enroll_db.BRANCH))
    fmt = _decode_json(db.read_file("FORMAT", rev=head), "FORMAT")
    if not isinstance(fmt, dict) or fmt.get("format") != enroll_db.FORMAT or fmt.get("version") != enroll_db.VERSION:
        raise FleetError("%s is not an %s v%d repository" % (db.path, enroll_db.FORMAT, enroll_db.VERSION))
    hostnames = db.entry_files_named("hostname", rev=head)
    profiles = db.entry_files_named("clientprofile", rev=head)
    manifests = db.entry_files_named("manifest.json", rev=head)
    entries = []
    for ekpubhash, raw in hostnames.items():
        manifest = _decode_json(manifests.get(ekpubhash), "manifest") or {}
        entries.append({
            "hostname": raw.decode("utf-8", "replace").strip(),
            "ekpubhash": ekpubhash,
            "profile": _profile_view(_decode_json(profiles.get(ekpubhash), "profile"), fields),
            "manifest": dict((k, manifest[k]) for k in MANIFEST_FIELDS if isinstance(manifest, dict) and k in manifest),
        })
    entries.sort(key=lambda e: (e["hostname"], e["ekpubhash"]))
    return {"source": "db", "head": head, "entries": entries}


def read_api(client, profile_fields=None):
    """The entries the enrollment API lists (``client``: an EnrollmentClient): the same shape as
    ``read_db`` (no manifest metadata: the API does not return it)."""
    fields = check_profile_fields(profile_fields)
    entries = []
    for entry in client.query(""):
        if not isinstance(entry, dict) or not isinstance(entry.get("hostname"), str) or not isinstance(entry.get("ekpubhash"), str):
            raise FleetError("the enrollment service answered a malformed entry")
        entries.append({"hostname": entry["hostname"], "ekpubhash": entry["ekpubhash"],
                        "profile": _profile_view(entry.get("clientprofile"), fields), "manifest": {}})
    entries.sort(key=lambda e: (e["hostname"], e["ekpubhash"]))
    return {"source": "api", "head": None, "entries": entries}


def parse_status(data, what="attestation status"):
    """The hosts of one ``hcp.core.attest.status`` v1 document (bytes, text or decoded value):
    ``{hostname: {last_success, last_attempt, last_result, reason}}`` with times as epoch seconds
    (docs/fleet.md). Bounded: at most MAX_STATUS_BYTES and MAX_STATUS_HOSTS hosts."""
    if isinstance(data, (bytes, str)):
        try:
            data = jsonutil.loads(data, what, max_bytes=MAX_STATUS_BYTES)
        except jsonutil.JsonInputError as exc:
            raise FleetError(str(exc)) from None
    if not isinstance(data, dict) or data.get("format") != STATUS_FORMAT:
        raise FleetError("%s is not an %s document" % (what, STATUS_FORMAT))
    if data.get("version") != STATUS_VERSION:
        raise FleetError("%s has version %r; this code reads %d" % (what, data.get("version"), STATUS_VERSION))
    hosts = data.get("hosts")
    if not isinstance(hosts, dict):
        raise FleetError("%s: hosts must be an object" % what)
    if len(hosts) > MAX_STATUS_HOSTS:
        raise FleetError("%s lists more than %d hosts" % (what, MAX_STATUS_HOSTS))
    result = {}
    for name, record in hosts.items():
        host = normalize_hostname(name)
        if host is None or not isinstance(record, dict):
            raise FleetError("%s: entry %r is not a hostname with an object" % (what, str(name)[:80]))
        label = "%s: host %s" % (what, host)
        outcome = record.get("last_result")
        if outcome is not None and (not isinstance(outcome, str) or not 0 < len(outcome) <= 64):
            raise FleetError("%s: last_result must be a short string" % label)
        reason = record.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise FleetError("%s: reason must be a string" % label)
        result[host] = {"last_success": parse_time(record.get("last_success"), label + " last_success"),
                        "last_attempt": parse_time(record.get("last_attempt"), label + " last_attempt"),
                        "last_result": outcome,
                        "reason": reason[:MAX_REASON_CHARS] if reason else None}
    return result


def read_status(source, ca_file=None, client_cert=None, client_key=None, timeout=30):
    """The parsed status of ``source``: a local file path, or an ``https://`` URL fetched with the
    one HTTPS client (TLS verified with ``ca_file``, the service-client certificate presented)."""
    if source.startswith("https://"):
        # imported here: reading a local DB or status file needs no HTTP library
        from ansible_collections.hcp.core.plugins.module_utils.web.client import HttpsJsonClient  # pylint: disable=import-outside-toplevel
        http = HttpsJsonClient(source, ca_file, client_cert, client_key, timeout, max_response_bytes=MAX_STATUS_BYTES,
                               what="attestation status service", error_class=FleetError)
        response = http.request("GET", "")
        if response.status != 200:
            raise FleetError("attestation status %s: HTTP %d: %s" % (http.url, response.status, response.error_detail()), response.status)
        return parse_status(response.content, "attestation status %s" % http.url)
    if "://" in source:
        raise FleetError("attestation status source %r: only local files and https:// URLs are read" % source[:200])
    try:
        with open(source, "rb") as handle:
            data = handle.read(MAX_STATUS_BYTES + 1)
    except OSError as exc:
        raise FleetError("attestation status file %s: %s" % (source, exc.strerror or exc)) from None
    return parse_status(data, "attestation status file %s" % source)


def merge_status(documents):
    """One view of several servers' parsed status: the latest success anywhere, and the result
    (with its reason) of the latest attempt (an attempt without a time counts as at its success)."""
    merged = {}
    for doc in documents:
        for host, record in doc.items():
            current = merged.get(host)
            if current is None:
                merged[host] = dict(record)
                continue
            successes = [t for t in (current["last_success"], record["last_success"]) if t is not None]
            when_current = current["last_attempt"] or current["last_success"] or 0
            when_new = record["last_attempt"] or record["last_success"] or 0
            if when_new > when_current:
                current.update(last_result=record["last_result"], reason=record["reason"], last_attempt=record["last_attempt"])
            current["last_success"] = max(successes) if successes else None
    return merged


def classify(entries, status, now, stale_after, reference=None):
    """Host variables and groups of the enrolled hosts.

    ``status``: merged status or None (no source: no host is put in attested/stale/failed, the
    state is ``unknown``). ``reference``: hostnames of the reference inventory or None (then
    ``unenrolled_in_inventory`` stays empty). Returns {hostname: {"vars": {...}, "groups": [...]}}.
    Groups: ``attested`` last result ok and a success within ``stale_after`` seconds; ``stale``
    no success within ``stale_after`` (never attested included); ``failed`` the latest attempt's
    result is not ok; ``unenrolled_in_inventory`` enrolled but absent from ``reference``."""
    ref = None if reference is None else set(filter(None, (normalize_hostname(h) for h in reference)))
    hosts = {}
    for entry in entries:
        name = normalize_hostname(entry["hostname"])
        if name is None or name in hosts:
            continue  # not a DNS name (never written by the service) or a second EK for one name
        groups = []
        record = (status or {}).get(name)
        attest = {"state": "unknown", "last_success": None, "last_result": None, "reason": None, "age": None}
        if status is not None:
            success = record["last_success"] if record else None
            outcome = record["last_result"] if record else None
            fresh = success is not None and now - success <= stale_after
            if outcome is not None and outcome != "ok":
                groups.append("failed")
            if not fresh:
                groups.append("stale")
            elif outcome in (None, "ok"):
                groups.append("attested")
            state = "failed" if "failed" in groups else ("stale" if "stale" in groups else "attested")
            attest.update(state=state, last_success=format_time(success), last_result=outcome,
                          reason=record["reason"] if record else None,
                          age=None if success is None else max(0, int(now - success)))
        if ref is not None and name not in ref:
            groups.append("unenrolled_in_inventory")
        hosts[name] = {"groups": groups, "vars": {
            "hcp_ekpubhash": entry["ekpubhash"],
            "hcp_enrollment": {"hostname": name, "ekpubhash": entry["ekpubhash"], "profile": entry.get("profile") or {},
                               "manifest": entry.get("manifest") or {}},
            "hcp_attestation": attest,
        }}
    return hosts


# -- reconciliation ----------------------------------------------------------------------------
def reconcile_plan(entries, inventory, max_removals=DEFAULT_MAX_REMOVALS, scope=None):
    """Which ``entries`` ([{hostname, ekpubhash}]) to unenroll because ``inventory`` (hostnames)
    no longer lists them: {"remove": [{hostname, ekpubhash}], "keep": count}. ``scope``: an RE2
    hostname regex (searched) limiting the entries considered. Raises FleetError when the
    inventory is empty or holds no valid name (that would unenroll everything) and
    ReconcileCapError when more than ``max_removals`` entries would go (nothing is removed)."""
    if isinstance(max_removals, bool) or not isinstance(max_removals, int) or max_removals < 0:
        raise FleetError("max_removals must be a non-negative integer")
    names = [normalize_hostname(h) for h in inventory]
    bad = [h for h, n in zip(inventory, names) if n is None]
    if bad:
        raise FleetError("inventory hostnames that are not DNS names: %s" % ", ".join(repr(str(h)[:80]) for h in bad[:5]))
    wanted = set(names)
    if not wanted:
        raise FleetError("the inventory lists no host: refusing to unenroll every enrolled host")
    pattern = enroll_db.compile_hostname_regex(scope) if scope else None
    remove, keep = [], 0
    for entry in sorted(entries, key=lambda e: (e["hostname"], e["ekpubhash"])):
        if pattern is not None and not pattern.search(entry["hostname"]):
            continue
        if normalize_hostname(entry["hostname"]) in wanted:
            keep += 1
        else:
            remove.append({"hostname": entry["hostname"], "ekpubhash": entry["ekpubhash"]})
    if len(remove) > max_removals:
        raise ReconcileCapError("%d enrolled hosts are not in the inventory, more than max_removals=%d: "
                                "nothing removed. They are: %s" % (len(remove), max_removals,
                                                                   ", ".join(e["hostname"] for e in remove[:50])
                                                                   + (" ..." if len(remove) > 50 else "")))
    return {"remove": remove, "keep": keep}


def reconcile(client, inventory, max_removals=DEFAULT_MAX_REMOVALS, scope=None, check_mode=False):
    """Unenroll through the enrollment API (``client``: an EnrollmentClient) every entry whose
    host left ``inventory``: one delete per entry by its full ekpubhash (one commit each, recorded
    by the service with the caller's certificate subject). The plan, cap included, is computed
    from one listing before the first delete. Returns {changed, remove, removed, kept}."""
    entries = client.query("", nofiles=True)
    plan = reconcile_plan(entries, inventory, max_removals, scope)
    result = {"changed": bool(plan["remove"]), "remove": plan["remove"], "removed": [], "kept": plan["keep"]}
    if check_mode:
        return result
    for victim in plan["remove"]:
        try:
            client.delete(victim["ekpubhash"])
        except HcpError as exc:
            if getattr(exc, "status", None) != 404:  # already gone: someone else removed it
                raise FleetError("unenrolling %s (%s) failed after %d removals (%s): %s"
                                 % (victim["hostname"], victim["ekpubhash"], len(result["removed"]),
                                    ", ".join(e["hostname"] for e in result["removed"]) or "none", exc)) from exc
            continue
        result["removed"].append(victim)
    result["changed"] = bool(result["removed"])
    return result
