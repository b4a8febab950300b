#!/usr/bin/env bash
# Compare blockd's copy with qemu-img, cp, dd and the fio disk ceiling on an
# 8 GiB sparse file holding 2 GiB of random data (every 4th MiB).
# Usage: benches/compare.sh   (SCRATCH=/var/tmp/blockd-bench by default)
# Extra blockd flags: BLOCKD_FLAGS="--direct-read" benches/compare.sh
set -euo pipefail
SCRATCH=${SCRATCH:-/var/tmp/blockd-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/examples/copy
SRC=$SCRATCH/src.img
DATA_MB=$((2048 * 1048576 / 1000000))

cleanup() { rm -rf "$SCRATCH"; }
trap cleanup EXIT

(cd "$ROOT" && cargo build --release --examples -q)
mkdir -p "$SCRATCH"
echo "free space:"; df -h "$SCRATCH" | tail -1

if [ "${ONLY_LVM:-0}" != 1 ]; then
echo "generating 8 GiB sparse source with 2 GiB of data..."
truncate -s 8G "$SRC"
head -c 2G /dev/urandom > "$SCRATCH/rand"
for i in $(seq 0 2047); do
    dd if="$SCRATCH/rand" of="$SRC" bs=1M count=1 skip="$i" seek=$((i * 4)) conv=notrunc status=none
done
rm -f "$SCRATCH/rand"
sync
fi

can_drop=1
drop() {
    sync
    if [ "$can_drop" = 1 ] && ! echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then
        echo "!!! cannot drop caches (not permitted): timings are WARM !!!" >&2
        can_drop=0
    fi
}


# LVM: a full LV -> LV copy through blockd's engine against Cinder's LVM
# copy path, `dd bs=1M iflag=direct oflag=direct`, on the same VG. Without
# device-mapper each LV is reached through a loop window over the PV, as
# the backend does. LVM_GIB sets the LV size (default 1).
# Run alone with ONLY_LVM=1 benches/compare.sh.
lvm_bench() {
    if ! command -v lvm >/dev/null || [ "$(id -u)" != 0 ]; then
        echo "!!! LVM bench skipped: needs root and lvm2 !!!"; return 0
    fi
    local gib=${LVM_GIB:-1} vg=blockd-bench-vg
    local cfg='global{activation=0} activation{udev_sync=0 udev_rules=0} devices{obtain_device_list_from_udev=0 use_devicesfile=0}'
    truncate -s $((gib * 2 + 1))G "$SCRATCH/pv.img"
    local pv; pv=$(losetup -f --show "$SCRATCH/pv.img")
    local windows=()
    lvm_teardown() {
        for w in "${windows[@]}"; do losetup -d "$w" 2>/dev/null || true; done
        LVM_SUPPRESS_FD_WARNINGS=1 lvm vgremove -y -f --config "$cfg" --devices "$pv" "$vg" >/dev/null 2>&1 || true
        LVM_SUPPRESS_FD_WARNINGS=1 lvm pvremove -y -ff --config "$cfg" --devices "$pv" "$pv" >/dev/null 2>&1 || true
        losetup -d "$pv" 2>/dev/null || true
        rm -f "$SCRATCH/pv.img"
    }
    trap 'lvm_teardown; cleanup' EXIT
    L() { LC_ALL=C LVM_SUPPRESS_FD_WARNINGS=1 lvm "$1" --config "$cfg" --devices "$pv" "${@:2}" 2>/dev/null; }
    L pvcreate -y "$pv" >/dev/null
    L vgcreate -y "$vg" "$pv" >/dev/null
    L lvcreate -y --alloc contiguous -n src -L "${gib}G" "$vg" >/dev/null
    L lvcreate -y --alloc contiguous -n dst -L "${gib}G" "$vg" >/dev/null
    local pe_start ext
    pe_start=$(L pvs --noheadings --units b --nosuffix -o pe_start "$pv" | tr -d ' ')
    ext=$(L vgs --noheadings --units b --nosuffix -o vg_extent_size "$vg" | tr -d ' ')
    win() { # lv -> loop device over its window
        local first; first=$(L lvs --noheadings -o seg_start_pe "$vg/$1" | tr -d ' ')
        losetup -f --show --direct-io=on -o $((pe_start + first * ext)) --sizelimit $((gib << 30)) "$pv"
    }
    local s d; s=$(win src); d=$(win dst); windows=("$d" "$s")
    echo "LVM: filling a ${gib} GiB LV with random data..."
    head -c $((gib << 30)) /dev/urandom | dd of="$s" bs=1M oflag=direct status=none
    local mb=$((gib * 1073741824 / 1000000)) t0 t1 tb=999999 td=999999 x
    # Two rounds, alternating, best of each: the first round pays for the
    # fill's writeback, whichever tool goes first.
    for round in 1 2; do
        blkdiscard "$d" 2>/dev/null || true
        drop; t0=$(date +%s.%N)
        "$BIN" "$s" "$d" ${LVM_BLOCKD_FLAGS:---direct-write} > "$SCRATCH/lvm-blockd.log" 2>&1
        t1=$(date +%s.%N); x=$(echo "$t1 - $t0" | bc -l)
        tb=$(echo "if ($x < $tb) $x else $tb" | bc -l)
        cmp -s "$s" "$d" && echo "lvm blockd round $round: ${x}s, content OK" || echo "lvm blockd: CONTENT DIFFERS"
        blkdiscard "$d" 2>/dev/null || true
        drop; t0=$(date +%s.%N)
        dd if="$s" of="$d" bs=1M iflag=direct oflag=direct status=none
        t1=$(date +%s.%N); x=$(echo "$t1 - $t0" | bc -l)
        td=$(echo "if ($x < $td) $x else $td" | bc -l)
        cmp -s "$s" "$d" && echo "lvm dd round $round: ${x}s, content OK" || echo "lvm dd: CONTENT DIFFERS"
    done
    printf "\n%-24s %8s %8s\n" "LV -> LV (${gib} GiB)" seconds "MB/s"
    printf "%-24s %8.2f %8.0f\n" "blockd engine+manifest" "$tb" "$(echo "$mb / $tb" | bc -l)"
    printf "%-24s %8.2f %8.0f\n" "dd bs=1M direct" "$td" "$(echo "$mb / $td" | bc -l)"
    printf "blockd / dd throughput ratio: %.2f\n" "$(echo "$td / $tb" | bc -l)"
    lvm_teardown
    trap cleanup EXIT
}

if [ "${ONLY_LVM:-0}" = 1 ]; then lvm_bench; exit 0; fi

declare -A SECS
run() { # name cmd...
    local name=$1; shift
    rm -f "$SCRATCH/dst"
    drop
    local t0 t1
    t0=$(date +%s.%N)
    "$@" > "$SCRATCH/$name.log" 2>&1
    sync -f "$SCRATCH/dst" 2>/dev/null || sync
    t1=$(date +%s.%N)
    SECS[$name]=$(echo "$t1 - $t0" | bc -l)
    if cmp -s "$SRC" "$SCRATCH/dst"; then echo "$name: content OK"; else echo "$name: CONTENT DIFFERS"; fi
    echo "$name: dst allocated $(du -h "$SCRATCH/dst" | cut -f1)"
    rm -f "$SCRATCH/dst"
}

run blockd-manifest "$BIN" "$SRC" "$SCRATCH/dst" ${BLOCKD_FLAGS:-}
run blockd-nomanifest "$BIN" "$SRC" "$SCRATCH/dst" --no-manifest ${BLOCKD_FLAGS:-}
run qemu-img qemu-img convert -W -m 16 -O raw "$SRC" "$SCRATCH/dst"
run cp cp --sparse=always "$SRC" "$SCRATCH/dst"
run dd dd if="$SRC" of="$SCRATCH/dst" bs=1M conv=sparse status=none

# Disk ceiling: one 1 MiB direct read job and one direct overwrite job at
# once (files laid out first, so ext4 allocation is not measured), three
# timed runs of 8 s each; the median of min(read, write) counts.
FIO_MBS=""
if command -v fio >/dev/null; then
    runs=()
    for k in 1 2 3; do
        drop
        fio --output-format=terse --terse-version=3 --directory="$SCRATCH" --size=2g --bs=1m \
            --direct=1 --ioengine=io_uring --iodepth=32 --group_reporting=0 \
            --time_based --runtime=8 --ramp_time=1 \
            --name=r --rw=read --name=w --rw=write --overwrite=1 > "$SCRATCH/fio.out"
        # terse v3: field 7 read KiB/s of job r, field 48 write KiB/s of job w.
        R=$(awk -F';' 'NR==1{print $7}' "$SCRATCH/fio.out")
        W=$(awk -F';' 'NR==2{print $48}' "$SCRATCH/fio.out")
        M=$(echo "if ($R < $W) $R*1024/1000000 else $W*1024/1000000" | bc -l)
        printf "fio run %d: read %.0f MB/s, write %.0f MB/s concurrently -> %.0f MB/s\n" "$k" \
            "$(echo "$R*1024/1000000" | bc -l)" "$(echo "$W*1024/1000000" | bc -l)" "$M"
        runs+=("$M")
    done
    FIO_MBS=$(printf "%s\n" "${runs[@]}" | sort -g | sed -n 2p)
    printf "fio ceiling (median of 3): %.0f MB/s\n" "$FIO_MBS"
else
    echo "!!! fio missing: apt-get update -qq && apt-get install -y -qq fio !!!"
fi

Q=${SECS[qemu-img]}
printf "\n%-20s %8s %8s %10s\n" tool seconds "MB/s" "vs qemu"
for n in blockd-manifest blockd-nomanifest qemu-img cp dd; do
    s=${SECS[$n]}
    printf "%-20s %8.2f %8.0f %10.2f\n" "$n" "$s" "$(echo "$DATA_MB / $s" | bc -l)" "$(echo "$s / $Q" | bc -l)"
done
if [ -n "$FIO_MBS" ]; then
    printf "blockd-manifest vs fio ceiling: %.0f%%\n" "$(echo "100 * $DATA_MB / ${SECS[blockd-manifest]} / $FIO_MBS" | bc -l)"
fi
printf "manifest overhead: %.1f%%\n" \
    "$(echo "100 * (${SECS[blockd-manifest]} - ${SECS[blockd-nomanifest]}) / ${SECS[blockd-nomanifest]}" | bc -l)"

lvm_bench
