#!/usr/bin/env bash
# Checks systemd/blockd.service: `systemd-analyze verify` must print
# nothing (unknown keys only warn), and the offline security exposure
# score is printed and must stay below 5.0 ("OK").
# Usage: .ci/check-unit.sh [BLOCKD_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-$PWD/target/debug/blockd}
[ -x "$bin" ] || { echo "check-unit: no binary at $bin" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# verify checks that ExecStart exists; point it at the binary just built.
sed "s#/usr/bin/blockd#$bin#" systemd/blockd.service >"$tmp/blockd.service"
if ! systemd-analyze verify "$tmp/blockd.service" >"$tmp/out" 2>&1 || [ -s "$tmp/out" ]; then
  echo "check-unit: systemd-analyze verify complained:" >&2
  cat "$tmp/out" >&2
  exit 1
fi
echo "check-unit: systemd-analyze verify: clean"
systemd-analyze security --offline=true --no-pager "$tmp/blockd.service" >"$tmp/sec" 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for blockd.service: \([0-9.]*\).*/\1/p' "$tmp/sec")
[ -n "$score" ] || { cat "$tmp/sec" >&2; echo "check-unit: no exposure score" >&2; exit 1; }
echo "check-unit: systemd-analyze security --offline=true exposure: $score"
awk -v s="$score" 'BEGIN { exit !(s < 5.0) }' || {
  echo "check-unit: exposure $score is not below 5.0" >&2
  exit 1
}
