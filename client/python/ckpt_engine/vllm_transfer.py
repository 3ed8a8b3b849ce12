"""ckpt_engine.vllm_transfer: a "ckpt_engine" backend for vLLM's pluggable weight transfer.

vLLM (2026) moves new weights into a running server through a weight-transfer engine that it builds
in each GPU worker process from `--weight-transfer-config '{"backend": NAME}'`, and drives through
HTTP routes (with VLLM_SERVER_DEV_MODE=1) or the offline LLM's methods:

    POST /init_weight_transfer_engine {"init_info": {...}}    once
    POST /start_weight_update                                 per update
    POST /update_weights {"update_info": {...}}               one or more
    POST /finish_weight_update {"weight_version": "..."}      publishes it (GET /weight_info)

This module is both sides of a backend named "ckpt_engine":

- Inference side: CkptEngineWeightTransferEngine. init_transfer_engine attaches the worker process
  to its node's ckpt-engined (a ckpt_engine.Worker with the worker's GPU, engine "vllm");
  receive_weights receives one version from the daemon (as views into its staging slots) and feeds
  it to model.load_weights; finish_weight_update runs vLLM's post-load step (layerwise reload
  finalization, or process_weights_after_loading) and only then reports the version loaded to the
  daemon. Registered by register(), the function of a `vllm.general_plugins` entry point.
- Trainer side: CkptEngineTrainerInitInfo and CkptEngineTrainerWeightTransferEngine, vLLM's
  TrainerWeightTransferEngine API: send_weights() pushes the weight source to the daemon
  (Client.push_state_dict: shared memory, or CUDA IPC out of the trainer's GPU memory, when the
  daemon is on this node) and has the daemon send it while the server receives it. It drives the
  server through any VLLMWeightSyncClient (vLLM's own HTTP or Ray clients work);
  HttpWeightSyncClient here is one with urllib only, which also pauses, resumes, sleeps and wakes
  the server. sync_weights(url, model, ...) does one whole update the way an RL loop wants it.

Written against vLLM's main of about late September 2026 (v0.29+ design; docs/engines.md says
exactly what was read). vLLM is imported only when this module is: the classes derive from vLLM's
bases when vLLM is importable, else from local ones with the same signatures, so the trainer side
works without vLLM. Tested only against a stand-in (tests/python/vllm_standin.py).
"""

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Dict, List, Optional

from . import NOT_FOUND, UNAVAILABLE, CkptError, Client, _adapter
from .worker import Worker

BACKEND = "ckpt_engine"
ENGINE = "vllm"
MODULE = __name__
ENGINE_CLASS = "CkptEngineWeightTransferEngine"
TRAINER_CLASS = "CkptEngineTrainerWeightTransferEngine"

log = logging.getLogger("ckpt_engine")

_END = object()

# cuda.h's CUpointer_attribute values: MEMORY_TYPE (CU_MEMORYTYPE_HOST is 1) and MAPPED ("1 if this
# pointer is in a valid address range that is mapped to a backing allocation, 0 otherwise").
_CU_POINTER_ATTRIBUTE_MEMORY_TYPE = 2
_CU_MEMORYTYPE_HOST = 1
_CU_POINTER_ATTRIBUTE_MAPPED = 13


def _vllm(module, name):
    """vLLM's `module`.`name`, or None when vLLM (or that name) is not there."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


_BASE = "vllm.distributed.weight_transfer.base"
_FACTORY = "vllm.distributed.weight_transfer.factory"
_RELOAD = "vllm.model_executor.model_loader.reload"


# ---- local bases: the shapes of vLLM's, used when vLLM is not importable ----

@dataclasses.dataclass
class _LocalInitInfo(ABC):
    """vLLM's WeightTransferInitInfo: an empty dataclass each backend extends."""


@dataclasses.dataclass
class _LocalUpdateInfo(ABC):
    """vLLM's WeightTransferUpdateInfo: an empty dataclass each backend extends."""


class _LocalWeightTransferEngine(ABC):
    """vLLM's WeightTransferEngine as this module uses it (its constructor, target methods, parsing
    and update_weights); the real one is used when vLLM is importable."""

    init_info_cls = None
    update_info_cls = None
    supports_draft_weight_update = True
    defers_processing = False

    def __init__(self, config, vllm_config, device, model):
        self.config = config
        self.vllm_config = vllm_config
        self.parallel_config = getattr(vllm_config, "parallel_config", None)
        self.model_config = getattr(vllm_config, "model_config", None)
        self.device = device
        self.model = model
        self._main_target = (model, self.model_config)

    def set_weight_update_target(self, model, model_config):
        self.model, self.model_config = model, model_config

    def reset_weight_update_target(self):
        self.model, self.model_config = self._main_target

    def _parse(self, cls, what, values):
        try:
            return cls(**values)
        except TypeError as e:
            raise ValueError(f"Invalid {what} for {type(self).__name__}: {e}") from e

    def parse_init_info(self, init_dict):
        return self._parse(self.init_info_cls, "init_info", init_dict)

    def parse_update_info(self, update_dict):
        return self._parse(self.update_info_cls, "update_info", update_dict)

    def drain_pending(self):
        pass

    def update_weights(self, update_info):
        """Parses `update_info` (a dict, or a list of dicts handled in turn) and receives."""
        for item in update_info if isinstance(update_info, list) else [update_info]:
            self.receive_weights(self.parse_update_info(item))
        _synchronize()

    @abstractmethod
    def init_transfer_engine(self, init_info):
        ...

    @abstractmethod
    def start_weight_update(self):
        ...

    @abstractmethod
    def receive_weights(self, update_info):
        ...

    @abstractmethod
    def finish_weight_update(self):
        ...

    @abstractmethod
    def shutdown(self):
        ...


