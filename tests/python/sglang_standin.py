"""A stand-in for an SGLang server of 2026, for tests of ckpt_engine's SGLang plugin without SGLang.

    python3 sglang_standin.py --model-path standin --load-format dummy --tp 2 \\
        --checkpoint-engine-wait-weights-before-ready --host 127.0.0.1 --port 0 --port-file F

It mirrors what the plugin path touches of SGLang, with SGLang's names and in SGLang's order, as
docs/engines.md describes them (from a reading of SGLang's source; SGLang itself cannot be
installed where this was written):

- Modules under SGLang's names, put into sys.modules of the stand-in's own processes only:
  `sglang.srt.plugins` (load_plugins(): the entry points of the group "sglang.srt.plugins",
  found by importlib.metadata, filtered by the SGLANG_PLUGINS allowlist, each called, then
  HookRegistry.apply_hooks(); once per process), `sglang.srt.plugins.hook_registry`
  (HookRegistry.register(target, hook, HookType.BEFORE|AFTER|AROUND|REPLACE), apply_hooks()
  resolving dotted targets with pkgutil.resolve_name, `_patched`), `sglang.srt.managers.tp_worker`
  (BaseTpWorker.update_weights_from_ipc(recv_req) -> model_runner.update_weights_from_ipc;
  TpModelWorker(BaseTpWorker) with model_runner and server_args),
  `sglang.srt.model_executor.model_runner` (ModelRunner.load_model() builds the model; its
  update_weights_from_ipc is SGLang's checkpoint-engine path: it looks its device UUID up in
  zmq_handles and fails, as SGLang does, when it is absent; it has no ZMQ receiver),
  `sglang.srt.model_loader.loader.device_loading_context`,
  `sglang.srt.model_loader.utils.restore_weights_before_loading`, and
  `sglang.srt.managers.io_struct.UpdateWeightsFromIPCReqInput(zmq_handles, flush_cache=True,
  weight_version=None, torch_empty_cache=False)`.
- launch_server: load_plugins() in the main process; one scheduler process per TP rank
  (multiprocessing, spawn), each running run_scheduler_process: load_plugins(), then
  Scheduler(TpModelWorker(ModelRunner(...))) (the model: tests/python/standin_engine.py's
  StandinLlama with a quant_method on some modules and post_load_weights; "dummy" weights), then
  "ready"; then the HTTP server (the routes below) and the TokenizerManager; _wait_and_warmup on
  a thread: with --checkpoint-engine-wait-weights-before-ready it polls initial_weights_loaded
  (every 0.05 s; SGLang: 1 s) for SGLANG_WAIT_WEIGHTS_READY_TIMEOUT (120) seconds, on timeout
  logs an error and goes on; then a warmup generate; then status Up.
- POST /update_weights_from_ipc: TokenizerManager.update_weights_from_ipc (asserts dp_size 1;
  while paused it sends the request at once, else under model_update_lock's writer lock) sends
  the request to the rank-0 scheduler, which broadcasts it to the other TP ranks; each runs
  Scheduler.update_weights_from_ipc: tp_worker.update_weights_from_ipc(recv_req) -> (success,
  message); on success the cache flush when flush_cache (the flush asserts when paused in place:
  the stand-in acts as if an in-place pause held running requests, and the scheduler dies as
  SGLang's does), then a barrier; rank 0 replies with ITS result only. The tokenizer catches
  errors as "IPC weight update failed: ...", on success with weight_version sets it and adds
  " Weight version updated to X."; the handler sets initial_weights_loaded on success and
  answers {"success", "message"} with 200, else 400.
- /pause_generation {"mode": "abort"|"retract"|"in_place"}, /continue_generation,
  GET /get_weight_version, GET /health (503 until Up), GET /ping (200), POST /generate (text
  in, meta_info.weight_version out).
- Test-only: GET /standin/state: the tokenizer's route log, and per TP rank its pid, event log,
  applied hook targets and every parameter's bytes (hex).
"""

