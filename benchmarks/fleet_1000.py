#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""1,000 simulated hosts enrolled and attested from ONE inventory in ONE ansible-playbook run
(issue 21 part 5). Prints figures; asserts nothing but the run itself (exit 1 when a host failed).

On loopback, started and stopped here: the enrollment service as deployed (nginx with client
certificates -> uwsgi -> enroll_app, DB writes through the writer daemon behind a socket-activated
listener) and the attestation service (nginx -> uwsgi -> attest_app reading the same DB). Then
benchmarks/fleet/fleet.yml runs once over an inventory of N hosts (ansible_connection local, each
its own swtpm on a Unix socket): swtpm start, playbooks/enroll.yml, the attestation client's
hcp.core.attest per host, swtpm stop. Printed: wall time total and per phase, per-host cost and
the most expensive tasks, enrollment DB size and query latency at N hosts, peak memory, forks.

Needs nginx-light, uwsgi-core, uwsgi-plugin-python3, swtpm, systemd (systemd-socket-activate)
and the staged collection (`make install`); without them it prints a skip line and exits 0.
Run from the repo root:  nice -n 19 .venv/bin/python benchmarks/fleet_1000.py [--hosts N] [--forks F]
Smoke run: --hosts 3 (about 30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# the stage `make install` makes (collections/ansible_collections/hcp/core), or the staged tree itself (the test)
if os.path.isdir(os.path.join(REPO, "collections", "ansible_collections", "hcp", "core")):
    COLLECTIONS = os.path.join(REPO, "collections")
else:
    COLLECTIONS = os.path.abspath(os.path.join(REPO, "..", "..", ".."))
COLLECTION = os.path.join(COLLECTIONS, "ansible_collections", "hcp", "core")
sys.path.insert(0, COLLECTIONS)
sys.path.insert(0, HERE)

import _stack  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.hcp.core.plugins.module_utils import pki  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment import fleet  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment.client import EnrollmentClient  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb  # noqa: E402

TARGET_SECONDS = 600
WRITER_MODULE = "ansible_collections.hcp.core.plugins.module_utils.enrollment.service"
# the assets of a typical server host (no one-time rootfs key: it extends PCR 11 at install)
PROFILE = {"assets": ["hostname", "https-server", "https-client", "issuer-ca", "ssh-host-keys"]}
DOMAIN = "fleet.test"


def _percentile(values, fraction):
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(len(ordered) * fraction)) - 1))]


