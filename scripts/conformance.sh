#!/usr/bin/env bash
# Start a fresh embedded server on a free loopback port with an admin and an
# ordinary worker user, run the conformance suite (tests/conformance, or
# CONFORMANCE_DIR) against it in strict mode with
# the web socket required, and stop the server.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
suite=${CONFORMANCE_DIR:-$here/tests/conformance}
if [ ! -f "$suite/run.sh" ]; then
    echo "conformance suite not found at $suite (set CONFORMANCE_DIR)" >&2
    exit 2
fi
data=$(mktemp -d)
port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export UFDL_NODE_SERVER_ADMIN=admin:admin UFDL_NODE_SERVER_WORKER=worker:worker
"$python" -m ufdl_node server --host 127.0.0.1 --port "$port" --data-dir "$data" >"$data/server.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || break
    "$python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.5)" 2>/dev/null && break
    sleep 0.1
done
if ! kill -0 "$pid" 2>/dev/null; then
    echo "embedded server failed to start:" >&2; cat "$data/server.log" >&2; exit 1
fi
UFDL_STRICT=1 UFDL_WS_REQUIRED=1 UFDL_ADMIN_USER=admin UFDL_ADMIN_PASSWORD=admin \
UFDL_WORKER_USER=worker UFDL_WORKER_PASSWORD=worker PYTHON="$python" \
    "$suite/run.sh" "http://127.0.0.1:$port" -p no:asyncio -p no:aiohttp -rs "$@"
