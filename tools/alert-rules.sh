#!/usr/bin/env bash
# The alert-rules gate: `promtool check rules` on monitoring/prometheus/alerts.yml, then
# `promtool test rules` on its unit tests (every alert firing and not firing). About 2 s.
# promtool comes from Debian's prometheus package (tools/host-packages.sh).
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"

command -v promtool >/dev/null || die "promtool not found: install the prometheus package (make host-packages)"
cd "${HCP_ROOT}/monitoring/prometheus"
promtool check rules alerts.yml
promtool test rules tests.yml
