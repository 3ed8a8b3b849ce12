"""ckpt_engine.sglang_plugin: an SGLang plugin. SGLang's TP workers then receive versions from
ckpt-engined through the checkpoint-engine route `POST /update_weights_from_ipc`.

SGLang (with the plugin framework, sglang.srt.plugins) runs every entry point of the group
"sglang.srt.plugins" in each of its processes, the scheduler (TP worker) processes included,
then applies the hooks they registered. register() below is that entry point:

    # pyproject.toml of the package that ships ckpt_engine (pip install makes it visible)
    [project.entry-points."sglang.srt.plugins"]
    ckpt_engine = "ckpt_engine.sglang_plugin:register"

or, for a copy of ckpt_engine that is not pip-installed, write the same entry point as a
.dist-info folder next to the package (importlib.metadata finds it on sys.path / PYTHONPATH):

    python3 -m ckpt_engine.sglang_plugin /opt/ckpt-engine/python    # the folder on PYTHONPATH

`SGLANG_PLUGINS`, when set, is an allowlist of entry point names: it must then name ckpt_engine.

register() hooks two SGLang methods (HookRegistry, AROUND and AFTER):
- `sglang.srt.managers.tp_worker.BaseTpWorker.update_weights_from_ipc(self, recv_req)` (on
  older SGLang defined on TpModelWorker: the class that defines it is hooked). When
  `recv_req.zmq_handles` holds the key "ckpt-engine" (its value: the daemon's socket, "" for
  $CKPT_SOCKET or the default path), this process receives one version from the daemon into
  `self.model_runner.model`: attach once (the model's GPU, engine "sglang"), restore the
  checkpoint layout of repacked (quantized) parameters when the first tensor arrives
  (`sglang.srt.model_loader.utils.restore_weights_before_loading`, if this SGLang has it),
  `model.load_weights(views)` bucket by bucket, then the post-load step of SGLang's own
  checkpoint-engine worker (each module's `quant_method.process_weights_after_loading(module)`
  inside `device_loading_context`, then `model.post_load_weights()` if the model has it), then
  report the version loaded. It returns (success, message) and never raises: a failure is
  reported to the daemon (its update fails naming this worker) and comes back to the caller of
  the route as `{"success": false, "message": ...}` (HTTP 400). Any other zmq_handles (real
  checkpoint-engine's GPU UUIDs) go to SGLang's own method.
- `sglang.srt.model_executor.model_runner.ModelRunner.load_model(self)`: after the model is
  built, the process attaches to the daemon ($CKPT_SOCKET or the default socket; skipped when
  that socket does not exist, or when CKPT_SGLANG_ATTACH_AT_START=0), so that the daemon knows
  every TP worker before the first update. A failed attach is only logged; the first update
  then attaches.

Other zmq_handles keys the hook reads (all strings, all optional): "ckpt-engine/version" (the
version the update sends: checked to exist first, and skipped when this worker holds it already
unless "ckpt-engine/force" is "1"), "ckpt-engine/timeout" (seconds to wait for each bucket, the
first included; default 600). ckpt_engine.sglang.update_server() fills them in.

Without SGLang's HookRegistry (SGLang before the plugin framework), register() patches the
methods directly; install() does the same at any time. Something must then call it in every
scheduler process (e.g. a sitecustomize.py); on such SGLang the custom weight loader
(ckpt_engine.sglang.load_weights) is the simpler path.

Written from a reading of SGLang's source of 2026 (plugin framework of PR #21388, the
checkpoint-engine worker and routes); tested only against a stand-in
(tests/python/sglang_standin.py). SGLang is imported only by register() / install() and the
hooks, torch only by the hooks.
"""

import functools
import itertools
import os
import sys

from . import FAILED_PRECONDITION, NOT_FOUND, UNAVAILABLE, CkptError, Client, _adapter
from . import sglang as _sg

KEY = _sg.IPC_KEY
KEY_VERSION, KEY_FORCE, KEY_TIMEOUT = _sg.IPC_KEY_VERSION, _sg.IPC_KEY_FORCE, _sg.IPC_KEY_TIMEOUT

