# A read-only attach: the disk says ro and refuses writes.
echo "RO $(cat /sys/block/vda/ro)"
echo "HASH0 $(dd if=/dev/vda bs=1M count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
gio write /dev/vda 0 4096; echo "WRITE-RC $?"