@dataclasses.dataclass
class _LocalTrainerInitInfo:
    """vLLM's TrainerInitInfo: `backend` (a class attribute) picks the trainer engine; rank 0 is the
    sender. (vLLM's `rank` is keyword-only without a default; here it defaults to 0.)"""

    backend: ClassVar[str] = ""
    rank: int = 0

    @property
    def is_sender(self):
        return self.rank == 0


class _LocalWeightSource(ABC):
    """vLLM's WeightSource: re-iterable (name, tensor) pairs; each iter() is a fresh pass."""

    @abstractmethod
    def metadata(self):
        ...

    @abstractmethod
    def __iter__(self):
        ...

    def held_names(self):
        return None


class _LocalTrainerWeightTransferEngine(ABC):
    """vLLM's TrainerWeightTransferEngine."""

    init_info_cls = None

    def __init__(self, *, client, source=None, is_sender=True):
        self.client = client
        self.source = source
        self.is_sender = is_sender

    @classmethod
    @abstractmethod
    def trainer_init(cls, init_info, *, client, source=None):
        ...

    @abstractmethod
    def send_weights(self):
        ...

    def shutdown(self):
        pass


_VllmEngine = _vllm(_BASE, "WeightTransferEngine")
#: True when the classes below derive from vLLM's own.
USES_VLLM = _VllmEngine is not None
WeightTransferEngine = _VllmEngine or _LocalWeightTransferEngine
WeightTransferInitInfo = _vllm(_BASE, "WeightTransferInitInfo") or _LocalInitInfo
WeightTransferUpdateInfo = _vllm(_BASE, "WeightTransferUpdateInfo") or _LocalUpdateInfo
TrainerInitInfo = _vllm(_BASE, "TrainerInitInfo") or _LocalTrainerInitInfo
WeightSource = _vllm(_BASE, "WeightSource") or _LocalWeightSource
TrainerWeightTransferEngine = (_vllm(_BASE, "TrainerWeightTransferEngine")
                               or _LocalTrainerWeightTransferEngine)
_ParamMeta = _vllm(_BASE, "ParamMeta")


def _synchronize():
    import sys
    torch = sys.modules.get("torch")
    if torch is None:
        return
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "synchronize"):
        if accelerator.is_available():
            accelerator.synchronize()
    elif torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _optional_bool(value, what):
    return None if value is None else _adapter.as_bool(value, what)


# ---- the inference side ----

@dataclasses.dataclass
class CkptEngineInitInfo(WeightTransferInitInfo):
    """init_info of POST /init_weight_transfer_engine for backend "ckpt_engine" (keys optional).

    `socket`: the daemon's Unix socket on the server's node (None: $CKPT_SOCKET in the worker's
    environment, else /run/ckpt-engine/ckpt-engined.sock). `attach_timeout`: seconds the attach may
    take. `receive_timeout`: seconds to wait for each bucket of an update, the first included (an
    update_info's `timeout` overrides it). `tensor_names`: receive only these. `verify_checksums`:
    check each tensor's XXH3-64 before loading it. `layerwise_reload`: load between vLLM's
    initialize_layerwise_reload / finalize_layerwise_reload (None: when this vLLM has them; False:
    run process_weights_after_loading instead). `clone_tensors`: copy each received view before
    load_weights sees it (None: when reloading layerwise, which keeps tensors until their layer is
    complete, after their slot was refilled). `check_resident`: refuse an update while the weights'
    GPU memory is released (sleep mode).
    """

    socket: Optional[str] = None
    attach_timeout: float = 30.0
    receive_timeout: float = 600.0
    tensor_names: Optional[List[str]] = None
    verify_checksums: bool = False
    layerwise_reload: Optional[bool] = None
    clone_tensors: Optional[bool] = None
    check_resident: bool = True

    def __post_init__(self):
        if self.socket is not None and not isinstance(self.socket, str):
            raise ValueError(f"init_info socket must be a path, not {self.socket!r}")
        self.socket = self.socket or None
        self.attach_timeout = _adapter.as_timeout(self.attach_timeout, "attach_timeout")
        self.receive_timeout = _adapter.as_timeout(self.receive_timeout, "receive_timeout")
        if isinstance(self.tensor_names, str):
            self.tensor_names = [n.strip() for n in self.tensor_names.split(",") if n.strip()]
        self.tensor_names = list(self.tensor_names) if self.tensor_names else None
        self.verify_checksums = _adapter.as_bool(self.verify_checksums, "verify_checksums")
        self.layerwise_reload = _optional_bool(self.layerwise_reload, "layerwise_reload")
        self.clone_tensors = _optional_bool(self.clone_tensors, "clone_tensors")
        self.check_resident = _adapter.as_bool(self.check_resident, "check_resident")


