#!/bin/sh
# Container entrypoint: `v4serve serve` on all interfaces, port $V4SERVE_PORT (default 8000).
# Serves the checkpoint mounted at $V4SERVE_MODEL_DIR (default /model) when it holds a config.json,
# else the built-in demo model. A first argument that is not a flag names the checkpoint directory
# instead; every other argument goes to `v4serve serve` (e.g. --tensor-parallel-size 8).
set -eu
host="${V4SERVE_HOST:-0.0.0.0}"
port="${V4SERVE_PORT:-8000}"
model_dir="${V4SERVE_MODEL_DIR:-/model}"
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    model="$1"
    shift
    exec v4serve serve "$model" --host "$host" --port "$port" "$@"
fi
if [ -f "$model_dir/config.json" ]; then
    exec v4serve serve "$model_dir" --host "$host" --port "$port" "$@"
fi
exec v4serve serve --host "$host" --port "$port" "$@"
