# GPU machine check of the 2026 engine adapters (issue 14) with torch on CUDA and the daemon on the
# cuda backend: the stand-ins' models live on cuda:0, so every bucket reaches them as CUDA IPC views.
#  1. vLLM's pluggable weight transfer (ckpt_engine.vllm_transfer): sync_weights from a trainer
#     module on cuda:0 through the stand-in server's routes loads bit-exact; again after
#     sleep(level=2) (the weights discarded, woken before the update by sync_weights).
#  2. The SGLang plugin (ckpt_engine.sglang_plugin): the AROUND hook on the TP worker's
#     update_weights_from_ipc receives a version into the stand-in's model on cuda:0, bit-exact.
# Not run by Bazel (CI has no GPU): tools/gpu_bundle.sh copies it into the bundle and
# session_check.sh's `adapters` mode runs it against a daemon on the cuda backend:
#
#   python3 tests/python/adapters_gpu_check.py SOCKET
#
# CKPT_CHECK_DEVICE=cpu runs the same steps against a host-backend daemon (a dry run without a GPU).
import os
import sys
import threading
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vllm_standin as vs  # noqa: E402

vs.install()  # before ckpt_engine.vllm_transfer is imported

import sglang_standin as ss  # noqa: E402
import standin_engine as se  # noqa: E402

import ckpt_engine as ce  # noqa: E402
import ckpt_engine.sglang as ces  # noqa: E402
from ckpt_engine import sglang_plugin  # noqa: E402
from ckpt_engine import vllm_transfer as vt  # noqa: E402

sock = sys.argv[1]
TIMEOUT = 120
CUDA = torch.device(os.environ.get("CKPT_CHECK_DEVICE", "cuda:0"))
BACKEND = "cuda" if CUDA.type == "cuda" else "host"
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda",
      torch.cuda.is_available(), flush=True)
assert CUDA.type != "cuda" or torch.cuda.is_available()
client = ce.Client(socket=sock)
failures = []


def check_loaded(what, model, state):
    want = se.expected_parameters(model.config, state)
    params = dict(model.named_parameters())
    assert sorted(params) == sorted(want), (what, sorted(params), sorted(want))
    for name, value in want.items():
        p = params[name]
        assert p.device == CUDA, (what, name, p.device)
        assert p.dtype == value.dtype, (what, name, p.dtype, value.dtype)
        assert torch.equal(p.cpu(), value), (what, name)
    print(f"{what}: {len(want)} parameters on {CUDA} equal the pushed version", flush=True)


def wait_detached():
    import json
    import subprocess
    import time
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = subprocess.run([os.environ["CKPTCTL"], "--socket", sock, "status", "--json"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode == 0 and json.loads(r.stdout)["attached_workers"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("workers still attached after 30 s")


def part(fn):
    try:
        fn()
        print(f"PART_OK {fn.__name__}", flush=True)
    except BaseException as e:  # noqa: B902 - report each part, go on with the next
        import traceback
        traceback.print_exc()
        failures.append(fn.__name__)
        print(f"PART_FAILED {fn.__name__}: {type(e).__name__}: {e}", flush=True)


def vllm_weight_transfer():
    vt.register()
    vllm = vs.StandinVllm(weight_transfer_config=vs.WeightTransferConfig(backend="ckpt_engine"),
                          model_factory=lambda: se.StandinLlama().to(CUDA), device=CUDA)
    server = vs.StandinServer(vllm)
    try:
        http = vt.HttpWeightSyncClient(server.url, timeout=TIMEOUT + 30)
        kwargs = dict(socket=sock, engine_socket=sock, receive_timeout=TIMEOUT, timeout=TIMEOUT)
        state = se.hf_state_dict(seed=41)
        report = vt.sync_weights(server.url, se.hf_module(state, CUDA), pause="wait",
                                 weight_version="gpu-step-1", **kwargs)
        assert report["update"]["workers"][0]["ok"], report
        assert http.weight_info() == "gpu-step-1", http.weight_info()
        engine = vllm.workers[0].weight_transfer_engine
        print("vllm: worker", engine.worker, "backend", engine.worker.backend, flush=True)
        assert engine.worker.backend == BACKEND, engine.worker.backend
        check_loaded("vllm sync_weights", vllm.models[0], state)
        print("vllm: push %.3f s, update %.3f s" % (report["push_seconds"],
                                                     report["update_seconds"]), flush=True)

        http.sleep(level=2)
        assert http.is_sleeping()
        state = se.hf_state_dict(seed=42)
        report = vt.sync_weights(server.url, state, **kwargs)
        assert report["update"]["workers"][0]["ok"], report
        assert not http.is_sleeping()
        check_loaded("vllm after sleep(level=2)", vllm.models[0], state)
    finally:
        server.close()
        vllm.shutdown()
        wait_detached()


def sglang_plugin_hook():
    ss.install_sglang_modules()
    build = ss.build_model
    ss.build_model = lambda load_format: build(load_format).to(CUDA)
    os.environ["CKPT_SOCKET"] = sock
    try:
        sglang_plugin.install()
        worker = ss.TpModelWorker(types.SimpleNamespace(load_format="dummy",
                                                        weight_cache_mode=None), 0)
        state = se.hf_state_dict(seed=43)
        version = client.push_state_dict(state, label="sglang-gpu")
        out = {}

        def update():
            try:
                out["report"] = client.update(version, timeout=TIMEOUT)
            except ce.CkptError as e:
                out["error"] = e
        t = threading.Thread(target=update, daemon=True)
        t.start()
        handles = ces.ipc_request(version, socket=sock, timeout=TIMEOUT)["zmq_handles"]
        ok, message = worker.update_weights_from_ipc(
            ss.UpdateWeightsFromIPCReqInput(zmq_handles=handles))
        t.join(TIMEOUT + 10)
        print("sglang:", ok, message, flush=True)
        assert ok, message
        assert "report" in out and out["report"]["workers"][0]["ok"], out
        check_loaded("sglang update_weights_from_ipc", worker.model_runner.model, state)
    finally:
        ss.build_model = build
        ces.detach()
        wait_detached()


part(vllm_weight_transfer)
part(sglang_plugin_hook)
client.close()
if failures:
    print("PY_ADAPTERS_GPU_FAILED", failures)
    sys.exit(1)
print("PY_ADAPTERS_GPU_OK")