ENTRY_POINT_GROUP = "sglang.srt.plugins"
ENTRY_POINT_NAME = "ckpt_engine"
ENTRY_POINT = "ckpt_engine.sglang_plugin:register"

TP_WORKER_MODULE = "sglang.srt.managers.tp_worker"
# The classes that may define update_weights_from_ipc, newest layout first.
TP_WORKER_CLASSES = ("BaseTpWorker", "TpModelWorker")
IPC_METHOD = "update_weights_from_ipc"
LOAD_MODEL_TARGET = "sglang.srt.model_executor.model_runner.ModelRunner.load_model"

# CKPT_SGLANG_ATTACH_AT_START=0: attach at the first update instead of after the model load.
ATTACH_AT_START_ENV = "CKPT_SGLANG_ATTACH_AT_START"
DEFAULT_SOCKET = "/run/ckpt-engine/ckpt-engined.sock"
# The attach after the model load gives up after this long (the first update tries again).
START_ATTACH_TIMEOUT_S = 10.0
DEFAULT_TIMEOUT_S = 600.0

_MARK = "__ckpt_engine_hook__"
_END = object()


# ---- registration ----

def _ipc_targets():
    """Dotted paths of the update_weights_from_ipc methods to hook: those defined by the TP worker
    classes of this SGLang (the newest layout's path when the module cannot be imported)."""
    try:
        module = __import__(TP_WORKER_MODULE, fromlist=["_"])
    except Exception:  # noqa: B902 - any import failure: let the registry report the target
        _adapter.log.warning("ckpt-engine: cannot import %s", TP_WORKER_MODULE, exc_info=True)
        return [f"{TP_WORKER_MODULE}.{TP_WORKER_CLASSES[0]}.{IPC_METHOD}"]
    targets = [f"{TP_WORKER_MODULE}.{name}.{IPC_METHOD}" for name in TP_WORKER_CLASSES
               if IPC_METHOD in vars(getattr(module, name, object))]
    if not targets:
        _adapter.log.error("ckpt-engine: %s defines no %s on %s: the SGLang plugin is inactive",
                           TP_WORKER_MODULE, IPC_METHOD, " or ".join(TP_WORKER_CLASSES))
    return targets


def _attach_at_start():
    return os.environ.get(ATTACH_AT_START_ENV, "1").strip().lower() not in ("0", "false", "no",
                                                                             "off")


def register():
    """The SGLang plugin entry point (group "sglang.srt.plugins"): registers the hooks with
    SGLang's HookRegistry, which applies them once every plugin ran. A target the registry has
    applied already (this called after load_plugins) is patched directly. Without the registry,
    patches directly (install()). Returns the hooked targets."""
    try:
        from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    except ImportError:
        return install()
    hooks = [(t, around_update_weights_from_ipc, HookType.AROUND) for t in _ipc_targets()]
    if _attach_at_start():
        hooks.append((LOAD_MODEL_TARGET, after_load_model, HookType.AFTER))
    patched = getattr(HookRegistry, "_patched", set())
    for target, hook, kind in hooks:
        if target in patched:
            _patch(target, hook, kind.name)
        else:
            HookRegistry.register(target, hook, kind)
    return [t for t, _, _ in hooks]


def install():
    """Patches SGLang's methods now, without its HookRegistry (idempotent): for SGLang without
    the plugin framework (call it in every scheduler process), or tests. Returns the targets."""
    targets = [(t, around_update_weights_from_ipc, "AROUND") for t in _ipc_targets()]
    if _attach_at_start():
        targets.append((LOAD_MODEL_TARGET, after_load_model, "AFTER"))
    done = []
    for target, hook, kind in targets:
        try:
            _patch(target, hook, kind)
            done.append(target)
        except Exception:  # noqa: B902 - a missing target is logged, as SGLang's registry does
            _adapter.log.exception("ckpt-engine: cannot hook %s", target)
    return done