@dataclasses.dataclass
class CkptEngineUpdateInfo(WeightTransferUpdateInfo):
    """update_info of POST /update_weights for backend "ckpt_engine".

    `version`: the ckpt-engined version to receive (0: whatever the daemon sends). `force`: receive
    it even if this worker holds it already (the daemon's update must be forced too). `timeout`:
    seconds to wait for each bucket (None: init_info's receive_timeout). The daemon sends the
    version when someone asks it to (Client.update, `ckptctl update VERSION`, or the trainer
    engine), at the same time or just before.
    """

    version: int = 0
    force: bool = False
    timeout: Optional[float] = None

    def __post_init__(self):
        self.version = _adapter.as_version(self.version, "version")
        self.force = _adapter.as_bool(self.force, "force")
        if self.timeout is not None:
            self.timeout = _adapter.as_timeout(self.timeout, "timeout")


def _mtp_check_disabled():
    """vLLM's disable_mtp_completeness_check(), which its backends load under (or a no-op)."""
    fn = _vllm("vllm.model_executor.model_loader.mtp_validation",
               "disable_mtp_completeness_check")
    return fn() if fn is not None else contextlib.nullcontext()


def _cuda_mapped(address):
    """Whether the CUDA driver says `address` is backed by mapped memory; None if it cannot say.
    vLLM's sleep mode (cumem allocator) unmaps the weights' memory and keeps the addresses."""
    import ctypes
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        fn = cuda.cuPointerGetAttribute
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]
    fn.restype = ctypes.c_int
    mapped = ctypes.c_int(-1)
    code = fn(ctypes.byref(mapped), _CU_POINTER_ATTRIBUTE_MAPPED, ctypes.c_uint64(address))
    if code != 0 or mapped.value not in (0, 1):
        return None
    if not mapped.value:
        # Pinned host memory seen by the GPU (CPU offloading) is resident whatever MAPPED says.
        kind = ctypes.c_uint(0)
        if fn(ctypes.byref(kind), _CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
              ctypes.c_uint64(address)) == 0 and kind.value == _CU_MEMORYTYPE_HOST:
            return True
    return bool(mapped.value)


def _cloned(pairs):
    for name, tensor in pairs:
        yield name, tensor.clone()


def _error_text(e):
    return f"{type(e).__name__}: {e}"


