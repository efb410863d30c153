# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""erepl behind a real nginx: the role's erepl locations (roles/enrollment_server/templates/
erepl-locations.conf.j2) in a server block verifying client certificates against the CA file the
role gives the enrollment API's nginx (webapi_client_ca_path in roles/enrollment_server/tasks/main.yml),
mapped to the real site credentials. The attack: an enrollment CA certificate for a host named
"attest-x" (made by the real generator) matches the erepl CN rule; it must not reach git."""
from __future__ import annotations

import datetime
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import jinja2
import pytest
import yaml

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.enrollment import asset_contract

ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "..", "roles", "enrollment_server")


def _role_client_ca_file():
    """The basename of the client CA file the role gives nginx for the API and erepl."""
    with open(os.path.join(ROLE, "tasks", "main.yml"), encoding="utf-8") as handle:
        tasks = yaml.safe_load(handle)
    for task in tasks:
        if task.get("ansible.builtin.include_role", {}).get("name") == "hcp.core.webapi":
            return os.path.basename(task["vars"]["webapi_client_ca_path"])
    raise AssertionError("the role does not include hcp.core.webapi")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def erepl(tmp_path):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        pytest.skip("nginx is not installed")
    paths = pki.bootstrap_site_credentials(str(tmp_path / "pki"), "lab", ["localhost"], ["orchestrator", "attest-a1"],
                                           ca_kind="rsa-2048")["paths"]
    with open(paths["ca_key"], "rb") as key, open(paths["ca_cert"], "rb") as pem:
        enrollment_ca = pki.Issuer.from_pem(key.read(), pem.read())
    enrollment_ca.reserve_service_names = False  # as before the generators refused reserved names
    ctx = asset_contract.GeneratorContext("attest-x", "ab" * 32, b"ek", {}, {}, enrollment_ca, {},
                                          datetime.datetime.now(datetime.timezone.utc))
    for asset in asset_contract.get_generator("https-client").generate(ctx):
        (tmp_path / ("attack" + os.path.splitext(asset.name)[1])).write_bytes(asset.data)
    with open(os.path.join(ROLE, "templates", "erepl-locations.conf.j2"), encoding="utf-8") as handle:
        locations = jinja2.Template(handle.read()).render(
            enrollment_server_erepl_clients_regex="orchestrator|attest-[^,]+", __enrollment_server_state=str(tmp_path / "state"),
            __enrollment_server_erepl_socket=str(tmp_path / "no-fcgiwrap.sock"))
    port = _free_port()
    client_ca = os.path.join(os.path.dirname(paths["ca_cert"]), _role_client_ca_file())
    (tmp_path / "fastcgi_params").write_text("")
    (tmp_path / "nginx.conf").write_text("""
daemon off; master_process off; worker_processes 1; pid %(d)s/nginx.pid; error_log %(d)s/error.log;
events { worker_connections 64; }
http {
  access_log off; client_body_temp_path %(d)s/body; fastcgi_temp_path %(d)s/fcgi; proxy_temp_path %(d)s/proxy;
  uwsgi_temp_path %(d)s/uwsgi; scgi_temp_path %(d)s/scgi;
  server {
    listen 127.0.0.1:%(port)d ssl;
    ssl_certificate %(cert)s; ssl_certificate_key %(key)s;
    ssl_client_certificate %(ca)s; ssl_verify_client on; ssl_verify_depth 3;
    %(locations)s
  }
}
""" % {"d": tmp_path, "port": port, "cert": paths["server_cert"], "key": paths["server_key"], "ca": client_ca,
       "locations": locations.replace("/etc/nginx/fastcgi_params", str(tmp_path / "fastcgi_params"))})
    argv = [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # pylint: disable=consider-using-with
    for _attempt in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("nginx did not start: %s" % proc.stderr.read().decode(errors="replace")[-500:])
            time.sleep(0.05)
    yield {"url": "https://localhost:%d/erepl/db/info/refs?service=git-upload-pack" % port, "paths": paths, "dir": tmp_path}
    proc.terminate()
    proc.wait(timeout=10)


def _status(url, ca, cert, key):
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    try:
        with urllib.request.urlopen(url, context=context, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_erepl_refuses_enrollment_ca_certificates_with_service_names(erepl):
    paths = erepl["paths"]
    # the attack: CN=attest-x from the enrollment CA matches the erepl CN rule; nginx refuses it (400)
    status = _status(erepl["url"], paths["ca_cert"], str(erepl["dir"] / "attack.pem"), str(erepl["dir"] / "attack.key"))
    assert status == 400
    # the attestation server's real erepl certificate (service-client CA) passes nginx's checks:
    # 502 = handed to git-http-backend's fcgiwrap, absent here
    assert _status(erepl["url"], paths["ca_cert"], paths["client_attest-a1_cert"], paths["client_attest-a1_key"]) == 502
