"""Drives blockd's Cinder dialect with openstacksdk: create, wait for
available, extend, snapshot, delete, and wait for each delete. Prints one
JSON line with what it saw. Usage: sdk_lifecycle.py ENDPOINT TOKEN"""
import json
import sys

import openstack

endpoint, token = sys.argv[1], sys.argv[2]
conn = openstack.connect(
    auth_type="admin_token",
    auth={"endpoint": endpoint, "token": token},
    block_storage_endpoint_override=endpoint,
    block_storage_api_version="3",
)
bs = conn.block_storage
vol = bs.create_volume(name="sdk-vol", size=1, metadata={"made-by": "sdk"})
vol = bs.wait_for_status(vol, status="available", failures=["error"], interval=0.2, wait=60)
bs.extend_volume(vol, 2)
vol = bs.wait_for_status(bs.get_volume(vol.id), status="available", failures=["error", "error_extending"], interval=0.2, wait=60)
extended = vol.size
snap = bs.create_snapshot(volume_id=vol.id, name="sdk-snap")
snap = bs.wait_for_status(snap, status="available", failures=["error"], interval=0.2, wait=60)
names = sorted(v.name for v in bs.volumes())
bs.delete_snapshot(snap)
bs.wait_for_delete(snap, interval=0.2, wait=60)
bs.delete_volume(vol)
bs.wait_for_delete(vol, interval=0.2, wait=60)
print(json.dumps({
    "volume_id": vol.id,
    "snapshot_id": snap.id,
    "extended_size": extended,
    "metadata": dict(vol.metadata or {}),
    "names": names,
}))
