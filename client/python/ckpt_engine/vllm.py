"""ckpt_engine.vllm: vLLM workers receive checkpoint versions from ckpt-engined.

CkptEngineWorkerExtension is a worker extension class: vLLM mixes it into each of its GPU workers
(one process per GPU) when started with

    vllm serve MODEL --worker-extension-cls ckpt_engine.vllm.CkptEngineWorkerExtension
    # or: LLM(model=..., worker_extension_cls="ckpt_engine.vllm.CkptEngineWorkerExtension")

and its methods run on every worker through collective_rpc:

    llm.collective_rpc("ckpt_engine_attach")                 # once, before the first update
    # then for each update, concurrently: `ckptctl update 7` (or Client.update) and
    llm.collective_rpc("ckpt_engine_update", kwargs={"version": 7})

update(llm, version) below does both halves from one process. Each worker attaches to the daemon
with its own CUDA device and engine "vllm", receives the version as views into the daemon's
staging slots (CUDA IPC), feeds them to `model.load_weights` (which copies each tensor into its
parameter, fusing q/k/v and gate/up itself), runs vLLM's process_weights_after_loading, and only
then reports the version loaded, so the daemon's update ends when the engine can serve it.

Written against vLLM 0.10 / 0.11 (V1 engine), using only: `worker_extension_cls` (vLLM >= 0.8),
`LLM.collective_rpc(method, timeout=None, args=(), kwargs=None)` and its async twin on AsyncLLM,
the dev-mode HTTP endpoint `POST /collective_rpc` (VLLM_SERVER_DEV_MODE=1; it passes strings,
which every method here accepts), the worker's `model_runner.model`, `device` and `model_config`,
and `vllm.model_executor.model_loader.utils.process_weights_after_loading(model, model_config,
device)`. Tested only against a stand-in engine (tests/python/adapter_test.py): vLLM cannot be
installed where this was written. vLLM is imported lazily: this module imports without it.

vLLM with pluggable weight transfer (2026) has a native path too: ckpt_engine.vllm_transfer, a
weight-transfer backend (`--weight-transfer-config '{"backend": "ckpt_engine"}'`). Use one of the
two in a server: each attaches its workers to the daemon.
"""

import asyncio
import os

from . import UNAVAILABLE, CkptError, _adapter
from .worker import Worker

ENGINE = "vllm"
EXTENSION = "ckpt_engine.vllm.CkptEngineWorkerExtension"


def _vllm_post_load():
    from vllm.model_executor.model_loader.utils import process_weights_after_loading
    return process_weights_after_loading


def _names(value):
    if value is None or value == "":
        return None
    if isinstance(value, str):  # from HTTP: "a,b,c"
        return [n.strip() for n in value.split(",") if n.strip()]
    return list(value)


