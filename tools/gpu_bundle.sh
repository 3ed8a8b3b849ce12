#!/usr/bin/env bash
# Builds every GPU test (tag "gpu" or "gpu_optional") and GPU benchmark (tag "gpu_bench") and packs them, with the
# shared libraries they need that a stock Ubuntu 24.04 GPU machine lacks, into .gpu_bundle/, plus a
# runner, run_gpu_tests.sh. Carry that folder to the device machine and run the runner there:
#
#   tools/gpu_bundle.sh
#   device tool: run(kind="nvidia-h100-x1", carry=[".gpu_bundle"],
#                    command="bash .gpu_bundle/run_gpu_tests.sh")
#
# Usage: tools/gpu_bundle.sh [extra bazel build flags...]
# Environment: GPU_BUNDLE_DIR (default .gpu_bundle), GPU_BUNDLE_LIMIT_MIB (default 64).
# See docs/gpu.md for what travels and why.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUNDLE="${GPU_BUNDLE_DIR:-.gpu_bundle}"
LIMIT_MIB="${GPU_BUNDLE_LIMIT_MIB:-64}"

die() { echo "gpu_bundle: $*" >&2; exit 1; }
log() { echo "gpu_bundle: $*" >&2; }

# --- 1. Which targets -------------------------------------------------------------------------------
# Tests tagged "gpu" (need a device), plus tests tagged "gpu_optional": those run everywhere (CI too:
# --test_tag_filters=-gpu keeps them) but check more when a GPU is there, so they travel as well.
# Tags are matched as whole words in the rendered list "[a, b]", so "gpu" does not match "nogpu" or
# "gpu_bench".
tests=$(bazel query --noshow_progress 'attr(tags, "[\[ ]gpu(_optional)?[,\]]", tests(//...))' 2>/dev/null) ||
  die "bazel query for gpu tests failed"
benches=$(bazel query --noshow_progress 'kind(".*_binary", attr(tags, "[\[ ]gpu_bench[,\]]", //...))' \
  2>/dev/null) || die "bazel query for gpu_bench binaries failed"
[[ -n "$tests$benches" ]] || die "no targets tagged gpu or gpu_bench"
log "tests:   $(echo $tests)"
log "benches: $(echo ${benches:-none})"

# --- 2. Build (same flags as a plain `bazel build`, so the cache is shared) ---------------------------
# The product's binaries travel too (sbin/): integration tests start them (tests/testing/subprocess.h
# finds them through CKPT_BIN_DIR when there are no Bazel runfiles).
tools="//daemon:ckpt-engined //client/ckptctl:ckptctl //client:libckpt_client.so //tests/integration:worker_client //tests/integration:local_push_client"
# shellcheck disable=SC2086
bazel build --noshow_progress "$@" $tests $benches $tools >&2 || die "bazel build failed"

# --- 3. Collect binaries and their libraries ---------------------------------------------------------
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/bench" "$BUNDLE/lib" "$BUNDLE/sbin"

# Libraries NOT carried:
# - glibc's family, libstdc++ and libgcc_s: Ubuntu 24.04 has newer, backward-compatible ones (glibc
#   2.39 vs Debian 12's 2.36; GCC 14's libstdc++ vs GCC 12's). Carrying Debian's older libstdc++ could
#   break other code in the process, and carrying glibc cannot work (it must match the loader).
# - the driver's libraries (libcuda, libnvidia-*): they must match the kernel module of that machine.
# - NCCL: 218 MB, and the GPU machines have the same 2.28 on their default library path.
# Everything else is carried: Debian's absl, gRPC, protobuf, spdlog, fmt, c-ares, re2, ssl, ... and the
# per-package .so files Bazel links tests against (_solib_k8).
skip_lib() {
  case "$1" in
    linux-vdso.so.*|ld-linux*.so.*|libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*) return 0 ;;
    libresolv.so.*|libutil.so.*|libanl.so.*|libmvec.so.*|libBrokenLocale.so.*) return 0 ;;
    libstdc++.so.*|libgcc_s.so.*) return 0 ;;
    libcuda.so.*|libnvidia-*|libnccl.so*|libcudart.so.*) return 0 ;;
  esac
  return 1
}

label_to_path() {  # //a/b:c -> bazel-bin/a/b/c
  local label="${1#//}"
  echo "bazel-bin/${label%%:*}/${label##*:}"
}

