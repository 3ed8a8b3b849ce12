#!/usr/bin/env python3
"""Per-tensor cost benchmark (issue 10 point 11): a checkpoint of many small tensors (Kimi-K2 has
139,583) pushed from Python and updated into one Python worker, in microseconds per tensor.

Starts the real ckpt-engined (host or cuda backend), then
  1. push: Client.push_state_dict of --tensors bf16 tensors of --tensor-kib KiB each (CPU tensors,
     views of one random buffer), --repeat times; prints us/tensor and the part spent describing
     the tensors in Python (ckpt_engine._tensors.describe);
  2. update: a worker process (this file, --worker) holds one parameter per tensor on its device
     and receives each update with Worker.load(fn), fn copying every tensor into its parameter
     (what an engine's load_weights does); Client.update is timed from the call to the last
     VersionLoaded, --repeat times (force: the same version again); then --repeat times with
     Worker.load_into(params) (the library copies each bucket with torch._foreach_copy_); and the
     floor: the same fn over views built beforehand, without the daemon;
  3. peer: the same worker runs checkpoint-engine's worker algorithm on the same tensors: the
     checkpoint in pinned host memory cut into buckets of the daemon's slot size, each bucket
     copied into one of two device buffers, then per tensor `buffer[offset:offset + size]
     .view(dtype).view(shape)` handed to the same fn. Emulated in-process: it has none of
     checkpoint-engine's ZMQ messages, metadata pickles or broadcast, so it is a lower bound of
     that algorithm's time.
Ends with a summary table (seconds and us/tensor, best of the runs).

    per_tensor_bench.py --daemon PATH [--ckptctl PATH] [--backend host|cuda] [--tensors 140000]
                        [--tensor-kib 48] [--repeat 3] [--streams 8]

--ckptctl: wait until the daemon's store is ready (populated and pinned) before timing, as the C++
benchmarks do; without it the first push may run while the store warms up.

Needs the ckpt_engine package on PYTHONPATH, $CKPT_CLIENT_LIB, torch (with CUDA for --backend
cuda). The GPU bundle carries it (bench/per_tensor_bench.py); docs/benchmarks.md has its figures.
"""

import argparse
import json
import os
import shutil
import socket as socketlib
import subprocess
import sys
import tempfile
import time

BF16_BYTES = 2


def log(*args):
    print(*args, flush=True)


def make_state_dict(torch, count, elems):
    """`count` bf16 CPU tensors of `elems` elements: contiguous views of one random buffer."""
    g = torch.Generator().manual_seed(1)
    flat = torch.randint(-32768, 32767, (count * elems,), dtype=torch.int16, generator=g)
    flat = flat.view(torch.bfloat16)
    return {f"model.layers.{i // 512}.experts.{i % 512}.w": t
            for i, t in enumerate(flat.split(elems))}


# ---- the worker process ----------------------------------------------------------------------


def worker_main(args):
    import torch

    import ckpt_engine as ce

    cuda = args.backend == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    names = [f"model.layers.{i // 512}.experts.{i % 512}.w" for i in range(args.tensors)]
    # Zeroed (touched) like an engine's initialized parameters: the first update pays no page faults.
    params = {n: torch.zeros(args.elems, dtype=torch.bfloat16, device=device) for n in names}

    def load_weights(pairs):
        for name, tensor in pairs:
            params[name].copy_(tensor)

    with ce.Worker(socket=args.worker, device=0 if cuda else None, engine="bench") as w:
        print(json.dumps({"attached": True, "slot_bytes": w.slot_bytes}), flush=True)
        for i in range(2 * args.versions):
            # First --versions updates through load(fn), then as many through load_into(params).
            start = time.perf_counter()
            if i < args.versions:
                version = w.load(load_weights, timeout=600)
            else:
                version = w.load_into(params, timeout=600)
            if cuda:
                torch.cuda.synchronize()
            print(json.dumps({"loaded": version, "seconds": time.perf_counter() - start}),
                  flush=True)
        slot_bytes = w.slot_bytes
    # The floor of load_weights itself: its copies from views built beforehand (no daemon).
    views = list(peer_views(torch, params, cuda, args.elems))
    for r in range(args.repeat):
        start = time.perf_counter()
        load_weights(views)
        if cuda:
            torch.cuda.synchronize()
        print(json.dumps({"floor": time.perf_counter() - start}), flush=True)
    # checkpoint-engine's algorithm on the same tensors (see the file's header).
    for r in range(args.repeat):
        print(json.dumps({"peer": peer_update(torch, params, load_weights, slot_bytes, cuda,
                                              args.elems)}), flush=True)


