#!/usr/bin/env bash
# Starts a real glance-api for tests: SQLite database, file store, no auth
# (every caller is an admin), on 127.0.0.1 with a port picked by the kernel.
# Usage: glance.sh DIR. Runs in the foreground until killed; gunicorn prints
# "Listening at: http://127.0.0.1:PORT" on stderr once it serves.
# GLANCE_VENV overrides the venv (default /opt/blockd-ci-venv).
set -euo pipefail
dir=$1
venv=${GLANCE_VENV:-/opt/blockd-ci-venv}
mkdir -p "$dir/images" "$dir/staging" "$dir/tasks" "$dir/conf"
cp "$venv/etc/glance/glance-api-paste.ini" "$dir/conf/glance-api-paste.ini"
cat >"$dir/conf/glance-api.conf" <<CONF
[DEFAULT]
enabled_backends = fs:file
worker_self_reference_url = http://127.0.0.1
image_size_cap = 4294967296
enabled_import_methods = []
[database]
connection = sqlite:///$dir/glance.sqlite
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $dir/images
[os_glance_staging_store]
filesystem_store_datadir = $dir/staging
[os_glance_tasks_store]
filesystem_store_datadir = $dir/tasks
[image_format]
# Tests upload data that does not match its disk_format on purpose, to
# check that blockd's own qemu-img check catches it.
require_image_format_match = false
[paste_deploy]
config_file = $dir/conf/glance-api-paste.ini
[oslo_policy]
enforce_new_defaults = false
enforce_scope = false
policy_file = $dir/conf/policy.yaml
CONF
# The noauth context has no roles; let it make public images too.
cat >"$dir/conf/policy.yaml" <<POLICY
"publicize_image": ""
"communitize_image": ""
POLICY
export OS_GLANCE_CONFIG_DIR="$dir/conf"
"$venv/bin/glance-manage" --config-file "$dir/conf/glance-api.conf" db_sync >"$dir/db_sync.log" 2>&1 ||
  { cat "$dir/db_sync.log" >&2; exit 1; }
exec "$venv/bin/gunicorn" --bind 127.0.0.1:0 --workers 1 --threads 4 --timeout 300 \
  --chdir "$dir" glance.wsgi.api:application
