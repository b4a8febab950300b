# One boot for the read-write checks, in order; the host answers markers.
hash() { dd if=/dev/vda bs=1M skip=$1 count=$2 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1; }
echo "SIZE $(blockdev --getsize64 /dev/vda)"
echo "RO $(cat /sys/block/vda/ro)"
echo "HASH0 $(hash 0 4)"
# Guest writes at 8 MiB, then a flush.
dd if=/dev/urandom of=/tmp/w bs=1M count=4 2>/dev/null
dd if=/tmp/w of=/dev/vda bs=1M seek=8 oflag=direct 2>/dev/null
gio flush /dev/vda
echo "WHASH $(sha256sum /tmp/w | cut -d' ' -f1)"
# Discard 4 MiB at 16 MiB, write-zeroes 4 MiB at 24 MiB.
blkdiscard -o $((16 << 20)) -l $((4 << 20)) /dev/vda && echo "DISCARD ok"
gio zero /dev/vda $((24 << 20)) $((4 << 20))
gio flush /dev/vda
echo "DISCARDED"
# Live resize: the host extends the volume when it sees this line.
old=$(cat /sys/block/vda/size)
echo "WAIT-RESIZE $((old * 512))"
i=0
while [ "$(cat /sys/block/vda/size)" = "$old" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
echo "RESIZED $(blockdev --getsize64 /dev/vda)"
# QoS: unlimited, then the host sets 2 MB/s and 40 IOPS.
gio bench /dev/vda seqread 1048576 2 64
echo "WAIT-QOS"
sleep 2
gio bench /dev/vda seqread 1048576 3 64
gio bench /dev/vda randread 4096 3 64
echo "WAIT-UNQOS"
sleep 2
# Restart: the host kills and restarts blockd while this guest sleeps.
dd if=/dev/urandom of=/tmp/r bs=1M count=2 2>/dev/null
echo "WAIT-RESTART"
sleep 6
dd if=/tmp/r of=/dev/vda bs=1M seek=32 oflag=direct 2>/dev/null
gio flush /dev/vda
echo "RHASH $(sha256sum /tmp/r | cut -d' ' -f1) $(hash 32 2) $(hash 8 4)"
