#!/usr/bin/env bash
# Installs every build and test dependency of ckpt-engine from Debian 12's package archive.
#
# Idempotent: packages already present are not touched, and the script prints nothing but its final
# "setup: ok" line when everything is there. Needs root (or sudo) only when something must be installed.
# The CUDA toolkit with NCCL is a prerequisite that Debian does not ship: it is checked, not installed.
set -euo pipefail

PACKAGES=(
  # build
  bazel-bootstrap bazel-rules-java g++ python3
  # RPC and serialization
  libgrpc++-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev libabsl-dev
  # logging, flags, config, tests
  libspdlog-dev libfmt-dev libcli11-dev libtomlplusplus-dev nlohmann-json3-dev catch2
  # system integration
  libsystemd-dev libnuma-dev libxxhash-dev
  # metrics over HTTP (metrics_listen)
  libcpp-httplib-dev
  # TLS certificates for the authentication tests; OpenSSL's libcrypto (HMAC of the Peer API)
  openssl libssl-dev
  # the host backend's collectives between cluster members
  libgloo-dev
  # Python client tests (tests/python, run by /usr/bin/python3): numpy and torch
  python3-numpy python3-torch
  # the Kubernetes example's manifest test (deploy/kubernetes_test.py)
  python3-yaml
  # fuzzing
  clang-14 libfuzzer-14-dev
)

CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"

die() { echo "setup: $*" >&2; exit 1; }

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root to install: ${missing[*]}"
    SUDO="sudo"
  fi
  echo "setup: installing ${#missing[@]} package(s): ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || die "apt-get update failed: is Debian's package archive reachable?"
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/ckpt-setup-apt.log 2>&1; then
    tail -n 20 /tmp/ckpt-setup-apt.log >&2
    die "apt-get install failed for: ${missing[*]} (full log: /tmp/ckpt-setup-apt.log)"
  fi
fi

# Prerequisites that do not come from Debian: the CUDA toolkit and NCCL inside it.
[[ -x "$CUDA_HOME/bin/nvcc" ]] || die "CUDA toolkit not found: $CUDA_HOME/bin/nvcc is missing (install CUDA 13 at /usr/local/cuda or set CUDA_HOME)"
[[ -f "$CUDA_HOME/include/cuda_runtime.h" ]] || die "CUDA headers not found under $CUDA_HOME/include"
[[ -f "$CUDA_HOME/include/nccl.h" ]] || die "NCCL header not found: $CUDA_HOME/include/nccl.h is missing"
ls "$CUDA_HOME"/lib/libnccl.so* "$CUDA_HOME"/lib64/libnccl.so* >/dev/null 2>&1 ||
  die "NCCL library not found: no libnccl.so under $CUDA_HOME/lib or $CUDA_HOME/lib64"

echo "setup: ok"
