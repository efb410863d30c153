#!/usr/bin/env bash
# Seed ansible-test's pip bootstrap cache (~/.ansible/test/cache/get_pip_<ver>.py) with
# tools/ansible-test-get-pip.py; the pip version is read from the installed ansible-test.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"

PYBIN="${HCP_ROOT}/.venv/bin/python"
ver="$("$PYBIN" - <<'PY'
import inspect
import re

import ansible_test._internal.python_requirements as m

print(re.search(r"pip='([^']+)'", inspect.getsource(m.get_venv_packages)).group(1))
PY
)"
[[ -n "$ver" ]] || die "cannot read ansible-test's pip version"
dest="${HOME}/.ansible/test/cache/get_pip_${ver//./_}.py"
mkdir -p "$(dirname "$dest")"
if ! cmp -s "${HCP_ROOT}/tools/ansible-test-get-pip.py" "$dest"; then
  cp "${HCP_ROOT}/tools/ansible-test-get-pip.py" "$dest"
  log "seeded ${dest}"
fi
