# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""verify.yml's replay probe (runs on a TPM host with the hcp.core runtime).

One good attestation while recording the /v1/complete request, then three bad ones:
the same request again (replayed ticket), the old evidence under a fresh ticket (nonce
mismatch) and a forged ticket. Prints their HTTP statuses and errors as JSON (no secrets:
the recorded response is never printed).
usage: replay.py URL CA_FILE TCTI"""

from __future__ import annotations

import json
import sys

from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm


def main():
    url, ca_file, tcti = sys.argv[1:4]
    http = attest_client.http_transport(url, ca_file=ca_file)
    recorded = {}

    def recording(path, body):
        if path == "/v1/complete":
            recorded["complete"] = dict(body)
        return http(path, body)

    with Tpm(tcti or None) as tpm:
        attest_client.run_protocol(tpm, recording)
        ekhash = tpm.ekpubhash()
    body = recorded["complete"]
    out = {}
    status, data = http("/v1/complete", body)
    out["replay"] = [status, (data or {}).get("error")]
    fresh = http("/v1/initiate", {"ekpubhash": ekhash})[1]
    status, data = http("/v1/complete", dict(body, ticket=fresh["ticket"]))
    out["nonce_mismatch"] = [status, (data or {}).get("error")]
    ticket = body["ticket"]
    forged = ticket[:-6] + ("AAAAAA" if ticket[-6:] != "AAAAAA" else "BBBBBB")
    status, data = http("/v1/complete", dict(body, ticket=forged))
    out["forged_ticket"] = [status, (data or {}).get("error")]
    sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
