#!/usr/bin/env bash
# Builds one libFuzzer target of tests/fuzz with clang++-14 (ASan + UBSan) from the test's runfiles
# and fuzzes it for a bounded time, starting from a copy of its seed corpus. Fails on any crash,
# sanitizer report, leak, timeout (an input running over 10 s) or out-of-memory (2 GiB RSS).
#
# Usage (from BUILD.bazel): fuzz_test.sh TARGET, TARGET one of safetensors_header, version_store.
# Environment: FUZZ_SECONDS (default 60) is the fuzzing time; under bazel pass it with
# --test_env=FUZZ_SECONDS=N. FUZZ_CXX overrides the compiler (default clang++-14).
# Crashing inputs are written to $TEST_UNDECLARED_OUTPUTS_DIR (bazel-testlogs/.../outputs.zip).
set -euo pipefail

target="${1:?usage: fuzz_test.sh safetensors_header|version_store}"
root="${TEST_SRCDIR:?run under bazel test}/${TEST_WORKSPACE:-ckpt_engine}"
seconds="${FUZZ_SECONDS:-60}"
cxx="${FUZZ_CXX:-clang++-14}"
cuda="${CUDA_HOME:-/usr/local/cuda}"
tmp="${TEST_TMPDIR:?run under bazel test}/fuzz-$target"
artifacts="${TEST_UNDECLARED_OUTPUTS_DIR:-$tmp}"

fail() {
  echo "FAIL: $target fuzz test: $*" >&2
  exit 1
}

[[ $seconds =~ ^[0-9]+$ ]] || fail "FUZZ_SECONDS must be a whole number of seconds, got '$seconds'"
if ! command -v "$cxx" >/dev/null 2>&1; then
  fail "$cxx not found: the fuzz tests need clang 14 and libFuzzer (Debian packages clang-14 and" \
    "libfuzzer-14-dev); run tools/setup.sh"
fi

absl_libs=(
  -labsl_statusor -labsl_status -labsl_cord -labsl_cordz_info -labsl_cord_internal
  -labsl_cordz_functions -labsl_cordz_handle -labsl_str_format_internal -labsl_strings
  -labsl_strings_internal -labsl_synchronization -labsl_time -labsl_time_zone -labsl_int128
  -labsl_raw_logging_internal -labsl_throw_delegate -labsl_base -labsl_spinlock_wait
)
cxxflags=(-std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -I"$root" -I"$cuda/include")

rm -rf "$tmp"
mkdir -p "$tmp/obj" "$tmp/corpus"
case "$target" in
  safetensors_header)
    srcs=(daemon/store/safetensors.cc common/dtype.cc common/units.cc common/message_text.cc
      common/status_macros.cc)
    libs=("${absl_libs[@]}")
    ;;
  version_store)
    # The manifest and store types come from proto/*.proto: C++ generated here (messages only).
    mkdir -p "$tmp/gen"
    command -v protoc >/dev/null || fail "protoc not found (Debian package protobuf-compiler)"
    (cd "$root" && protoc -I. --cpp_out="$tmp/gen" proto/common.proto proto/admin.proto) ||
      fail "protoc failed"
    cxxflags+=(-I"$tmp/gen" -DSPDLOG_FMT_EXTERNAL -DSPDLOG_COMPILED_LIB)
    srcs=(daemon/store/version_store.cc daemon/store/id_ledger.cc daemon/store/manifest.cc daemon/store/host_arena.cc
      daemon/store/range_allocator.cc gpu/pinned_region.cc gpu/cuda_status.cc common/dtype.cc common/units.cc
      common/message_text.cc common/status_macros.cc common/random_id.cc
      "$tmp/gen/proto/common.pb.cc" "$tmp/gen/proto/admin.pb.cc")
    # Pinned memory is never used (the store is kShared), but pinned_region.cc links against
    # cudart; the static one needs no libcudart.so at run time.
    [[ -f $cuda/lib64/libcudart_static.a ]] || fail "no $cuda/lib64/libcudart_static.a (CUDA toolkit)"
    libs=("$cuda/lib64/libcudart_static.a" -lprotobuf -lspdlog -lfmt -lxxhash -lnuma
      "${absl_libs[@]}" -ldl -lpthread -lrt)
    ;;
  *)
    fail "unknown target '$target'"
    ;;
esac

# The project's sources: one object each, two compilers at a time (instrumented for coverage but
# without libFuzzer's main, which comes with the final link).
start=$SECONDS
objs=()
pids=()
for src in "${srcs[@]}"; do
  [[ $src == /* ]] || src="$root/$src"
  obj="$tmp/obj/$(basename "${src%.cc}").o"
  objs+=("$obj")
  "$cxx" "${cxxflags[@]/-fsanitize=fuzzer,/-fsanitize=fuzzer-no-link,}" -c "$src" -o "$obj" &
  pids+=($!)
  if ((${#pids[@]} >= 2)); then
    wait "${pids[0]}" || fail "compiling failed (see above)"
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || fail "compiling failed (see above)"; done
"$cxx" "${cxxflags[@]}" "$root/tests/fuzz/${target}_fuzz.cc" "${objs[@]}" "${libs[@]}" \
  -o "$tmp/${target}_fuzz" || fail "compiling or linking the fuzz target failed (see above)"
echo "$target: built in $((SECONDS - start)) s"

cp -RL "$root/tests/fuzz/corpus/$target/." "$tmp/corpus/"
chmod -R u+w "$tmp/corpus"
seeds=$(find "$tmp/corpus" -type f | wc -l)
((seeds > 0)) || fail "no seed corpus in tests/fuzz/corpus/$target"

# UBSan reports are fatal (by default they print and go on); leaks are checked by LSan (on with
# ASan under libFuzzer).
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export ASAN_OPTIONS="detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
echo "$target: fuzzing for $seconds s from $seeds seed(s)"
log="$tmp/fuzz.log"
set +e
"$tmp/${target}_fuzz" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" "$tmp/corpus" >"$log" 2>&1
rc=$?
set -e
# libFuzzer prints a status line per new input; keep the log readable.
grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse|INITED)' "$log" | tail -n 80 || true
done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
if ((rc != 0)) || [[ -z $done_line ]]; then
  fail "libFuzzer exited with status $rc (crash, sanitizer report, leak, timeout or OOM);" \
    "the input is in $artifacts (bazel-testlogs/tests/fuzz/*/test.outputs/outputs.zip)"
fi
echo "$target: $done_line (corpus now $(find "$tmp/corpus" -type f | wc -l) files)"
echo "PASS"