import argparse
import contextlib
import dataclasses
import enum
import functools
import importlib
import importlib.metadata
import json
import logging
import multiprocessing
import os
import pkgutil
import signal
import sys
import threading
import time
import types
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

log = logging.getLogger("sglang_standin")

POLL_S = 0.05


# ---- sglang.srt.plugins.hook_registry ----

class HookType(enum.Enum):
    BEFORE = "before"
    AFTER = "after"
    AROUND = "around"
    REPLACE = "replace"


def _wrap_fn(original, hook, hook_type):
    if hook_type == HookType.REPLACE:
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            return hook(*args, **kwargs)
    elif hook_type == HookType.BEFORE:
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            changed = hook(*args, **kwargs)
            if changed is not None:
                args, kwargs = changed
            return original(*args, **kwargs)
    elif hook_type == HookType.AFTER:
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            changed = hook(result, *args, **kwargs)
            return result if changed is None else changed
    elif hook_type == HookType.AROUND:
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            return hook(original, *args, **kwargs)
    else:
        raise ValueError(f"unknown hook type {hook_type}")
    wrapper.__wrapped__ = original
    return wrapper


class HookRegistry:
    """SGLang's HookRegistry: register() during load_plugins, apply_hooks() once after."""

    _hooks = {}
    _patched = set()

    @classmethod
    def register(cls, target, hook, hook_type=HookType.AFTER):
        cls._hooks.setdefault(target, []).append((hook_type, hook))

    @classmethod
    def apply_hooks(cls):
        for target, hooks in sorted(cls._hooks.items()):
            if target in cls._patched:
                continue
            try:
                obj_path, attr = target.rsplit(".", 1)
                obj = pkgutil.resolve_name(obj_path)
                wrapped = getattr(obj, attr)
                for hook_type, hook in sorted(hooks, key=lambda h: h[0] != HookType.REPLACE):
                    wrapped = _wrap_fn(wrapped, hook, hook_type)
                setattr(obj, attr, wrapped)
                cls._patched.add(target)
                log.info("Applied %d hook(s) to %s", len(hooks), target)
            except Exception:  # noqa: B902 - SGLang only logs a target that fails
                log.exception("Failed to apply hooks to %s", target)


# ---- sglang.srt.plugins ----

GENERAL_PLUGINS_GROUP = "sglang.srt.plugins"
_plugins_loaded = False