class CkptEngineWeightTransferEngine(WeightTransferEngine):
    """The inference side of backend "ckpt_engine": one per vLLM GPU worker, built by vLLM's
    WeightTransferEngineFactory at the end of Worker.load_model.

    One update is start_weight_update -> update_weights (one version) -> finish_weight_update:
    - start: refuses while the weights sleep (their memory released: wake_up(tags=["weights"])
      first), attaches again if the daemon ended the stream, begins vLLM's layerwise reload.
    - receive_weights: receives the version (CkptEngineUpdateInfo) into self.model.load_weights;
      the daemon must be sending it meanwhile. The version is not reported loaded yet.
    - finish: finalizes the layerwise reload (or runs process_weights_after_loading), then reports
      the version loaded: the daemon's update returns only now, when the engine serves it. Report
      within the daemon's ack_timeout (default 60 s) of the last bucket.
    Errors raise with a message that says what to do; vLLM returns it to the route's caller (HTTP
    500). After a failed receive the model may hold a mix of versions: start again and resend.

    Test hook: `post_load`, a (model, model_config, device) callable replacing vLLM's
    process_weights_after_loading.
    """

    init_info_cls = CkptEngineInitInfo
    update_info_cls = CkptEngineUpdateInfo
    # One daemon attachment per worker receives the main model's versions; a draft model would need
    # its own.
    supports_draft_weight_update = False
    defers_processing = False
    post_load = None

    def __init__(self, config, vllm_config, device, model):
        super().__init__(config, vllm_config, device, model)
        for name, value in (("device", device), ("model", model)):
            if not hasattr(self, name):
                setattr(self, name, value)
        if not hasattr(self, "model_config"):
            self.model_config = getattr(vllm_config, "model_config", None)
        self._init = None            # CkptEngineInitInfo
        self._worker = None          # ckpt_engine.Worker
        self._updating = False       # between start_weight_update and finish_weight_update
        self._layerwise = False      # initialize_layerwise_reload ran, finalize did not
        self._received = 0           # version received, not reported loaded yet
        self.loaded_version = 0      # the last version this engine reported loaded

    # ---- WeightTransferEngine ----

    def init_transfer_engine(self, init_info):
        """Attaches this worker to ckpt-engined (engine "vllm", this worker's device). Called again
        with the same init_info it keeps the attachment; with another, it attaches afresh."""
        if isinstance(init_info, dict):
            init_info = self.parse_init_info(init_info)
        if self._worker is not None and not self._worker.closed and init_info == self._init:
            return
        self._abandon("the weight-transfer engine was initialized again")
        self._detach()
        self._init = init_info
        self._attach()

    def start_weight_update(self):
        if self._init is None:
            raise RuntimeError("ckpt_engine: init_weight_transfer_engine must be called before "
                               "start_weight_update (POST /init_weight_transfer_engine)")
        self._abandon("start_weight_update was called again before finish_weight_update")
        if self._layerwise:
            self._finalize_layerwise()
        if self._init.check_resident:
            self._check_resident()
        if self._worker is None or self._worker.closed:
            self._attach()
        self._updating = True
        if self._use_layerwise():
            initialize = _vllm(_RELOAD, "initialize_layerwise_reload")
            initialize(self.model)
            self._layerwise = True

    def receive_weights(self, update_info):
        """Receives one version from the daemon into self.model.load_weights."""
        if isinstance(update_info, dict):
            update_info = self.parse_update_info(update_info)
        if not self._updating:
            raise RuntimeError("ckpt_engine: update_weights must come between start_weight_update "
                               "and finish_weight_update")
        if self._received:
            raise RuntimeError(f"ckpt_engine: version {self._received} was received and waits for "
                               "finish_weight_update: one version per update")
        if self._init.check_resident and not self._layerwise:
            self._check_resident()
        worker = self._worker
        if worker is None or worker.closed:
            raise RuntimeError("ckpt_engine: this worker is not attached to ckpt-engined (the "
                               "daemon ended the stream); call start_weight_update again")
        version = update_info.version
        if version and not update_info.force and worker.version == version:
            log.info("ckpt-engine: version %d is already loaded; nothing to receive", version)
            return
        if version:
            self._check_version(version)
        timeout = update_info.timeout
        if timeout is None:
            timeout = self._init.receive_timeout
        clone = self._init.clone_tensors
        if clone is None:
            clone = self._layerwise
        pairs = worker.receive(timeout=timeout, defer_loaded=True)
        try:
            with _mtp_check_disabled():
                self.model.load_weights(_cloned(pairs) if clone else pairs)
            if next(pairs, _END) is not _END:
                raise RuntimeError("model.load_weights returned before consuming every tensor of "
                                   "the version")
        except BaseException as e:  # noqa: B902 - Ctrl-C is reported too.
            try:
                pairs.throw(e)  # fails the bucket being loaded, naming the error
            except BaseException:  # noqa: B902 - it re-raises e.
                pass
            try:
                worker.finish(error=_error_text(e))  # every bucket was received: fail the version
            except CkptError:
                pass  # The stream is gone: the daemon fails this worker anyway.
            self._after_failure(e)
            raise
        done = worker._done  # (version, tensors, bytes) awaiting finish()
        if done is None:
            raise RuntimeError("ckpt_engine: the daemon ended the version without its end mark")
        if version and done[0] != version:
            self._report(error=f"received version {done[0]} while update_info asked for {version}")
            self._after_failure(None)
            raise RuntimeError(f"ckpt_engine: the daemon sent version {done[0]}, update_info asked "
                               f"for {version} (another update ran?); the model may hold a mix of "
                               "versions")
        self._received = done[0]

    def finish_weight_update(self):
        """Runs vLLM's post-load step and reports the received version loaded."""
        if not self._updating:
            log.info("ckpt-engine: finish_weight_update without an update in progress")
            return
        self._updating = False
        version, self._received = self._received, 0
        try:
            if self._layerwise:
                self._finalize_layerwise()
            elif version:
                hook = self.post_load or _vllm("vllm.model_executor.model_loader.utils",
                                               "process_weights_after_loading")
                if hook is not None:
                    hook(self.model, self.model_config, self.device)
            _synchronize()
        except BaseException as e:  # noqa: B902
            if version:
                self._report(error=f"post-load processing failed: {_error_text(e)}")
            raise
        if version:
            try:
                self._worker.finish()
            except CkptError as e:
                self._detach()
                raise RuntimeError(
                    f"ckpt_engine: version {version} is loaded but could not be reported to "
                    f"ckpt-engined ({e}); the daemon gives up on a worker that does not report "
                    "within its ack_timeout of the last bucket: call finish_weight_update sooner"
                ) from e
            self.loaded_version = version
            log.info("ckpt-engine: loaded version %d", version)

    def shutdown(self):
        self._abandon("the weight-transfer engine shut down")
        self._updating = False
        self._detach()

    # ---- state for callers and tests ----

    @property
    def worker(self):
        """The ckpt_engine.Worker attached to the daemon (None before init)."""
        return self._worker

    def status(self):
        """{"attached", "backend", "gpu_uuid", "version", "updating", "layerwise"}."""
        w = self._worker
        attached = w is not None and not w.closed
        return {"attached": attached, "backend": w.backend if attached else None,
                "gpu_uuid": w.gpu_uuid if attached else None,
                "version": w.version if attached else self.loaded_version,
                "updating": self._updating, "layerwise": self._layerwise}

    # ---- internals ----

    def _attach(self):
        info = self._init
        try:
            self._worker = Worker(socket=info.socket, device=self.device, engine=ENGINE,
                                  tensor_names=info.tensor_names, timeout=info.attach_timeout,
                                  verify_checksums=info.verify_checksums)
        except CkptError as e:
            where = info.socket or os.environ.get("CKPT_SOCKET") or "the default socket"
            raise RuntimeError(f"ckpt_engine: cannot attach this vLLM worker (device "
                               f"{self.device}) to ckpt-engined at {where}: {e}") from e
        log.info("ckpt-engine: attached to the daemon (backend %s, device %s)",
                 self._worker.backend, self.device)

    def _detach(self):
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    def _report(self, error):
        try:
            if self._worker is not None:
                self._worker.finish(error=error)
        except CkptError:
            pass

    def _abandon(self, why):
        """Fails a version received but never finished."""
        if self._received:
            log.warning("ckpt-engine: version %d was received but not finished: %s",
                        self._received, why)
            self._report(error=f"not finished: {why}")
            self._received = 0

    def _after_failure(self, error):
        """After a failed receive: the layerwise reload is finalized so that no layer is left
        without its tensors (the model may hold a mix of versions), and a worker whose stream the
        daemon ended attaches afresh at the next start."""
        self._updating = False
        if self._layerwise:
            try:
                self._finalize_layerwise()
            except Exception as e:  # noqa: B902 - the load's error is the one to raise
                log.error("ckpt-engine: finalizing the layerwise reload after a failed update "
                          "failed too: %s", _error_text(e))
        if isinstance(error, CkptError) and error.code == UNAVAILABLE:
            self._detach()

    def _check_version(self, version):
        """Fails at once, rather than after receive_timeout, for a version the daemon does not
        hold. Other answers (a daemon that does not let workers read versions) let it wait."""
        try:
            with Client(socket=self._init.socket) as client:
                client.get_version(version)
        except CkptError as e:
            if e.code == NOT_FOUND:
                raise RuntimeError(f"ckpt_engine: ckpt-engined holds no version {version} "
                                   f"({e.message}); push it first, or ask for version 0 (the "
                                   "one the daemon sends)") from None
            log.debug("ckpt-engine: could not look version %d up: %s", version, e)

    def _use_layerwise(self):
        wanted = self._init.layerwise_reload
        if wanted is False:
            return False
        available = (_vllm(_RELOAD, "initialize_layerwise_reload") is not None
                     and _vllm(_RELOAD, "finalize_layerwise_reload") is not None)
        if wanted and not available:
            raise RuntimeError("ckpt_engine: init_info asks for layerwise_reload but this vLLM has "
                               f"no {_RELOAD}.initialize_layerwise_reload")
        return available

    def _finalize_layerwise(self):
        self._layerwise = False
        _vllm(_RELOAD, "finalize_layerwise_reload")(self.model, self.model_config)

    def _check_resident(self):
        """Raises when the weights' memory is released (sleep level 1 or 2): loading would write
        into unmapped memory, and waking later would bring back the old or no weights."""
        params = list(self.model.parameters())
        asleep = any(p.is_meta for p in params)
        if not asleep:
            cuda = [p for p in params if p.is_cuda and p.numel()]
            for p in cuda[:1] + cuda[-1:]:
                if _cuda_mapped(p.data_ptr()) is False:
                    asleep = True
                    break
        if asleep:
            raise RuntimeError(
                "ckpt_engine: the model's weights are not resident (the engine sleeps: sleep level "
                "1 or 2 released their memory); call POST /wake_up?tags=weights before the update "
                "and POST /wake_up?tags=kv_cache after it")


