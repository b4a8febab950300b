#!/usr/bin/env bash
# Signed SCP read throughput of the release daemon, with wrk on unsigned
# endpoints of the same server as a ceiling. Loopback only; every phase
# stops by itself after BLOCKD_BENCH_SECS (default 10) or
# BLOCKD_BENCH_REQUESTS requests. Other knobs: BLOCKD_BENCH_VOLUMES
# (default 1000,100000), BLOCKD_BENCH_CONNS (32), BLOCKD_BENCH_WRK (1).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
    else
        echo "wrk is missing (apt-get install wrk); its ceiling figures are skipped" >&2
        export BLOCKD_BENCH_WRK=0
    fi
fi
cargo build --release --locked --bin blockd
BLOCKD_BIN="$PWD/target/release/blockd" cargo bench --locked --bench api