def _tree(roots, table):
    """The pids of ``roots`` and all their descendants."""
    children = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [p for p in roots if p in table]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _status_kb(pid, field):
    try:
        with open("/proc/%d/status" % pid, encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _rollup_kb(pid):
    """(Rss, Pss) kB of one process."""
    values = {}
    try:
        with open("/proc/%d/smaps_rollup" % pid, encoding="ascii") as handle:
            for line in handle:
                parts = line.split()
                if parts and parts[0] in ("Rss:", "Pss:"):
                    values[parts[0][:-1]] = int(parts[1])
    except (OSError, ValueError):
        pass
    return values.get("Rss", 0), values.get("Pss", 0)


def _cpu_seconds(pids):
    return sum(_stack.cpu_seconds(fields) for fields in map(_stack.proc_stat, pids) if fields)


class Sampler(threading.Thread):
    """Every ``interval`` s: RSS sums of the server trees and of ansible-playbook's tree, the swtpm
    count and one swtpm's Rss/Pss, the total Pss of the swtpm instances (each kept at its maximum)."""

    def __init__(self, server_roots, tpm_dir, interval=2.0):
        super().__init__(daemon=True)
        self.server_roots = server_roots
        self.tpm_dir = tpm_dir
        self.interval = interval
        self.playbook_pid = None
        self.stop_event = threading.Event()
        self.peak = {"servers_kb": 0, "playbook_kb": 0, "swtpm_count": 0, "swtpm_rss_kb": 0, "swtpm_pss_kb": 0,
                     "swtpm_total_pss_kb": 0}
        self.server_pids = set()
        self.total_pss_at = 0

    def _sample(self):
        table = _stack.parents()
        servers = _tree(self.server_roots, table)
        self.server_pids.update(servers)
        self.peak["servers_kb"] = max(self.peak["servers_kb"], sum(_status_kb(p, "VmRSS") for p in servers))
        if self.playbook_pid:
            tree = _tree([self.playbook_pid], table)
            self.peak["playbook_kb"] = max(self.peak["playbook_kb"], sum(_status_kb(p, "VmRSS") for p in tree))
        try:
            pidfiles = [n for n in os.listdir(self.tpm_dir) if n.endswith(".pid")]
        except OSError:
            pidfiles = []
        if len(pidfiles) > self.peak["swtpm_count"]:
            self.peak["swtpm_count"] = len(pidfiles)
        if pidfiles:
            pids = []
            for name in pidfiles:
                try:
                    with open(os.path.join(self.tpm_dir, name), encoding="ascii") as handle:
                        pids.append(int(handle.read().strip()))
                except (OSError, ValueError):
                    pass
            if pids:
                rss, pss = _rollup_kb(pids[0])
                self.peak["swtpm_rss_kb"] = max(self.peak["swtpm_rss_kb"], rss)
                self.peak["swtpm_pss_kb"] = max(self.peak["swtpm_pss_kb"], pss)
                # the total Pss each time more instances are up (reading 1,000 rollups costs ~0.1 s)
                if len(pids) > self.total_pss_at:
                    self.total_pss_at = len(pids)
                    total = sum(_rollup_kb(p)[1] for p in pids)
                    self.peak["swtpm_total_pss_kb"] = max(self.peak["swtpm_total_pss_kb"], total)

    def run(self):
        while not self.stop_event.wait(self.interval):
            self._sample()

    def stop(self):
        self.stop_event.set()
        self.join()
        self._sample()


def enrollment_site(workdir):
    """Credentials, DB and enroll.json of the enrollment service (as hcp.core.enrollment_server writes it)."""
    root = os.path.join(workdir, "enroll")
    os.makedirs(root, mode=0o700)
    paths = pki.bootstrap_site_credentials(os.path.join(root, "cred"), "fleet", ["localhost"], ["orchestrator"])["paths"]
    db = EnrollmentDb(os.path.join(root, "db"))
    db.init()
    writer_socket = os.path.join(root, "writer.sock")
    config = {"db": db.path, "credentials_dir": os.path.dirname(paths["ca_cert"]), "signer_pub": paths["signer_pub"],
              "ek_trust": "tofu", "postclient": {"seal_policy": {"type": "none"}}, "require_client_cert": True,
              "authorized_clients": ["orchestrator"], "service_client_ca": paths["svc_ca_cert"],
              "reserved_names": ["orchestrator"], "writer_socket": writer_socket}
    path = _stack.write(os.path.join(root, "enroll.json"), json.dumps(config, indent=1))
    return root, db, path, writer_socket, paths


def attestation_site(workdir, db, paths):
    root = os.path.join(workdir, "attest")
    os.makedirs(root, mode=0o700)
    ticket_key_file = os.path.join(root, "ticket.key")
    attest.write_ticket_key_file(ticket_key_file)
    path = _stack.write(os.path.join(root, "attest.json"), json.dumps({
        "db": db.path, "ticket_key_file": ticket_key_file, "asset_signer_pub": paths["signer_pub"], "ek_trust": "tofu"}))
    return root, path


def write_inventory(workdir, hosts, paths, enroll_url, attest_url, jobs):
    inventory = {"all": {
        "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}},
        "vars": {
            "fleet_dir": workdir,
            "fleet_swtpm_jobs": jobs,
            "fleet_attest_servers": [attest_url],
            "fleet_ca_file": paths["ca_cert"],
            "fleet_signer_public_file": paths["signer_pub"],
            "enroll_api_host": "localhost",
            "enroll_url": enroll_url,
            "enroll_ca_file": paths["ca_cert"],
            "enroll_client_cert": paths["client_orchestrator_cert"],
            "enroll_client_key": paths["client_orchestrator_key"],
        },
        "children": {
            "enrollment_server": {"hosts": {"localhost": {}}},
            "attestation_server": {"hosts": {"localhost": {}}},
            "tpm_hosts": {
                "hosts": dict((h, None) for h in hosts),
                "vars": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": sys.executable,
                    "swtpm_tcti": "swtpm:path={{ fleet_dir }}/tpm/{{ inventory_hostname }}.sock",
                    "enroll_profile": PROFILE,
                },
            },
        },
    }}
    return _stack.write(os.path.join(workdir, "inventory.json"), json.dumps(inventory, indent=1))


