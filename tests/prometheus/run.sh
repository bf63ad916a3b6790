#!/usr/bin/env bash
# The chart's alert rules judged by Prometheus's own tool: `promtool check rules` (syntax,
# PromQL, templates) and `promtool test rules` (one firing and one quiet case per alert, in
# alerts_test.yaml). promtool comes with Debian's prometheus package (test.sh installs it);
# without it this fails, it never skips.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v promtool >/dev/null || { echo "FAILED: promtool is missing (Debian: apt-get install prometheus)" >&2; exit 1; }
promtool --version 2>&1 | head -1
promtool check rules charts/pqmesh/files/alerts.yaml
# Every alert in the rules has at least one firing case in the tests.
missing=0
for alert in $(grep -oP '^\s+- alert: \K\S+' charts/pqmesh/files/alerts.yaml | sort -u); do
  if ! grep -qE "alertname: $alert\$" tests/prometheus/alerts_test.yaml; then
    echo "FAILED: alert $alert has no test in tests/prometheus/alerts_test.yaml" >&2; missing=1
  fi
done
[ "$missing" = 0 ]
promtool test rules tests/prometheus/alerts_test.yaml