def load_plugins():
    """Runs every entry point of the group "sglang.srt.plugins" (SGLANG_PLUGINS: an allowlist of
    names), then HookRegistry.apply_hooks(). Once per process."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    allowed = os.environ.get("SGLANG_PLUGINS")
    allowed = {x.strip() for x in allowed.split(",") if x.strip()} if allowed else None
    for ep in importlib.metadata.entry_points(group=GENERAL_PLUGINS_GROUP):
        if allowed is not None and ep.name not in allowed:
            log.info("Skipping plugin %s (not in SGLANG_PLUGINS)", ep.name)
            continue
        try:
            func = ep.load()
            func()
            log.info("Executed general plugin: %s", ep.name)
        except Exception:  # noqa: B902 - SGLang logs a failing plugin and goes on
            log.exception("Failed to execute general plugin: %s", ep.name)
    HookRegistry.apply_hooks()


# ---- sglang.srt.managers.io_struct ----

@dataclasses.dataclass
class UpdateWeightsFromIPCReqInput:
    zmq_handles: Dict[str, str]
    flush_cache: bool = True
    weight_version: Optional[str] = None
    torch_empty_cache: bool = False


@dataclasses.dataclass
class UpdateWeightsFromIPCReqOutput:
    success: bool
    message: str


# ---- sglang.srt.model_loader ----

_loading_context = threading.local()


@contextlib.contextmanager
def device_loading_context(module, target_device):
    _loading_context.device = str(target_device)
    try:
        yield module
    finally:
        _loading_context.device = None


def restore_weights_before_loading(model):
    model.events.append(["restore_weights_before_loading"])


# ---- the model ----

class _QuantMethod:
    """A quant_method whose process_weights_after_loading records its call."""

    def __init__(self, events, name):
        self.events, self.name = events, name

    def process_weights_after_loading(self, module):
        self.events.append(["process_weights_after_loading", self.name,
                            getattr(_loading_context, "device", None)])


def build_model(load_format):
    import standin_engine as se
    import torch

    class StandinSglangModel(se.StandinLlama):
        def __init__(self):
            super().__init__()
            self.events = []
            for i, layer in enumerate(self.model.layers):
                layer.mlp.down_proj.quant_method = _QuantMethod(
                    self.events, f"model.layers.{i}.mlp.down_proj")

        def load_weights(self, weights):
            self.events.append(["load_weights"])
            return super().load_weights(weights)

        def post_load_weights(self):
            self.events.append(["post_load_weights"])

    model = StandinSglangModel()
    if load_format == "dummy":  # SGLang fills dummy weights with random values
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.rand(p.shape, generator=g).to(p.dtype))
    return model


# ---- sglang.srt.model_executor.model_runner ----

class ModelRunner:
    def __init__(self, server_args, tp_rank):
        self.server_args, self.tp_rank = server_args, tp_rank
        self.device_uuid = f"GPU-standin-{tp_rank}"
        self.model = None
        self.load_model()

    def load_model(self):
        self.model = build_model(self.server_args.load_format)

    def update_weights_from_ipc(self, recv_req):
        """SGLang's checkpoint-engine path (SGLangCheckpointEngineWorkerExtensionImpl)."""
        self.model.events.append(["model_runner.update_weights_from_ipc",
                                  sorted(recv_req.zmq_handles)])
        try:
            if self.device_uuid not in recv_req.zmq_handles:
                raise ValueError(f"Device UUID {self.device_uuid} not found in zmq_handles: "
                                 f"{list(recv_req.zmq_handles)}")
            raise RuntimeError("the stand-in has no checkpoint-engine receiver")
        except Exception as e:  # noqa: B902 - as SGLang's weight updater
            log.error("IPC weight update failed: %s", e)
            return False, str(e)


# ---- sglang.srt.managers.tp_worker ----

class BaseTpWorker:
    @property
    def model_runner(self):
        raise NotImplementedError

    def update_weights_from_ipc(self, recv_req):
        success, message = self.model_runner.update_weights_from_ipc(recv_req)
        return success, message


class TpModelWorker(BaseTpWorker):
    def __init__(self, server_args, tp_rank):
        self.server_args, self.tp_rank = server_args, tp_rank
        self._model_runner = ModelRunner(server_args, tp_rank)

    @property
    def model_runner(self):
        return self._model_runner


# ---- the modules under SGLang's names ----

def install_sglang_modules():
    """Puts this file's classes into sys.modules under SGLang's module names (this process)."""
    layout = {
        "sglang": {},
        "sglang.srt": {},
        "sglang.srt.plugins": {"load_plugins": load_plugins,
                               "GENERAL_PLUGINS_GROUP": GENERAL_PLUGINS_GROUP},
        "sglang.srt.plugins.hook_registry": {"HookRegistry": HookRegistry, "HookType": HookType},
        "sglang.srt.managers": {},
        "sglang.srt.managers.io_struct": {
            "UpdateWeightsFromIPCReqInput": UpdateWeightsFromIPCReqInput,
            "UpdateWeightsFromIPCReqOutput": UpdateWeightsFromIPCReqOutput},
        "sglang.srt.managers.tp_worker": {"BaseTpWorker": BaseTpWorker,
                                          "TpModelWorker": TpModelWorker},
        "sglang.srt.model_executor": {},
        "sglang.srt.model_executor.model_runner": {"ModelRunner": ModelRunner},
        "sglang.srt.model_loader": {},
        "sglang.srt.model_loader.loader": {"device_loading_context": device_loading_context},
        "sglang.srt.model_loader.utils": {
            "restore_weights_before_loading": restore_weights_before_loading},
    }
    for name, attrs in layout.items():
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        module.__path__ = []  # a package: submodules resolve
        for key, value in attrs.items():
            setattr(module, key, value)
            if isinstance(value, type):
                value.__module__ = name
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


