"""A stand-in for vLLM's pluggable weight transfer, for tests without vLLM.

It copies the signatures and the call order of vLLM's main as read in /work/notes (about late
September 2026; docs/engines.md says what was read), not its code:

- install() puts a small fake `vllm` package into sys.modules, before ckpt_engine.vllm_transfer is
  imported, so that the backend derives from these classes as it derives from vLLM's:
  vllm.distributed.weight_transfer.base (WeightTransferInitInfo / UpdateInfo, WeightTransferEngine
  with parse_init_info / parse_update_info / update_weights, TrainerInitInfo, ParamMeta,
  WeightSource, ModuleSource, TrainerWeightTransferEngine), .factory (WeightTransferEngineFactory,
  WeightTransferTrainerFactory: lazy string registration, "already registered", "Invalid weight
  transfer backend"), vllm.model_executor.model_loader.reload (initialize_layerwise_reload /
  finalize_layerwise_reload: like vLLM's, each layer's incoming tensors are kept, not copied, until
  the layer has all of them), .utils.process_weights_after_loading, .mtp_validation, vllm.config
  (WeightTransferConfig) and vllm.plugins.load_general_plugins (the `vllm.general_plugins` entry
  points, filtered by $VLLM_PLUGINS).
- GpuWorker: vLLM's GPU worker: init_worker loads the general plugins, load_model builds the model
  and then the weight-transfer engine through the factory; init_weight_transfer_engine,
  start_weight_update, update_weights (clears its flag and re-raises on failure),
  finish_weight_update with vLLM's RuntimeErrors for calls out of order; sleep(level) /
  wake_up(tags) (level 1 keeps the weights on CPU, level 2 discards them: the parameters move to
  the meta device, where a copy silently does nothing, as writing unmapped GPU memory would
  corrupt; waking the weights after level 2 gives garbage, NaN); the worker extension class is
  appended to its bases.
- StandinVllm: the engine core and API process: collective_rpc fans out to every worker on its own
  thread and raises a plain Exception with the message (the type is lost, as across vLLM's process
  boundary); weight_version ("default", set by finish_weight_update(weight_version) only when the
  finish succeeded); pause / resume; sleep / wake_up / is_sleeping. `events` records what the
  routes did, in order.
- StandinServer: its HTTP routes (threads): /init_weight_transfer_engine, /start_weight_update,
  /update_weights, /finish_weight_update, /update_weight_version, /weight_info, /pause, /resume,
  /is_paused, /sleep, /wake_up, /is_sleeping, /get_world_size, /collective_rpc. An exception from
  the workers is HTTP 500 {"error": {"message", "type": "InternalServerError", "code": 500,
  "param": null}}; ValueError / TypeError raised in the API process are 400.
"""

import abc
import contextlib
import dataclasses
import importlib
import importlib.metadata
import json
import os
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Dict, Optional
from urllib.parse import parse_qs, urlparse

import torch
from torch import nn

import standin_engine as se


# ---- vllm.config ----

@dataclasses.dataclass
class WeightTransferConfig:
    """--weight-transfer-config: any backend name parses; create_engine checks it."""

    backend: str = "nccl"


@dataclasses.dataclass
class ModelConfig:
    model: str = "standin-llama"
    dtype: torch.dtype = torch.bfloat16


@dataclasses.dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    worker_extension_cls: str = ""


@dataclasses.dataclass
class VllmConfig:
    model_config: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    parallel_config: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    weight_transfer_config: Optional[WeightTransferConfig] = None


# ---- vllm.distributed.weight_transfer.base ----

@dataclasses.dataclass
class WeightTransferInitInfo(abc.ABC):
    pass


@dataclasses.dataclass
class WeightTransferUpdateInfo(abc.ABC):
    pass


@dataclasses.dataclass
class WeightTransferInitRequest:
    init_info: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class WeightTransferUpdateRequest:
    update_info: Any = dataclasses.field(default_factory=dict)


