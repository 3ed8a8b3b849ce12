# GPU machine check (torch with CUDA, the daemon on the cuda backend): a ckpt_engine.Worker on
# device 0 receives a version as CUDA views (CUDA IPC slots wrapped with __cuda_array_interface__)
# that must equal the pushed CPU tensors bit for bit, again with verify_checksums (each tensor's
# XXH3-64 checked after a device-to-host copy); then the vLLM adapter loads the stand-in engine (on
# the GPU) through the same path. Not run by Bazel (CI has no GPU): run it with the GPU
# bundle's daemon, library and package (docs/gpu.md, "Python client on the GPU machine"):
#
#   python3 tests/python/cuda_worker_check.py SOCKET
import os
import sys
import threading
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_engine as ce  # noqa: E402
import ckpt_engine.vllm as ce_vllm  # noqa: E402
import standin_engine as se  # noqa: E402

sock = sys.argv[1]
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda",
      torch.cuda.is_available(), flush=True)
g = torch.Generator().manual_seed(0)
cpu = {
    "w.bf16": torch.randn(1024, 512, generator=g).to(torch.bfloat16),
    "w.f32": torch.randn(333, 7, generator=g),
    "w.f16": torch.randn(64, 128, generator=g).half(),
    "w.i64": torch.arange(1000, dtype=torch.int64),
    "w.bool": torch.rand(17, generator=g) > 0.5,
    "w.scalar": torch.tensor(2.5, dtype=torch.float64),
    "w.empty": torch.zeros(0, 8),
}
if hasattr(torch, "float8_e4m3fn"):
    cpu["w.f8"] = torch.randn(256, 64, generator=g).to(torch.float8_e4m3fn)
client = ce.Client(socket=sock)
version = client.push_state_dict(cpu, label="cuda-worker")


def raw(t):
    t = t.detach().cpu().contiguous()
    return bytes(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b""


def update_in_thread(v, force=False):
    out = {}

    def run():
        try:
            out["report"] = client.update(v, force=force, timeout=120)
        except ce.CkptError as e:
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


with ce.Worker(socket=sock, device=0, engine="cuda-check") as w:
    print("worker", w, w.gpu_uuid, w.slots, w.slot_bytes, flush=True)
    assert w.backend == "cuda", w.backend
    t, out = update_in_thread(version)
    got = {}
    for name, x in w.receive(timeout=120):
        assert x.device == torch.device("cuda", 0), (name, x.device)
        got[name] = x.clone()
    t.join(130)
    assert "report" in out, out
    print("update", {k: out["report"][k] for k in ("seconds", "bytes", "buckets", "gb_per_s")})
    assert list(got) == list(cpu), (list(got), list(cpu))
    for k, v in cpu.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, (k, got[k].dtype, got[k].shape)
        assert raw(got[k]) == raw(v), k
        print(f"{k}: {v.dtype} {tuple(v.shape)} (cuda view == pushed)", flush=True)

    # The same version again, each bucket verified against the version's checksums first.
    w.verify_checksums = True
    t, out = update_in_thread(version, force=True)
    got = {name: x.clone() for name, x in w.receive(timeout=120)}
    t.join(130)
    assert "report" in out, out
    assert out["report"]["workers"][0]["ok"], out["report"]
    assert list(got) == list(cpu), (list(got), list(cpu))
    for k, v in cpu.items():
        assert raw(got[k]) == raw(v), k
    print("verify_checksums: every tensor matched", flush=True)

# The vLLM adapter with the stand-in engine on the GPU.
state = se.hf_state_dict(seed=1)
v2 = client.push_state_dict(state, label="standin")
model = se.StandinLlama().cuda()
ext = ce_vllm.CkptEngineWorkerExtension()
ext.model_runner = types.SimpleNamespace(model=model)
ext.device = torch.device("cuda", 0)
ext.model_config = "cfg"
ext.ckpt_engine_post_load = se.process_weights_after_loading
llm = types.SimpleNamespace(
    collective_rpc=lambda method, timeout=None, args=(), kwargs=None:
    [getattr(ext, method)(*args, **(kwargs or {}))])
report = ce_vllm.update(llm, version=v2, socket=sock, timeout=120)
assert report["workers"][0]["ok"], report
want = se.expected_parameters(model.config, state)
params = dict(model.named_parameters())
for name, value in want.items():
    assert torch.equal(params[name].cpu(), value), name
assert model.post_load_calls == [("cfg", torch.device("cuda", 0))], model.post_load_calls
ext.ckpt_engine_detach()
print("PY_CUDA_WORKER_OK versions", version, v2)
