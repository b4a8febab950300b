#!/usr/bin/env bash
# Guest-side I/O through blockd's vhost-user-blk export against
# qemu-storage-daemon's vhost-user-blk export of the same backing file, in
# one run. Both are booted under TCG with the same QEMU 7.2, guest kernel,
# initramfs and options (tests/guest/setup.sh builds them; the guest runs
# tests/guest/scenarios/bench.sh: gio, O_DIRECT, queue depth 1, 1 MiB
# sequential and 4k random, reads and writes, within the first 256 MiB).
# The two backends alternate, ROUNDS times each. Prints a table of MB/s and
# IOPS (mean over the rounds) and the ratios blockd/qsd.
# Usage: benches/vhost.sh   (root; SCRATCH=/var/tmp/blockd-vhost-bench,
# ROUNDS=2, QUEUES=2, QSD_AIO=threads, BLOCKD_GUEST_CACHE=/var/cache/blockd-guest)
set -euo pipefail
SCRATCH=${SCRATCH:-/var/tmp/blockd-vhost-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-2}
QUEUES=${QUEUES:-2}
QSD_AIO=${QSD_AIO:-threads}
BIN=$ROOT/target/release/blockd
PIDS=()

[ "$(id -u)" = 0 ] || { echo "!!! benches/vhost.sh needs root (memfd guest memory, data dir) !!!" >&2; exit 1; }

