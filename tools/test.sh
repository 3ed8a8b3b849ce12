#!/usr/bin/env bash
# Builds everything and runs every test that needs no GPU (tests tagged `gpu` are built, not run; see
# docs/gpu.md for running them on a GPU machine). Ends with one line: "N passed, N failed" (test targets).
# Extra arguments go to `bazel test` (e.g. a target pattern is NOT accepted: it always runs //...).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log=$(mktemp /tmp/ckpt-test.XXXXXX)
trap 'rm -f "$log"' EXIT
bazel test //... --config=nogpu "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

passed=$(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$log")
failed=$(grep -cE '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|INCOMPLETE|FLAKY)' "$log")
if ((rc != 0 && failed == 0)); then
  # The build failed before any test result was printed: count that as a failure.
  echo "bazel test exited with code $rc before reporting test results"
  failed=1
fi
echo "$passed passed, $failed failed"
((rc == 0 && failed == 0))
