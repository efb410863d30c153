# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The production HTTP stack of one hcp.core app on loopback, for the benchmarks: nginx (TLS, the
webapi role's site settings; with ``client_ca`` client certificates verified and handed to the
app as the role's ``clientcert`` mode does) -> uwsgi (N worker processes, 1 thread, the running
interpreter's venv) -> the app's WSGI module, all in a work directory, started and stopped here.

Used by attest_http.py and fleet_1000.py. Needs nginx-light, uwsgi-core and
uwsgi-plugin-python3 (Debian): ``missing_tools()`` names what is absent."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
UWSGI_PLUGIN = "/usr/lib/uwsgi/plugins/python3_plugin.so"
UWSGI_PARAMS = "/etc/nginx/uwsgi_params"
# the webapi role's nginx-site.conf.j2 cipher list
CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
))
APPS = "ansible_collections.hcp.core.plugins.module_utils.web."
ATTEST_APP = APPS + "attest_app:application"
ENROLL_APP = APPS + "enroll_app:application"


def find(*names):
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
        if found:
            return found
    return None


def missing_tools(extra=()):
    """Names of the absent tools among nginx, uwsgi, its python3 plugin and ``extra`` (commands)."""
    missing = []
    for tool, names in (("nginx", ("nginx",)), ("uwsgi", ("uwsgi-core", "uwsgi"))) + tuple((e, (e,)) for e in extra):
        if not find(*names):
            missing.append(tool)
    if not os.path.isfile(UWSGI_PLUGIN):
        missing.append("uwsgi python3 plugin")
    if not os.path.isfile(UWSGI_PARAMS):
        missing.append(UWSGI_PARAMS)
    return missing


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_stat(pid):
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...), or None when it is gone."""
    try:
        with open("/proc/%s/stat" % pid, "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def parents():
    """{pid: ppid} of every process."""
    table = {}
    for name in os.listdir("/proc"):
        fields = proc_stat(name) if name.isdigit() else None
        if fields:
            table[int(name)] = int(fields[1])
    return table


def cpu_seconds(fields):
    """utime + stime of a proc_stat() answer, in seconds."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


UWSGI_INI = """[uwsgi]
plugin = python3
strict = true
master = true
need-app = true
die-on-term = true
vacuum = true
disable-logging = true
log-4xx = true
log-5xx = true
virtualenv = {venv}
pythonpath = {pythonpath}
module = {module}
socket = {socket}
chmod-socket = 660
processes = {workers}
threads = 1
harakiri = 60
limit-post = 1048576
buffer-size = 16384
{env}
"""

NGINX_CONF = """daemon off;
master_process on;
worker_processes auto;
{user}pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    log_format hcp_webapi_{name} escape=json
      '{{"time":"$time_iso8601","remote":"$remote_addr","method":"$request_method",'
      '"path":"$uri","status":$status,"bytes":$body_bytes_sent,"duration":$request_time,'
      '"client_verify":"$ssl_client_verify"}}';
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        server_tokens off;
        access_log {prefix}/access.log hcp_webapi_{name};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
        ssl_prefer_server_ciphers off;
        ssl_session_cache shared:hcp_webapi_{name}:1m;
        ssl_session_timeout 1h;
        ssl_session_tickets off;
{client_tls}        client_max_body_size 1m;
        location / {{
            include {params};
            uwsgi_param HTTP_X_FORWARDED_PROTO https;
{client_params}            uwsgi_read_timeout 65s;
            uwsgi_pass unix:{socket};
        }}
    }}
}}
"""

CLIENT_TLS = """        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_verify_depth 3;
"""
CLIENT_PARAMS = """            uwsgi_param SSL_CLIENT_CERT $ssl_client_escaped_cert;
            uwsgi_param SSL_CLIENT_VERIFY $ssl_client_verify;
            uwsgi_param SSL_CLIENT_S_DN $ssl_client_s_dn;
"""
NO_CLIENT_PARAMS = """            uwsgi_param SSL_CLIENT_CERT "";
            uwsgi_param SSL_CLIENT_VERIFY "";
            uwsgi_param SSL_CLIENT_S_DN "";
"""


