"""List the unit tests that were skipped (ansible-test's junit XML) and, under CI, fail.

Usage: check-skips.py JUNIT_DIR

A skipped test is a test that did not run: on a CI host that lacks a tool (softhsm2, Heimdal,
openssl, systemd-socket-activate, swtpm...) the suite would pass without testing anything.
`make setup` installs every tool the tests need, so in CI (CI set and not "false") any skip
fails the gate, naming the test and the reason. Locally the skips are only listed.
"""

import glob
import os
import sys
import xml.etree.ElementTree as ET  # our own ansible-test output, not untrusted input


def skipped(junit_dir):
    files = sorted(glob.glob(os.path.join(junit_dir, "*units.xml")))
    if not files:
        raise SystemExit("check-skips: no unit test results (*units.xml) in %s" % junit_dir)
    out = []
    for path in files:
        for case in ET.parse(path).getroot().iter("testcase"):
            skip = case.find("skipped")
            if skip is not None:
                name = "%s::%s" % (case.get("classname", "?"), case.get("name", "?"))
                out.append((name, (skip.get("message") or skip.text or "").strip()))
    return out


def main(argv):
    if len(argv) != 2:
        raise SystemExit("usage: check-skips.py JUNIT_DIR")
    found = skipped(argv[1])
    ci = os.environ.get("CI", "") not in ("", "0", "false", "False")
    for name, reason in found:
        print("%s: skipped test %s (%s)" % ("ERROR" if ci else "WARNING", name, reason), file=sys.stderr)
    if found and ci:
        print("check-skips: %d unit test(s) skipped under CI: run `make setup` to install the tools they need"
              % len(found), file=sys.stderr)
        return 1
    print("check-skips: %d skipped" % len(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
