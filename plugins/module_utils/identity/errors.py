# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one error of the identity components: a wire status, a code word and a detail that
never contains a secret (docs/identity.md, "Wire protocol")."""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError

# status -> the code word used when the raiser gives none
STATUS_WORDS = {
    0: "unreachable",
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "no-such-key",
    409: "conflict",
    413: "too-large",
    500: "internal",
    503: "unavailable",
}


class IdentityError(HcpError):
    """``IdentityError(status, error, detail)``: ``status`` the wire status (0: the peer could
    not be reached or answered garbage), ``error`` a short code word (``bad-token``,
    ``unknown-intermediate``, ``root-already-pinned``...), ``detail`` one sentence for a human."""

    def __init__(self, status, error=None, detail=""):
        status = int(status)
        error = error or STATUS_WORDS.get(status, "error")
        super(IdentityError, self).__init__("%s (%d): %s" % (error, status, detail) if detail else "%s (%d)" % (error, status),
                                            status)
        self.error = error
        self.detail = detail

    def body(self):
        """The error body put on the wire."""
        return {"error": self.error, "detail": self.detail}