VOL=""
cleanup() {
    if [ -n "$VOL" ] && [ -n "${C:-}" ]; then
        curl -s -o /dev/null -H "$T" -H 'Content-Type: application/json' "$C/volumes/$VOL/action" \
            -d '{"os-terminate_connection": {"connector": {"host": "bench"}}}' || true
    fi
    for p in "${PIDS[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release --bin blockd -q)
CACHE=$(bash "$ROOT/tests/guest/setup.sh" "${BLOCKD_GUEST_CACHE:-/var/cache/blockd-guest}" | tail -n1)
QROOT=$CACHE/root
LIBS=$QROOT/lib/x86_64-linux-gnu:$QROOT/usr/lib/x86_64-linux-gnu
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH/data" "$SCRATCH/run"
chmod 700 "$SCRATCH/data"
echo "free space:"; df -h "$SCRATCH" | tail -1

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$SCRATCH/blockd.toml" <<EOF
data_dir = "$SCRATCH/data"
[scp]
listen = "127.0.0.1:0"
[cinder]
listen = "127.0.0.1:$PORT"
[metrics]
listen = ""
[export]
run_dir = "$SCRATCH/run"
EOF
setsid "$BIN" serve --config "$SCRATCH/blockd.toml" >"$SCRATCH/blockd.log" 2>&1 &
PIDS+=($!)
C="http://127.0.0.1:$PORT/v3/bench"
T='X-Auth-Token: bench:bench'
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# A 1 GiB volume whose first 256 MiB hold random data, exported by blockd.
VOL=$(curl -sf -H "$T" -H 'Content-Type: application/json' "$C/volumes" \
    -d '{"volume": {"size": 1, "name": "vhost-bench"}}' | json 'd["volume"]["id"]')
for _ in $(seq 200); do
    st=$(curl -sf -H "$T" "$C/volumes/$VOL" | json 'd["volume"]["status"]')
    [ "$st" = creating ] || break; sleep 0.05
done
[ "$st" = available ] || { echo "volume $VOL: $st" >&2; exit 1; }
FILE=$SCRATCH/data/volumes/$VOL.img
head -c 256M /dev/urandom | dd of="$FILE" bs=1M conv=notrunc status=none
sync -f "$FILE"
BSOCK=$(curl -sf -H "$T" -H 'Content-Type: application/json' "$C/volumes/$VOL/action" \
    -d '{"os-initialize_connection": {"connector": {"host": "bench", "export_kind": "vhost-user-blk"}}}' |
    json 'd["connection_info"]["data"]["socket_path"]')
[ -S "$BSOCK" ] || { echo "no blockd socket at $BSOCK" >&2; exit 1; }
QSOCK=$SCRATCH/run/qsd.sock

# qemu-storage-daemon's export of the same file, started for its turn only.
qsd_start() {
    rm -f "$QSOCK"
    LD_LIBRARY_PATH=$LIBS setsid "$QROOT/usr/bin/qemu-storage-daemon" \
        --blockdev "driver=file,node-name=disk0,filename=$FILE,aio=$QSD_AIO,locking=off" \
        --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$QSOCK,writable=on,num-queues=$QUEUES,logical-block-size=4096" \
        >"$SCRATCH/qsd.log" 2>&1 &
    QSD=$!; PIDS+=("$QSD")
    for _ in $(seq 100); do [ -S "$QSOCK" ] && return 0; sleep 0.1; done
    cat "$SCRATCH/qsd.log" >&2; exit 1
}
qsd_stop() { kill -- "-$QSD" 2>/dev/null || true; wait "$QSD" 2>/dev/null || true; rm -f "$QSOCK"; }

# One guest boot against a socket; the BENCH lines go to $SCRATCH/$2.out.
boot() { # socket name
    timeout 300 "$QROOT/usr/bin/qemu-system-x86_64" -nodefaults -no-reboot -display none -serial stdio \
        -machine q35,accel=tcg,memory-backend=mem -cpu qemu64 -m 256M -smp 2 \
        -object memory-backend-memfd,id=mem,size=256M,share=on \
        -L "$QROOT/usr/share/qemu" -L "$QROOT/usr/share/seabios" \
        -kernel "$CACHE/vmlinux" -initrd "$CACHE/initramfs.gz" \
        -append "console=ttyS0 quiet blockd.t=bench" \
        -chardev "socket,id=c0,path=$1" -device "vhost-user-blk-pci,chardev=c0,num-queues=$QUEUES" \
        </dev/null 2>&1 | tr -d '\r' >"$SCRATCH/$2.log" || true
    grep '^BENCH ' "$SCRATCH/$2.log" >"$SCRATCH/$2.out" || true
    if [ "$(wc -l <"$SCRATCH/$2.out")" != 4 ] || ! grep -q '^GUEST-EXIT 0' "$SCRATCH/$2.log"; then
        echo "guest run $2 failed:" >&2; cat "$SCRATCH/$2.log" >&2; exit 1
    fi
    grep "^QUEUE" "$SCRATCH/$2.log" | sed "s/^/  /"
    sed 's/^/  /' "$SCRATCH/$2.out"
}

export LD_LIBRARY_PATH=$LIBS
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    echo "round $r: blockd"
    boot "$BSOCK" "blockd-$r"
    qsd_start
    echo "round $r: qemu-storage-daemon (aio=$QSD_AIO)"
    boot "$QSOCK" "qsd-$r"
    qsd_stop
done
unset LD_LIBRARY_PATH
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$SCRATCH" "$ROUNDS" <<'EOF'
import sys
d, rounds = sys.argv[1], int(sys.argv[2])
pats = ["seqread", "seqwrite", "randread", "randwrite"]
def load(tool):
    v = {p: [] for p in pats}
    for r in range(1, rounds + 1):
        for line in open(f"{d}/{tool}-{r}.out"):
            f = dict(kv.split("=") for kv in line.split()[2:])
            v[line.split()[1]].append((float(f["mbps"]), float(f["iops"])))
    return {p: (sum(x for x, _ in v[p]) / len(v[p]), sum(y for _, y in v[p]) / len(v[p]),
                [x for x, _ in v[p]], [y for _, y in v[p]]) for p in pats}
b, q = load("blockd"), load("qsd")
print(f"\n{'pattern':<24}{'blockd MB/s':>12}{'IOPS':>9}{'qsd MB/s':>11}{'IOPS':>9}{'ratio':>8}")
for p, label in zip(pats, ["seq read 1 MiB", "seq write 1 MiB", "rand read 4k", "rand write 4k"]):
    print(f"{label:<24}{b[p][0]:>12.2f}{b[p][1]:>9.1f}{q[p][0]:>11.2f}{q[p][1]:>9.1f}{b[p][1] / q[p][1]:>7.2f}x")
print("\nper round (IOPS): " + "; ".join(
    f"{p} blockd {'/'.join(f'{x:.0f}' for x in b[p][3])} qsd {'/'.join(f'{x:.0f}' for x in q[p][3])}" for p in pats))
EOF
