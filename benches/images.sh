#!/usr/bin/env bash
# Create-from-image timing: a 1 GiB qcow2 image with 512 MiB of random data
# (every other MiB) served by a real Glance. In one run: a cold create
# (empty image cache, download + checksum + qemu-img + copy), a create
# from the image cache, and plain `qemu-img convert` of the same qcow2 file
# on local disk (without and with a final sync). Page cache dropped before
# each. Each blockd time runs from the POST to the volume being available,
# and every volume is compared with qemu-img's output.
# Usage: benches/images.sh   (root; SCRATCH=/var/tmp/blockd-img-bench;
# GLANCE_VENV=/opt/blockd-ci-venv; RUNS=2 repeats of each)
set -euo pipefail
SCRATCH=${SCRATCH:-/var/tmp/blockd-img-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-2}
BIN=$ROOT/target/release/blockd
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release --bin blockd -q)
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH/data"
chmod 700 "$SCRATCH/data"
echo "free space:"; df -h "$SCRATCH" | tail -1

echo "making the 1 GiB qcow2 (512 MiB of data)..."
python3 - "$SCRATCH/src.raw" <<'EOF'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.truncate(1 << 30)
    for i in range(0, 1024, 2):
        f.seek(i << 20)
        f.write(os.urandom(1 << 20))
EOF
qemu-img convert -f raw -O qcow2 "$SCRATCH/src.raw" "$SCRATCH/src.qcow2"
ls -l "$SCRATCH/src.qcow2"

echo "starting glance..."
setsid bash "$ROOT/tests/support/glance.sh" "$SCRATCH/glance" >/dev/null 2>"$SCRATCH/glance.log" &
PIDS+=($!)
for _ in $(seq 120); do grep -q 'Listening at' "$SCRATCH/glance.log" && break; sleep 1; done
GLANCE=$(grep -o 'http://127.0.0.1:[0-9]*' "$SCRATCH/glance.log" | head -1)
[ -n "$GLANCE" ] || { cat "$SCRATCH/glance.log"; exit 1; }
IMG=$(curl -sf -X POST "$GLANCE/v2/images" -H 'Content-Type: application/json' \
    -d '{"name":"bench","disk_format":"qcow2","container_format":"bare","visibility":"public"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "uploading to glance ($IMG)..."
curl -sf -X PUT "$GLANCE/v2/images/$IMG/file" -H 'Content-Type: application/octet-stream' \
    -T "$SCRATCH/src.qcow2"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$SCRATCH/blockd.toml" <<EOF
data_dir = "$SCRATCH/data"
[scp]
listen = "127.0.0.1:0"
[cinder]
listen = "127.0.0.1:$PORT"
[metrics]
listen = ""
[images]
glance_url = "$GLANCE"
cache_size_gib = 4
EOF
setsid "$BIN" serve --config "$SCRATCH/blockd.toml" >"$SCRATCH/blockd.log" 2>&1 &
PIDS+=($!)
C="http://127.0.0.1:$PORT/v3/bench"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/" -o /dev/null -w '' 2>/dev/null && break
    curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done

drop() {
    sync
    echo 3 > /proc/sys/vm/drop_caches 2>/dev/null ||
        echo "!!! cannot drop caches: timings are WARM !!!" >&2
}

# Prints the seconds from the POST to available and the volume id.
create() {
    local t0 t1 st
    t0=$(date +%s.%N)
    VOL=$(curl -sf -H 'X-Auth-Token: bench:bench' -H 'Content-Type: application/json' "$C/volumes" \
        -d "{\"volume\": {\"size\": 1, \"imageRef\": \"$IMG\"}}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["volume"]["id"])')
    while :; do
        st=$(curl -sf -H 'X-Auth-Token: bench:bench' "$C/volumes/$VOL" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["volume"]["status"])')
        [ "$st" = creating ] || break
        sleep 0.02
    done
    t1=$(date +%s.%N)
    [ "$st" = available ] || { echo "volume $VOL: $st" >&2; tail -20 "$SCRATCH/blockd.log" >&2; exit 1; }
    echo "$(echo "$t1 - $t0" | bc -l) $VOL"
}

check() { # volume id
    cmp -s "$SCRATCH/data/volumes/$1.img" "$SCRATCH/ref.raw" && echo "content OK" || echo "CONTENT DIFFERS"
}

qemu-img convert -f qcow2 -O raw "$SCRATCH/src.qcow2" "$SCRATCH/ref.raw"
truncate -s 1G "$SCRATCH/ref.raw"

declare -a COLD HIT QEMU QEMUSYNC
for r in $(seq "$RUNS"); do
    rm -rf "$SCRATCH/data/image-cache/"*
    drop; read -r secs vol < <(create); COLD+=("$secs")
    echo "cold run $r: $secs s, $(check "$vol")"
    # The cache entry is built after the volume is ready; wait for it.
    for _ in $(seq 600); do [ -e "$SCRATCH/data/image-cache/$IMG.json" ] && break; sleep 0.1; done
    drop; read -r secs vol < <(create); HIT+=("$secs")
    echo "cache run $r: $secs s, $(check "$vol")"
    rm -f "$SCRATCH/q.raw"; drop
    t0=$(date +%s.%N); qemu-img convert -f qcow2 -O raw "$SCRATCH/src.qcow2" "$SCRATCH/q.raw"
    t1=$(date +%s.%N); sync -f "$SCRATCH/q.raw"; t2=$(date +%s.%N)
    QEMU+=("$(echo "$t1 - $t0" | bc -l)"); QEMUSYNC+=("$(echo "$t2 - $t0" | bc -l)")
    echo "qemu-img run $r: ${QEMU[-1]} s, with sync ${QEMUSYNC[-1]} s"
done
grep -E 'image downloaded|cache hit|entry ready|job succeeded' "$SCRATCH/blockd.log" | tail -12 || true

med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "| path | seconds (median of $RUNS) |"
echo "|---|---|"
printf '| blockd cold (download, sha512, qemu-img into the volume, fsync) | %.2f |\n' "$(med "${COLD[@]}")"
printf '| blockd from the image cache (verified copy) | %.2f |\n' "$(med "${HIT[@]}")"
printf '| qemu-img convert -O raw (local file, no sync) | %.2f |\n' "$(med "${QEMU[@]}")"
printf '| qemu-img convert -O raw, then sync | %.2f |\n' "$(med "${QEMUSYNC[@]}")"