def synchronize():
    """torch.accelerator.synchronize() (torch 1.13 has no torch.accelerator)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class WeightTransferEngine(abc.ABC):
    init_info_cls: type
    update_info_cls: type
    supports_draft_weight_update: bool = True
    defers_processing: bool = False

    def __init__(self, config, vllm_config, device, model):
        self.config = config
        self.vllm_config = vllm_config
        self.parallel_config = vllm_config.parallel_config
        self.model_config = vllm_config.model_config
        self.device = device
        self.model = model
        self._default_target = (model, vllm_config.model_config)

    def set_weight_update_target(self, model, model_config):
        self.model, self.model_config = model, model_config

    def reset_weight_update_target(self):
        self.model, self.model_config = self._default_target

    def parse_init_info(self, init_dict):
        try:
            return self.init_info_cls(**init_dict)
        except TypeError as e:
            raise ValueError(f"Invalid init_info for {type(self).__name__}: {e}") from e

    def parse_update_info(self, update_dict):
        try:
            return self.update_info_cls(**update_dict)
        except TypeError as e:
            raise ValueError(f"Invalid update_info for {type(self).__name__}: {e}") from e

    def drain_pending(self):
        pass

    @abc.abstractmethod
    def init_transfer_engine(self, init_info):
        ...

    @abc.abstractmethod
    def start_weight_update(self):
        ...

    @abc.abstractmethod
    def finish_weight_update(self):
        ...

    @abc.abstractmethod
    def receive_weights(self, update_info):
        ...

    @abc.abstractmethod
    def shutdown(self):
        ...

    def update_weights(self, update_info):
        for item in update_info if isinstance(update_info, list) else [update_info]:
            self.receive_weights(self.parse_update_info(item))
        synchronize()


@dataclasses.dataclass
class TrainerInitInfo:
    backend: ClassVar[str]
    rank: int = dataclasses.field(kw_only=True)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not isinstance(cls.__dict__.get("backend"), str):
            raise TypeError(f"{cls.__name__} must set the class attribute 'backend'")

    @property
    def is_sender(self):
        return self.rank == 0


@dataclasses.dataclass(frozen=True)
class ParamMeta:
    name: str
    dtype: torch.dtype
    shape: tuple


class WeightSource(abc.ABC):
    @abc.abstractmethod
    def metadata(self):
        ...

    @abc.abstractmethod
    def __iter__(self):
        ...

    def held_names(self):
        return None


class ModuleSource(WeightSource):
    def __init__(self, module):
        self.module = module

    def metadata(self):
        return [ParamMeta(n, p.dtype, tuple(p.shape)) for n, p in self.module.named_parameters()]

    def __iter__(self):
        return ((n, p.detach()) for n, p in self.module.named_parameters())


class TrainerWeightTransferEngine(abc.ABC):
    init_info_cls: type

    def __init__(self, *, client, source=None, is_sender=True):
        self.client = client
        self.source = source
        self.is_sender = is_sender

    @classmethod
    @abc.abstractmethod
    def trainer_init(cls, init_info, *, client, source=None):
        ...

    @abc.abstractmethod
    def send_weights(self):
        ...

    def shutdown(self):
        pass


# ---- vllm.distributed.weight_transfer.factory ----

class _Factory:
    _registry: Dict[str, Any] = {}

    @classmethod
    def register_engine(cls, name, module_path_or_cls, class_name=None):
        if name in cls._registry:
            raise ValueError(f"Weight transfer engine '{name}' is already registered.")
        if isinstance(module_path_or_cls, str):
            if class_name is None:
                raise ValueError("class_name is required when registering by module path")
            path = module_path_or_cls

            def loader():
                return getattr(importlib.import_module(path), class_name)
        else:
            def loader():
                return module_path_or_cls
        cls._registry[name] = loader

    @classmethod
    def _lookup(cls, name):
        if name not in cls._registry:
            raise ValueError(f"Invalid weight transfer backend: {name}. Available engines: "
                             f"{sorted(cls._registry)}")
        return cls._registry[name]()


class WeightTransferEngineFactory(_Factory):
    _registry: Dict[str, Any] = {}

    @classmethod
    def create_engine(cls, config, vllm_config, device, model):
        return cls._lookup(config.backend)(config, vllm_config, device, model)


class WeightTransferTrainerFactory(_Factory):
    _registry: Dict[str, Any] = {}

    @classmethod
    def trainer_init(cls, init_info, *, client, source=None):
        return cls._lookup(init_info.backend).trainer_init(init_info, client=client, source=source)


# ---- vllm.model_executor.model_loader (reload, utils, mtp_validation) ----

class _LayerLoad:
    """One module's incoming tensors, kept until the module has as many elements as it holds."""

    def __init__(self, total):
        self.total, self.loaded, self.pending = total, 0, []

    def apply(self):
        pending, self.pending = self.pending, []
        for original, param, weight, args, kwargs in pending:
            original(param, weight, *args, **kwargs)