def register():
    """Registers backend "ckpt_engine" with vLLM's factories (the worker's, and the trainer's when
    this vLLM has one). The function of a `vllm.general_plugins` entry point, which vLLM runs in
    every process (its workers too) before it builds the engine; safe to call more than once."""
    factory = _vllm(_FACTORY, "WeightTransferEngineFactory")
    if factory is None:
        raise RuntimeError(f"ckpt_engine: vLLM's {_FACTORY} is not importable: this vLLM has no "
                           "pluggable weight transfer (use ckpt_engine.vllm's worker extension)")
    _register(factory, ENGINE_CLASS)
    trainer_factory = _vllm(_FACTORY, "WeightTransferTrainerFactory")
    if trainer_factory is not None:
        _register(trainer_factory, TRAINER_CLASS)


def _register(factory, class_name):
    registry = getattr(factory, "_registry", None)
    if isinstance(registry, dict) and BACKEND in registry:
        return
    try:
        factory.register_engine(BACKEND, MODULE, class_name)
    except ValueError:
        registry = getattr(factory, "_registry", None)
        if not (isinstance(registry, dict) and BACKEND in registry):
            raise


# ---- the trainer side ----

@dataclasses.dataclass
class CkptEngineTrainerInitInfo(TrainerInitInfo):
    """Picks backend "ckpt_engine" for vLLM's WeightTransferTrainerFactory.trainer_init (or
    CkptEngineTrainerWeightTransferEngine.trainer_init). `rank`: this trainer rank (0 sends).

    The trainer's daemon: `socket` (Unix socket of the daemon on this node) or `address` (HOST:PORT
    of the server node's daemon over TCP) with `tls_ca`, `tls_cert`, `tls_key`, `token_file` (as
    ckpt_engine.Client; None: $CKPT_SOCKET / the default socket). It must be the daemon the server's
    workers attach to. `transport`: Client.push_state_dict's ("auto": shared memory or CUDA IPC on
    this node, gRPC otherwise). `push_timeout`: deadline of each push request; `update_timeout`:
    how long the daemon's update may take; `label`: the pushed versions' label. `stage_on_cpu`:
    copy each tensor of the source to host memory as it comes (a push holds every tensor of the
    version until it returns: for sources that gather each tensor, as FSDP's do, this keeps the
    gathered tensors off the GPU). `publish_version`: pass the pushed version as weight_version to
    finish_weight_update (GET /weight_info then says it).

    Sent to the server's workers (init_info, CkptEngineInitInfo): `engine_socket` (their daemon
    socket, None: their $CKPT_SOCKET), `attach_timeout`, `receive_timeout`, `verify_checksums`,
    `layerwise_reload`, `clone_tensors`.
    """

    backend: ClassVar[str] = BACKEND
    socket: Optional[str] = None
    address: Optional[str] = None
    tls_ca: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    token_file: Optional[str] = None
    transport: str = "auto"
    push_timeout: float = 60.0
    update_timeout: float = 600.0
    label: str = ""
    stage_on_cpu: bool = False
    publish_version: bool = True
    force: bool = False
    engine_socket: Optional[str] = None
    attach_timeout: float = 30.0
    receive_timeout: float = 600.0
    verify_checksums: bool = False
    layerwise_reload: Optional[bool] = None
    clone_tensors: Optional[bool] = None

    def worker_init_info(self):
        """The init_info dict sent to the server's workers."""
        info = {"attach_timeout": self.attach_timeout, "receive_timeout": self.receive_timeout,
                "verify_checksums": self.verify_checksums}
        for key, value in (("socket", self.engine_socket),
                           ("layerwise_reload", self.layerwise_reload),
                           ("clone_tensors", self.clone_tensors)):
            if value is not None:
                info[key] = value
        return info

    def open_client(self):
        """A ckpt_engine.Client to the trainer's daemon."""
        return Client(socket=self.socket, address=self.address, tls_ca=self.tls_ca,
                      tls_cert=self.tls_cert, tls_key=self.tls_key, token_file=self.token_file)