class Processes(object):
    """Long-running processes of a benchmark stack started in ``workdir`` (each with its own log
    there): start them with _spawn, wait with wait_healthy, end them with stop."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []
        self.logs = []

    def _spawn(self, argv, log_name):
        log = open(os.path.join(self.workdir, log_name), "wb")  # pylint: disable=consider-using-with  # closed in stop()
        self.logs.append(log)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # pylint: disable=consider-using-with
        self.procs.append(proc)
        return proc

    def wait_healthy(self, url, ca_file, cert=None, timeout=60):
        """GET ``url`` + /healthcheck until 200 (its JSON); RuntimeError when a process exits or time runs out."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError("%s exited (%d): see %s" % (proc.args[0], proc.returncode, self.workdir))
            try:
                resp = requests.get(url + "/healthcheck", verify=ca_file, cert=cert, timeout=5)
                if resp.status_code == 200:
                    return resp.json()
                last = resp.status_code
            except requests.RequestException as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise RuntimeError("the stack did not answer /healthcheck (last: %s)" % last)

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()
        self.procs = []


class Stack(Processes):
    """uwsgi + nginx serving ``module`` (uwsgi ``module =``) from ``workdir``; ``url`` once started.

    ``env``: {name: value} for the app (e.g. HCP_ATTEST_CONFIG); ``cred_paths``: ``server_cert``,
    ``server_key``, ``ca_cert`` (verifies the health check); ``client_ca``: PEM file of the CA(s) whose
    client certificates nginx requires (``ssl_verify_client on``), None = no client certificates;
    ``pythonpath``: the directory holding ansible_collections/ (default the repo's stage, collections/)."""

    def __init__(self, workdir, module, env, cred_paths, workers=2, client_ca=None, name="bench", pythonpath=None):
        super().__init__(workdir)
        self.module = module
        self.env = env
        self.cred = cred_paths
        self.workers = workers
        self.client_ca = client_ca
        self.name = name
        self.pythonpath = pythonpath or os.path.join(REPO, "collections")
        self.port = free_port()
        self.url = "https://localhost:%d" % self.port
        self.socket = os.path.join(workdir, "app.sock")

    def start(self, health_cert=None):
        """Start and wait for /healthcheck; its JSON. ``health_cert``: (cert, key) when nginx requires one."""
        env = "\n".join("env = %s=%s" % item for item in sorted(self.env.items()))
        ini = write(os.path.join(self.workdir, "uwsgi.ini"), UWSGI_INI.format(
            venv=sys.prefix, pythonpath=self.pythonpath, module=self.module,
            socket=self.socket, workers=self.workers, env=env))
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(self.workdir, name), mode=0o700, exist_ok=True)
        # as root, nginx workers would drop to nobody and lose the 0700 temp dir and socket
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = write(os.path.join(self.workdir, "nginx.conf"), NGINX_CONF.format(
            user=user, prefix=self.workdir, port=self.port, cert=self.cred["server_cert"], key=self.cred["server_key"],
            params=UWSGI_PARAMS, socket=self.socket, ciphers=CIPHERS, name=self.name,
            client_tls=CLIENT_TLS.format(ca=self.client_ca) if self.client_ca else "",
            client_params=CLIENT_PARAMS if self.client_ca else NO_CLIENT_PARAMS))
        self._spawn([find("uwsgi-core", "uwsgi"), "--ini", ini], "uwsgi.log")
        self._spawn([find("nginx"), "-p", self.workdir, "-e", os.path.join(self.workdir, "nginx-error.log"),
                     "-c", conf], "nginx.log")
        return self.wait_healthy(self.url, self.cred["ca_cert"], cert=health_cert)

    def pids(self):
        """The pids of nginx, uwsgi and their worker processes."""
        return [p.pid for p in self.procs if p.poll() is None]
