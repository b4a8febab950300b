#!/usr/bin/env bash
# Unpacks QEMU 7.2, a Debian guest kernel and busybox from Debian packages
# (apt-get download + dpkg -x, never installed), then builds the guest's
# initramfs. Idempotent: downloads happen once per cache dir, the initramfs
# is rebuilt every run (it holds the scenario scripts).
# Usage: setup.sh [CACHE_DIR]   (default /var/cache/blockd-guest)
# Prints the cache dir on the last line when everything is in place.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-${BLOCKD_GUEST_CACHE:-/var/cache/blockd-guest}}
root=$cache/root
mkdir -p "$cache/debs" "$root"
# Tests run in parallel and the bench may run beside them: one setup at a
# time, and the initramfs is replaced atomically under a booting guest.
exec 9>"$cache/.lock"
flock 9

fetch() { # fetch PKG...: download and unpack packages not unpacked yet
  local p
  for p in "$@"; do
    [ -e "$cache/debs/.done-$p" ] && continue
    (cd "$cache/debs" && apt-get download -q "$p" >/dev/null 2>&1) || {
      echo "setup: apt-get download $p failed" >&2; return 1; }
    local deb
    deb=$(ls -t "$cache/debs/${p}_"*.deb | head -n1)
    dpkg -x "$deb" "$root"
    touch "$cache/debs/.done-$p"
  done
}

if [ ! -e "$cache/.qemu-ok" ]; then
  apt-cache show qemu-system-x86 >/dev/null 2>&1 || apt-get update -qq
  # QEMU, firmware, busybox, and every runtime library (transitively)
  # that this host does not have installed.
  want=(qemu-system-x86 qemu-system-common qemu-system-data seabios busybox-static)
  declare -A seen=()
  pkgs=()
  while [ ${#want[@]} -gt 0 ]; do
    next=()
    for p in "${want[@]}"; do
      [ -n "${seen[$p]:-}" ] && continue
      seen[$p]=1
      pkgs+=("$p")
      for d in $(apt-cache depends "$p" | awk '/^ *Depends: [a-z]/ {print $2}' | sort -u); do
        case $d in ipxe-qemu|init-system-helpers|debconf|adduser) continue ;; esac
        dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q 'ok installed' || next+=("$d")
      done
    done
    want=("${next[@]}")
  done
  fetch "${pkgs[@]}"
  touch "$cache/.qemu-ok"
fi

if [ ! -e "$cache/.kernel-ok" ]; then
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$kpkg" ] || { echo "setup: no linux-image package found" >&2; exit 1; }
  fetch "$kpkg"
  echo "$kpkg" >"$cache/kernel-package"
  touch "$cache/.kernel-ok"
fi

export LD_LIBRARY_PATH=$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu
qemu=$root/usr/bin/qemu-system-x86_64
"$qemu" --version >/dev/null || { echo "setup: unpacked qemu does not run" >&2; exit 1; }
[ -x "$root/usr/bin/qemu-storage-daemon" ] || { echo "setup: no qemu-storage-daemon" >&2; exit 1; }

# The kernel, unpacked from its XZ payload so QEMU boots it directly (PVH).
vmlinuz=$(ls "$root"/boot/vmlinuz-* | head -n1)
kver=${vmlinuz##*/vmlinuz-}
if [ ! -s "$cache/vmlinux" ]; then
  off=$(grep -abo $'\xfd7zXZ\x00' "$vmlinuz" | head -n1 | cut -d: -f1)
  tail -c +$((off + 1)) "$vmlinuz" | xz -dc 2>/dev/null >"$cache/vmlinux.tmp" || true
  if [ -s "$cache/vmlinux.tmp" ]; then mv "$cache/vmlinux.tmp" "$cache/vmlinux"
  else rm -f "$cache/vmlinux.tmp"; cp "$vmlinuz" "$cache/vmlinux"; fi
fi

# The initramfs: busybox, the virtio modules, init and the scenarios.
rm -rf "$cache/initramfs.d"
ir=$(mktemp -d "$cache/initramfs.XXXXXX")
trap 'rm -rf "$ir" "$ir.gz"' EXIT
mkdir -p "$ir"/{bin,sbin,proc,sys,dev,tmp,lib/modules,scenarios}
cp "$root/bin/busybox" "$ir/bin/busybox"
for a in $("$ir/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$ir/bin/$a"; done
mods=$root/lib/modules/$kver
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
  f=$(find "$mods" -name "$m.ko*" | head -n1)
  [ -n "$f" ] || { echo "setup: module $m missing" >&2; exit 1; }
  case $f in
    *.xz) xz -dc "$f" >"$ir/lib/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" >"$ir/lib/modules/$m.ko" ;;
    *) cp "$f" "$ir/lib/modules/$m.ko" ;;
  esac
done
cc -O2 -static -o "$ir/bin/gio" "$here/gio.c"
cp "$here/init" "$ir/init"
cp "$here"/scenarios/*.sh "$ir/scenarios/"
chmod +x "$ir/init" "$ir"/scenarios/*.sh
(cd "$ir" && find . | "$root/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) >"$ir.gz"
mv -f "$ir.gz" "$cache/initramfs.gz"
echo "$cache"
