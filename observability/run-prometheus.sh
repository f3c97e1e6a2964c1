#!/usr/bin/env bash
# Prometheus on the head node with observability/prometheus.yml: every node's Ray metrics (ray_serve_* per
# replica) and the app's /metrics (vllm:*, dflash_*). `make monitoring` runs it in a tmux session on the head.
set -euo pipefail
VERSION=3.5.0
DIR="$HOME/prometheus-$VERSION.linux-amd64"
if [ ! -x "$DIR/prometheus" ]; then
  curl -sSfL "https://github.com/prometheus/prometheus/releases/download/v$VERSION/prometheus-$VERSION.linux-amd64.tar.gz" \
    | tar -xz -C "$HOME"
fi
exec "$DIR/prometheus" --config.file="$(dirname "$0")/prometheus.yml" \
  --storage.tsdb.path="$HOME/prometheus-data" --storage.tsdb.retention.time=15d --web.listen-address=0.0.0.0:9090
