# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host's identity components as real processes for the unit tests: the identity provider and
the security service started with ``python -s -m ...`` on their own config files, killed with
SIGKILL and restarted; an in-test orchestrator (a TrustedSide) signing definitions and proofs;
forked children that drop to another uid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from ansible_collections.hcp.core.plugins.module_utils.identity import trust, wire
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError

PKG = "ansible_collections.hcp.core.plugins.module_utils.identity"
SITE = "site.test"
HOST = "node1"
PROVIDER_NAME = "spiffe://%s/%s/hcp-identity-provider" % (SITE, HOST)
SECSVC_NAME = "spiffe://%s/%s/hcp-identity-secsvc" % (SITE, HOST)
NOBODY = 65534


class IdentityLab(object):
    """Provider + security service processes sharing one run directory (0711 under /tmp, so a
    child running as nobody reaches the sockets, 0666 there: the group check is the role's)."""

    def __init__(self, tmp_path, tcti=None, period=3600, provider=None, secsvc=None):
        self.base = str(tmp_path)
        self.run = tempfile.mkdtemp(prefix="hcpi-", dir="/tmp")
        os.chmod(self.run, 0o711)
        self.tcti = tcti
        tpm = tcti is not None
        self.config = {
            "provider": dict({
                "site": SITE, "host": HOST, "state_dir": os.path.join(self.base, "provider"),
                "socket": os.path.join(self.run, "provider.sock"), "admin_socket": os.path.join(self.run, "provider-admin.sock"),
                "secsvc_admin_socket": os.path.join(self.run, "secsvc-admin.sock"), "socket_mode": 0o666,
                "intermediate_period": period, "reshare_interval": 2,
                "root_key": {"backend": "tpm", "path": os.path.join(self.base, "provider-root.envelope.json"), "tcti": tcti}
                if tpm else {"backend": "memory"},
            }, **(provider or {})),
            "secsvc": dict({
                "site": SITE, "host": HOST, "state_dir": os.path.join(self.base, "secsvc"),
                "store_dir": os.path.join(self.base, "secsvc-store"),
                "socket": os.path.join(self.run, "secsvc.sock"), "admin_socket": os.path.join(self.run, "secsvc-admin.sock"),
                "socket_mode": 0o666, "store_key": {"backend": "tpm", "tcti": tcti} if tpm else {"backend": "memory"},
            }, **(secsvc or {})),
        }
        self.procs = {}
        self.orchestrator = trust.TrustedSide("orchestrator")

    def conf_path(self, which):
        return os.path.join(self.base, "%s.json" % which)

    def log(self, which):
        try:
            with open(os.path.join(self.base, "%s.log" % which)) as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def start(self, which, wait=True):
        with open(self.conf_path(which), "w") as handle:
            json.dump(self.config[which], handle)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        with open(os.path.join(self.base, "%s.log" % which), "a") as log:
            self.procs[which] = subprocess.Popen([sys.executable, "-s", "-m", "%s.%s" % (PKG, which), self.conf_path(which)],
                                                 stdout=log, stderr=log, env=env)
        if wait:
            self.wait_ready(which)
        return self.procs[which]

    def wait_ready(self, which, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[which].poll() is not None:
                raise AssertionError("%s exited %s:\n%s" % (which, self.procs[which].returncode, self.log(which)))
            try:
                return wire.call(self.config[which]["admin_socket"], "ping", timeout=2)
            except IdentityError:
                time.sleep(0.05)
        raise AssertionError("%s did not come up:\n%s" % (which, self.log(which)))

    def kill(self, which, sig=signal.SIGKILL):
        proc = self.procs.pop(which)
        proc.send_signal(sig)
        return proc.wait(timeout=15)

    def restart(self, which):
        self.kill(which)
        return self.start(which)

    def stop(self):
        codes = {}
        for which in list(self.procs):
            codes[which] = self.kill(which, signal.SIGTERM)
        shutil.rmtree(self.run, ignore_errors=True)
        return codes

    def up(self):
        self.start("secsvc")
        self.start("provider")
        trust.share(self.orchestrator, self.config["provider"]["admin_socket"])
        self.wait_shared()
        return self

    def wait_shared(self, timeout=15):
        """Until the security service trusts the provider's current intermediate."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wire.call(self.config["secsvc"]["admin_socket"], "ping").get("idp_intermediate"):
                return
            time.sleep(0.05)
        raise AssertionError("the provider never shared its bundle:\n%s" % self.log("provider"))

    # -- the orchestrator's calls ------------------------------------------------------------------
    def signed(self, opcode, payload, orchestrator=None):
        return trust.signed_call(orchestrator or self.orchestrator, self.config["provider"]["admin_socket"], opcode, payload,
                                 PROVIDER_NAME)

    def enroll(self, app, pid, uid, gid=0, unit=None):
        unit = unit or "%s.service" % app
        added = self.signed("add_client", {"app": app, "host": HOST, "selectors": {"uid": uid, "unit": unit}})
        self.signed("prove_client", {"app": app, "pid": pid, "uid": uid, "gid": gid, "unit": unit,
                                     "host_attestation": {"result": "ok", "time": int(time.time()), "generation": 1}})
        return added["spiffe_id"]

    def provider_socket(self):
        return self.config["provider"]["socket"]

    def secsvc_socket(self):
        return self.config["secsvc"]["socket"]


class Child(object):
    """A forked child of this process running ``func()`` as ``uid`` (after setgroups/setgid/setuid),
    started at once and paused until :meth:`go`; :meth:`result` is ``func``'s JSON-able value or
    ``{"raised": [status, error, detail]}``."""

    def __init__(self, func, uid=NOBODY, gid=NOBODY):
        go_r, self._go_w = os.pipe()
        self._res_r, res_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # child: only pre-imported, lock-free code from here on
            code = 0
            try:
                os.close(self._go_w)
                os.close(self._res_r)
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                os.write(res_w, b"r")  # dropped: the parent may prove this pid now
                os.read(go_r, 1)
                try:
                    value = {"value": func()}
                except IdentityError as exc:
                    value = {"raised": [exc.status, exc.error, exc.detail]}
                os.write(res_w, json.dumps(value).encode("utf-8"))
            except BaseException:  # pylint: disable=broad-except
                try:
                    os.write(res_w, json.dumps({"crashed": traceback.format_exc()}).encode("utf-8"))
                except BaseException:  # pylint: disable=broad-except
                    pass
                code = 1
            finally:
                os._exit(code)  # pylint: disable=protected-access
        os.close(go_r)
        os.close(res_w)
        assert os.read(self._res_r, 1) == b"r", "the child could not drop to uid %d" % uid

    def go(self):
        os.write(self._go_w, b"g")
        os.close(self._go_w)
        chunks = []
        while True:
            chunk = os.read(self._res_r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self._res_r)
        os.waitpid(self.pid, 0)
        result = json.loads(b"".join(chunks) or b'{"crashed": "no output"}')
        assert "crashed" not in result, result.get("crashed")
        return result