def _calls(model):
    if not hasattr(model, "layerwise_calls"):
        model.layerwise_calls = []
    return model.layerwise_calls


def initialize_layerwise_reload(model):
    """Wraps each parameter's weight_loader: a module's tensors are kept (the incoming tensors
    themselves) and loaded only once the module received all its elements, or at finalize."""
    _calls(model).append("initialize")
    layers = []
    for module in model.modules():
        params = list(module.named_parameters(recurse=False))
        if not params:
            continue
        layer = _LayerLoad(sum(p.numel() for _, p in params))
        for _, param in params:
            original = param.weight_loader

            def loader(p, weight, *args, _layer=layer, _original=original, **kwargs):
                _layer.pending.append((_original, p, weight, args, kwargs))
                _layer.loaded += weight.numel()
                if _layer.loaded >= _layer.total:
                    _layer.apply()

            param.standin_original_loader = original
            param.weight_loader = loader
        layers.append((params, layer))
    model.standin_layerwise = layers


def finalize_layerwise_reload(model, model_config):
    _calls(model).append(("finalize", model_config))
    for params, layer in getattr(model, "standin_layerwise", []):
        layer.apply()
        for _, param in params:
            param.weight_loader = param.standin_original_loader
    model.standin_layerwise = []


def process_weights_after_loading(model, model_config, target_device):
    se.process_weights_after_loading(model, model_config, target_device)


MTP_CHECK_DISABLED = []  # one entry per disable_mtp_completeness_check() block


@contextlib.contextmanager
def disable_mtp_completeness_check():
    MTP_CHECK_DISABLED.append(threading.get_ident())
    yield


# ---- vllm.plugins ----

def load_general_plugins():
    """Runs every `vllm.general_plugins` entry point (only those named in $VLLM_PLUGINS, if set)."""
    allowed = os.environ.get("VLLM_PLUGINS")
    names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in importlib.metadata.entry_points(group="vllm.general_plugins"):
        if names is None or ep.name in names:
            ep.load()()


_MODULES = {
    "vllm": {},
    "vllm.config": {"WeightTransferConfig": WeightTransferConfig, "VllmConfig": VllmConfig},
    "vllm.plugins": {"load_general_plugins": load_general_plugins},
    "vllm.distributed": {},
    "vllm.distributed.weight_transfer": {},
    "vllm.distributed.weight_transfer.base": {
        name: globals()[name] for name in (
            "WeightTransferInitInfo", "WeightTransferUpdateInfo", "WeightTransferInitRequest",
            "WeightTransferUpdateRequest", "WeightTransferEngine", "TrainerInitInfo", "ParamMeta",
            "WeightSource", "ModuleSource", "TrainerWeightTransferEngine")},
    "vllm.distributed.weight_transfer.factory": {
        "WeightTransferEngineFactory": WeightTransferEngineFactory,
        "WeightTransferTrainerFactory": WeightTransferTrainerFactory},
    "vllm.model_executor": {},
    "vllm.model_executor.model_loader": {},
    "vllm.model_executor.model_loader.reload": {
        "initialize_layerwise_reload": initialize_layerwise_reload,
        "finalize_layerwise_reload": finalize_layerwise_reload},
    "vllm.model_executor.model_loader.utils": {
        "process_weights_after_loading": process_weights_after_loading},
    "vllm.model_executor.model_loader.mtp_validation": {
        "disable_mtp_completeness_check": disable_mtp_completeness_check},
}


def install():
    """Puts the fake vllm package into sys.modules (idempotent). Call it before importing
    ckpt_engine.vllm_transfer."""
    for name, attrs in _MODULES.items():
        module = sys.modules.get(name)
        if module is None:
            module = types.ModuleType(name)
            module.__path__ = []  # a package: its children import
            sys.modules[name] = module
        module.__dict__.update(attrs)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


# ---- vllm.v1.worker.gpu_worker ----

class ModelRunner:
    def __init__(self, model):
        self.model = model
        self.lora_resets = 0

    def get_model(self):
        return self.model

    def reset_lora_state(self):
        self.lora_resets += 1


def _replace_parameters(model, make):
    """Replaces every parameter by nn.Parameter(make(full name, old)), keeping its weight_loader."""
    for prefix, module in model.named_modules():
        for name, old in list(module._parameters.items()):
            new = nn.Parameter(make(f"{prefix}.{name}" if prefix else name, old),
                               requires_grad=False)
            new.weight_loader = old.weight_loader
            module._parameters[name] = new


