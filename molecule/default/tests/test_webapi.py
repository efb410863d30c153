"""Testinfra checks of hcp.core.webapi: hello_app hosted twice on hcp-node1 of the molecule
`default` scenario (converge_webapi.yml); run by verify.yml.

TLS clients run inside the container with Python's ssl module (no curl/openssl in the image).
"""

import json
import time

import pytest

# testinfra's docker backend: one `docker exec` per command. (Its ansible backend ran an
# ansible process per command: 59 s for these tests on a loaded machine.)
testinfra_hosts = ["docker://hcp-node1"]

PKI = "/root/webapi-test"
OPEN_PORT = 8443
MTLS_PORT = 8444

# GET https://127.0.0.1:PORT/PATH with the given TLS version bounds and optional client cert;
# prints JSON {"status": ..., "body": ...} or {"error": "<exception class>: ..."}.
CLIENT = r'''
import http.client, json, ssl, sys
port, path, minv, maxv, cert = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations("%s/ca.crt")
ctx.minimum_version = getattr(ssl.TLSVersion, minv)
ctx.maximum_version = getattr(ssl.TLSVersion, maxv)
if minv == "TLSv1_1":
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
if cert != "-":
    ctx.load_cert_chain("%s/" + cert + ".crt", "%s/" + cert + ".key")
try:
    conn = http.client.HTTPSConnection("localhost", int(port), context=ctx, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    print(json.dumps({"status": resp.status, "body": resp.read().decode(), "version": conn.sock.version()}))
except Exception as exc:
    print(json.dumps({"error": "%%s: %%s" %% (type(exc).__name__, exc)}))
''' % (PKI, PKI, PKI)


def get(host, port, path="/healthcheck", cert="-", minv="TLSv1_2", maxv="TLSv1_3"):
    cmd = host.run("python3 -c %s %s %s %s %s %s" % (
        _quote(CLIENT), port, path, minv, maxv, cert))
    assert cmd.rc == 0, cmd.stderr
    return json.loads(cmd.stdout)


def _quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.mark.parametrize("name", ["hello-open", "hello-mtls"])
def test_units_active(host, name):
    svc = host.service("hcp-webapi-%s" % name)
    assert svc.is_running
    assert svc.is_enabled
    assert host.service("nginx").is_running


@pytest.mark.parametrize("name", ["hello-open", "hello-mtls"])
def test_uwsgi_runs_unprivileged(host, name):
    user = "hcp-%s" % name
    pids = host.check_output("systemctl show -p MainPID --value hcp-webapi-%s" % name)
    owner = host.check_output("ps -o user= -p %s" % pids)
    assert owner == user
    workers = host.check_output("ps -o user= --ppid %s" % pids).split()
    assert workers and set(workers) == {user}
    assert host.user(user).shell == "/usr/sbin/nologin"


def test_files(host):
    key = host.file("/etc/hcp/webapi/hello-open/tls.key")
    assert key.mode == 0o600 and key.user == "root"
    conf = host.file("/etc/hcp/webapi/hello-mtls")
    assert conf.mode == 0o750 and conf.group == "hcp-hello-mtls"
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    sock = host.file("/run/hcp-webapi-hello-open/uwsgi.sock")
    assert sock.is_socket and sock.group == "www-data" and sock.mode == 0o660
    ini = host.file("/etc/hcp/webapi/hello-mtls/uwsgi.ini").content_string
    assert "env = HCP_HELLO_CONFIG=/etc/hcp-hello.json" in ini
    assert "limit-post = 65536" in ini


def test_open_healthcheck_and_whoami(host):
    resp = get(host, OPEN_PORT)
    assert resp["status"] == 200 and json.loads(resp["body"]) == {"status": "ok"}
    resp = get(host, OPEN_PORT, "/whoami")
    assert json.loads(resp["body"]) == {"authenticated": False, "subject": None}
    # a client certificate offered to a site without client auth is not requested nor passed on
    resp = get(host, OPEN_PORT, "/whoami", cert="client1")
    assert json.loads(resp["body"]) == {"authenticated": False, "subject": None}
    assert get(host, OPEN_PORT, "/nope")["status"] == 404


@pytest.mark.parametrize("port", [OPEN_PORT, MTLS_PORT])
def test_tls_versions(host, port):
    assert get(host, port, cert="client1", minv="TLSv1_3", maxv="TLSv1_3")["version"] == "TLSv1.3"
    assert get(host, port, cert="client1", minv="TLSv1_2", maxv="TLSv1_2")["version"] == "TLSv1.2"
    old = get(host, port, cert="client1", minv="TLSv1_1", maxv="TLSv1_1")
    assert "error" in old, old


def test_mtls(host):
    resp = get(host, MTLS_PORT, "/whoami", cert="client1")
    assert resp["status"] == 200
    assert json.loads(resp["body"]) == {"authenticated": True, "subject": "client1"}
    # no client certificate: nginx answers 400 (ssl_verify_client on)
    resp = get(host, MTLS_PORT, "/whoami")
    assert resp.get("status") == 400 or "error" in resp, resp
    # a certificate from another CA: handshake failure or 400, never reaching the app
    resp = get(host, MTLS_PORT, "/whoami", cert="intruder")
    assert resp.get("status") == 400 or "error" in resp, resp
    assert "authenticated" not in resp.get("body", "")


def test_body_limit(host):
    # nginx client_max_body_size 64k on hello-mtls: a bigger body gets 413 from nginx
    script = (
        "import http.client, ssl; ctx = ssl.create_default_context(cafile='%s/ca.crt');"
        "ctx.load_cert_chain('%s/client1.crt', '%s/client1.key');"
        "c = http.client.HTTPSConnection('localhost', %d, context=ctx);"
        "c.request('POST', '/whoami', body=b'x' * 100000); print(c.getresponse().status)"
    ) % (PKI, PKI, PKI, MTLS_PORT)
    assert host.check_output("python3 -c %s" % _quote(script)) == "413"


def test_access_log_has_no_query_string(host):
    get(host, OPEN_PORT, "/healthcheck?token=s3cr3t")
    # the access log is buffered (webapi_access_log_flush, 1 s): the entry is there within it
    deadline = time.monotonic() + 10
    while True:
        log = host.file("/var/log/nginx/hcp-webapi-hello-open.access.log").content_string
        last = json.loads(log.strip().splitlines()[-1]) if log.strip() else {}
        if last.get("path") == "/healthcheck" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert last["path"] == "/healthcheck" and last["status"] == 200
    assert "s3cr3t" not in log