# ---- the scheduler process (one per TP rank) ----

class Scheduler:
    def __init__(self, server_args, tp_rank):
        self.server_args, self.tp_rank = server_args, tp_rank
        self.tp_worker = TpModelWorker(server_args, tp_rank)
        self.draft_worker = None
        self.paused_mode = None

    @property
    def events(self):
        return self.tp_worker.model_runner.model.events

    def flush_cache(self):
        self.events.append(["flush_cache"])
        # SGLang flushes only with no running request; an in-place pause keeps them running.
        return self.paused_mode != "in_place"

    def update_weights_from_ipc(self, recv_req):
        self.events.append(["scheduler.update_weights_from_ipc", recv_req.flush_cache,
                            recv_req.weight_version])
        success, message = self.tp_worker.update_weights_from_ipc(recv_req)
        if success and recv_req.flush_cache:
            assert self.flush_cache(), "Cache flush failed after updating weights"
        if not success:
            log.error(message)
        return UpdateWeightsFromIPCReqOutput(success=success, message=message)

    def handle(self, kind, fields):
        if kind == "update_weights_from_ipc":
            out = self.update_weights_from_ipc(UpdateWeightsFromIPCReqInput(**fields))
            return [out.success, out.message]
        if kind == "pause_generation":
            self.paused_mode = fields["mode"]
            self.events.append(["pause_generation", fields["mode"]])
            return None
        if kind == "continue_generation":
            self.paused_mode = None
            self.events.append(["continue_generation"])
            return None
        if kind == "generate":
            total = float(self.tp_worker.model_runner.model.lm_head.weight.float().sum())
            return {"text": f"{fields.get('text', '')} [{total:.4f}]"}
        if kind == "state":
            return self.state()
        raise ValueError(f"unknown request {kind!r}")

    def state(self):
        import torch
        model = self.tp_worker.model_runner.model
        params = {}
        for name, p in model.named_parameters():
            raw = p.detach().cpu().contiguous()
            if raw.element_size() == 2:
                raw = raw.view(torch.int16)
            params[name] = {"dtype": str(p.dtype).replace("torch.", ""), "shape": list(p.shape),
                            "hex": raw.numpy().tobytes().hex()}
        return {"pid": os.getpid(), "tp_rank": self.tp_rank, "events": list(self.events),
                "patched": sorted(HookRegistry._patched), "parameters": params}


def run_scheduler_process(server_args, tp_rank, parent, peers):
    """One TP rank: load_plugins(), the Scheduler, "ready"; rank 0 takes requests from the
    tokenizer and broadcasts them to the other ranks (`peers`); the others take them from
    rank 0 (`peers[0]`)."""
    logging.basicConfig(level=logging.INFO, format=f"[rank {tp_rank}] %(name)s: %(message)s")
    install_sglang_modules()
    load_plugins()
    scheduler = Scheduler(types.SimpleNamespace(**server_args), tp_rank)
    parent.send(["ready", os.getpid()])
    source = parent if tp_rank == 0 else peers[0]
    while True:
        try:
            kind, fields = source.recv()
        except EOFError:
            return
        if tp_rank == 0:
            for peer in peers:
                peer.send([kind, fields])
        result = scheduler.handle(kind, fields)
        if tp_rank == 0:
            results = [result] + [peer.recv() for peer in peers]  # the TP barrier
            parent.send(results if kind == "state" else result)
        else:
            source.send(result)


# ---- the main process: TokenizerManager and the HTTP server ----