def peer_views(torch, params, cuda, elems):
    """(name, view) of every parameter's bytes in one device buffer, built once."""
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    buf = torch.empty(len(params) * elems, dtype=torch.bfloat16, device=device)
    for k, name in enumerate(params):
        yield name, buf[k * elems:(k + 1) * elems]


def peer_update(torch, params, load_weights, slot_bytes, cuda, elems):
    """Seconds of one update by checkpoint-engine's worker algorithm (in-process emulation)."""
    size = elems * BF16_BYTES
    aligned = (size + 255) // 256 * 256
    per_bucket = max(1, slot_bytes // aligned)
    names = list(params)
    buckets = []  # [(host offset, bytes, [(name, offset in bucket, bytes)])]
    host_offset = 0
    for first in range(0, len(names), per_bucket):
        metas = [(n, k * aligned, size) for k, n in enumerate(names[first:first + per_bucket])]
        buckets.append((host_offset, len(metas) * aligned, metas))
        host_offset += len(metas) * aligned
    host = torch.empty(host_offset, dtype=torch.uint8, pin_memory=cuda)
    for (offset, _, metas) in buckets:
        for (name, o, n) in metas:
            host[offset + o:offset + o + n].copy_(params[name].view(torch.uint8).cpu())
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    buffers = [torch.empty(per_bucket * aligned, dtype=torch.uint8, device=device)
               for _ in range(2)]
    dtype, shape = torch.bfloat16, (elems,)

    def tensors():
        for i, (offset, nbytes, metas) in enumerate(buckets):
            buf = buffers[i % 2]
            buf[:nbytes].copy_(host[offset:offset + nbytes], non_blocking=True)
            if cuda:
                torch.cuda.synchronize()
            for (name, o, n) in metas:
                yield name, buf[o:o + n].view(dtype).view(shape)
            if cuda:
                torch.cuda.synchronize()  # before the buffer is reused

    start = time.perf_counter()
    load_weights(tensors())
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


# ---- the benchmark ---------------------------------------------------------------------------


class Daemon:
    def __init__(self, path, backend, budget_bytes):
        self.dir = tempfile.mkdtemp(prefix="ptb-", dir="/tmp")
        self.socket = os.path.join(self.dir, "d.sock")
        notify_path = os.path.join(self.dir, "notify")
        notify = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
        notify.bind(notify_path)
        self.log = open(os.path.join(self.dir, "daemon.log"), "wb")
        self.proc = subprocess.Popen(
            [path, "--backend", backend, "--listen-unix", self.socket, "--host-memory-budget",
             str(budget_bytes), "--max-versions", "2", "--ack-timeout", "300s", "--log-level",
             "warn"], env=dict(os.environ, NOTIFY_SOCKET=notify_path), stdout=self.log,
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        try:
            while True:
                notify.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    if b"READY=1" in notify.recv(4096):
                        break
                except socketlib.timeout:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("daemon did not become ready: " + self.output())
        finally:
            notify.close()

    def output(self):
        self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def read_json_line(proc, key, deadline):
    """The next JSON line of `proc`'s stdout that has `key` (lines without it are skipped)."""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker exited (code {proc.wait()}) before printing {key}")
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if key in msg:
            return msg
    raise RuntimeError(f"no {key} from the worker in time")


def bench_main(args):
    import torch

    import ckpt_engine as ce
    from ckpt_engine import _tensors

    elems = args.tensor_kib * 1024 // BF16_BYTES
    total = args.tensors * elems * BF16_BYTES
    log(f"== per_tensor_bench: {args.tensors} bf16 tensors of {args.tensor_kib} KiB = "
        f"{total / 1e9:.3f} GB, backend {args.backend}, {os.cpu_count()} host threads, "
        f"python {sys.version.split()[0]}, torch {torch.__version__}")
    state = make_state_dict(torch, args.tensors, elems)
    daemon = Daemon(args.daemon, args.backend, 3 * total + (256 << 20))
    worker = None
    results = {}
    try:
        client = ce.Client(socket=daemon.socket, timeout=60)
        if args.ckptctl:
            start = time.monotonic()
            while True:
                r = subprocess.run([args.ckptctl, "--socket", daemon.socket, "status", "--json"],
                                   capture_output=True, text=True, timeout=60)
                if r.returncode == 0 and json.loads(r.stdout).get("store_ready"):
                    break
                if time.monotonic() - start > 600:
                    raise RuntimeError("the daemon's store did not get ready in 600 s")
                time.sleep(0.1)
            log(f"store ready after {time.monotonic() - start:.1f} s")
        # Describing alone (what push_state_dict does first).
        best = None
        for _ in range(args.repeat):
            start = time.perf_counter()
            _tensors.describe(state)
            best = min(best or 1e9, time.perf_counter() - start)
        results["push: describe (Python)"] = best
        log(f"describe: {best:.3f} s = {best / args.tensors * 1e6:.2f} us/tensor")
        best, version = None, 0
        for r in range(args.repeat):
            start = time.perf_counter()
            version = client.push_state_dict(state, streams=args.streams, label=f"bench-{r}",
                                              timeout=600)
            secs = time.perf_counter() - start
            best = min(best or 1e9, secs)
            log(f"push run {r + 1}: version {version}, {secs:.3f} s = "
                f"{secs / args.tensors * 1e6:.2f} us/tensor ({total / 1e9 / secs:.2f} GB/s)")
        results["push (Python push_state_dict)"] = best

        env = dict(os.environ, PYTHONUNBUFFERED="1")
        worker = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", daemon.socket, "--backend",
             args.backend, "--tensors", str(args.tensors), "--elems", str(elems), "--versions",
             str(args.repeat), "--repeat", str(args.repeat)],
            env=env, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        read_json_line(worker, "attached", deadline)
        best = worker_best = None
        for r in range(args.repeat):
            start = time.perf_counter()
            report = client.update(version, force=True, timeout=600)
            secs = time.perf_counter() - start
            loaded = read_json_line(worker, "loaded", deadline)
            best = min(best or 1e9, secs)
            worker_best = min(worker_best or 1e9, loaded["seconds"])
            log(f"update run {r + 1}: {secs:.3f} s = {secs / args.tensors * 1e6:.2f} us/tensor "
                f"({report['buckets']} buckets; worker's load {loaded['seconds']:.3f} s; daemon: "
                f"fill {report['fill_seconds']:.3f} s, worker-load {report['load_seconds']:.3f} s)")
        results["update (Python Worker.load, copy per tensor)"] = best
        best = None
        for r in range(args.repeat):
            start = time.perf_counter()
            report = client.update(version, force=True, timeout=600)
            secs = time.perf_counter() - start
            loaded = read_json_line(worker, "loaded", deadline)
            best = min(best or 1e9, secs)
            log(f"update (load_into) run {r + 1}: {secs:.3f} s = "
                f"{secs / args.tensors * 1e6:.2f} us/tensor (worker's load "
                f"{loaded['seconds']:.3f} s)")
        results["update (Python Worker.load_into, batched copies)"] = best
        floor = None
        for r in range(args.repeat):
            floor = min(floor or 1e9, read_json_line(worker, "floor", deadline)["floor"])
        results["floor: load_weights' own copies from prebuilt views"] = floor
        peer_best = None
        for r in range(args.repeat):
            peer = read_json_line(worker, "peer", deadline)["peer"]
            peer_best = min(peer_best or 1e9, peer)
            log(f"peer algorithm run {r + 1}: {peer:.3f} s = "
                f"{peer / args.tensors * 1e6:.2f} us/tensor")
        results["peer: checkpoint-engine's worker algorithm (in-process)"] = peer_best
        if worker.wait(timeout=120) != 0:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        worker = None
    except BaseException:
        log("daemon log (tail):\n" + daemon.output())
        raise
    finally:
        if worker is not None:
            worker.kill()
            worker.wait()
        daemon.stop()
    log(f"== summary ({args.tensors} tensors, {total / 1e9:.3f} GB, best of {args.repeat}):")
    for name, secs in results.items():
        log(f"{name:<58} {secs:8.3f} s {secs / args.tensors * 1e6:8.2f} us/tensor")
    log(f"update / peer: {results['update (Python Worker.load, copy per tensor)'] / peer_best:.2f}; "
        f"load_into / peer: "
        f"{results['update (Python Worker.load_into, batched copies)'] / peer_best:.2f}")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--daemon", help="path of ckpt-engined")
    p.add_argument("--ckptctl", help="path of ckptctl (to wait for the store to be ready)")
    p.add_argument("--backend", choices=("host", "cuda"), default="host")
    p.add_argument("--tensors", type=int, default=140000)
    p.add_argument("--tensor-kib", type=int, default=48)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--streams", type=int, default=8)
    # The worker process (internal).
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--elems", type=int, help=argparse.SUPPRESS)
    p.add_argument("--versions", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    if not args.daemon:
        p.error("--daemon is required")
    if args.tensors < 1 or args.tensor_kib < 1 or args.repeat < 1:
        p.error("--tensors, --tensor-kib and --repeat must be >= 1")
    bench_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