copy_target() {  # label destdir
  local src dst name
  src="$(label_to_path "$1")"
  [[ -x "$src" ]] || die "built binary not found: $src (for $1)"
  name="$(basename "$src")"
  dst="$2/$name"
  [[ -e "$dst" ]] && die "two targets named $name; rename one"
  cp -L "$src" "$dst"
  chmod u+w "$dst"
  # The product's binaries (sbin/) lose their debug sections only: symbols stay for readable stack
  # traces. Tests and benchmarks lose their symbol tables too (the bundle must stay under 64 MiB;
  # their failures name file and line themselves).
  if [[ "$2" == */sbin ]]; then
    strip --strip-debug "$dst" 2>/dev/null || true
  else
    strip --strip-unneeded "$dst" 2>/dev/null || true
  fi
  # ldd on the original, so that its $ORIGIN rpath (bazel-bin/_solib_k8) resolves.
  local missing
  missing=$(ldd "$src" | awk '/not found/ {print $1}')
  [[ -z "$missing" ]] || die "$src: libraries not found here: $missing"
  ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r soname path; do
    skip_lib "$soname" && continue
    [[ -e "$BUNDLE/lib/$soname" ]] && continue
    cp -L "$path" "$BUNDLE/lib/$soname"
    chmod u+w "$BUNDLE/lib/$soname"
    # Shared libraries keep their dynamic symbols; their static symbol tables are not needed.
    strip --strip-unneeded "$BUNDLE/lib/$soname" 2>/dev/null || true
  done
}

for t in $tests; do copy_target "$t" "$BUNDLE/bin"; done
for b in $benches; do copy_target "$b" "$BUNDLE/bench"; done
for t in $tools; do copy_target "$t" "$BUNDLE/sbin"; done
# The Python client (pure Python over libckpt_client.so) and its GPU check.
mv "$BUNDLE/sbin/libckpt_client.so" "$BUNDLE/lib/"
cp -r client/python "$BUNDLE/python"
cp tests/python/cuda_push_check.py tests/python/cuda_worker_check.py tests/python/standin_engine.py \
  tests/python/client_test.py tests/python/fp8_test.py tests/python/adapters_gpu_check.py \
  tests/python/vllm_standin.py tests/python/sglang_standin.py \
  tests/bench/per_tensor_bench.py tests/bench/py_push_bench.py "$BUNDLE/"
# The Python worker of the update tests, found like the binaries (CKPT_BIN_DIR).
cp tests/python/worker_process.py "$BUNDLE/sbin/"
# A session's one command: the GPU tests, the push check and the benchmarks (see the script).
cp tools/gpu_session_check.sh "$BUNDLE/session_check.sh"

# --- 4. The runner -----------------------------------------------------------------------------------
cat >"$BUNDLE/run_gpu_tests.sh" <<'RUNNER'
#!/usr/bin/env bash
# Runs every GPU test binary of this bundle (bin/*), or those whose name contains one of the
# arguments; `--bench` also runs bench/* (after the tests). Prints each result with its time and a final
# "N passed, N failed" line; exits non-zero when anything failed. With $OUT set (the device tool),
# writes the full output to $OUT/gpu_tests.log and the summary to $OUT/gpu_tests_summary.txt (two files:
# the device tool returns at most 8).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export LD_LIBRARY_PATH="$HERE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# ckpt-engined and ckptctl for the integration tests.
export CKPT_BIN_DIR="$HERE/sbin"
# NVLink multicast must stay off on the shared GPU machines (a program using it can take the host's
# GPUs out of service); keep the related switches off too.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
TIMEOUT_S="${GPU_TEST_TIMEOUT_S:-240}"
export TEST_TMPDIR="${TEST_TMPDIR:-$(mktemp -d /tmp/gpu_tests.XXXXXX)}"

run_bench=0
filters=()
for a in "$@"; do
  if [[ "$a" == --bench ]]; then run_bench=1; else filters+=("$a"); fi
done

LOG=/dev/null
SUMMARY=/dev/null
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  LOG="$OUT/gpu_tests.log"
  SUMMARY="$OUT/gpu_tests_summary.txt"
  : >"$LOG"
  : >"$SUMMARY"
fi
say() { echo "$@" | tee -a "$LOG" "$SUMMARY"; }

# NCCL is not carried. The GPU machines have it on the default library path; if this one does not,
# fall back to a libnccl.so.2 found elsewhere (e.g. PyTorch's nvidia-nccl wheel) and say so.
if ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2' && ! ls /usr/local/cuda/lib*/libnccl.so.2 >/dev/null 2>&1; then
  nccl=$(find /usr /opt -name libnccl.so.2 -print -quit 2>/dev/null || true)
  if [[ -n "$nccl" ]]; then
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$nccl")"
    echo "== libnccl.so.2 not on the default path; using $nccl"
  fi
