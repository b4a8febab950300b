# Guest-side benchmark: O_DIRECT, queue depth 1, within 256 MiB.
gio bench /dev/vda seqwrite 1048576 5 256
gio bench /dev/vda seqread 1048576 5 256
gio bench /dev/vda randwrite 4096 5 256
gio bench /dev/vda randread 4096 5 256