class GpuWorker:
    """vLLM's GPU worker, as far as weight transfer and sleep mode go."""

    def __init__(self, vllm_config, rank=0, device=None, model_factory=se.StandinLlama):
        self.vllm_config = vllm_config
        self.rank = rank
        self.device = device if device is not None else torch.device("cpu")
        self.model_factory = model_factory
        self.model_runner = None
        self.weight_transfer_engine = None
        self._weight_update_active = False
        self.weights_asleep = None  # None, or the level that released them
        self.kv_cache = torch.zeros(4)
        self._backup = None

    @property
    def model_config(self):
        return self.vllm_config.model_config

    def init_worker(self):
        load_general_plugins()

    def load_model(self, *, load_dummy_weights=False):
        self.model_runner = ModelRunner(self.model_factory())
        config = self.vllm_config.weight_transfer_config
        if config is not None:
            self.weight_transfer_engine = WeightTransferEngineFactory.create_engine(
                config, self.vllm_config, self.device, self.model_runner.get_model())

    # -- weight transfer --

    def init_weight_transfer_engine(self, init_info):
        if self.weight_transfer_engine is None:
            raise RuntimeError("Weight transfer not configured. Please set weight_transfer_config "
                               "to enable weight transfer.")
        engine = self.weight_transfer_engine
        engine.init_transfer_engine(engine.parse_init_info(init_info))

    def start_weight_update(self):
        if self.weight_transfer_engine is None:
            raise RuntimeError("Weight transfer not configured. Please set weight_transfer_config "
                               "to enable weight transfer.")
        if self._weight_update_active:
            raise RuntimeError("A weight update is already active: call finish_weight_update "
                               "first.")
        self.weight_transfer_engine.start_weight_update()
        self._weight_update_active = True

    def update_weights(self, update_info):
        if not self._weight_update_active:
            raise RuntimeError("start_weight_update must be called before update_weights.")
        try:
            self.weight_transfer_engine.update_weights(update_info)
        except BaseException:
            self._weight_update_active = False
            raise

    def finish_weight_update(self):
        if not self._weight_update_active:
            raise RuntimeError("finish_weight_update called without a matching "
                               "start_weight_update")
        self.weight_transfer_engine.finish_weight_update()
        self.weight_transfer_engine.reset_weight_update_target()
        self._weight_update_active = False
        self.model_runner.reset_lora_state()

    # -- sleep mode --

    def sleep(self, level=1):
        model = self.model_runner.model
        if level >= 1 and self.weights_asleep is None:
            self._backup = ({n: p.detach().clone() for n, p in model.named_parameters()}
                            if level == 1 else None)
            _replace_parameters(model, lambda _, p: torch.empty(p.shape, dtype=p.dtype,
                                                                device="meta"))
            self.weights_asleep = level
        if level >= 1:
            self.kv_cache = None

    def wake_up(self, tags=None):
        model = self.model_runner.model
        if (tags is None or "weights" in tags) and self.weights_asleep is not None:
            backup, self._backup = self._backup, None
            if backup is not None:
                _replace_parameters(model, lambda name, _: backup[name])
            else:
                _replace_parameters(model, lambda _, p: torch.full(
                    p.shape, float("nan"), dtype=p.dtype, device=self.device))
            self.weights_asleep = None
        if (tags is None or "kv_cache" in tags) and self.kv_cache is None:
            self.kv_cache = torch.zeros(4)

    def shutdown(self):
        if self.weight_transfer_engine is not None:
            self.weight_transfer_engine.shutdown()


def worker_class(worker_extension_cls=None):
    """GpuWorker, with the extension class appended to its bases as WorkerWrapperBase does (no
    extension attribute may exist on the worker already)."""
    if not worker_extension_cls:
        return GpuWorker
    ext = worker_extension_cls
    if isinstance(ext, str):
        module, _, name = ext.rpartition(".")
        ext = getattr(importlib.import_module(module), name)
    for attr in dir(ext):
        if not attr.startswith("__"):
            assert not hasattr(GpuWorker, attr), f"Worker already has an attribute {attr}"
    return type("GpuWorkerWithExtension", (GpuWorker, ext), {})


# ---- vllm.v1.engine (EngineCore + AsyncLLM) ----

