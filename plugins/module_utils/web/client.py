# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one HTTPS JSON client of hcp.core's services (enrollment, policy, control tower, attestation).

Every call: TLS verified against ``ca_file`` (the system store when None), an optional client
certificate, one timeout, redirects never followed, the answer read up to a size cap, JSON
decoded with the same bounds as the servers (a deep or huge document is "no JSON", never a crash).
Transport failures raise the caller's error class with status 0; the caller maps HTTP statuses.
"""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, MissingDependencyError

try:
    import requests
    from urllib3.exceptions import HTTPError as Urllib3Error
except ImportError:  # pragma: no cover - reported by HttpsJsonClient()
    requests = None

DEFAULT_TIMEOUT = 30
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_RESPONSE_DEPTH = 2 * jsonutil.DEFAULT_MAX_DEPTH


class HttpError(HcpError):
    """A service could not be asked or answered with an error; ``status`` is its HTTP status
    (0 when it could not be reached or its answer could not be read)."""

    status = 0


if requests is not None:
    class _NoRedirectSession(requests.Session):
        """A session that never treats an answer as a redirect: requests reads a redirect's whole
        body (unbounded) to release the connection even when redirects are not followed."""

        def get_redirect_target(self, resp):
            return None


class Response(object):
    """A service's answer: ``status``, ``content`` (bytes, at most the cap) and ``body``
    (the decoded JSON value, None when the answer is not JSON)."""

    __slots__ = ("status", "content", "body")

    def __init__(self, status, content, body):
        self.status = status
        self.content = content
        self.body = body

    def error_detail(self):
        """The ``error`` string of a JSON error body, else "no details"."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), str):
            return self.body["error"]
        return "no details"


def decode_json(content, max_bytes=MAX_RESPONSE_BYTES):
    """The JSON value of ``content`` or None (undecodable, too deep, too large a number):
    ``jsonutil.loads``, the servers' decoder, with room for a server's wrapper around data
    it accepted at the servers' depth bound."""
    try:
        return jsonutil.loads(content, "answer", max_bytes=max_bytes, max_depth=MAX_RESPONSE_DEPTH)
    except jsonutil.JsonInputError:
        return None


class HttpsJsonClient(object):
    """Client of the service at ``url`` (``https://host:port``, no trailing path needed).

    ``what`` names the service in messages; ``error_class`` is raised on transport failures
    (constructed as ``error_class(message, status)``); ``allow_http`` only for a service that
    runs on loopback in tests (never used by the roles)."""

    def __init__(self, url, ca_file=None, client_cert=None, client_key=None, timeout=DEFAULT_TIMEOUT,
                 max_response_bytes=MAX_RESPONSE_BYTES, what="service", error_class=HttpError, allow_http=False):
        if requests is None:
            raise MissingDependencyError("the Python library 'requests' is required to call the %s" % what)
        schemes = ("https://", "http://") if allow_http else ("https://",)
        if not isinstance(url, str) or not url.startswith(schemes):
            raise error_class("the %s URL must start with %s" % (what, " or ".join(schemes)), 0)
        self.url = url.rstrip("/")
        self.verify = ca_file or True
        self.cert = (client_cert, client_key) if client_cert and client_key else client_cert
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.what = what
        self.error_class = error_class
        self.session = _NoRedirectSession()

    def __repr__(self):
        return "HttpsJsonClient(%s %r)" % (self.what, self.url)

    def request(self, method, path, json_body=None, data=None, params=None, headers=None, send_cert=True):
        """One call; a ``Response`` whatever its status. ``error_class`` when unreachable or the
        answer is larger than the cap."""
        try:
            response = self.session.request(
                method, self.url + path, json=json_body, data=data, params=params, headers=headers,
                verify=self.verify, cert=self.cert if send_cert else None, timeout=self.timeout,
                allow_redirects=False, stream=True)
            try:
                content = response.raw.read(self.max_response_bytes + 1, decode_content=True)
            finally:
                response.close()
        except (requests.RequestException, Urllib3Error, OSError) as exc:
            raise self.error_class("cannot reach the %s at %s: %s" % (self.what, self.url, type(exc).__name__), 0) from None
        if len(content) > self.max_response_bytes:
            raise self.error_class("%s %s answered more than %d bytes" % (self.what, self.url, self.max_response_bytes), 0)
        return Response(response.status_code, content, decode_json(content, self.max_response_bytes))
