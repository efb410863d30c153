# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""molecule/identity's demo application: ``demo_app.py ME OTHER``. Through the identity client
library it makes its own key once, tries the other application's key and lists its keys (the
isolation checks), then signs and verifies every half second. Its status (counters, the outcome
of the isolation checks, its public key now and at start; never a secret) is in
/run/id-ME/status.json for verify.yml."""

import hashlib
import json
import os
import sys
import time

from ansible_collections.hcp.core.plugins.module_utils.identity.client import Client
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError

ME, OTHER = sys.argv[1], sys.argv[2]
STATUS = "/run/id-%s/status.json" % ME
KEY, OTHER_KEY = "%s-key" % ME, "%s-key" % OTHER


def write(status):
    tmp = STATUS + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(status, handle, sort_keys=True)
    os.replace(tmp, STATUS)


def public_fingerprint(client):
    return hashlib.sha256(client.export_public_key(KEY)).hexdigest()


def main():
    status = {"app": ME, "pid": os.getpid(), "identity": None, "signed": 0, "verified": 0, "errors": 0, "last_error": None,
              "isolation": {}, "public_key_at_start": None, "public_key_now": None, "last_ok": None}
    client = Client()
    while True:  # until the orchestrator adapter has proven this process
        try:
            try:
                client.generate_key(KEY)
            except IdentityError as exc:
                if exc.status != 409:  # 409: it exists (made by a previous run: keys survive restarts)
                    raise
            status["public_key_at_start"] = public_fingerprint(client)
            status["identity"] = client.spiffe_id
            break
        except IdentityError as exc:
            status["errors"] += 1
            status["last_error"] = str(exc)
            write(status)
            time.sleep(0.5)
    try:
        client.sign(b"not mine", key=OTHER_KEY)
        status["isolation"]["use_other"] = "allowed"
    except IdentityError as exc:
        status["isolation"]["use_other"] = exc.status
    status["isolation"]["list"] = sorted(key["name"] for key in client.list_keys())
    count = 0
    while True:
        count += 1
        message = ("%s message %d" % (ME, count)).encode()
        try:
            signature = client.sign(message, key=KEY)
            status["signed"] += 1
            if client.verify(message, signature, key=KEY) and not client.verify(message + b"!", signature, key=KEY):
                status["verified"] += 1
                status["last_ok"] = time.time()
            if count % 10 == 1:
                status["public_key_now"] = public_fingerprint(client)
        except IdentityError as exc:
            status["errors"] += 1
            status["last_error"] = str(exc)
        write(status)
        time.sleep(0.5)


if __name__ == "__main__":
    main()
