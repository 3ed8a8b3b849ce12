#!/usr/bin/env python3
"""A worker process for integration tests: attaches to ckpt-engined (host backend) with
ckpt_engine.Worker, receives versions and writes what it received to a file.

    worker_process.py --socket PATH --out FILE [--engine NAME] [--versions N] [--ready FILE]
                      [--tensor NAME ...] [--stall-after-buckets K] [--timeout SECONDS]
                      [--cuda-device N] [--verify-checksums]
                      [--load-fails-at-tensor K --load-fails-in-version N]

--ready FILE is created once attached. After each version FILE is replaced (a temporary file,
then a rename) by JSON {"version": V, "tensors": [{"name", "dtype" (CKPT_DTYPE number), "shape",
"hex" (the bytes, lowercase hex)}, ...]} in the order received. --tensor (repeatable, or several
names after one flag) receives only those tensors. --stall-after-buckets K acks K buckets, then
stops acking and sleeps up to 10 minutes (for ack-timeout tests; kill it when done).
--timeout: seconds to wait for each event (default 120).
--cuda-device N: attach for that CUDA device (the daemon's cuda backend) and receive torch CUDA
views (Worker.receive), copied to the host for the report; needs torch with CUDA.
--verify-checksums: Worker(verify_checksums=True); a mismatch ends the process (exit 1, DATA_LOSS).
--load-fails-at-tensor K --load-fails-in-version N: receive with Worker.load(fn, raw=True), where
fn raises ValueError("injected load failure at tensor K") at the K-th tensor (0-based) of the N-th
version received (1-based), as an engine's load_weights might; the worker then goes on receiving
(the failed version does not count towards --versions and writes no report).

Exit 0 when N versions were received, 1 with a one-line error on stderr otherwise. Needs the
ckpt_engine package on PYTHONPATH and $CKPT_CLIENT_LIB (run_python_test.sh sets both); not torch.
"""

import argparse
import json
import os
import sys
import time

STALL_SECONDS = 600


def write_atomically(path, data):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def touch(path):
    with open(path, "w"):
        pass


def parse_args(argv):
    p = argparse.ArgumentParser(description="ckpt-engine test worker (host backend)")
    p.add_argument("--socket", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--engine", default="python")
    p.add_argument("--versions", type=int, default=1)
    p.add_argument("--ready")
    p.add_argument("--tensor", action="extend", nargs="+", default=[])
    p.add_argument("--stall-after-buckets", type=int, default=None)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--cuda-device", type=int, default=None)
    p.add_argument("--verify-checksums", action="store_true")
    p.add_argument("--load-fails-at-tensor", type=int, default=None)
    p.add_argument("--load-fails-in-version", type=int, default=1)
    args = p.parse_args(argv)
    if args.versions < 1:
        p.error("--versions must be >= 1")
    if args.stall_after_buckets is not None and args.stall_after_buckets < 0:
        p.error("--stall-after-buckets must be >= 0")
    return args


def run_cuda(args):
    import ckpt_engine as ce
    import torch

    with ce.Worker(socket=args.socket, device=args.cuda_device, engine=args.engine,
                   tensor_names=args.tensor or None, verify_checksums=args.verify_checksums) as w:
        if args.ready:
            touch(args.ready)
        for _ in range(args.versions):
            tensors = []
            for name, t in w.receive(timeout=args.timeout):
                assert t.is_cuda, f"{name} is not a CUDA tensor"
                raw = t.reshape(-1).view(torch.uint8).cpu().numpy().tobytes() if t.numel() else b""
                tensors.append({"name": name, "dtype": ce.DTYPES[str(t.dtype).split(".")[-1]],
                                "shape": list(t.shape), "hex": raw.hex()})
            write_atomically(args.out, {"version": w.version, "tensors": tensors})


def run_load(args):
    """Receives through Worker.load, failing one version on purpose (see the module doc)."""
    import ckpt_engine as ce

    with ce.Worker(socket=args.socket, engine=args.engine, tensor_names=args.tensor or None,
                   verify_checksums=args.verify_checksums) as w:
        if args.ready:
            touch(args.ready)
        received, done = 0, 0
        while done < args.versions:
            received += 1
            tensors = []

            def load_fn(pairs):
                for i, (name, t) in enumerate(pairs):
                    if received == args.load_fails_in_version and i == args.load_fails_at_tensor:
                        raise ValueError(f"injected load failure at tensor {i}")
                    tensors.append({"name": name, "dtype": t.dtype, "shape": list(t.shape),
                                    "hex": t.tobytes().hex()})

            try:
                version = w.load(load_fn, timeout=args.timeout, raw=True)
            except ValueError as e:
                print(f"worker_process: version failed as asked: {e}", file=sys.stderr)
                continue
            write_atomically(args.out, {"version": version, "tensors": tensors})
            done += 1


def run(args):
    if args.cuda_device is not None:
        return run_cuda(args)
    if args.load_fails_at_tensor is not None:
        return run_load(args)
    import ckpt_engine as ce

    acked = 0
    with ce.Worker(socket=args.socket, engine=args.engine, tensor_names=args.tensor or None,
                   verify_checksums=args.verify_checksums) as w:
        if args.ready:
            touch(args.ready)
        for _ in range(args.versions):
            tensors = []
            buckets = w.receive_raw(timeout=args.timeout)
            for bucket in buckets:
                if args.stall_after_buckets is not None and acked >= args.stall_after_buckets:
                    # Hold this bucket without acking it; the daemon's ack_timeout fails us.
                    time.sleep(STALL_SECONDS)
                    raise RuntimeError(f"stalled {STALL_SECONDS} s after {acked} buckets and was "
                                       "not killed")
                for t in bucket:
                    tensors.append({"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                                    "hex": t.tobytes().hex()})
                acked += 1  # acked when the loop asks for the next bucket
            write_atomically(args.out, {"version": w.version, "tensors": tensors})


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except KeyboardInterrupt:
        print("worker_process: interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - any failure: one line, exit 1.
        print("worker_process: " + " ".join(f"{type(e).__name__}: {e}".split()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