class StateDictSource(WeightSource):
    """A WeightSource over a {name: tensor} mapping or a list of (name, tensor) pairs."""

    def __init__(self, tensors):
        self._items = list(tensors.items() if hasattr(tensors, "items") else tensors)

    def metadata(self):
        make = _ParamMeta or (lambda name, dtype, shape: (name, dtype, shape))
        return [make(name=n, dtype=t.dtype, shape=tuple(t.shape)) for n, t in self._items]

    def __iter__(self):
        return iter(self._items)


class ModuleSource(WeightSource):
    """A WeightSource over module.named_parameters() (vLLM's ModuleSource when vLLM is there is
    equivalent); a DTensor (FSDP 2) is gathered whole with full_tensor(), on every rank."""

    def __init__(self, module):
        self.module = module

    def metadata(self):
        make = _ParamMeta or (lambda name, dtype, shape: (name, dtype, shape))
        return [make(name=n, dtype=t.dtype, shape=tuple(t.shape)) for n, t in self]

    def __iter__(self):
        for name, param in self.module.named_parameters():
            tensor = param.detach()
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            yield name, tensor


def as_source(weights):
    """A WeightSource for a torch.nn.Module, a WeightSource, a {name: tensor} mapping or a list of
    (name, tensor) pairs."""
    if isinstance(weights, (WeightSource, _LocalWeightSource)):
        return weights
    if hasattr(weights, "named_parameters") and callable(weights.named_parameters):
        module_source = _vllm(_BASE, "ModuleSource")
        return module_source(weights) if module_source is not None else ModuleSource(weights)
    if hasattr(weights, "metadata") and hasattr(weights, "__iter__"):
        return weights  # another library's WeightSource
    return StateDictSource(weights)


