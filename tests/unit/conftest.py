# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures starting real swtpm processes (no TPM mocks): each test TPM has its own state,
EK certificate from a private local vendor CA, and loopback ports."""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
from cryptography.hazmat.primitives import serialization

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm


def _free_port_pair():
    """A free loopback port whose successor is free too: the swtpm TCTI expects ctrl = port + 1."""
    for _attempt in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free pair of loopback ports")


def _die_with_parent():
    """swtpm gets SIGTERM when the test process ends, even one that never runs teardown:
    ansible-test runs every test in a forked child that exits without finalising fixtures."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# Made when this file is imported, in the test worker, before ansible-test forks a child per
# test: every child sees the same directory. Removed when the worker exits.
_TEMPLATES = tempfile.mkdtemp(prefix="hcp-swtpm-templates.")
atexit.register(shutil.rmtree, _TEMPLATES, True)


def _manufactured(identity):
    """The state and vendor CA of the test TPM called `identity`, manufactured once per test
    worker.

    swtpm_setup creates an RSA EK and two certificates (about 1.5 s). ansible-test runs every
    test in a forked child, so session fixtures are built again for each test: without this
    cache the unit gate spent most of its time manufacturing the same TPMs. Each fixture gets
    a copy, so a test still starts from a TPM no other test has touched."""
    template = os.path.join(_TEMPLATES, identity)
    if not os.path.isdir(template):
        scratch = tempfile.mkdtemp(prefix=identity + ".", dir=_TEMPLATES)
        Swtpm.manufacture(scratch)
        try:
            os.rename(scratch, template)
        except OSError:  # another process got there first: keep its TPM
            shutil.rmtree(scratch)
    return template


class Swtpm(object):
    """One swtpm process with its own state directory and local vendor CA."""

    def __init__(self, workdir, template=None):
        self.workdir = str(workdir)
        self.state = os.path.join(self.workdir, "state")
        self.ca = os.path.join(self.workdir, "ca")
        self.proc = None
        self.port = None
        if template:
            shutil.copytree(template, self.workdir, dirs_exist_ok=True)
        else:
            self.manufacture(self.workdir)

    @staticmethod
    def manufacture(workdir):
        """Make a TPM: state, EK and platform certificates from a private local vendor CA."""
        state = os.path.join(workdir, "state")
        ca = os.path.join(workdir, "ca")
        for path in (state, ca):
            os.makedirs(path, mode=0o700, exist_ok=True)
        conf = os.path.join(workdir, "localca.conf")
        opts = os.path.join(workdir, "localca.options")
        setup = os.path.join(workdir, "swtpm_setup.conf")
        with open(conf, "w") as f:
            f.write("statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\n"
                    "certserial = %s/certserial\n" % (ca, ca, ca, ca))
        with open(opts, "w") as f:
            f.write("--platform-manufacturer hcp-test\n--platform-version 2.1\n--platform-model swtpm\n")
        with open(setup, "w") as f:
            f.write("create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\n"
                    % (shutil.which("swtpm_localca") or "/usr/bin/swtpm_localca", conf, opts))
        subprocess.run(
            ["swtpm_setup", "--tpm2", "--createek", "--create-ek-cert", "--create-platform-cert",
             "--create-spk", "--tpmstate", state, "--config", setup, "--overwrite"],
            check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

    @property
    def tcti(self):
        return "swtpm:host=127.0.0.1,port=%d" % self.port

    @property
    def vendor_ca_files(self):
        return [os.path.join(self.ca, "issuercert.pem"), os.path.join(self.ca, "swtpm-localca-rootca-cert.pem")]

    def start(self):
        self.port = _free_port_pair()
        ctrl = self.port + 1
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", "dir=%s" % self.state,
             "--server", "type=tcp,port=%d,bindaddr=127.0.0.1" % self.port,
             "--ctrl", "type=tcp,port=%d,bindaddr=127.0.0.1" % ctrl,
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                # probe the control channel: the server channel serves one client at a time
                socket.create_connection(("127.0.0.1", ctrl), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                time.sleep(0.05)
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("swtpm did not start listening on port %d" % self.port)

    def stop(self):
        if self.proc is None:
            return
        # TPM2_Shutdown(STATE) first: a stop without it counts as a dictionary-attack failure.
        try:
            with Tpm(self.tcti) as tpm:
                tpm.shutdown()
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self):
        """Power-cycle: PCRs reset, persistent objects and NV survive."""
        self.stop()
        return self.start()

    def open(self):
        return Tpm(self.tcti)


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory):
    """A session-wide software TPM (PCRs may have been extended by earlier tests)."""
    tpm = Swtpm(tmp_path_factory.mktemp("swtpm"), _manufactured("session")).start()
    yield tpm
    tpm.stop()


@pytest.fixture(scope="session")
def other_swtpm(tmp_path_factory):
    """A second, unrelated software TPM."""
    tpm = Swtpm(tmp_path_factory.mktemp("swtpm-other"), _manufactured("other")).start()
    yield tpm
    tpm.stop()


@pytest.fixture
def fresh_swtpm(swtpm):
    """The session TPM just after a reboot: all resettable PCRs are zero again."""
    return swtpm.restart()


@pytest.fixture
def new_swtpm(tmp_path):
    """A newly manufactured TPM for tests that change persistent state: a third identity,
    unrelated to `swtpm` and `other_swtpm`."""
    tpm = Swtpm(tmp_path / "new-swtpm", _manufactured("new")).start()
    yield tpm
    tpm.stop()


_RSA_KINDS = ("rsa-2048", "rsa-3072")


@pytest.fixture(autouse=True)
def pooled_rsa_keys(request, monkeypatch):
    """pki.new_private_key("rsa-...") from a per-worker pool of real RSA keys.

    RSA key generation is the costliest step of most fixtures here (a 3072-bit enrollment CA
    for every site a test bootstraps: 0.3-3 s each, random), and ansible-test forks a child per
    test, so nothing generated in one test survives to the next. The N-th RSA key of a kind that
    a test asks for is the N-th key of that kind in the pool (generated by the first test that
    needs it, then read from disk): within one test every call still returns a different key, so
    rotation and "not the same key" checks keep their meaning; across tests the keys repeat,
    which no test relies on. test_pki.py tests key generation itself and keeps the real one."""
    if request.module.__name__.rsplit(".", 1)[-1] == "test_pki":
        return
    real = pki.new_private_key
    served = {}

    def pooled(kind="ec-p256"):
        if kind not in _RSA_KINDS:
            return real(kind)
        index = served[kind] = served.get(kind, -1) + 1
        path = os.path.join(_TEMPLATES, "%s-%d.pem" % (kind, index))
        try:
            with open(path, "rb") as handle:
                return serialization.load_pem_private_key(handle.read(), None, unsafe_skip_rsa_key_validation=True)
        except FileNotFoundError:
            key = real(kind)
            scratch = tempfile.mkstemp(dir=_TEMPLATES)[1]
            with open(scratch, "wb") as handle:
                handle.write(pki.private_key_pem(key))
            os.rename(scratch, path)  # another process may have got there first: either key will do
            return key

    monkeypatch.setattr(pki, "new_private_key", pooled)
