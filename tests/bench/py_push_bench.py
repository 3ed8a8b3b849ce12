# Python push benchmark (GPU machine, Python 3.12 with torch+CUDA): push_state_dict of the same
# tensor list (bf16 layers of a dense 32B-class model, --gib GiB) as CUDA tensors and as CPU
# tensors, over the local path and over gRPC, beside the floors measured in the same run: a
# device-to-host copy into pinned memory (CUDA tensors) and torch's multi-threaded CPU copy (CPU
# tensors). Locally, CUDA tensors are copied by the daemon from GPU memory (CUDA IPC; the line
# says how many bytes); over gRPC the client stages them in pinned memory (the first such push
# also pins it). Each push is run --repeat times.
#
#   python3 py_push_bench.py SOCKET [--gib 4] [--repeat 2]
import argparse, time
import torch
import ckpt_engine as ce

ap = argparse.ArgumentParser()
ap.add_argument("socket")
ap.add_argument("--gib", type=float, default=4)
ap.add_argument("--repeat", type=int, default=2)
a = ap.parse_args()
h, mlp, kv = 5120, 27648, 1024
shapes = [(h, h), (kv, h), (kv, h), (h, h), (mlp, h), (mlp, h), (h, mlp), (h,), (h,)]
gpu, total, layer = {}, 0, 0
while total < a.gib * (1 << 30):
    for i, s in enumerate(shapes):
        t = torch.randn(*s, device="cuda", dtype=torch.float32).to(torch.bfloat16)
        gpu[f"model.layers.{layer}.{i}"] = t
        total += t.numel() * 2
    layer += 1
cpu = {k: v.cpu() for k, v in gpu.items()}
print(f"== {len(gpu)} tensors, {total / 1e9:.3f} GB, torch {torch.__version__}, "
      f"{torch.get_num_threads()} torch threads")
pinned = torch.empty(total, dtype=torch.uint8, pin_memory=True)
def d2h():
    off = 0
    for t in gpu.values():
        n = t.numel() * 2
        pinned[off:off + n].copy_(t.reshape(-1).view(torch.uint8), non_blocking=True)
        off += n
    torch.cuda.synchronize()
def memcpy():
    off = 0
    for t in cpu.values():
        n = t.numel() * 2
        pinned[off:off + n].copy_(t.reshape(-1).view(torch.uint8))
        off += n
def rate(f):
    best = 0
    for _ in range(2):
        t0 = time.perf_counter(); f(); best = max(best, total / 1e9 / (time.perf_counter() - t0))
    return best
floor_d2h, floor_cpu = rate(d2h), rate(memcpy)
del pinned
print(f"floor d2h-pinned {floor_d2h:.2f} GB/s; floor cpu copy (torch) {floor_cpu:.2f} GB/s")
client = ce.Client(socket=a.socket, timeout=600)
for what, tensors, floor in (("cuda", gpu, floor_d2h), ("cpu", cpu, floor_cpu)):
    for transport in ("local", "grpc"):
        for r in range(a.repeat):
            t0 = time.perf_counter()
            v = client.push_state_dict(tensors, transport=transport, streams=8, timeout=600)
            s = time.perf_counter() - t0
            took = client.last_push["transport"]
            ipc = client.last_push.get("ipc_bytes", 0)
            ce.drop_version(client, v)
            print(f"py push {what:4s} {transport:5s} run {r}: {total / 1e9:.3f} GB in {s:.3f} s = "
                  f"{total / 1e9 / s:6.2f} GB/s = {total / 1e9 / s / floor:.2f} of the floor "
                  f"(transport {took}, {ipc / 1e9:.3f} GB from GPU memory by the daemon)")
client.close()