class CkptEngineTrainerWeightTransferEngine(TrainerWeightTransferEngine):
    """The trainer side of backend "ckpt_engine".

    trainer_init (every trainer rank; rank 0 is the sender) opens the sender's ckpt_engine.Client
    and has `client` (a VLLMWeightSyncClient: vLLM's HTTP or Ray client, or HttpWeightSyncClient)
    initialize the server's workers. send_weights() then pushes the source as a new version
    (push()) and loads it (load()): start_weight_update, the daemon's update (on a thread) while
    update_weights({"version": V}) receives it, finish_weight_update(str(V)). It does not pause
    generation; sync_weights does. Ranks that do not send iterate the source too (so that gathers
    such as FSDP's full_tensor() run on every rank) and discard what it yields.
    """

    init_info_cls = CkptEngineTrainerInitInfo

    def __init__(self, *, client, source=None, is_sender=True, init_info=None):
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.client, self.source, self.is_sender = client, source, is_sender
        self.init_info = init_info if init_info is not None else CkptEngineTrainerInitInfo(rank=0)
        self._daemon = None
        self.last_report = None

    @classmethod
    def trainer_init(cls, init_info, *, client, source=None):
        engine = cls(client=client, source=source, is_sender=init_info.is_sender,
                     init_info=init_info)
        if engine.is_sender:
            engine._daemon = init_info.open_client()
            try:
                client.init_weight_transfer_engine(init_info.worker_init_info())
            except BaseException:
                engine.shutdown()
                raise
        return engine

    @property
    def daemon(self):
        """The sender's ckpt_engine.Client (None on other ranks)."""
        return self._daemon

    def send_weights(self):
        """Pushes the source as a new version and loads it into the server; returns the report of
        load() (None on ranks that do not send)."""
        version = self.push()
        if not self.is_sender:
            return None
        return self.load(version)

    def push(self, weights=None, version=0):
        """Pushes `weights` (default: the source; anything as_source takes) to the daemon as one
        committed version and returns it (0 on ranks that do not send). `version` 0: the daemon's
        next id."""
        source = as_source(weights) if weights is not None else self.source
        if source is None:
            raise ValueError("ckpt_engine: no weight source (pass source= to trainer_init)")
        pairs = iter(source)
        if self.init_info.stage_on_cpu:
            pairs = ((name, tensor.to("cpu")) for name, tensor in pairs)
        if not self.is_sender:
            for _ in pairs:
                pass
            return 0
        info = self.init_info
        return self._daemon.push_state_dict(pairs, version=version, label=info.label,
                                            timeout=info.push_timeout, transport=info.transport)

    def load(self, version, weight_version=None, force=None):
        """Loads a committed `version` into the server: start_weight_update, then the daemon's
        update (on a thread) while the server's update_weights receives it, then
        finish_weight_update(weight_version: default str(version) when publish_version). Returns
        the daemon's update report (Client.update) with "weight_version". Raises the server's error
        (WeightSyncError for HTTP), else the daemon's (CkptError)."""
        if not self.is_sender:
            return None
        info = self.init_info
        force = info.force if force is None else bool(force)
        if weight_version is None and info.publish_version:
            weight_version = str(version)
        result = {}

        def daemon_update():
            try:
                result["report"] = self._daemon.update(version=version, force=force,
                                                       timeout=info.update_timeout)
            except BaseException as e:  # noqa: B902 - handed to the caller's thread
                result["error"] = e

        self.client.start_weight_update()
        thread = threading.Thread(target=daemon_update, name="ckpt-engine-update", daemon=True)
        thread.start()
        try:
            self.client.update_weights({"version": version, "force": force,
                                        "timeout": info.receive_timeout})
        except BaseException as e:  # noqa: B902
            # Workers that did receive report the version at finish; the daemon's update then
            # ends with the failed worker's error instead of waiting for its ack_timeout.
            try:
                self.client.finish_weight_update()
            except Exception:  # noqa: B902 - expected: the failed worker has no update open
                pass
            thread.join(info.update_timeout + 30)
            if "error" in result:
                _add_note(e, f"ckpt-engined: {result['error']}")
            raise
        if weight_version is not None:
            self.client.finish_weight_update(weight_version)
        else:
            self.client.finish_weight_update()
        thread.join(info.update_timeout + 30)
        if thread.is_alive():
            raise TimeoutError(f"ckpt_engine: the daemon's update of version {version} did not "
                               "return after the server finished the update")
        if "error" in result:
            raise result["error"]
        report = result["report"]
        report["weight_version"] = weight_version
        self.last_report = report
        return report

    def shutdown(self):
        daemon, self._daemon = self._daemon, None
        if daemon is not None:
            daemon.close()


def _add_note(e, note):
    if hasattr(e, "add_note"):
        e.add_note(note)
    elif isinstance(e, WeightSyncError):
        e.notes.append(note)


# ---- HTTP: the server's routes with urllib ----

class WeightSyncError(Exception):
    """A route of the vLLM server failed: `route`, `status` (HTTP status, None when the server could
    not be reached) and `message` (vLLM's error message: a worker's exception text for 500)."""

    def __init__(self, route, status, message):
        self.route, self.status, self.message = route, status, message
        self.notes = []
        where = f"HTTP {status}" if status is not None else "unreachable"
        super().__init__(f"{route}: {where}: {message}")


def _error_message(raw):
    try:
        body = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        return raw.decode("utf-8", "replace").strip()
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return error if isinstance(error, str) else json.dumps(error)
    return json.dumps(body)


