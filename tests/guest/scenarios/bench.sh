# Guest-side benchmark: O_DIRECT, queue depth 1, within 256 MiB.
q=/sys/block/vda/queue
echo "QUEUE max_sectors_kb=$(cat $q/max_sectors_kb) max_segments=$(cat $q/max_segments) max_segment_size=$(cat $q/max_segment_size) nr_hw_queues=$(ls /sys/block/vda/mq | wc -l) write_cache=$(tr " " _ <$q/write_cache)"
gio bench /dev/vda seqwrite 1048576 5 256
gio bench /dev/vda seqread 1048576 5 256
gio bench /dev/vda randwrite 4096 5 256
gio bench /dev/vda randread 4096 5 256
