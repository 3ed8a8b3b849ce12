# GPU machine check (Python 3.12, torch with CUDA): push_state_dict with CUDA tensors over every
# transport, checked against the same tensors pushed from the CPU (every version must carry the CPU
# tensors' checksums):
# - local: the daemon copies them from GPU memory itself (CUDA IPC): last_push["ipc_bytes"] counts
#   every byte of them (bf16, f32, a transposed f16 made contiguous, int64, bool, 0-d, fp8, and
#   tensors that share one caching-allocator block);
# - auto: the same, chosen without being told; with CPU tensors mixed in;
# - grpc: the client copies them into pinned host memory first;
# - with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (memory that refuses IPC handles), run in
#   a child process: local still works, the client copying them into its windows (ipc_bytes 0).
# Run through the GPU bundle: see docs/gpu.md ("Python client on the GPU machine").
#
#   python3 cuda_push_check.py SOCKET CKPTCTL [--child]
import json, os, subprocess, sys
import torch
import ckpt_engine as ce

sock, ctl = sys.argv[1], sys.argv[2]
child = "--child" in sys.argv
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      "alloc conf", os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""))
g = torch.Generator().manual_seed(0)
block = torch.randn(4096, 64, generator=g)  # one caching-allocator block shared by three tensors
cpu = {
    "w.bf16": torch.randn(1024, 512, generator=g).to(torch.bfloat16),
    "w.f32": torch.randn(333, 7, generator=g),
    "w.f16.noncontig": torch.randn(64, 128, generator=g).half().t(),
    "w.i64": torch.arange(1000, dtype=torch.int64),
    "w.bool": torch.rand(17, 3, generator=g) > 0.5,
    "w.scalar": torch.tensor(2.5, dtype=torch.float64),
    "w.empty": torch.zeros(0, 8),
    "w.block.a": block[:1000],
    "w.block.b": block[1000:3000, 3:40],
    "w.block.c": block[3000:4000],
    "w.big": torch.randn(8192, 4096, generator=g),  # 128 MiB: many pieces, several windows
}
if hasattr(torch, "float8_e4m3fn"):
    cpu["w.f8"] = torch.randn(256, 64, generator=g).to(torch.float8_e4m3fn)
gblock = block.cuda()
gpu = {k: v.cuda() for k, v in cpu.items() if not k.startswith("w.block")}
gpu["w.block.a"] = gblock[:1000]
gpu["w.block.b"] = gblock[1000:3000, 3:40]
gpu["w.block.c"] = gblock[3000:4000]
gpu = {k: gpu[k] for k in cpu}  # the same order
client = ce.Client(socket=sock)


def show(v):
    out = subprocess.run([ctl, "--socket", sock, "show", str(v), "--json"], check=True,
                         capture_output=True, text=True).stdout
    return {t["name"]: t for t in json.loads(out)["tensors"]}


def check(v, want, keys, what):
    got = show(v)
    assert list(got.keys()) == list(keys), (what, got.keys(), keys)
    for k in keys:
        assert got[k]["xxh3"] == want[k]["xxh3"], (what, k)
        assert got[k]["shape"] == list(cpu[k].shape), (what, k, got[k]["shape"])


v_cpu = ce.push_state_dict(client, cpu, label="cpu", transport="grpc")
want = show(v_cpu)
cases = [("local", gpu), ("auto", gpu), ("grpc", gpu)]
if not child:
    mixed = dict(gpu)
    mixed["w.i64"] = cpu["w.i64"]  # a CPU tensor among CUDA ones
    cases.append(("auto", mixed))
for transport, tensors in cases:
    seen = []
    v = ce.push_state_dict(client, tensors, label="cuda-" + transport, transport=transport,
                           progress=lambda d, t: seen.append((d, t)))
    info = client.last_push
    expect = "grpc" if transport == "grpc" else "local"
    assert info["transport"] == expect, info
    assert seen and seen[-1][0] == seen[-1][1], seen[-3:]
    on_gpu = sum(t.numel() * t.element_size() for t in tensors.values() if t.is_cuda)
    if expect == "grpc" or child:
        assert info["ipc_bytes"] == 0, info  # staged by the client / no IPC handle to be had
    else:
        assert info["ipc_bytes"] == on_gpu, (info, on_gpu)
    check(v, want, cpu.keys(), transport)
    print(f"cuda tensors over {transport}: {len(tensors)} tensors bit-exact (version {v}, "
          f"{info['ipc_bytes']} of {on_gpu} bytes copied by the daemon from GPU memory)")
    client.drop_version(v)
client.release_staging()
client.drop_version(v_cpu)
if child:
    print("PY_CUDA_PUSH_CHILD_OK")
    sys.exit(0)
for k in cpu:
    print(f"{k}: {want[k]['dtype']} {want[k]['shape']} xxh3 {want[k]['xxh3']}")
# Memory that refuses CUDA IPC handles: PyTorch's expandable segments (cuMemCreate).
env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
r = subprocess.run([sys.executable, __file__, sock, ctl, "--child"], env=env, capture_output=True,
                   text=True, timeout=120)
print(r.stdout.strip())
assert r.returncode == 0 and "PY_CUDA_PUSH_CHILD_OK" in r.stdout, r.stderr[-3000:]
print("PY_CUDA_PUSH_OK")