class HttpWeightSyncClient:
    """vLLM's VLLMWeightSyncClient protocol over one server's HTTP routes (VLLM_SERVER_DEV_MODE=1),
    with urllib only, plus the routes around an update (pause, resume, sleep, wake_up, weight_info).
    `timeout`: seconds each request may take (an update's included). `api_key`: sent as a bearer
    token if given. Every method raises WeightSyncError when the server answers an error."""

    def __init__(self, base_url, timeout=300.0, api_key=None):
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.api_key = api_key

    def request(self, method, route, body=None, query=None):
        """One call; returns the decoded JSON answer ({} for an empty or non-JSON body)."""
        url = self.base_url + route
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as e:
            raise WeightSyncError(route, e.code, _error_message(e.read()) or e.reason) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise WeightSyncError(route, None, f"cannot reach {url}: {reason}") from None
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError:
            return {}

    # VLLMWeightSyncClient
    def init_weight_transfer_engine(self, init_info):
        self.request("POST", "/init_weight_transfer_engine", {"init_info": dict(init_info)})

    def start_weight_update(self):
        self.request("POST", "/start_weight_update")

    def update_weights(self, update_info):
        self.request("POST", "/update_weights", {"update_info": update_info})

    def finish_weight_update(self, weight_version=None):
        body = {"weight_version": str(weight_version)} if weight_version is not None else None
        self.request("POST", "/finish_weight_update", body)

    # around an update
    def update_weight_version(self, new_version):
        self.request("POST", "/update_weight_version", {"new_version": str(new_version)})

    def weight_info(self):
        """The server's weight_version (a string; "default" before any)."""
        return self.request("GET", "/weight_info").get("weight_version")

    def pause(self, mode="keep", clear_cache=True):
        """POST /pause: mode "keep" (running requests freeze and go on after resume), "wait" (they
        finish first) or "abort"; clear_cache resets the prefix cache."""
        self.request("POST", "/pause",
                     query={"mode": mode, "clear_cache": "true" if clear_cache else "false"})

    def resume(self):
        self.request("POST", "/resume")

    def is_paused(self):
        return bool(self.request("GET", "/is_paused").get("is_paused"))

    def sleep(self, level=1, mode=None):
        query = {"level": int(level)}
        if mode:
            query["mode"] = mode
        self.request("POST", "/sleep", query=query)

    def wake_up(self, tags=None):
        """POST /wake_up with each tag ("weights", "kv_cache", "scheduling"); None: all."""
        self.request("POST", "/wake_up", query={"tags": list(tags)} if tags else None)

    def is_sleeping(self):
        return bool(self.request("GET", "/is_sleeping").get("is_sleeping"))


_PAUSE_MODES = ("keep", "wait", "abort")


def sync_weights(url, weights, version=0, *, weight_version=None, pause="keep", clear_cache=True,
                 wake="auto", force=False, socket=None, address=None, timeout=600.0,
                 http_timeout=None, api_key=None, **init):
    """One whole weight update of the vLLM server at `url` (started with `--weight-transfer-config
    '{"backend":"ckpt_engine"}'`) from this trainer process; what an RL loop calls after a step.

    `weights`: a torch.nn.Module (its named_parameters, Hugging Face names), a {name: tensor}
    mapping, (name, tensor) pairs or a WeightSource. `version`: the ckpt-engined version id to push
    (0: the daemon's next). `weight_version`: what GET /weight_info says afterwards (default: the
    version id as a string). `socket` / `address`: the daemon (see CkptEngineTrainerInitInfo, whose
    other fields may be passed as keywords). `timeout`: the daemon's update deadline;
    `http_timeout`: each request's (default timeout + 60).

    Steps: POST /init_weight_transfer_engine (the workers attach; again each call: it keeps an
    attachment) -> push the version (generation goes on meanwhile) -> POST /pause?mode=`pause`
    (None: no pause) -> if `wake` is True, or "auto" and GET /is_sleeping, POST
    /wake_up?tags=weights -> start, update (with the daemon's update), finish with weight_version ->
    POST /wake_up?tags=kv_cache (if it woke the weights) -> POST /resume. The wake-up of kv_cache
    and the resume also run when the update fails; the update's error is raised.

    Returns {"version", "weight_version", "push_seconds", "update_seconds", "seconds", "update": the
    daemon's report}.
    """
    if pause is not None and pause not in _PAUSE_MODES:
        raise ValueError(f"pause must be one of {_PAUSE_MODES} or None, not {pause!r}")
    if wake not in (True, False, "auto"):
        raise ValueError(f"wake must be True, False or 'auto', not {wake!r}")
    start = time.monotonic()
    info = CkptEngineTrainerInitInfo(rank=0, socket=socket, address=address,
                                     update_timeout=timeout, force=force, **init)
    http = HttpWeightSyncClient(url, timeout=http_timeout or timeout + 60, api_key=api_key)
    engine = CkptEngineTrainerWeightTransferEngine.trainer_init(info, client=http,
                                                                source=as_source(weights))
    try:
        version = engine.push(version=version)
        pushed = time.monotonic()
        woke = paused = False
        failure = None
        try:
            if pause is not None:
                http.pause(mode=pause, clear_cache=clear_cache)
                paused = True
            if wake is True or (wake == "auto" and http.is_sleeping()):
                http.wake_up(["weights"])
                woke = True
            report = engine.load(version, weight_version=weight_version, force=force)
        except BaseException as e:  # noqa: B902
            failure = e
            raise
        finally:
            steps = []
            if woke:
                steps.append(lambda: http.wake_up(["kv_cache"]))
            if paused:
                steps.append(http.resume)
            errors = []
            for step in steps:  # each one, whatever the others did
                try:
                    step()
                except Exception as e:  # noqa: B902
                    errors.append(e)
            if errors:
                if failure is None:
                    raise errors[0]
                for e in errors:
                    _add_note(failure, f"and then: {e}")
    finally:
        engine.shutdown()
    done = time.monotonic()
    return {"version": version, "weight_version": report["weight_version"],
            "push_seconds": pushed - start, "update_seconds": done - pushed,
            "seconds": done - start, "update": report}
