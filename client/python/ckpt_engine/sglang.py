"""ckpt_engine.sglang: SGLang workers receive checkpoint versions from ckpt-engined.

SGLang calls a custom weight loader in every tensor-parallel worker process (its ModelRunner)
when `update_weights_from_tensor` names it as `load_format`, provided the server was started with
it on its list:

    python -m sglang.launch_server --model-path MODEL \\
        --custom-weight-loader ckpt_engine.sglang.load_weights
    # or: sglang.Engine(model_path=..., custom_weight_loader=["ckpt_engine.sglang.load_weights"])

load_weights(model, named_tensors) attaches the worker to ckpt-engined (once per process, with
the GPU its model lives on and engine "sglang"), receives one version as views into the daemon's
staging slots and feeds them to `model.load_weights` (which fuses q/k/v and gate/up itself). The
tensors SGLang passes are not weights but a small request built by request_tensors(): attach
only, or update (version, force, timeout, socket). update_engine(engine, version) does it all
from the process that owns the sglang.Engine:

    import ckpt_engine.sglang as ces
    ces.update_engine(engine, version=7)     # attach, then `ckptctl update 7` + receive at once

Written against SGLang 0.5.x, using only: `--custom-weight-loader` (ServerArgs
custom_weight_loader), `Engine.update_weights_from_tensor(named_tensors, load_format=None,
flush_cache=True)` (HTTP: POST /update_weights_from_tensor), and ModelRunner calling
`custom_loader(self.model, named_tensors)` with the tensors moved to its device. SGLang runs no
post-load step on this path; set_post_load_hook(fn) adds one (fn(model), e.g. for quantized
models). Tested only against a stand-in engine (tests/python/adapter_test.py): SGLang cannot be
installed where this was written. SGLang is never imported here.
"""

import os
import threading

from . import INVALID_ARGUMENT, UNAVAILABLE, CkptError, _adapter
from .worker import Worker

ENGINE = "sglang"
LOAD_FORMAT = "ckpt_engine.sglang.load_weights"
# Names of the request entries; every name SGLang passes must be one of these.
PREFIX = "ckpt_engine."
ATTACH, SOCKET, VERSION, FORCE, TIMEOUT_MS = (
    PREFIX + "attach", PREFIX + "socket", PREFIX + "version", PREFIX + "force",
    PREFIX + "timeout_ms")

# Raise errors out of load_weights (stops SGLang's scheduler) instead of logging them.
RAISE_ERRORS = False

_lock = threading.Lock()
_worker = None
_post_load = None


def set_post_load_hook(fn):
    """fn(model) runs after each version was loaded, before it is reported loaded; None: none."""
    global _post_load
    _post_load = fn


def worker():
    """This process's Worker, or None before the first attach."""
    return _worker


def attach(socket=None, device=None, tensor_names=None, timeout=30.0):
    """Attaches this process to ckpt-engined (idempotent) and returns its Worker. `device`: the
    model's device (None or a cpu device: host tensors)."""
    global _worker
    with _lock:
        if _worker is None or _worker.closed:
            _worker = Worker(socket=socket or None, device=device, engine=ENGINE,
                             tensor_names=tensor_names, timeout=timeout)
        return _worker


def detach():
    """Detaches this process (the next load_weights attaches again)."""
    global _worker
    with _lock:
        w, _worker = _worker, None
    if w is not None:
        w.close()


def _model_device(model):
    for p in model.parameters():
        return p.device if p.device.type == "cuda" else None
    return None


def _request(named_tensors):
    request = {}
    for name, value in named_tensors:
        if not name.startswith(PREFIX):
            raise CkptError(INVALID_ARGUMENT,
                            f"{LOAD_FORMAT} pulls the weights from ckpt-engined itself: pass only "
                            f"the request from ckpt_engine.sglang.request_tensors(), not {name!r}")
        if name == SOCKET:
            request[name] = os.fsdecode(bytes(value.detach().cpu().reshape(-1).tolist()))
        elif name in (VERSION, FORCE, TIMEOUT_MS):
            request[name] = int(value.reshape(-1)[0].item())
        elif name == ATTACH:
            request[name] = True
        else:
            raise CkptError(INVALID_ARGUMENT, f"unknown request entry {name!r}")
    return request


def load_weights(model, named_tensors):
    """The custom weight loader (`--custom-weight-loader ckpt_engine.sglang.load_weights`).

    `named_tensors`: the request from request_tensors() (SGLang moved it to the device). Attach
    only: attaches this process and returns. Update: receives one version into `model` with
    model.load_weights, runs the post-load hook, reports it loaded.

    Errors are reported to the daemon (its update fails naming this worker: pid, GPU, engine) and
    logged here, but not raised unless RAISE_ERRORS is set: SGLang runs the loader in its
    scheduler's event loop, where an exception stops the server."""
    try:
        request = _request(named_tensors)
        w = attach(socket=request.get(SOCKET), device=_model_device(model))
        if request.get(ATTACH):
            return
        timeout = request.get(TIMEOUT_MS, 600_000) / 1000.0
        hook = _post_load
        try:
            _adapter.load_version(w, model, timeout, (lambda: hook(model)) if hook else None,
                                  version=request.get(VERSION, 0),
                                  force=bool(request.get(FORCE, 0)))
        except CkptError as e:
            if e.code == UNAVAILABLE:  # the daemon ended the stream: attach afresh next time
                detach()
            raise
    except Exception:
        _adapter.log.exception("ckpt-engine: the update of this SGLang worker (pid %d) failed",
                               os.getpid())
        if RAISE_ERRORS:
            raise


def request_tensors(attach_only=False, version=0, force=False, timeout=600.0, socket=None):
    """The named tensors to pass to update_weights_from_tensor with load_format=LOAD_FORMAT:
    small CPU tensors carrying the request (torch needed)."""
    import torch
    out = []
    if socket:
        out.append((SOCKET, torch.tensor(list(os.fsencode(socket)), dtype=torch.uint8)))
    if attach_only:
        out.append((ATTACH, torch.ones(1, dtype=torch.uint8)))
        return out
    out.append((VERSION, torch.tensor([_adapter.as_int(version, "version")], dtype=torch.int64)))
    out.append((FORCE, torch.tensor([1 if force else 0], dtype=torch.int64)))
    out.append((TIMEOUT_MS, torch.tensor([int(_adapter.as_float(timeout, "timeout") * 1000)],
                                         dtype=torch.int64)))
    return out


# ---- the driver's side (the process that owns the sglang.Engine) ----

def attach_engine(engine, socket=None):
    """Attaches every TP worker of `engine` (a sglang.Engine)."""
    return engine.update_weights_from_tensor(request_tensors(attach_only=True, socket=socket),
                                             load_format=LOAD_FORMAT, flush_cache=False)


def update_engine(engine, version=0, force=False, socket=None, timeout=600.0):
    """Updates every TP worker of `engine` (a sglang.Engine) to `version` (0: the newest
    committed one): attaches them, then asks the daemon to send the version while they receive
    it. Returns the daemon's update report (Client.update). Raises the daemon's CkptError or the
    engine's error."""
    client, version = _adapter.resolve_version(socket, version)
    try:
        attach_engine(engine, socket=socket)
        report, engine_result = _adapter.update_alongside(
            client, version, force, timeout,
            lambda: engine.update_weights_from_tensor(
                request_tensors(version=version, force=force, timeout=timeout, socket=socket),
                load_format=LOAD_FORMAT, flush_cache=True))
        report["engine_result"] = engine_result
        return report
    finally:
        client.close()
