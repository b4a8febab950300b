#!/usr/bin/env bash
# Starts or stops a real Keystone (from the CI venv) on SQLite, for tests.
#   keystone.sh start DIR PORT   set up DIR, serve on 127.0.0.1:PORT, wait until it answers
#   keystone.sh stop DIR         stop the server started in DIR
# The admin user is "admin" in project "admin", password $KEYSTONE_ADMIN_PASSWORD
# (default "blockd-admin-pw"). Exit 3 means the venv has no keystone.
set -euo pipefail

venv=${BLOCKD_CI_VENV:-/opt/blockd-ci-venv}
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2; }

case "$cmd" in
stop)
  if [ -f "$dir/keystone.pid" ]; then
    pid=$(cat "$dir/keystone.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/keystone.pid"
  fi
  ;;
start)
  port=${3:?port}
  py="$venv/bin/python"
  if [ ! -x "$venv/bin/keystone-manage" ] || ! "$py" -c 'import keystone' 2>/dev/null; then
    echo "no keystone in $venv (run .ci/run or pip install keystone there)" >&2
    exit 3
  fi
  pw=${KEYSTONE_ADMIN_PASSWORD:-blockd-admin-pw}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  url="http://127.0.0.1:$port"
  cat > "$dir/keystone.conf" <<CONF
[DEFAULT]
log_file = $dir/keystone.log
[database]
connection = sqlite:///$dir/keystone.db
[token]
provider = fernet
expiration = 3600
[fernet_tokens]
key_repository = $dir/fernet-keys
[fernet_receipts]
key_repository = $dir/fernet-receipts
[credential]
key_repository = $dir/credential-keys
CONF
  manage() { "$venv/bin/keystone-manage" --config-file "$dir/keystone.conf" "$@" >>"$dir/setup.log" 2>&1; }
  manage db_sync
  manage fernet_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)"
  manage credential_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)"
  manage bootstrap --bootstrap-password "$pw" \
    --bootstrap-admin-url "$url/v3" --bootstrap-public-url "$url/v3" \
    --bootstrap-internal-url "$url/v3" --bootstrap-region-id RegionOne
  KEYSTONE_PORT=$port OS_KEYSTONE_CONFIG_FILES="$dir/keystone.conf" nohup "$py" - >"$dir/server.log" 2>&1 <<'PY' &
import os, socketserver, sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from keystone.server import wsgi

class Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

sys.argv = sys.argv[:1]  # keystone parses the command line itself
app = wsgi.initialize_public_application()
make_server("127.0.0.1", int(os.environ["KEYSTONE_PORT"]), app, server_class=Server, handler_class=Quiet).serve_forever()
PY
  echo $! > "$dir/keystone.pid"
  for _ in $(seq 600); do
    if "$py" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url/v3" 2>/dev/null; then
      echo "keystone on $url (dir $dir)"
      exit 0
    fi
    kill -0 "$(cat "$dir/keystone.pid")" 2>/dev/null || { echo "keystone exited; see $dir/server.log" >&2; tail -20 "$dir/server.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "keystone did not answer on $url within 60 s" >&2
  exit 1
  ;;
*)
  echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