def _patch(target, hook, kind):
    """Wraps `target` (module.Class.method) with `hook` in place: AROUND hook(original, *a, **k),
    AFTER hook(result, *a, **k) (its non-None return replaces the result)."""
    owner_path, _, name = target.rpartition(".")
    module_path, _, class_name = owner_path.rpartition(".")
    owner = getattr(__import__(module_path, fromlist=["_"]), class_name)
    original = getattr(owner, name)
    if getattr(original, _MARK, False):
        return
    if kind == "AROUND":
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            return hook(original, *args, **kwargs)
    elif kind == "AFTER":
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            changed = hook(result, *args, **kwargs)
            return result if changed is None else changed
    else:
        raise ValueError(f"unknown hook kind {kind!r}")
    setattr(wrapper, _MARK, True)
    setattr(owner, name, wrapper)


# ---- the hooks (run in SGLang's scheduler / TP worker process) ----

def _default_socket():
    return os.environ.get("CKPT_SOCKET") or DEFAULT_SOCKET


def after_load_model(result, model_runner, *args, **kwargs):
    """AFTER ModelRunner.load_model: attaches this process to the daemon (best effort)."""
    try:
        socket = _default_socket()
        if not os.path.exists(socket):
            _adapter.log.info("ckpt-engine: no daemon socket at %s yet; this SGLang worker "
                              "attaches at its first update", socket)
            return None
        model = getattr(model_runner, "model", None)
        if model is None:
            return None
        w = _sg.attach(socket=socket, device=_sg._model_device(model),
                       timeout=START_ATTACH_TIMEOUT_S)
        _adapter.log.info("ckpt-engine: SGLang worker pid %d attached to %s (%r)", os.getpid(),
                          socket, w)
    except Exception:  # noqa: B902 - never fail SGLang's model load
        _adapter.log.warning("ckpt-engine: attaching after the model load failed; the first "
                             "update attaches", exc_info=True)
    return None


def around_update_weights_from_ipc(original, tp_worker, recv_req, *args, **kwargs):
    """AROUND update_weights_from_ipc: our key in recv_req.zmq_handles -> receive from the
    daemon, return (success, message); anything else -> SGLang's own method."""
    handles = getattr(recv_req, "zmq_handles", None)
    if not isinstance(handles, dict) or KEY not in handles:
        return original(tp_worker, recv_req, *args, **kwargs)
    try:
        return True, _receive(tp_worker, handles)
    except Exception as e:  # noqa: B902 - never raise in SGLang's scheduler loop
        if isinstance(e, CkptError) and e.code == UNAVAILABLE:
            _sg.detach()  # the daemon ended the stream: attach afresh next time
        text = " ".join(f"{type(e).__name__}: {e}".split())
        _adapter.log.error("ckpt-engine: the update of this SGLang worker (pid %d) failed: %s",
                           os.getpid(), text)
        return False, f"ckpt-engine: SGLang worker pid {os.getpid()}: {text}"


def _weight_cache_mode(tp_worker):
    for holder in (tp_worker, getattr(tp_worker, "model_runner", None)):
        args = getattr(holder, "server_args", None)
        if args is not None:
            return getattr(args, "weight_cache_mode", None)
    return None


def _receive(tp_worker, handles):
    mode = _weight_cache_mode(tp_worker)
    if mode not in (None, "", "off"):
        raise CkptError(FAILED_PRECONDITION,
                        f"--weight-cache-mode {mode}: SGLang's weight cache refuses in-place "
                        "updates, and so does ckpt-engine")
    socket = handles.get(KEY) or None
    version = _adapter.as_version(handles.get(KEY_VERSION) or 0, KEY_VERSION)
    force = _adapter.as_bool(handles.get(KEY_FORCE) or "0", KEY_FORCE)
    timeout = _adapter.as_timeout(handles.get(KEY_TIMEOUT) or DEFAULT_TIMEOUT_S, KEY_TIMEOUT)
    model = tp_worker.model_runner.model
    checked = False
    for attempt in (1, 2):
        w = _sg.attach(socket=socket, device=_sg._model_device(model))
        if version and not force and w.version == version:
            return f"ckpt-engine: version {version} is loaded already (pid {os.getpid()})"
        if version and not checked:
            _check_exists(socket, version)
            checked = True
        loader = _Loader(model)
        try:
            loaded = _adapter.load_version(w, loader, timeout, lambda: post_load(model),
                                           version=version, force=force)
            break
        except CkptError as e:
            # The daemon had closed this worker's stream before this update (it gave up on it
            # after ack_timeout, or restarted; buckets it had queued may still have come out
            # first): attach again, once, and receive the whole version.
            if e.code != UNAVAILABLE or attempt == 2:
                raise
            _adapter.log.info("ckpt-engine: the daemon closed this worker's stream (%s); "
                              "attaching again", e.message)
            _sg.detach()
    if version and loaded != version:
        raise CkptError(FAILED_PRECONDITION,
                        f"the daemon sent version {loaded}, not the requested {version} (another "
                        f"update ran meanwhile); this worker now holds version {loaded}")
    return f"ckpt-engine: loaded version {loaded} (pid {os.getpid()})"