class RWLock:
    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextlib.contextmanager
    def reader_lock(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def writer_lock(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class SchedulerDied(Exception):
    pass


class TokenizerManager:
    def __init__(self, server_args, conn):
        self.server_args = server_args
        self.initial_weights_loaded = not server_args.checkpoint_engine_wait_weights_before_ready
        self.model_update_lock = RWLock()
        self.is_pause = False
        self.is_pause_cond = threading.Condition()
        self.events = []
        self._conn = conn
        self._send_lock = threading.Lock()

    def send(self, kind, fields):
        with self._send_lock:
            try:
                self._conn.send([kind, fields])
                return self._conn.recv()
            except (EOFError, OSError) as e:
                raise SchedulerDied(f"the scheduler process died ({type(e).__name__})") from e

    def update_weights_from_ipc(self, obj):
        self.events.append(["update_weights_from_ipc", obj.flush_cache, obj.weight_version])
        fields = dataclasses.asdict(obj)
        try:
            assert self.server_args.dp_size == 1, "dp_size must be 1 for update weights from IPC"
            with self.is_pause_cond:
                is_paused = self.is_pause
                if is_paused:
                    success, message = self.send("update_weights_from_ipc", fields)
            if not is_paused:
                with self.model_update_lock.writer_lock():
                    success, message = self.send("update_weights_from_ipc", fields)
        except SchedulerDied:
            raise
        except Exception as e:  # noqa: B902 - as SGLang's tokenizer manager
            success, message = False, f"IPC weight update failed: {e}"
            log.error(message)
        if success and obj.weight_version is not None:
            self.server_args.weight_version = obj.weight_version
            message += f" Weight version updated to {obj.weight_version}."
        return success, message

    def pause_generation(self, mode):
        self.events.append(["pause_generation", mode])
        with self.is_pause_cond:
            self.is_pause = True
            self.send("pause_generation", {"mode": mode})

    def continue_generation(self):
        self.events.append(["continue_generation"])
        with self.is_pause_cond:
            self.is_pause = False
            self.send("continue_generation", {})
            self.is_pause_cond.notify_all()

    def generate(self, text):
        with self.is_pause_cond:
            self.is_pause_cond.wait_for(lambda: not self.is_pause)
        with self.model_update_lock.reader_lock():
            out = self.send("generate", {"text": text})
        out["meta_info"] = {"weight_version": self.server_args.weight_version}
        return out


class State:
    tokenizer_manager = None
    status = "Starting"


def _wait_and_warmup(server_args, state):
    tm = state.tokenizer_manager
    if server_args.checkpoint_engine_wait_weights_before_ready:
        timeout = float(os.environ.get("SGLANG_WAIT_WEIGHTS_READY_TIMEOUT", "120"))
        deadline = time.monotonic() + timeout
        while not tm.initial_weights_loaded and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if not tm.initial_weights_loaded:
            log.error("Weights are not ready after waiting %g seconds.", timeout)
    try:
        tm.generate("warmup")
    except SchedulerDied:
        log.exception("warmup failed")
        return
    state.status = "Up"
    log.info("The server is fired up and ready to roll!")


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            log.info("%s %s", self.address_string(), fmt % args)

        def reply(self, status, body=None):
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def body(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            return json.loads(raw) if raw else {}

        def do_GET(self):
            tm = state.tokenizer_manager
            if self.path == "/ping":
                self.reply(200)
            elif self.path == "/health":
                up = state.status == "Up"
                self.reply(200 if up else HTTPStatus.SERVICE_UNAVAILABLE, None)
            elif self.path == "/get_weight_version":
                self.reply(200, {"weight_version": tm.server_args.weight_version})
            elif self.path == "/standin/state":
                try:
                    ranks = tm.send("state", {})
                except SchedulerDied as e:
                    self.reply(500, {"error": str(e)})
                    return
                self.reply(200, {"events": tm.events, "ranks": ranks,
                                 "initial_weights_loaded": tm.initial_weights_loaded,
                                 "status": state.status})
            else:
                self.reply(404, {"detail": "Not Found"})

        def do_POST(self):
            tm = state.tokenizer_manager
            try:
                body = self.body()
            except ValueError:
                self.reply(422, {"detail": "body is not JSON"})
                return
            try:
                if self.path == "/update_weights_from_ipc":
                    try:
                        obj = UpdateWeightsFromIPCReqInput(**body)
                        handles = obj.zmq_handles
                        if not isinstance(handles, dict) or not all(
                                isinstance(k, str) and isinstance(v, str)
                                for k, v in handles.items()):
                            raise TypeError("zmq_handles must map str to str")
                    except TypeError as e:
                        self.reply(422, {"detail": str(e)})
                        return
                    success, message = tm.update_weights_from_ipc(obj)
                    content = {"success": success, "message": message}
                    if success:
                        if tm.initial_weights_loaded is False:
                            tm.initial_weights_loaded = True
                        self.reply(200, content)
                    else:
                        self.reply(HTTPStatus.BAD_REQUEST, content)
                elif self.path == "/pause_generation":
                    mode = body.get("mode", "abort")
                    if mode not in ("abort", "retract", "in_place"):
                        self.reply(422, {"detail": f"bad mode {mode!r}"})
                        return
                    tm.pause_generation(mode)
                    self.reply(200, {"message": "Generation paused successfully.",
                                     "status": "ok"})
                elif self.path == "/continue_generation":
                    tm.continue_generation()
                    self.reply(200, {"message": "Generation continued successfully.",
                                     "status": "ok"})
                elif self.path == "/generate":
                    self.reply(200, tm.generate(body.get("text", "")))
                else:
                    self.reply(404, {"detail": "Not Found"})
            except SchedulerDied as e:
                state.status = "UnHealthy"
                self.reply(500, {"error": str(e)})

    return Handler


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--tp", "--tp-size", dest="tp_size", type=int, default=1)
    parser.add_argument("--dp-size", type=int, default=1)
    parser.add_argument("--checkpoint-engine-wait-weights-before-ready", action="store_true")
    parser.add_argument("--weight-version", default="default")
    parser.add_argument("--weight-cache-mode", default="off")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--port-file", help="write the port listened on into this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[main] %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    install_sglang_modules()
    load_plugins()  # launch_server.py, before the server args are prepared

    server_args = {k: v for k, v in vars(args).items() if k not in ("host", "port", "port_file")}
    ctx = multiprocessing.get_context("spawn")
    parents, procs, rank0_peers, peer_of = [], [], [], {}
    for rank in range(1, args.tp_size):
        a, b = ctx.Pipe()
        rank0_peers.append(a)
        peer_of[rank] = b
    for rank in range(args.tp_size):
        mine, theirs = ctx.Pipe()
        peers = rank0_peers if rank == 0 else [peer_of[rank]]
        proc = ctx.Process(target=run_scheduler_process, args=(server_args, rank, theirs, peers),
                           name=f"sglang::scheduler_TP{rank}", daemon=True)
        proc.start()
        theirs.close()  # the child's ends stay open only there: its death is EOF here
        parents.append(mine)
        procs.append(proc)
    for conn in rank0_peers + list(peer_of.values()):
        conn.close()
    for rank, conn in enumerate(parents):
        if not conn.poll(120):
            raise SystemExit(f"scheduler TP{rank} did not get ready")
        kind, pid = conn.recv()
        log.info("scheduler TP%d ready (pid %d)", rank, pid)

    state = State()
    state.tokenizer_manager = TokenizerManager(types.SimpleNamespace(**server_args), parents[0])
    httpd = ThreadingHTTPServer((args.host, args.port), make_handler(state))
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, args.port_file)
    log.info("listening on %s:%d", args.host, port)
    threading.Thread(target=_wait_and_warmup, args=(state.tokenizer_manager.server_args, state),
                     daemon=True).start()
    try:
        httpd.serve_forever(poll_interval=0.1)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(10)


if __name__ == "__main__":
    main(sys.argv[1:])
