#!/usr/bin/env bash
# Runs a Python unittest file under Debian's /usr/bin/python3 (which has numpy and torch from
# tools/setup.sh) with the ckpt_engine package, libckpt_client.so, ckpt-engined and ckptctl from
# the test's runfiles. Usage (from BUILD): run_python_test.sh tests/python/<file>.py
set -euo pipefail
root="${TEST_SRCDIR:?run under bazel test}/${TEST_WORKSPACE:-ckpt_engine}"
export PYTHONPATH="$root/client/python${PYTHONPATH:+:$PYTHONPATH}"
export CKPT_CLIENT_LIB="$root/client/libckpt_client.so"
export CKPT_DAEMON="$root/daemon/ckpt-engined"
export CKPTCTL="$root/client/ckptctl/ckptctl"
export PYTHONDONTWRITEBYTECODE=1
python="${CKPT_TEST_PYTHON:-/usr/bin/python3}"
[[ -x $python ]] || { echo "no $python: run tools/setup.sh" >&2; exit 1; }
exec "$python" -m unittest -v "$root/$1"
