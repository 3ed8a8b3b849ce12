#!/usr/bin/env bash
# One device-tool command for a session's GPU work, copied into the bundle by tools/gpu_bundle.sh:
#   run(kind="nvidia-h200", carry=[".gpu_bundle"], command="bash .gpu_bundle/session_check.sh MODE")
# MODE: tests (every GPU test of the bundle), bench (the Python CUDA push check and the ingress,
# Python push and update benchmarks), push (the push check and benchmarks only), fp8 (the FP8
# conversion on the cuda backend: tests/python/fp8_test.py and update_bench --fp8), adapters (the
# Python worker and the engine adapters on CUDA: cuda_worker_check.py, adapters_gpu_check.py), all
# (default: tests, then bench).
set -u
B="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE="${1:-all}"
export NCCL_NVLS_ENABLE=0 LD_LIBRARY_PATH=$B/lib CKPT_BIN_DIR=$B/sbin \
  CKPT_CLIENT_LIB=$B/lib/libckpt_client.so PYTHONPATH=$B/python:$B
date -u; nvidia-smi -L; nproc; free -g | head -2
if [[ "$MODE" == all || "$MODE" == tests ]]; then
  echo "=== gpu tests"
  bash "$B/run_gpu_tests.sh" 2>&1 | grep -E "PASS|FAIL|passed|failed" | tail -30
fi
[[ "$MODE" == tests ]] && exit 0
if [[ "$MODE" == fp8 ]]; then
  echo "=== fp8_test on the cuda backend"
  CKPT_DAEMON=$B/sbin/ckpt-engined CKPTCTL=$B/sbin/ckptctl CKPT_FP8_BACKEND=cuda \
    timeout 200 python3 -m unittest -v "$B/fp8_test.py" 2>&1 | tail -15
  echo "=== update_bench --fp8"
  timeout 330 "$B/bench/update_bench" --layers 64 --repeat 2 --small-gib 0 --many-tensors 0 \
    --rl-steps 0 --fp8 2>&1 | tail -20
  echo "=== done"
  exit 0
fi
start_daemon() {  # a daemon on the cuda backend at $D/d.sock (pid $P), its pinned store ready
  D=$(mktemp -d)
  "$B/sbin/ckpt-engined" --backend auto --listen-unix "$D/d.sock" --host-memory-budget "$1" \
    --log-level warn >"$D/daemon.log" 2>&1 &
  P=$!
  for _ in $(seq 1 600); do "$B/sbin/ckptctl" --socket "$D/d.sock" status >/dev/null 2>&1 && break; sleep 0.2; done
  for _ in $(seq 1 600); do
    "$B/sbin/ckptctl" --socket "$D/d.sock" status --json 2>/dev/null | grep -q '"store_ready":true' && break
    sleep 0.5
  done
}
if [[ "$MODE" == adapters ]]; then
  start_daemon 4GiB
  echo "=== cuda_worker_check"
  timeout 200 python3 "$B/cuda_worker_check.py" "$D/d.sock" 2>&1 | tail -20
  echo "=== adapters_gpu_check"
  CKPTCTL="$B/sbin/ckptctl" timeout 300 python3 "$B/adapters_gpu_check.py" "$D/d.sock" 2>&1 | tail -30
  kill $P; wait $P; tail -3 "$D/daemon.log"
  echo "=== done"
  exit 0
fi
echo "=== python cuda push check"
start_daemon 24GiB
timeout 240 python3 "$B/cuda_push_check.py" "$D/d.sock" "$B/sbin/ckptctl" 2>&1 | tail -30
echo "=== py_push_bench"
timeout 150 python3 "$B/py_push_bench.py" "$D/d.sock" --gib 6 --repeat 2 2>&1 | tail -12
kill $P; wait $P; tail -3 "$D/daemon.log"
echo "=== ingress_bench"
timeout 320 "$B/bench/ingress_bench" --gib 8 --streams 8 --many-tensors 140000 --many-tensor-kib 48 \
  --backend cuda --repeat 3 --cuda 2>&1 | grep -v "^$" | tail -32
if [[ "$MODE" != push ]]; then
  echo "=== update_bench"
  timeout 150 "$B/bench/update_bench" --layers 16 --repeat 2 --small-gib 1 2>&1 | tail -16
fi
echo "=== done"
