#!/usr/bin/env bash
# Exit non-zero, printing them, if any loop device's backing file lies under
# the given directories (default: /var/tmp/blockd-test*). Reads sysfs only.
set -u
leaks=0
for f in /sys/block/loop*/loop/backing_file; do
  [ -r "$f" ] || continue
  b=$(cat "$f" 2>/dev/null) || continue
  b=${b% (deleted)}
  dev=/dev/$(basename "$(dirname "$(dirname "$f")")")
  hit=0
  if [ $# -eq 0 ]; then
    case "$b" in /var/tmp/blockd-test*) hit=1 ;; esac
  else
    for d in "$@"; do
      d=$(readlink -m "$d")
      case "$b" in "$d"/*) hit=1 ;; esac
    done
  fi
  if [ $hit -eq 1 ]; then echo "leaked: $dev -> $b"; leaks=1; fi
done
exit $leaks