def run_playbook(workdir, inventory, forks, sampler, strategy="linear"):
    times = os.path.join(workdir, "times.json")
    env = dict(os.environ)
    if strategy == "mitogen":  # the strategy molecule uses (.config/molecule/config.yml)
        env.update({"ANSIBLE_STRATEGY_PLUGINS": os.path.join(REPO, "tools", "ansible-plugins", "strategy"),
                    "ANSIBLE_STRATEGY": "mitogen_linear"})
    env.update({
        "ANSIBLE_CONFIG": os.path.join(REPO, "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
        "ANSIBLE_CALLBACK_PLUGINS": os.path.join(HERE, "fleet", "callback_plugins"),
        "ANSIBLE_CALLBACKS_ENABLED": "fleet_timer",
        "ANSIBLE_DISPLAY_OK_HOSTS": "false",
        "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "false",
        "ANSIBLE_LOCAL_TEMP": os.path.join(workdir, "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": os.path.join(workdir, "ansible-remote"),
        "ANSIBLE_HOME": os.path.join(workdir, "ansible-home"),
        "ANSIBLE_NOCOLOR": "1",
        "HCP_FLEET_TIMES": times,
        "TSS2_LOG": "all+NONE",
    })
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory, "--forks", str(forks),
            os.path.join(HERE, "fleet", "fleet.yml")]
    log_path = os.path.join(workdir, "ansible-playbook.log")
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)  # pylint: disable=consider-using-with
        sampler.playbook_pid = proc.pid
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(times, encoding="utf-8") as handle:
        timing = json.load(handle) if os.path.getsize(times) else {}
    return proc.returncode, wall, usage, timing, log_path


