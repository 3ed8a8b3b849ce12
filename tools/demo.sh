#!/usr/bin/env bash
# The main job on a built-in default, no GPU needed: builds ckpt-engined and ckptctl, starts the daemon
# with the host backend on a private socket, shows its status as an operator sees it (text and JSON),
# pushes a small safetensors checkpoint and shows the committed version, attaches a Python worker
# (ckpt_engine.Worker) and updates it to that version with `ckptctl update`, then stops the daemon
# with SIGTERM and checks that it shut down cleanly. Grows as features land.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== building ckpt-engined, ckptctl and libckpt_client.so"
bazel build --noshow_progress //daemon:ckpt-engined //client/ckptctl:ckptctl //client:libckpt_client.so 2>&1 |
  grep -vE '^(INFO|Loading|Analyzing)' || true
daemon=bazel-bin/daemon/ckpt-engined
ctl=bazel-bin/client/ckptctl/ckptctl
lib=bazel-bin/client/libckpt_client.so
[[ -x $daemon && -x $ctl && -f $lib ]] || { echo "demo: build failed" >&2; exit 1; }

dir=$(mktemp -d /tmp/ckpt-demo.XXXXXX)
sock=$dir/ckpt-engined.sock
pid=""
worker=""
cleanup() {
  [[ -n $worker ]] && kill -9 "$worker" 2>/dev/null || true
  [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

echo "== starting: $daemon --backend host --listen-unix $sock --host-memory-budget 1GiB"
$daemon --backend host --listen-unix "$sock" --host-memory-budget 1GiB 2>"$dir/daemon.log" &
pid=$!

# Wait (at most 30 s) until the daemon answers.
deadline=$((SECONDS + 30))
until $ctl --socket "$sock" --timeout 1s status >/dev/null 2>&1; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "demo: ckpt-engined exited during start-up:" >&2
    cat "$dir/daemon.log" >&2
    exit 1
  fi
  ((SECONDS < deadline)) || { echo "demo: ckpt-engined did not answer within 30 s" >&2; exit 1; }
  sleep 0.1
done

echo "== ckptctl --socket $sock status"
$ctl --socket "$sock" status
echo "== ckptctl --socket $sock status --json"
$ctl --socket "$sock" status --json

echo "== a checkpoint: writing $dir/demo.safetensors (3 tensors, stdlib Python) and pushing it"
python3 - "$dir/demo.safetensors" <<'PY'
import json, struct, sys
tensors = {"embed.weight": ("BF16", [64, 32]), "layer0.mlp.weight": ("F32", [32, 32]),
           "layer0.norm.weight": ("F32", [32])}
sizes = {"BF16": 2, "F32": 4}
header, data, offset = {}, b"", 0
for i, (name, (dtype, shape)) in enumerate(tensors.items()):
    n = sizes[dtype]
    for d in shape:
        n *= d
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
    data += bytes((i * 7 + j) % 251 for j in range(n))
    offset += n
text = json.dumps(header).encode()
text += b" " * (-len(text) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + data)
PY
echo "== ckptctl push $dir/demo.safetensors --label demo"
$ctl --socket "$sock" push "$dir/demo.safetensors" --label demo
echo "== ckptctl versions"
$ctl --socket "$sock" versions
echo "== ckptctl show latest --tensors"
$ctl --socket "$sock" show latest --tensors

echo "== a worker: a Python process attaches with ckpt_engine.Worker (as a vLLM worker would)"
CKPT_CLIENT_LIB=$lib PYTHONPATH=client/python python3 - "$sock" "$dir/worker.ready" "$dir/worker.stop" <<'PY' &
import os, sys, time
import ckpt_engine as ce

with ce.Worker(socket=sys.argv[1], engine="demo-worker") as w:
    open(sys.argv[2], "w").close()
    for bucket in w.receive_raw(timeout=60):  # one version; views into shared memory
        for t in bucket:
            print(f"   worker received {t.name}: {t.dtype_name} {list(t.shape)}, {t.nbytes} bytes, "
                  f"starts {t.tobytes()[:4].hex()}", flush=True)
    print(f"   worker loaded version {w.version}", flush=True)
    deadline = time.monotonic() + 30  # stay attached until the demo has shown the status
    while not os.path.exists(sys.argv[3]) and time.monotonic() < deadline:
        time.sleep(0.05)
PY
worker=$!
deadline=$((SECONDS + 30))
until [[ -e $dir/worker.ready ]]; do
  kill -0 "$worker" 2>/dev/null || { echo "demo: the worker exited before attaching" >&2; exit 1; }
  ((SECONDS < deadline)) || { echo "demo: the worker did not attach within 30 s" >&2; exit 1; }
  sleep 0.1
done
echo "== ckptctl update latest"
$ctl --socket "$sock" update latest
echo "== ckptctl status (the worker holds the version)"
$ctl --socket "$sock" status
touch "$dir/worker.stop"
wait "$worker" || { echo "demo: the worker failed" >&2; exit 1; }
worker=""

echo "== stopping with SIGTERM"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
echo "== daemon log"
cat "$dir/daemon.log"
if ((rc != 0)); then
  echo "demo: ckpt-engined exited with code $rc" >&2
  exit 1
fi
[[ ! -e $sock ]] || { echo "demo: socket $sock was left behind" >&2; exit 1; }
echo "== demo finished: the daemon served, took a checkpoint version, sent it to a worker and shut down cleanly"