class StandinVllm:
    """The engine: `workers` GpuWorkers (tensor parallel ranks, each loads the whole stand-in
    model), built and loaded as vLLM does at start-up."""

    def __init__(self, weight_transfer_config=None, workers=1, model_factory=se.StandinLlama,
                 worker_extension_cls=None, device=None):
        self.vllm_config = VllmConfig(
            parallel_config=ParallelConfig(tensor_parallel_size=workers,
                                           worker_extension_cls=worker_extension_cls or ""),
            weight_transfer_config=weight_transfer_config)
        cls = worker_class(worker_extension_cls)
        self.workers = [cls(self.vllm_config, rank=r, device=device, model_factory=model_factory)
                        for r in range(workers)]
        for w in self.workers:
            w.init_worker()
            w.load_model()
        self.weight_version = "default"
        self.paused = False
        self.sleeping_tags = set()
        self.events = []
        self._lock = threading.Lock()

    @property
    def models(self):
        return [w.model_runner.model for w in self.workers]

    def record(self, *event):
        with self._lock:
            self.events.append(event)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        """Calls `method` on every worker at once (one thread each, as separate processes would
        run); a worker's exception becomes a plain Exception with its message."""
        results = [None] * len(self.workers)
        errors = [None] * len(self.workers)

        def call(i, worker):
            try:
                fn = method if callable(method) else getattr(worker, method)
                results[i] = fn(*args, **(kwargs or {}))
            except BaseException as e:  # noqa: B902
                errors[i] = e

        threads = [threading.Thread(target=call, args=(i, w), daemon=True)
                   for i, w in enumerate(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
            if t.is_alive():
                raise TimeoutError(f"collective_rpc {method} timed out")
        for e in errors:
            if e is not None:
                raise Exception(str(e))
        return results

    # weight transfer (AsyncLLM / EngineClient)
    def init_weight_transfer_engine(self, request):
        self.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": request.init_info})

    def start_weight_update(self):
        self.collective_rpc("start_weight_update")

    def update_weights(self, request):
        self.collective_rpc("update_weights", kwargs={"update_info": request.update_info})

    def finish_weight_update(self, weight_version=None):
        self.collective_rpc("finish_weight_update")
        if weight_version is not None:
            self.update_weight_version(weight_version)

    def update_weight_version(self, new_version):
        self.weight_version = new_version

    def get_weight_version(self):
        return self.weight_version

    # pause / resume
    def pause_generation(self, mode="abort", clear_cache=True):
        if mode not in ("abort", "wait", "keep"):
            raise ValueError(f"Invalid pause mode: {mode}")
        self.paused = True

    def resume_generation(self):
        self.paused = False

    def is_paused(self):
        return self.paused

    # sleep mode
    def sleep(self, level=1, mode="abort"):
        """Pauses scheduling (`mode` as pause_generation), then the workers sleep."""
        if mode not in ("abort", "wait", "keep"):
            raise ValueError(f"Invalid pause mode: {mode}")
        self.collective_rpc("sleep", kwargs={"level": level})
        self.sleeping_tags = ({"scheduling"} if level == 0
                              else {"weights", "kv_cache", "scheduling"})

    def wake_up(self, tags=None):
        """Wakes `tags` (None: all); scheduling resumes once no memory sleeps any more."""
        for tag in tags or ():
            if tag not in ("weights", "kv_cache", "scheduling"):
                raise ValueError(f"Invalid tag: {tag}")
        self.collective_rpc("wake_up", kwargs={"tags": tags})
        if tags is None:
            self.sleeping_tags.clear()
        else:
            self.sleeping_tags -= set(tags)
        if not self.sleeping_tags & {"weights", "kv_cache"}:
            self.sleeping_tags.discard("scheduling")

    def is_sleeping(self):
        return bool(self.sleeping_tags)

    def shutdown(self):
        for w in self.workers:
            w.shutdown()


# ---- the HTTP routes ----

class _HttpError(Exception):
    def __init__(self, status, body):
        super().__init__(body)
        self.status, self.body = status, body


def _bad_request(message):
    return _HttpError(400, {"error": {"message": message, "type": "BadRequestError",
                                      "code": 400, "param": None}})


def _field(body, name, required=True):
    if not isinstance(body, dict) or (required and name not in body):
        raise _bad_request(f"Missing '{name}' in request body")
    return body.get(name)


def _routes(vllm):
    def init(body, query):
        vllm.init_weight_transfer_engine(WeightTransferInitRequest(_field(body, "init_info")))
        return {"message": "Weight transfer initialized"}

    def start(body, query):
        vllm.start_weight_update()
        return {"message": "Weight update started"}

    def update(body, query):
        vllm.update_weights(WeightTransferUpdateRequest(_field(body, "update_info")))
        return {"message": "Weights updated"}

    def finish(body, query):
        version = body.get("weight_version") if isinstance(body, dict) else None
        vllm.finish_weight_update(version)
        return {"message": "Weight update finished"}

    def set_version(body, query):
        version = _field(body, "new_version")
        vllm.update_weight_version(version)
        return {"success": True, "new_version": version}

    def pause(body, query):
        mode = query.get("mode", ["abort"])[-1]
        clear = query.get("clear_cache", ["true"])[-1].lower() != "false"
        try:
            vllm.pause_generation(mode=mode, clear_cache=clear)
        except ValueError as e:
            raise _HttpError(400, {"error": str(e)})
        except Exception as e:  # noqa: B902
            raise _HttpError(500, {"error": str(e)})
        vllm.record("pause", mode, clear)
        return {"status": "paused"}

    def resume(body, query):
        vllm.resume_generation()
        vllm.record("resume")
        return {"status": "resumed"}

    def sleep(body, query):
        level = int(query.get("level", ["1"])[-1])
        vllm.sleep(level=level, mode=query.get("mode", ["abort"])[-1])
        vllm.record("sleep", level)
        return None

    def wake_up(body, query):
        tags = query.get("tags")
        vllm.wake_up(tags)
        vllm.record("wake_up", tuple(tags) if tags else None)
        return None

    def collective_rpc(body, query):
        method = _field(body, "method")
        results = vllm.collective_rpc(method, timeout=body.get("timeout"),
                                      args=tuple(body.get("args") or ()),
                                      kwargs=body.get("kwargs") or {})
        if all(r is None for r in results):
            return None
        return {"results": [r if _jsonable(r) else str(r) for r in results]}

    def world_size(body, query):
        return {"world_size": len(vllm.workers)}

    return {
        ("POST", "/init_weight_transfer_engine"): ("init", init),
        ("POST", "/start_weight_update"): ("start", start),
        ("POST", "/update_weights"): ("update", update),
        ("POST", "/finish_weight_update"): ("finish", finish),
        ("POST", "/update_weight_version"): ("update_weight_version", set_version),
        ("GET", "/weight_info"): (None, lambda b, q: {"weight_version": vllm.get_weight_version()}),
        ("POST", "/pause"): (None, pause),
        ("POST", "/resume"): (None, resume),
        ("GET", "/is_paused"): (None, lambda b, q: {"is_paused": vllm.is_paused()}),
        ("POST", "/sleep"): (None, sleep),
        ("POST", "/wake_up"): (None, wake_up),
        ("GET", "/is_sleeping"): (None, lambda b, q: {"is_sleeping": vllm.is_sleeping()}),
        ("GET", "/get_world_size"): (None, world_size),
        ("POST", "/collective_rpc"): ("collective_rpc", collective_rpc),
    }


def _jsonable(value):
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


class StandinServer:
    """StandinVllm's HTTP server on 127.0.0.1 (a free port); `url`; close() stops it."""

    def __init__(self, vllm):
        self.vllm = vllm
        routes = _routes(vllm)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self, method):
                parsed = urlparse(self.path)
                entry = routes.get((method, parsed.path))
                status, answer = 200, None
                try:
                    if entry is None:
                        raise _HttpError(404, {"detail": "Not Found"})
                    length = int(self.headers.get("Content-Length") or 0)
                    raw = self.rfile.read(length) if length else b""
                    try:
                        body = json.loads(raw) if raw.strip() else {}
                    except ValueError:
                        raise _bad_request("Invalid JSON format")
                    name, fn = entry
                    if name is not None:
                        vllm.record(name)
                    answer = fn(body, parse_qs(parsed.query))
                except _HttpError as e:
                    status, answer = e.status, e.body
                except (ValueError, TypeError) as e:  # raised in the API process
                    status, answer = 400, {"error": {"message": str(e), "type": "BadRequestError",
                                                     "code": 400, "param": None}}
                except Exception as e:  # noqa: B902 - vLLM's catch-all handler
                    status, answer = 500, {"error": {"message": str(e),
                                                     "type": "InternalServerError",
                                                     "code": 500, "param": None}}
                if status != 200:
                    vllm.record("error", parsed.path, status)
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)
