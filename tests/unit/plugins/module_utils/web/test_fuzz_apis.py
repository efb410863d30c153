# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Property-based fuzzing of every HTTP API (enrollment, attestation, policy, control tower,
key-server) through Flask's test client, with the real apps over real state (git DB and the
enrollment writer daemon behind its socket, ticket keys, policy file, control tower store, the
key-server's store sealed to a real swtpm).

Inputs: malformed, oversized, deeply nested, wrong-typed and unicode-odd JSON bodies, form
fields and query strings; wrong content types; missing, failed, garbage, unauthorised and
header-smuggled client certificates (nginx passes the verified certificate as WSGI environ
``SSL_CLIENT_VERIFY``/``SSL_CLIENT_CERT``; a client's own headers arrive as ``HTTP_*``).

Every answer: never a 5xx; a 4xx is a JSON ``{"error": text}`` of bounded size (no echo of a
large input); nothing an invalid request could change has changed (DB head, writer daemon
alive, control tower store, used tickets, policy file); nothing invalid is accepted.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb, read_head
from ansible_collections.hcp.core.plugins.module_utils.web import attest_app, control_tower_app, enroll_app, keyserver_app, policy_app
from ansible_collections.hcp.core.tests.unit.keyserver_helpers import KeyServerSite, tree_digest

# The whole file stays well under a minute: few examples each, no per-example deadline, the
# same examples every run. HCP_FUZZ_EXAMPLES=N (random examples) for a longer hunt.
FUZZ_EXAMPLES = int(os.environ.get("HCP_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES or 120, deadline=None, derandomize=not FUZZ_EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
MAX_ERROR_BYTES = 1024
HEX = "0123456789abcdef"

# -- input strategies -----------------------------------------------------------------------

ODD_TEXT = st.sampled_from([
    "", " ", "\n", "0" * 64 + "\n", "12ab\n", "\x00", "\ud800", "\udfff", "\ufeff", "\u202e", "İ", "Ａ", "ǅ",
    "K", "\u0660\u0661", "%00", "%0a", "../../etc/passwd", "a" * 300, "x" * 70000, "{}", "[]", "null",
    "(a+)+$", "a{4294967296}", "(?=x)", "\\", "\"", "-----BEGIN PUBLIC KEY-----", "hcpt1.x.y", "hcpct1." + "A" * 43,
])
TEXT = st.one_of(ODD_TEXT, st.text(max_size=80), st.text(alphabet=HEX + "\n", max_size=70),
                 st.from_regex(r"\A[a-z0-9]{1,20}(\.[a-z0-9]{1,10}){0,3}\Z"))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                    st.floats(allow_nan=False, allow_infinity=False), TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
ODD_DOCUMENTS = st.one_of(
    st.integers(min_value=30, max_value=20000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=30, max_value=20000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(min_value=30, max_value=20000).map(lambda n: "[" * n),
    st.sampled_from(["NaN", "[Infinity]", '{"a": -Infinity}', "1e400", "9" * 5000, '"\\ud800"', '{"\\udc00": 1}',
                     "\ufeff{}", "{", "", "null", "[]", "1", '"x"', "{}{}"]),
)


def encoded(text):
    return text.encode("utf-8", "surrogatepass")


def object_bodies(fields):
    """JSON objects over the API's own field names (plus others), values of any JSON type."""
    keys = st.one_of(st.sampled_from(fields), TEXT)
    values = st.one_of(JSON_VALUES, ODD_DOCUMENTS)
    return st.dictionaries(keys, values, max_size=len(fields) + 1).map(lambda d: encoded(json.dumps(d)))


def bodies(fields):
    return st.one_of(
        object_bodies(fields),
        ODD_DOCUMENTS.map(encoded),
        st.dictionaries(st.sampled_from(fields), ODD_DOCUMENTS, min_size=1).map(
            lambda d: encoded("{%s}" % ", ".join('"%s": %s' % item for item in d.items()))),
        st.binary(max_size=300),
        st.text(max_size=300).map(encoded),
        st.just(OVERSIZED),  # beyond every app's max_content_length
    )


# A marker (a 2 MiB example would fill the failure report): request() sends the real body.
OVERSIZED = b"<2 MiB JSON document>"
OVERSIZED_BODY = b'{"a": "' + b"x" * (2 * 1024 * 1024) + b'"}'


CONTENT_TYPES = st.sampled_from([
    "application/json", "application/json", "application/json; charset=utf-16", "application/vnd.hcp+json",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=zz", "multipart/form-data", "text/plain",
    "application/octet-stream", None,
])


def clean(text):
    """What a client can send in a form or URL: UTF-8 (lone surrogates cannot be encoded)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def form_or_query(fields):
    return st.dictionaries(st.one_of(st.sampled_from(fields), TEXT).map(clean), TEXT.map(clean), max_size=len(fields) + 1)


def json_mimetype(content_type):
    """Whether Flask takes the body as JSON (request.is_json)."""
    mimetype = (content_type or "").split(";")[0].strip()
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


RAW_QUERIES = st.sampled_from(["ekpubhash=%ff%fe", "ekpubhash=%0a", "ekpubhash=12ab%0A", "hostname_regex=%28a%2B%29%2B%24",
                               "hostname_regex=a%7B4294967296%7D", "hostname_regex=%ED%A0%80", "a=%", "%%%", "nofiles=%00",
                               "ekpubhash=" + "a" * 5000, "hostname_regex=" + "(" * 300])


# -- identities -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("fuzz-cred"))
    own = pki.bootstrap_site_credentials(directory, "fuzz", ["localhost"], ["orchestrator", "operator", "host1"],
                                         ca_kind="ec-p256")["paths"]
    foreign = pki.bootstrap_site_credentials(str(tmp_path_factory.mktemp("fuzz-foreign")), "other", ["localhost"],
                                             ["orchestrator", "operator"], ca_kind="ec-p256")["paths"]
    return own, foreign


def first_cert(path):
    with open(path, encoding="ascii") as handle:
        pem = handle.read()
    return pem[:pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")] + "\n"


def identities(creds, authorized):
    """(name, environ, headers) callers; ``authorized``: the client name the app admits."""
    own, foreign = creds
    good = quote(first_cert(own["client_%s_cert" % authorized]))
    other_name = "host1" if authorized != "host1" else "orchestrator"
    return {
        "authorized": ({"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": good}, {}),
        "same_ca_other_name": ({"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": quote(first_cert(own["client_%s_cert" % other_name]))}, {}),
        "none": ({}, {}),
        "verify_failed": ({"SSL_CLIENT_VERIFY": "FAILED:unable to get local issuer certificate",
                           "SSL_CLIENT_CERT": quote(first_cert(foreign["client_%s_cert" % authorized]))}, {}),
        "verify_none": ({"SSL_CLIENT_VERIFY": "NONE", "SSL_CLIENT_CERT": good}, {}),
        "garbage_cert": ({"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": "-----BEGIN%20CERTIFICATE-----%0AAAAA%0A"}, {}),
        "undecodable_cert": ({"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": "%ff%fe%00"}, {}),
        "smuggled_headers": ({}, {"SSL-Client-Verify": "SUCCESS", "SSL-Client-Cert": good, "X-SSL-Client-Verify": "SUCCESS",
                                  "X-Client-Cert": good, "Authorization": "Bearer hcpct1." + "A" * 43}),
    }


IDENTITIES = st.sampled_from(["authorized", "authorized", "authorized", "same_ca_other_name", "none", "verify_failed",
                              "verify_none", "garbage_cert", "undecodable_cert", "smuggled_headers"])


# -- the common checks ------------------------------------------------------------------------

def request(client, method, path, environ, headers, body=None, content_type=None, query=None):
    kwargs = {"environ_base": environ, "headers": headers}
    if body is not None:
        kwargs["data"] = OVERSIZED_BODY if body is OVERSIZED else body
    if content_type is not None:
        kwargs["content_type"] = content_type
    if query is not None:
        kwargs["query_string"] = query
    return getattr(client, method)(path, **kwargs)


def check_answer(response):
    """No 5xx; a 4xx is a small JSON error object."""
    assert response.status_code < 500, (response.status_code, response.data[:300])
    if response.status_code >= 400:
        assert response.is_json, (response.status_code, response.data[:300])
        body = response.get_json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
        assert len(response.data) <= MAX_ERROR_BYTES, (response.status_code, response.data[:300])


# -- enrollment --------------------------------------------------------------------------------

ENROLL_FIELDS = ["ekpub", "hostname", "profile", "ekpubhash", "nofiles", "hostname_regex"]
ENROLL_ROUTES = [("post", "/v1/add"), ("get", "/v1/query"), ("post", "/v1/delete"), ("post", "/v1/reenroll"),
                 ("get", "/v1/find"), ("get", "/v1/janitor"), ("get", "/v1/get-asset-signer"), ("get", "/healthcheck"),
                 ("put", "/v1/add"), ("get", "/v1/nope"), ("post", "/v1/find/")]
ENROLL_READS = {"/v1/query", "/v1/find", "/v1/janitor", "/v1/get-asset-signer", "/healthcheck"}


@pytest.fixture(scope="module")
def enroll(creds, tmp_path_factory):
    """The enrollment app with authorized_clients ["orchestrator"] and the writer daemon
    socket-activated as in production (systemd's systemd-socket-activate passes fd 3)."""
    activate = shutil.which("systemd-socket-activate")
    if not activate:
        pytest.skip("systemd-socket-activate is not installed")
    base = tmp_path_factory.mktemp("fuzz-enroll")
    own, _foreign = creds
    cred_dir = os.path.dirname(own["ca_key"])
    db = EnrollmentDb(str(base / "db"))
    db.init()
    config = {"db": db.path, "credentials_dir": cred_dir, "ek_trust": "tofu", "postclient": {"seal_policy": {"type": "none"}},
              "authorized_clients": ["orchestrator"], "service_client_ca": own["svc_ca_cert"]}
    config_path = base / "enroll.json"
    config_path.write_text(json.dumps(config))
    sock = str(base / "writer.sock")
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [activate, "-l", sock, "-E", "PYTHONPATH=" + os.pathsep.join(sys.path),
         sys.executable, "-m", "ansible_collections.hcp.core.plugins.module_utils.enrollment.service", "--serve", str(config_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _attempt in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    app = enroll_app.create_app(dict(config, writer_socket=sock))
    yield {"client": app.test_client(), "db": db, "proc": proc, "ids": identities(creds, "orchestrator")}
    proc.terminate()
    proc.wait()


def check_enroll(enroll, response, identity, path, head):
    check_answer(response)
    assert read_head(enroll["db"].path) == head
    assert enroll["proc"].poll() is None, "the writer daemon died"
    if 200 <= response.status_code < 300:
        # an empty DB: no write can succeed; reads only for the authorized caller
        assert path in ENROLL_READS and (identity == "authorized" or path == "/healthcheck"), (path, identity)


@FUZZ
@given(route=st.sampled_from(ENROLL_ROUTES), identity=IDENTITIES, data=st.data())
def test_fuzz_enrollment_api(enroll, route, identity, data):
    method, path = route
    environ, headers = enroll["ids"][identity]
    head = read_head(enroll["db"].path)
    shape = data.draw(st.sampled_from(["body", "form", "query", "raw_query"]))
    if shape == "body":
        response = request(enroll["client"], method, path, environ, headers, body=data.draw(bodies(ENROLL_FIELDS)),
                           content_type=data.draw(CONTENT_TYPES))
    elif shape == "form":
        form = data.draw(form_or_query(ENROLL_FIELDS))
        response = request(enroll["client"], method, path, environ, headers, body=form if method != "get" else None,
                           query=form if method == "get" else None)
    elif shape == "query":
        response = request(enroll["client"], method, path, environ, headers, query=data.draw(form_or_query(ENROLL_FIELDS)))
    else:
        response = request(enroll["client"], method, path, environ, headers, query=data.draw(RAW_QUERIES))
    check_enroll(enroll, response, identity, path, head)


@FUZZ
@given(hostname=st.one_of(TEXT, st.from_regex(r"\A[a-z]{1,10}\.example\.test\Z")),
       profile=st.one_of(ODD_DOCUMENTS, JSON_VALUES.map(json.dumps), TEXT), ekpub=st.one_of(TEXT, st.binary(max_size=64).map(
           lambda b: base64.b64encode(b).decode())), as_json=st.booleans())
def test_fuzz_enrollment_add_reaches_the_writer(enroll, hostname, profile, ekpub, as_json):
    """Valid-looking hostnames take the request through the writer daemon's profile parser;
    the EK is never valid, so nothing may be enrolled."""
    environ, headers = enroll["ids"]["authorized"]
    head = read_head(enroll["db"].path)
    fields = {"ekpub": ekpub, "hostname": hostname, "profile": profile}
    if as_json:
        response = request(enroll["client"], "post", "/v1/add", environ, headers, body=encoded(json.dumps(fields)),
                           content_type="application/json")
    else:
        response = request(enroll["client"], "post", "/v1/add", environ, headers,
                           body=dict((name, clean(value)) for name, value in fields.items()))
    check_enroll(enroll, response, "authorized", "/v1/add", head)
    assert 400 <= response.status_code < 500


# -- attestation -------------------------------------------------------------------------------

ATTEST_FIELDS = ["ekpubhash", "ticket", "ekpub", "ek_cert", "quote", "eventlog", "v"]


@pytest.fixture(scope="module")
def attestation(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-attest")
    key_file = base / "ticket.key"
    attest.write_ticket_key_file(str(key_file))
    db = EnrollmentDb(str(base / "db"))
    db.init()
    used = base / "used"
    app = attest_app.create_app({"db": db.path, "ticket_key_file": str(key_file), "used_ticket_dir": str(used), "ek_trust": "tofu",
                                 "max_content_length": 64 * 1024})
    return {"client": app.test_client(), "used": used}


def valid_initiate(body, content_type):
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    h = doc.get("ekpubhash") if isinstance(doc, dict) else None
    return (json_mimetype(content_type) and isinstance(h, str)
            and len(h) == 64 and all(c in HEX for c in h))


@FUZZ
@given(path=st.sampled_from(["/v1/initiate", "/v1/complete", "/v1/complete", "/metrics", "/v1/nope"]),
       body=bodies(ATTEST_FIELDS), content_type=CONTENT_TYPES, hexhash=st.text(alphabet=HEX + "\n \t", min_size=63, max_size=66))
def test_fuzz_attestation_api(attestation, path, body, content_type, hexhash):
    client = attestation["client"]
    for payload in (body, encoded(json.dumps({"ekpubhash": hexhash}))):
        response = request(client, "post", path, {}, {}, body=payload, content_type=content_type)
        check_answer(response)
        if response.status_code == 200:
            assert path == "/v1/initiate" and valid_initiate(payload, content_type), payload[:100]
    assert not attestation["used"].exists() or os.listdir(attestation["used"]) == ["FORMAT"]  # only the store marker


# -- policy ------------------------------------------------------------------------------------

POLICY_FIELDS = ["hookname", "request_uid", "params"]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-policy")
    policy_file = base / "policy.json"
    policy_file.write_text(json.dumps({"start": "main", "filters": {"main": [{"name": "all", "action": "accept"}]}}))
    app = policy_app.create_app({"policy_file": str(policy_file), "audit_log": str(base / "audit.jsonl"), "max_body": 64 * 1024, "require_client_cert": False})
    return {"client": app.test_client(), "file": policy_file, "text": policy_file.read_text()}


def valid_policy_request(body):
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    if not isinstance(doc, dict) or not isinstance(doc.get("hookname"), str) or not doc["hookname"] \
            or not isinstance(doc.get("request_uid"), str):
        return False
    params = doc.get("params")
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:
            return False
    return isinstance(params, dict)


@FUZZ
@given(body=st.one_of(bodies(POLICY_FIELDS), st.fixed_dictionaries({
    "hookname": TEXT, "request_uid": st.one_of(TEXT, JSON_VALUES), "params": st.one_of(JSON_VALUES, ODD_DOCUMENTS)}).map(
        lambda d: encoded(json.dumps(d)))), content_type=CONTENT_TYPES, form=form_or_query(POLICY_FIELDS))
def test_fuzz_policy_api(policy, body, content_type, form):
    client = policy["client"]
    response = request(client, "post", "/run", {}, {}, body=body, content_type=content_type)
    check_answer(response)
    if response.status_code == 200:
        assert (content_type or "").split(";")[0] == "application/json" and valid_policy_request(body), body[:200]
    response = request(client, "post", "/run", {}, {}, body=form)
    check_answer(response)
    assert response.status_code != 403  # the policy accepts whatever reaches it
    assert policy["file"].read_text() == policy["text"]


# -- control tower -----------------------------------------------------------------------------

TOWER_FIELDS = ["site", "public_key", "replace", "bundle"]


@pytest.fixture(scope="module")
def tower(creds, tmp_path_factory):
    store = tmp_path_factory.mktemp("fuzz-tower") / "store"
    app = control_tower_app.create_app({"store": str(store), "operators": ["operator"]})
    return {"client": app.test_client(), "store": store, "ids": identities(creds, "operator")}


def store_state(store):
    """Every file of the store but its lock file, with its content."""
    state = {}
    for root, _dirs, files in os.walk(str(store)):
        for name in files:
            if name != ".lock":
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    state[path] = handle.read()
    return state


SITE_NAMES = st.one_of(st.sampled_from(["site-a", "site-a\n", "Site", "a" * 64, "a" * 5000, "..", ".", "-x", "%0a", "%2e%2e"]),
                       st.text(max_size=30)).map(lambda s: quote(clean(s), safe=""))


TOWER_ROUTES = [("post", "/v1/sites"), ("get", "/v1/sites/%s"), ("delete", "/v1/sites/%s"), ("post", "/v1/sites/%s/token"),
                ("post", "/v1/sites/%s/reallow-unwrap"), ("put", "/v1/sites/%s/bundle"), ("post", "/v1/sites/%s/unwrap")]


@FUZZ
@given(identity=IDENTITIES, site=SITE_NAMES, route=st.sampled_from(TOWER_ROUTES), body=bodies(TOWER_FIELDS), content_type=CONTENT_TYPES,
       bearer=st.one_of(st.none(), TEXT.filter(lambda t: "\n" not in t and "\r" not in t and "\x00" not in t)))
def test_fuzz_control_tower_api(tower, identity, site, route, body, content_type, bearer):
    method, template = route
    path = template % site if "%s" in template else template
    environ, headers = tower["ids"][identity]
    if bearer is not None:
        headers = dict(headers, Authorization="Bearer " + bearer.encode("latin-1", "replace").decode("latin-1"))
    before = store_state(tower["store"])
    response = request(tower["client"], method, path, environ, headers, body=body, content_type=content_type)
    check_answer(response)
    assert store_state(tower["store"]) == before
    if 200 <= response.status_code < 300:
        # nothing is registered: only an operator's status or no-op delete of a well-formed name
        assert identity == "authorized" and method in ("get", "delete"), (identity, method, path)
        assert response.get_json().get("deleted") in (None, False)


# -- key-server --------------------------------------------------------------------------------

KEYSERVER_FIELDS = ["protocol", "action", "name", "prefix", "data", "exportable", "measurements", "dry_run", "item_version",
                    "credentials"]
KEYSERVER_ROUTES = [("post", "/v1/request"), ("post", "/v1/request"), ("post", "/v1/request"), ("get", "/v1/request"),
                    ("put", "/v1/request"), ("get", "/healthcheck"), ("post", "/v1/request/"), ("post", "/v1/nope")]
KEYSERVER_VALUES = st.sampled_from([1, "store", "retrieve", "delete", "list", "datica-test/storage-disk-key", "datica-test/",
                                    "keyserver/tls", "datica-test/../x", "eA==", {"session": "S" * 120},
                                    {"challenge": "C" * 120, "signature": "eA=="}, ["pcrs-sha256:" + "0" * 64]])


def keyserver_bodies():
    """Bodies in the wire format's shape (every field name, values plausible or odd), and the generic ones."""
    shaped = st.dictionaries(st.sampled_from(KEYSERVER_FIELDS), st.one_of(KEYSERVER_VALUES, JSON_VALUES),
                             max_size=len(KEYSERVER_FIELDS)).map(lambda d: encoded(json.dumps(d)))
    return st.one_of(shaped, shaped, bodies(KEYSERVER_FIELDS))


@pytest.fixture(scope="module")
def keyserver(swtpm, tmp_path_factory):
    """The key-server app over its store (master key sealed to the swtpm) with one stored item, and
    its callers as nginx passes them: a key-server client (authorized, but without a proof of
    possession no call can succeed), a certificate of the site CA without the key-server purpose,
    one of another CA (let through by a shared front end), none, garbage, smuggled headers."""
    site = KeyServerSite(swtpm, tmp_path_factory.mktemp("fuzz-keyserver"))
    site.store.store("datica-test/storage-disk-key", b"fuzz-keyserver-item")
    app = keyserver_app.create_app(site.config, store=site.store)

    def cert(name):
        return quote(first_cert(site.cred(name)[0]))

    ids = {
        "authorized": ({"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": cert("deploy")}, {}),
        "same_ca_other_name": ({"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": cert("plain")}, {}),
        "none": ({}, {}),
        "verify_failed": ({"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": cert("foreign")}, {}),
        "verify_none": ({"SSL_CLIENT_VERIFY": "NONE", "SSL_CLIENT_CERT": cert("deploy")}, {}),
        "garbage_cert": ({"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": "-----BEGIN%20CERTIFICATE-----%0AAAAA%0A"}, {}),
        "undecodable_cert": ({"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": "%ff%fe%00"}, {}),
        "smuggled_headers": ({}, {"SSL-Client-Verify": "SUCCESS", "SSL-Client-Cert": cert("deploy"), "X-SSL-Client-Verify": "SUCCESS",
                                  "X-Client-Cert": cert("deploy")}),
    }
    return {"client": app.test_client(), "site": site, "ids": ids}


@FUZZ
@given(route=st.sampled_from(KEYSERVER_ROUTES), identity=IDENTITIES, body=keyserver_bodies(), content_type=CONTENT_TYPES)
def test_fuzz_keyserver_api(keyserver, route, identity, body, content_type):
    """Never a 5xx; a refusal is a small JSON answer (``error``, or the auth-challenge for a
    verified key-server client); nothing succeeds without a proof of possession; the store and the
    answered-challenge records are unchanged."""
    method, path = route
    environ, headers = keyserver["ids"][identity]
    site = keyserver["site"]
    before = tree_digest(site.store_path)
    response = request(keyserver["client"], method, path, environ, headers, body=body, content_type=content_type)
    assert tree_digest(site.store_path) == before
    if response.status_code == 401:
        # only a verified key-server client is asked to prove possession of its key
        assert identity == "authorized" and response.get_json()["status"] == "auth-challenge", (identity, response.data[:300])
        assert len(response.data) <= MAX_ERROR_BYTES
        return
    check_answer(response)
    if 200 <= response.status_code < 300:
        assert path == "/healthcheck", (identity, path, response.data[:300])
