# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers of the Kerberos unit tests: a scratch Heimdal realm (its own kdc.conf and database in
a test directory, initialised with the real kadmin -l), a kadmin wrapper that records every run,
and the real KDC on a loopback port."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time

from ansible_collections.hcp.core.plugins.module_utils.kerberos import config as krbconf
from ansible_collections.hcp.core.plugins.module_utils.kerberos.kadmin import Kadmin, find_kadmin

REALM = "HCP.TEST"
KDC_BINARY = "/usr/lib/heimdal-servers/kdc"
KINIT = "/usr/bin/kinit.heimdal"


def free_port():
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recording_kadmin(directory):
    """(path of a wrapper script that appends its argv to a log then runs the real kadmin, log path)."""
    log = os.path.join(str(directory), "kadmin-runs.log")
    script = os.path.join(str(directory), "kadmin-recording")
    with open(script, "w", encoding="utf-8") as handle:
        handle.write('#!/bin/sh\nprintf "%%s\\n" "$*" >> "%s"\nexec "%s" "$@"\n' % (log, find_kadmin()))
    os.chmod(script, 0o700)
    return script, log


def runs(log):
    """The argv lines the recording wrapper logged (empty when kadmin never ran)."""
    try:
        with open(log, "r", encoding="utf-8") as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []


class Realm(object):
    """A scratch realm in ``directory``: kdc.conf (``conf``; the KDC on loopback ``port``),
    krb5.conf for clients (``krb5_conf``), database under ``directory/db``, initialised;
    ``kadmin`` is a Kadmin driving it through the recording wrapper (``log``)."""

    def __init__(self, directory, realm=REALM):
        directory = str(directory)
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.realm = realm
        self.port = free_port()
        self.conf = os.path.join(directory, "kdc.conf")
        self.krb5_conf = os.path.join(directory, "krb5.conf")
        self.kdc_log = os.path.join(directory, "kdc.log")
        with open(self.conf, "w", encoding="utf-8") as handle:
            handle.write(krbconf.render(krbconf.kdc_conf_sections(
                realm, os.path.join(directory, "db"), ports=[self.port], addresses=["127.0.0.1"], log_file=self.kdc_log)))
        with open(self.krb5_conf, "w", encoding="utf-8") as handle:
            handle.write(krbconf.render(krbconf.krb5_conf_sections(realm, ["127.0.0.1:%d" % self.port])))
        self.binary, self.log = recording_kadmin(directory)
        self.kadmin = Kadmin(self.conf, realm, kadmin=self.binary)
        self.kadmin.init_realm()
        os.unlink(self.log)  # runs from here on are the test's

    def names(self):
        """Every principal of the realm (read with the real kadmin, not recorded)."""
        return sorted(Kadmin(self.conf, self.realm).list("*"))

    @contextlib.contextmanager
    def kdc(self):
        """The real Heimdal KDC serving this realm on 127.0.0.1:<port> from the rendered kdc.conf."""
        env = {"PATH": "/usr/bin:/bin", "KRB5_CONFIG": self.conf}
        proc = subprocess.Popen([KDC_BINARY, "--config-file=%s" % self.conf], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the KDC did not start (see %s)" % self.kdc_log)
                    time.sleep(0.05)
            yield proc
        finally:
            proc.terminate()
            proc.wait(10)

    def kinit(self, keytab_path, principal):
        """kinit.heimdal with a keytab against this realm's KDC: (returncode, TGT principal or None)."""
        cache = os.path.join(self.directory, "ccache-%d" % time.monotonic_ns())
        env = {"PATH": "/usr/bin:/bin", "KRB5_CONFIG": self.krb5_conf, "KRB5CCNAME": "FILE:" + cache}
        result = subprocess.run([KINIT, "--keytab=FILE:%s" % keytab_path, "--use-keytab", principal], env=env,
                                stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
        if result.returncode != 0:
            return result.returncode, None
        listing = subprocess.run(["heimtools", "klist"], env=env, capture_output=True, text=True, timeout=30, check=False)
        tgt = "krbtgt/%s@%s" % (self.realm, self.realm)
        return result.returncode, tgt if tgt in listing.stdout else None