def _check_exists(socket, version):
    """Fails fast (NOT_FOUND) for a version the daemon does not hold, instead of waiting for an
    update that cannot come. Other errors (e.g. a uid with only the worker role) are ignored."""
    try:
        with Client(socket=socket) as client:
            client.get_version(version)
    except CkptError as e:
        if e.code == NOT_FOUND:
            raise CkptError(NOT_FOUND, f"version {version}: {e.message}") from None
        _adapter.log.debug("ckpt-engine: cannot check version %d: %s", version, e)


class _Loader:
    """model.load_weights, restoring the checkpoint layout of repacked parameters once the first
    tensor arrived (not before: an update that never comes leaves the model as it was)."""

    def __init__(self, model):
        self.model = model

    def load_weights(self, pairs):
        first = next(pairs, _END)
        if first is _END:
            return self.model.load_weights(iter(()))
        restore = _sglang_attr("sglang.srt.model_loader.utils", "restore_weights_before_loading")
        if restore is not None:
            restore(self.model)
        return self.model.load_weights(itertools.chain([first], pairs))


def _sglang_attr(module, name):
    """module.name, or None where this SGLang lacks it."""
    try:
        return getattr(__import__(module, fromlist=["_"]), name, None)
    except ImportError:
        return None


def post_load(model):
    """The post-load step of SGLang's checkpoint-engine worker: each module's
    quant_method.process_weights_after_loading(module) (inside device_loading_context where
    this SGLang has it), then model.post_load_weights() if defined; then the hook of
    ckpt_engine.sglang.set_post_load_hook, if any. Raises what they raise (the update fails)."""
    import torch
    device = None
    for p in model.parameters():
        device = p.device
        break
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if (
            torch.cuda.is_available()) else torch.device("cpu")
    loading_context = _sglang_attr("sglang.srt.model_loader.loader", "device_loading_context")
    for _, module in model.named_modules():
        quant_method = getattr(module, "quant_method", None)
        if quant_method is None:
            continue
        if loading_context is not None:
            with loading_context(module, device):
                quant_method.process_weights_after_loading(module)
        else:
            quant_method.process_weights_after_loading(module)
    if hasattr(model, "post_load_weights"):
        model.post_load_weights()
    hook = _sg._post_load
    if hook is not None:
        hook(model)


# ---- registering the entry point without pip ----

def write_entry_point(folder):
    """Writes a minimal .dist-info into `folder` (a folder on the engine's sys.path, e.g. the
    one holding ckpt_engine/) that declares ENTRY_POINT in the group "sglang.srt.plugins", so
    that SGLang's loader (importlib.metadata.entry_points) finds it without pip. Returns its
    path."""
    info = os.path.join(os.fspath(folder), "ckpt_engine_sglang_plugin-0.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: ckpt-engine-sglang-plugin\nVersion: 0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write(f"[{ENTRY_POINT_GROUP}]\n{ENTRY_POINT_NAME} = {ENTRY_POINT}\n")
    return info


def main(argv):
    if len(argv) != 1 or argv[0].startswith("-"):
        sys.stderr.write("usage: python3 -m ckpt_engine.sglang_plugin FOLDER\n  writes the SGLang "
                         "plugin's entry point into FOLDER (a folder on SGLang's PYTHONPATH)\n")
        return 2
    print(write_entry_point(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