class CkptEngineWorkerExtension:
    """Mixed into vLLM's GPU worker (`--worker-extension-cls`); call its methods on all workers
    with collective_rpc. Every argument may also be a string (HTTP /collective_rpc).

    `ckpt_engine_post_load`: the post-load hook, a callable (model, model_config, device); None
    (the default) means vLLM's process_weights_after_loading. Tests set it to a stand-in.
    """

    ckpt_engine_post_load = None

    def ckpt_engine_attach(self, socket=None, tensor_names=None, timeout=30.0):
        """Attaches this worker to ckpt-engined (idempotent: a second call keeps the first
        attachment) with its CUDA device and engine "vllm". `socket`: the daemon's Unix socket
        (None: $CKPT_SOCKET, else the default). `tensor_names`: only these (a list or "a,b").
        Returns {"pid", "backend", "gpu_uuid", "slots", "slot_bytes", "version"}."""
        worker = getattr(self, "_ckpt_engine_worker", None)
        if worker is None or worker.closed:
            worker = Worker(socket=socket or None, device=self.device, engine=ENGINE,
                            tensor_names=_names(tensor_names),
                            timeout=_adapter.as_float(timeout, "timeout"))
            self._ckpt_engine_worker = worker
        return self.ckpt_engine_status()

    def ckpt_engine_update(self, version=0, force=False, timeout=600.0):
        """Receives one version into the model and returns it. Blocks until the daemon sends it
        (someone runs `ckptctl update VERSION` or Client.update meanwhile), waiting up to
        `timeout` seconds for each bucket, the first included. `version` (non-zero) and not
        `force`: returns at once when this worker already holds it (the daemon skips it too).
        Attaches first if needed (an update already running does not include this worker). If
        the daemon ended the stream (it restarted, or gave up on this worker after its
        ack_timeout), raises CkptError UNAVAILABLE and attaches afresh on the next call."""
        version = _adapter.as_version(version, "version")
        force = _adapter.as_bool(force, "force")
        timeout = _adapter.as_timeout(timeout, "timeout")
        worker = getattr(self, "_ckpt_engine_worker", None)
        if worker is None or worker.closed:
            self.ckpt_engine_attach()
            worker = self._ckpt_engine_worker
        model = self.model_runner.model
        hook = self.ckpt_engine_post_load or _vllm_post_load()

        def post_load():
            hook(model, self.model_config, self.device)
            if worker.backend == "cuda":
                import torch
                torch.cuda.synchronize(worker.cuda_device)

        try:
            return _adapter.load_version(worker, model, timeout, post_load, version, force)
        except CkptError as e:
            if e.code == UNAVAILABLE:  # the daemon ended the stream: attach afresh next time
                self.ckpt_engine_detach()
            raise

    def ckpt_engine_status(self):
        """{"pid", "backend", "gpu_uuid", "slots", "slot_bytes", "version"}; {"pid", "attached":
        False} when not attached."""
        worker = getattr(self, "_ckpt_engine_worker", None)
        if worker is None or worker.closed:
            return {"pid": os.getpid(), "attached": False}
        return {"pid": os.getpid(), "attached": True, "backend": worker.backend,
                "gpu_uuid": worker.gpu_uuid, "slots": worker.slots,
                "slot_bytes": worker.slot_bytes, "version": worker.version}

    def ckpt_engine_detach(self):
        """Detaches from the daemon (a later update attaches again)."""
        worker = getattr(self, "_ckpt_engine_worker", None)
        self._ckpt_engine_worker = None
        if worker is not None:
            worker.close()


# ---- the driver's side (the process that owns the vllm.LLM or AsyncLLM) ----

def attach(llm, socket=None, timeout=30.0):
    """Attaches every worker of `llm` (a vllm.LLM): a list of ckpt_engine_status dicts."""
    return llm.collective_rpc("ckpt_engine_attach",
                              kwargs={"socket": socket, "timeout": timeout})


def update(llm, version=0, force=False, socket=None, timeout=600.0):
    """Updates every worker of `llm` (a vllm.LLM) to `version` (0: the newest committed one):
    attaches them (if needed), asks the daemon to send the version and has the workers receive
    it, both at once. Returns the daemon's update report (Client.update) with "worker_versions":
    what each worker returned. Raises the daemon's CkptError, or the workers' error."""
    client, version = _adapter.resolve_version(socket, version)
    try:
        attach(llm, socket=socket)
        report, loaded = _adapter.update_alongside(
            client, version, force, timeout,
            lambda: llm.collective_rpc("ckpt_engine_update", timeout=timeout + 30,
                                       kwargs={"version": version, "force": force,
                                               "timeout": timeout}))
        report["worker_versions"] = list(loaded)
        return report
    finally:
        client.close()


async def update_async(engine, version=0, force=False, socket=None, timeout=600.0):
    """update() for an AsyncLLM (whose collective_rpc is a coroutine)."""
    client, version = _adapter.resolve_version(socket, version)
    try:
        await engine.collective_rpc("ckpt_engine_attach",
                                    kwargs={"socket": socket, "timeout": 30.0})
        daemon = asyncio.get_running_loop().run_in_executor(
            None, lambda: client.update(version=version, force=force, timeout=timeout))
        loaded = await engine.collective_rpc(
            "ckpt_engine_update", timeout=timeout + 30,
            kwargs={"version": version, "force": force, "timeout": timeout})
        report = await daemon
        report["worker_versions"] = list(loaded)
        return report
    finally:
        client.close()
