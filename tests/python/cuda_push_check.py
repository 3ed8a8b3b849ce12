# GPU machine check (Python 3.12, torch with CUDA): push_state_dict with CUDA tensors (the package
# copies them to host) and the same tensors from the CPU; both versions must carry identical checksums.
# Run through the GPU bundle: see docs/gpu.md ("Python client on the GPU machine").
#
#   python3 cuda_push_check.py SOCKET CKPTCTL
import json, subprocess, sys
import torch
import ckpt_engine as ce

sock, ctl = sys.argv[1], sys.argv[2]
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())
g = torch.Generator().manual_seed(0)
cpu = {
    "w.bf16": torch.randn(1024, 512, generator=g).to(torch.bfloat16),
    "w.f32": torch.randn(333, 7, generator=g),
    "w.f16.noncontig": torch.randn(64, 128, generator=g).half().t(),
    "w.i64": torch.arange(1000, dtype=torch.int64),
}
if hasattr(torch, "float8_e4m3fn"):
    cpu["w.f8"] = torch.randn(256, 64, generator=g).to(torch.float8_e4m3fn)
gpu = {k: v.cuda() for k, v in cpu.items()}
client = ce.Client(socket=sock)
seen = []
v_gpu = ce.push_state_dict(client, gpu, label="cuda", progress=lambda d, t: seen.append((d, t)))
v_cpu = ce.push_state_dict(client, cpu, label="cpu")
assert seen and seen[-1][0] == seen[-1][1], seen[-3:]
def show(v):
    out = subprocess.run([ctl, "--socket", sock, "show", str(v), "--json"], check=True,
                         capture_output=True, text=True).stdout
    return {t["name"]: t for t in json.loads(out)["tensors"]}
a, b = show(v_gpu), show(v_cpu)
assert a.keys() == b.keys() == cpu.keys(), (a.keys(), cpu.keys())
for k in cpu:
    assert a[k]["xxh3"] == b[k]["xxh3"], k
    assert a[k]["shape"] == list(cpu[k].shape), (k, a[k]["shape"])
    print(f"{k}: {a[k]['dtype']} {a[k]['shape']} xxh3 {a[k]['xxh3']} (cuda == cpu)")
print("PY_CUDA_PUSH_OK versions", v_gpu, v_cpu)