def start_writer(sock, config_path):
    activate = _stack.find("systemd-socket-activate")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [activate, "-l", sock, "-E", "PYTHONPATH=" + env["PYTHONPATH"], sys.executable, "-m", WRITER_MODULE, "--serve",
         config_path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the writer listener did not start")
        time.sleep(0.05)
    return proc


def db_figures(db, git):
    total = 0
    for base, _dirs, files in os.walk(db.path):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    counts = {}
    out = subprocess.run([git, "--git-dir", db.path, "count-objects", "-v"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        key, _sep, value = line.partition(":")
        counts[key.strip()] = value.strip()
    commits = subprocess.run([git, "--git-dir", db.path, "rev-list", "--count", "HEAD"], capture_output=True, text=True,
                             check=False).stdout.strip()
    return total, counts, commits


def query_figures(db, client, hosts, queries):
    """(seconds per read_db, per /v1/find, per /v1/query?nofiles), each a list."""
    reads, finds, lists = [], [], []
    entries = None
    for _i in range(max(3, queries // 5)):
        t0 = time.perf_counter()
        entries = fleet.read_db(db.path)["entries"]
        reads.append(time.perf_counter() - t0)
    for i in range(queries):
        name = hosts[(i * 7919) % len(hosts)]
        t0 = time.perf_counter()
        client.find("^%s$" % name.replace(".", "\\."))
        finds.append(time.perf_counter() - t0)
    for _i in range(max(3, queries // 10)):
        t0 = time.perf_counter()
        client.query(nofiles=True)
        lists.append(time.perf_counter() - t0)
    return entries, reads, finds, lists


def inventory_plugin_seconds(workdir, db):
    """One `ansible-inventory --list` of hcp.core.enrollments over the DB (no cache)."""
    source = _stack.write(os.path.join(workdir, "fleet.enrollments.yml"), "plugin: hcp.core.enrollments\ndb_path: %s\n" % db.path)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_HOME=os.path.join(workdir, "ansible-home"))
    t0 = time.perf_counter()
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-inventory"), "-i", source, "--list"],
                         capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - t0
    hosts = len(json.loads(out.stdout).get("_meta", {}).get("hostvars", {})) if out.returncode == 0 else -1
    return elapsed, hosts


def phases(timing):
    """{phase: seconds} from the play wall times."""
    result = {"tpm set-up (swtpm start)": 0.0, "enroll (playbooks/enroll.yml)": 0.0, "attest": 0.0, "tpm stop": 0.0}
    plays = timing.get("plays", [])
    for index, play in enumerate(plays):
        seconds = (play["end"] or play["start"]) - play["start"]
        name = play["name"]
        if name.startswith("Start one swtpm"):
            result["tpm set-up (swtpm start)"] += seconds
        elif name.startswith("Enroll every") or name.startswith("Reconcile"):
            result["enroll (playbooks/enroll.yml)"] += seconds
        elif name.startswith("Attest every"):
            result["attest"] += seconds
        elif name.startswith("Stop the swtpm"):
            result["tpm stop"] += seconds
        else:
            result.setdefault("other (%d)" % index, seconds)
    return result


def report(args, hosts, wall, rc, usage, timing, sampler, server_cpu, db_fig, query_fig, inv_fig, load):
    n = len(hosts)
    met = rc == 0 and wall <= TARGET_SECONDS * n / 1000.0
    print("fleet benchmark: %d simulated hosts, one inventory, one ansible-playbook run, forks %d, %d cores, "
          "uwsgi %d workers per service" % (n, args.forks, os.cpu_count() or 0, args.workers))
    print("  load average before %s, after %s" % (load[0], load[1]))
    print("  ansible-playbook exit %d; wall %.1f s total = %.1f s per host (%.2f hosts/s)" % (rc, wall, wall / n, n / wall))
    for name, seconds in phases(timing).items():
        print("    %-32s %8.1f s  %7.1f ms/host" % (name, seconds, seconds * 1000 / n))
    cpu = usage.ru_utime + usage.ru_stime
    print("  CPU: ansible-playbook and its workers/modules %.0f s (%.2f s/host); servers (nginx, uwsgi, writer) %.0f s "
          "(%.3f s/host)" % (cpu, cpu / n, server_cpu, server_cpu / n))
    if n == 1000:
        print("  target (1,000 hosts enrolled and attested in <= %d s): %s" % (TARGET_SECONDS, "MET" if met else "NOT MET"))
    else:
        print("  target scaled to %d hosts (%d s per 1,000): %s (%.0f s at this per-host rate for 1,000)" % (
            n, TARGET_SECONDS, "met" if met else "not met", wall / n * 1000))
    print("  tasks by cost (wall, per host: mean worker time from start to result; host-seconds / forks ~ wall):")
    print("    %-64s %8s %9s %9s %s" % ("task", "wall s", "mean ms", "max ms", "ok/changed/failed/skipped"))
    for task in sorted(timing.get("tasks", []), key=lambda t: -(t["end"] - t["start"])):
        done = task["ok"] + task["failed"] + task["skipped"]
        print("    %-64s %8.1f %9.0f %9.0f %d/%d/%d/%d" % (
            (task["play"][:22] + ": " + task["name"])[:64], task["end"] - task["start"],
            task["host_seconds"] * 1000 / max(1, done), task["host_max"] * 1000, task["ok"], task["changed"],
            task["failed"], task["skipped"]))
    for failure in timing.get("failures", [])[:5]:
        print("  FAILED %s / %s: %s" % (failure["host"], failure["task"], failure["msg"][:200]))
    size, counts, commits = db_fig
    entries, reads, finds, lists = query_fig
    print("  enrollment DB at %d entries (%d distinct ekpubhash, %d distinct hostnames): %.1f MB on disk, %s commits, "
          "git objects: %s loose (%s KiB), %s packed (%s KiB) in %s packs" % (
              len(entries), len(set(e["ekpubhash"] for e in entries)), len(set(e["hostname"] for e in entries)),
              size / 1e6, commits, counts.get("count"), counts.get("size"), counts.get("in-pack"), counts.get("size-pack"),
              counts.get("packs")))
    print("  queries at %d entries (p50 / p95):" % len(entries))
    print("    fleet.read_db (the inventory plugin's DB read, all entries) x%d: %.0f / %.0f ms" % (
        len(reads), _percentile(reads, 0.5) * 1e3, _percentile(reads, 0.95) * 1e3))
    print("    GET /v1/find by hostname over HTTPS + mTLS (nginx, uwsgi) x%d: %.1f / %.1f ms" % (
        len(finds), _percentile(finds, 0.5) * 1e3, _percentile(finds, 0.95) * 1e3))
    print("    GET /v1/query?nofiles (all entries) over HTTPS + mTLS x%d: %.0f / %.0f ms" % (
        len(lists), _percentile(lists, 0.5) * 1e3, _percentile(lists, 0.95) * 1e3))
    print("    ansible-inventory --list with hcp.core.enrollments (db_path, no cache), whole command: %.1f s, %d hosts" % inv_fig)
    peak = sampler.peak
    print("  memory (peak, sampled every %.0f s): servers %.0f MB RSS (nginx + uwsgi masters and workers + writer, 2 services); "
          "ansible-playbook tree %.0f MB RSS (largest single process %.0f MB, ru_maxrss)" % (
              sampler.interval, peak["servers_kb"] / 1024, peak["playbook_kb"] / 1024, usage.ru_maxrss / 1024))
    print("  swtpm: %d at once; one swtpm %.1f MB RSS / %.1f MB PSS; %d of them %.0f MB PSS" % (
        peak["swtpm_count"], peak["swtpm_rss_kb"] / 1024, peak["swtpm_pss_kb"] / 1024, sampler.total_pss_at,
        peak["swtpm_total_pss_kb"] / 1024))
    return met


def setup_cost(workdir, count):
    """Median seconds of `swtpm_setup --createek` (the EK the old way) against a fresh-state start."""
    setup = _stack.find("swtpm_setup")
    if not setup or count < 1:
        return None
    samples = []
    for i in range(count):
        state = os.path.join(workdir, "setup-probe-%d" % i)
        os.makedirs(state, mode=0o700)
        t0 = time.perf_counter()
        subprocess.run([setup, "--tpm2", "--tpmstate", state, "--createek"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - t0)
        shutil.rmtree(state, ignore_errors=True)
    return statistics.median(samples)


def main(argv=None):
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--hosts", type=int, default=1000, help="simulated hosts (default 1000)")
    parser.add_argument("--forks", type=int, default=12, help="ansible-playbook --forks (default 12)")
    parser.add_argument("--strategy", choices=("linear", "mitogen"), default="linear",
                        help="Ansible's linear strategy (default) or Mitogen's mitogen_linear (one interpreter per host)")
    parser.add_argument("--workers", type=int, default=2, help="uwsgi worker processes per service (default 2)")
    parser.add_argument("--swtpm-jobs", type=int, default=8, help="swtpm instances started in parallel (default 8)")
    parser.add_argument("--queries", type=int, default=50, help="queries per latency figure (default 50)")
    parser.add_argument("--setup-probes", type=int, default=5, help="swtpm_setup --createek runs timed for comparison (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, DB) and print its path")
    args = parser.parse_args(argv)
    if args.hosts < 1 or args.hosts > 5000 or args.forks < 1:
        parser.error("--hosts must be 1..5000 and --forks >= 1")
    missing = _stack.missing_tools(extra=("swtpm", "systemd-socket-activate", "git"))
    if missing or not os.path.isdir(COLLECTION):
        print("SKIP fleet_1000: missing %s (Debian: nginx-light uwsgi-core uwsgi-plugin-python3 swtpm systemd; "
              "`make install` stages the collection)" % ", ".join(missing or ["the staged collection"]))
        return 0
    hosts = ["host%04d.%s" % (i, DOMAIN) for i in range(1, args.hosts + 1)]
    workdir = tempfile.mkdtemp(prefix="hcp-fleet-")
    stacks, writer = [], None
    sampler = None
    try:
        setup_median = setup_cost(workdir, args.setup_probes)
        root, db, enroll_config, writer_socket, paths = enrollment_site(workdir)
        writer = start_writer(writer_socket, enroll_config)
        enroll_stack = _stack.Stack(root, _stack.ENROLL_APP, {"HCP_ENROLL_CONFIG": enroll_config}, paths,
                                    workers=args.workers, client_ca=paths["svc_ca_cert"], name="enroll", pythonpath=COLLECTIONS)
        stacks.append(enroll_stack)
        enroll_stack.start(health_cert=(paths["client_orchestrator_cert"], paths["client_orchestrator_key"]))
        attest_root, attest_config = attestation_site(workdir, db, paths)
        attest_stack = _stack.Stack(attest_root, _stack.ATTEST_APP, {"HCP_ATTEST_CONFIG": attest_config}, paths,
                                    workers=args.workers, name="attest", pythonpath=COLLECTIONS)
        stacks.append(attest_stack)
        attest_stack.start()
        inventory = write_inventory(workdir, hosts, paths, enroll_stack.url, attest_stack.url, args.swtpm_jobs)
        sampler = Sampler([p for s in stacks for p in s.pids()] + [writer.pid], os.path.join(workdir, "tpm"))
        sampler.start()
        load_before = "%.2f %.2f %.2f" % os.getloadavg()
        rc, wall, usage, timing, log_path = run_playbook(workdir, inventory, args.forks, sampler, args.strategy)
        load_after = "%.2f %.2f %.2f" % os.getloadavg()
        sampler.stop()
        server_cpu = _cpu_seconds(sorted(sampler.server_pids))
        client = EnrollmentClient(enroll_stack.url, paths["ca_cert"], paths["client_orchestrator_cert"],
                                  paths["client_orchestrator_key"], timeout=120)
        query_fig = query_figures(db, client, hosts, args.queries)
        inv_fig = inventory_plugin_seconds(workdir, db)
        db_fig = db_figures(db, _stack.find("git"))
        report(args, hosts, wall, rc, usage, timing, sampler, server_cpu, db_fig, query_fig, inv_fig,
               (load_before, load_after))
        if setup_median is not None:
            print("  per-host TPM set-up: fresh swtpm state, no swtpm_setup (EK derived from the TPM's own random seed "
                  "when tpm_info asks, distinct per host as the DB shows); swtpm_setup --createek would add %.2f s "
                  "per host (median of %d here)" % (setup_median, args.setup_probes))
        if rc != 0:
            print("  ansible-playbook failed: see %s (--keep keeps it)" % log_path)
        return 0 if rc == 0 else 1
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        subprocess.run([os.path.join(HERE, "fleet", "swtpm-fleet.sh"), "stop", os.path.join(workdir, "tpm")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        for stack in stacks:
            stack.stop()
        if writer is not None:
            writer.terminate()
            writer.wait()
        if args.keep:
            print("  work directory kept: %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)
    sys.exit(main())