fi

say "== GPU bundle run on $(hostname) at $(date -u +%FT%TZ)"
[[ -f "$HERE/MANIFEST.txt" ]] && say "== $(head -n 1 "$HERE/MANIFEST.txt")"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,pci.bus_id --format=csv,noheader 2>&1 |
    sed 's/^/== gpu: /' | tee -a "$LOG" "$SUMMARY"
else
  say "== nvidia-smi not found"
fi

selected() {
  ((${#filters[@]} == 0)) && return 0
  local f
  for f in "${filters[@]}"; do [[ "$1" == *"$f"* ]] && return 0; done
  return 1
}

passed=0
failed=0
failed_names=()
run_one() {  # path kind
  local bin="$1" name args=() start end secs rc out
  name="$(basename "$bin")"
  # Catch2 binaries (marker in the binary, or in the carried catch2_main .so) print per-test-case
  # durations with -d yes; other binaries get no arguments.
  if grep -qa " is a Catch v" "$bin" || ldd "$bin" 2>/dev/null | grep -q catch2; then args=(-d yes); fi
  local missing
  missing=$(ldd "$bin" 2>&1 | awk '/not found/ {print $1}' | tr '\n' ' ')
  if [[ -n "$missing" ]]; then
    say "FAIL $name: missing libraries: $missing"
    failed=$((failed + 1)); failed_names+=("$name"); return
  fi
  out="$(mktemp)"
  start=$(date +%s.%N)
  (cd "$TEST_TMPDIR" && timeout -k 10 "$TIMEOUT_S" "$bin" "${args[@]}") >"$out" 2>&1
  rc=$?
  end=$(date +%s.%N)
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", b - a}')
  { echo "---------- $name (exit $rc, ${secs}s)"; cat "$out"; } >>"$LOG"
  # Full output on stdout too: the test binaries are terse (durations, warnings, failures).
  sed "s/^/  [$name] /" "$out"
  if ((rc == 0)); then
    say "PASS $name (${secs}s)"
    passed=$((passed + 1))
  else
    local why="exit $rc"
    ((rc == 124 || rc == 137)) && why="timed out after ${TIMEOUT_S}s"
    say "FAIL $name ($why, ${secs}s)"
    failed=$((failed + 1)); failed_names+=("$name")
  fi
  rm -f "$out"
}

shopt -s nullglob
for bin in "$HERE"/bin/*; do selected "$(basename "$bin")" && run_one "$bin"; done
if ((run_bench)); then
  for bin in "$HERE"/bench/*; do selected "$(basename "$bin")" && run_one "$bin"; done
fi
((failed)) && say "failed: ${failed_names[*]}"
say "$passed passed, $failed failed"
((failed == 0))
RUNNER
chmod +x "$BUNDLE/run_gpu_tests.sh"

{
  echo "built $(date -u +%FT%TZ) from $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty') on $(hostname)"
  echo "tests:"; for t in $tests; do echo "  $t"; done
  echo "benches:"; for b in $benches; do echo "  $b"; done
  echo "libraries:"; (cd "$BUNDLE/lib" && ls -1 | sed 's/^/  /')
} >"$BUNDLE/MANIFEST.txt"

# --- 5. Size check -----------------------------------------------------------------------------------
bundle_bytes=$(du -sb "$BUNDLE" | cut -f1)
limit_bytes=$((LIMIT_MIB * 1024 * 1024))
tree_bytes=$(git ls-files -z -co --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -n 1 | cut -f1)
log "bundle: $(ls "$BUNDLE/bin" | wc -l) test(s), $(ls "$BUNDLE/bench" | wc -l) bench(es), $(ls "$BUNDLE/lib" | wc -l) lib(s), $((bundle_bytes / 1024)) KiB; working tree $((tree_bytes / 1024)) KiB"
if ((bundle_bytes > limit_bytes)); then
  du -b "$BUNDLE"/lib/* "$BUNDLE"/bin/* "$BUNDLE"/bench/* 2>/dev/null | sort -rn | head -n 10 >&2
  die "bundle is $((bundle_bytes / 1048576)) MiB, over the ${LIMIT_MIB} MiB the device tool carries"
fi
if ((bundle_bytes + tree_bytes > limit_bytes)); then
  die "bundle + working tree = $(((bundle_bytes + tree_bytes) / 1048576)) MiB, over the ${LIMIT_MIB} MiB the device tool carries"
fi
echo "$BUNDLE"
