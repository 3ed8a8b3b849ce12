# GPU machine check (Python 3.12, torch with CUDA): push_state_dict with CUDA tensors (the package
# copies them into pinned host memory in one batch) and the same tensors from the CPU, over both
# transports; every version must carry the CPU tensors' checksums.
# Run through the GPU bundle: see docs/gpu.md ("Python client on the GPU machine").
#
#   python3 cuda_push_check.py SOCKET CKPTCTL
import json, subprocess, sys
import torch
import ckpt_engine as ce

sock, ctl = sys.argv[1], sys.argv[2]
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())
g = torch.Generator().manual_seed(0)
block = torch.randn(4096, 64, generator=g)  # one caching-allocator block shared by two tensors
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
}
if hasattr(torch, "float8_e4m3fn"):
    cpu["w.f8"] = torch.randn(256, 64, generator=g).to(torch.float8_e4m3fn)
gblock = block.cuda()
gpu = {k: v.cuda() for k, v in cpu.items() if not k.startswith("w.block")}
gpu["w.block.a"] = gblock[:1000]
gpu["w.block.b"] = gblock[1000:3000, 3:40]
gpu = {k: gpu[k] for k in cpu}  # the same order
client = ce.Client(socket=sock)
def show(v):
    out = subprocess.run([ctl, "--socket", sock, "show", str(v), "--json"], check=True,
                         capture_output=True, text=True).stdout
    return {t["name"]: t for t in json.loads(out)["tensors"]}
v_cpu = ce.push_state_dict(client, cpu, label="cpu", transport="grpc")
want = show(v_cpu)
for transport in ("local", "grpc"):
    seen = []
    v = ce.push_state_dict(client, gpu, label="cuda-" + transport, transport=transport,
                           progress=lambda d, t: seen.append((d, t)))
    assert client.last_push["transport"] == transport, client.last_push
    assert seen and seen[-1][0] == seen[-1][1], seen[-3:]
    got = show(v)
    assert got.keys() == want.keys() == cpu.keys(), (got.keys(), cpu.keys())
    for k in cpu:
        assert got[k]["xxh3"] == want[k]["xxh3"], (transport, k)
        assert got[k]["shape"] == list(cpu[k].shape), (k, got[k]["shape"])
    print(f"cuda tensors over {transport}: {len(cpu)} tensors bit-exact (version {v})")
for k in cpu:
    print(f"{k}: {want[k]['dtype']} {want[k]['shape']} xxh3 {want[k]['xxh3']}")
print("PY_CUDA_PUSH_OK versions", v_cpu)
