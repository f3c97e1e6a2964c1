#!/usr/bin/env bash
# Smoke test of `make serve` as a user runs it: start it, wait for the endpoint, ask the openai client,
# stop it with SIGTERM, and check that nothing it started is left running.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8123}
PY=.venv/bin/python
log=$(mktemp)
start=$(date +%s)
setsid make serve PORT="$PORT" >"$log" 2>&1 &
pid=$!
cleanup() { kill -TERM -- "-$pid" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 300); do
  if grep -q "dflash-serve is up" "$log"; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "make serve exited early:"; tail -50 "$log"; exit 1; fi
  sleep 1
done
grep -q "dflash-serve is up" "$log" || { echo "make serve not up after 300 s"; tail -50 "$log"; exit 1; }
echo "smoke: endpoint up after $(( $(date +%s) - start )) s"
$PY - "$PORT" <<'PYEOF'
import sys
from openai import OpenAI
client = OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="none", max_retries=0)
model = client.models.list().data[0].id
reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8)
assert reply.choices[0].message.content, reply
print("smoke: openai client answered:", repr(reply.choices[0].message.content))
PYEOF
kill -TERM -- "-$pid"   # what a terminal's Ctrl-C or a process supervisor does: the whole group
for _ in $(seq 1 90); do pgrep -f "tools.serve" >/dev/null || break; sleep 1; done
trap - EXIT
if pgrep -f "tools.serve" >/dev/null; then echo "make serve did not stop on SIGTERM"; exit 1; fi
left=$(pgrep -f "raylet|gcs_server|VLLM::EngineCore|ServeReplica" || true)
if [ -n "$left" ]; then echo "processes left behind:"; ps -o pid,cmd -p $left; exit 1; fi
grep -q "stopped; no Ray processes left" "$log" || { echo "no clean-stop message"; tail -20 "$log"; exit 1; }
echo "smoke: make serve stopped cleanly, nothing left running"
