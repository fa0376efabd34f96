#!/usr/bin/env bash
# Debian packages the test suite uses (graphviz for the rule-graph picture; slurm-wlm and munge
# for the one-node Slurm cluster of tests/test_slurm.py; xrootd-server for tests/test_xrootd.py;
# chromium + chromium-driver for the summary page test, tests/test_summary.py).
# Idempotent: a machine that has them skips the install.
set -euo pipefail
need=()
for pkg in graphviz slurm-wlm munge xrootd-server chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
