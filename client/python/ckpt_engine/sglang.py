"""ckpt_engine.sglang: SGLang workers receive checkpoint versions from ckpt-engined.

Two ways in; docs/engines.md has the details.

1. SGLang with the plugin framework (2026): the plugin ckpt_engine.sglang_plugin (an entry point
   of the group "sglang.srt.plugins") hooks the TP worker's `update_weights_from_ipc`, so the
   checkpoint-engine route `POST /update_weights_from_ipc` with {"zmq_handles": {"ckpt-engine":
   SOCKET}} makes every TP worker process receive the version from the daemon. Start the server
   as for checkpoint-engine:

       python -m sglang.launch_server --model-path MODEL --load-format dummy \\
           --checkpoint-engine-wait-weights-before-ready

   and from the process that runs the RL loop:

       import ckpt_engine.sglang as ces
       ces.update_server("http://127.0.0.1:30000", version=7)   # Client.update + the route

   update_server() asks the daemon for the update and POSTs the route at the same time (JSON
   over urllib; the bytes come through the daemon's staging slots, no pickle crosses
   processes), optionally between /pause_generation and /continue_generation. The first
   successful update releases the server's wait for its initial weights; the request's
   weight_version becomes SGLang's weight version (GET /get_weight_version).

2. The custom weight loader (older SGLang): SGLang calls a custom weight loader in every
   tensor-parallel worker process (its ModelRunner) when `update_weights_from_tensor` names it
   as `load_format`, provided the server was started with it on its list:

       python -m sglang.launch_server --model-path MODEL \\
           --custom-weight-loader ckpt_engine.sglang.load_weights
       # or: sglang.Engine(model_path=..., custom_weight_loader=["ckpt_engine.sglang.load_weights"])

   load_weights(model, named_tensors) attaches the worker to ckpt-engined (once per process,
   with the GPU its model lives on and engine "sglang"), receives one version as views into the
   daemon's staging slots and feeds them to `model.load_weights` (which fuses q/k/v and gate/up
   itself). The tensors SGLang passes are not weights but a small request built by
   request_tensors(): attach only, or update (version, force, timeout, socket).
   update_engine(engine, version) does it all from the process that owns the sglang.Engine:

       ces.update_engine(engine, version=7)   # attach, then `ckptctl update 7` + receive at once

   Using only: `--custom-weight-loader` (ServerArgs custom_weight_loader),
   `Engine.update_weights_from_tensor(named_tensors, load_format=None, flush_cache=True)` (HTTP:
   POST /update_weights_from_tensor), and ModelRunner calling `custom_loader(self.model,
   named_tensors)` with the tensors moved to its device. SGLang with weight-update sessions
   (PR #28710, 2026-06) refuses update_weights_from_tensor outside a session: wrap the calls in
   /begin_weight_update ... /end_weight_update (update_engine does, when the engine object has
   begin_weight_update and end_weight_update). SGLang runs no post-load step on this path
   (end_weight_update runs its quantization finalize); set_post_load_hook(fn) adds one
   (fn(model), e.g. for quantized models).

Tested only against stand-ins (tests/python/adapter_test.py, sglang_adapter_test.py with
sglang_standin.py): SGLang cannot be installed where this was written. SGLang is never imported
here (ckpt_engine.sglang_plugin imports it in SGLang's processes).
"""

import json
import os
import threading
import time
import urllib.error
import urllib.request

from . import (ABORTED, DEADLINE_EXCEEDED, FAILED_PRECONDITION, INVALID_ARGUMENT, UNAVAILABLE,
               UNKNOWN, CkptError, _adapter)
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

# The plugin's keys in the zmq_handles of POST /update_weights_from_ipc (all values strings):
# IPC_KEY: the daemon's socket ("" for the worker's $CKPT_SOCKET or the default path);
# IPC_KEY_VERSION: the version the update sends; IPC_KEY_FORCE: "1" to receive a version the
# worker holds already; IPC_KEY_TIMEOUT: seconds to wait for each bucket.
IPC_KEY = "ckpt-engine"
IPC_KEY_VERSION, IPC_KEY_FORCE, IPC_KEY_TIMEOUT = (
    IPC_KEY + "/version", IPC_KEY + "/force", IPC_KEY + "/timeout")
PAUSE_MODES = ("in_place", "retract", "abort")
# Seconds allowed for the routes other than the update itself.
HTTP_TIMEOUT_S = 60.0

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
    version = _adapter.as_version(version, "version")
    if version >= 2 ** 63:
        raise CkptError(INVALID_ARGUMENT, f"version {version} does not fit the request's int64")
    out.append((VERSION, torch.tensor([version], dtype=torch.int64)))
    out.append((FORCE, torch.tensor([1 if force else 0], dtype=torch.int64)))
    out.append((TIMEOUT_MS, torch.tensor([int(_adapter.as_timeout(timeout, "timeout",
                                                                   finite=True) * 1000)],
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
    engine's error.

    When the engine has begin_weight_update and end_weight_update (SGLang with weight-update
    sessions, which refuses update_weights_from_tensor outside one), both calls run inside one
    session; it is ended also when the update failed."""
    client, version = _adapter.resolve_version(socket, version)
    begin = getattr(engine, "begin_weight_update", None)
    end = getattr(engine, "end_weight_update", None)
    session = callable(begin) and callable(end)
    try:
        if session:
            begin()
        try:
            attach_engine(engine, socket=socket)
            report, engine_result = _adapter.update_alongside(
                client, version, force, timeout,
                lambda: engine.update_weights_from_tensor(
                    request_tensors(version=version, force=force, timeout=timeout,
                                    socket=socket),
                    load_format=LOAD_FORMAT, flush_cache=True))
        except BaseException:  # noqa: B902 - close the session, re-raise the update's error
            if session:
                try:
                    end()
                except Exception:  # noqa: B902
                    _adapter.log.exception("ckpt-engine: end_weight_update after a failed update")
            raise
        if session:
            report["session_result"] = end()
        report["engine_result"] = engine_result
        return report
    finally:
        client.close()


# ---- the driver's side of the plugin path (the process that runs the RL loop) ----

def ipc_request(version=0, socket=None, force=False, timeout=600.0, flush_cache=True,
                weight_version=None):
    """The JSON body of `POST /update_weights_from_ipc` that has every TP worker (with the plugin
    ckpt_engine.sglang_plugin) receive `version` from the daemon at `socket` (None: each worker's
    $CKPT_SOCKET or the default path). `weight_version`: SGLang's label for the new weights
    (None: str(version), or no label when version is 0)."""
    version = _adapter.as_version(version, "version")
    handles = {IPC_KEY: os.fsdecode(socket) if socket else ""}
    if version:
        handles[IPC_KEY_VERSION] = str(version)
    if force:
        handles[IPC_KEY_FORCE] = "1"
    # Every digit (":g" kept six: 1234567 s became 1234570).
    timeout = _adapter.as_timeout(timeout, "timeout")
    handles[IPC_KEY_TIMEOUT] = str(int(timeout)) if timeout.is_integer() else repr(timeout)
    body = {"zmq_handles": handles, "flush_cache": bool(flush_cache)}
    if weight_version is None and version:
        weight_version = str(version)
    if weight_version is not None:
        body["weight_version"] = str(weight_version)
    return body


def _call(url, path, body=None, timeout=HTTP_TIMEOUT_S, api_key=None):
    """One HTTP call to the SGLang server: {"path", "status", "body" (parsed JSON, else text),
    "error" (None, or why no answer came)}. POST with a JSON body, GET without one."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url.rstrip("/") + path, data=data, headers=headers,
                                     method="POST" if body is not None else "GET")
    out = {"path": path, "status": None, "body": None, "error": None}
    try:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                out["status"], raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            out["status"], raw = e.code, e.read()
    except (OSError, ValueError) as e:  # URLError, timeouts, refused connections, a bad url
        reason = getattr(e, "reason", e)
        out["error"] = f"{type(reason).__name__}: {reason}"
        return out
    text = raw.decode("utf-8", "replace")
    try:
        out["body"] = json.loads(text) if text else None
    except ValueError:
        out["body"] = text
    return out


def _call_ok(result):
    """Whether an HTTP call succeeded: 2xx, and no {"success": false}."""
    if result["error"] is not None or not 200 <= (result["status"] or 0) < 300:
        return False
    body = result["body"]
    return not (isinstance(body, dict) and body.get("success") is False)


def _describe(result):
    if result["error"] is not None:
        return f"{result['path']}: no answer ({result['error']})"
    body = result["body"]
    if isinstance(body, dict):
        detail = body.get("message") or body.get("detail") or body.get("error") or body
    else:
        detail = body
    return f"{result['path']}: HTTP {result['status']}: {detail}"


def _code_of(result):
    error = result["error"] or ""
    if "timed out" in error or "timeout" in error.lower():
        return DEADLINE_EXCEEDED
    return UNAVAILABLE if result["error"] is not None else ABORTED


def get_weight_version(url, api_key=None, timeout=HTTP_TIMEOUT_S):
    """SGLang's weight version (GET /get_weight_version)."""
    result = _call(url, "/get_weight_version", timeout=timeout, api_key=api_key)
    if not _call_ok(result):
        raise CkptError(_code_of(result), _describe(result))
    return result["body"]["weight_version"]


def pause_generation(url, mode="in_place", api_key=None, timeout=HTTP_TIMEOUT_S):
    """POST /pause_generation {"mode": mode}: "in_place" keeps running requests where they are
    (an update must then not flush the cache), "retract" or "abort". Returns the answer."""
    if mode not in PAUSE_MODES:
        raise CkptError(INVALID_ARGUMENT, f"pause mode must be one of {PAUSE_MODES}, not {mode!r}")
    result = _call(url, "/pause_generation", {"mode": mode}, timeout=timeout, api_key=api_key)
    if not _call_ok(result):
        raise CkptError(_code_of(result), _describe(result))
    return result["body"]


def continue_generation(url, api_key=None, timeout=HTTP_TIMEOUT_S):
    """POST /continue_generation. Returns the answer."""
    result = _call(url, "/continue_generation", {}, timeout=timeout, api_key=api_key)
    if not _call_ok(result):
        raise CkptError(_code_of(result), _describe(result))
    return result["body"]


def update_server(url, version=0, socket=None, flush_cache=None, weight_version=None,
                  force=False, pause=False, timeout=600.0, api_key=None):
    """Updates a running SGLang server (with the plugin ckpt_engine.sglang_plugin) to `version`
    (0: the newest committed one) from the process that runs the RL loop: asks the daemon at
    `socket` for the update (Client.update) and, at the same time, POSTs
    `{url}/update_weights_from_ipc` (ipc_request()), which has every TP worker receive it.

    `flush_cache`: flush SGLang's prefix cache after loading (None: yes, unless paused in place).
    `weight_version`: SGLang's label for the new weights (None: str(version)). `pause`: True (or
    a mode: "in_place", "retract", "abort"; True is "in_place") calls /pause_generation first and
    /continue_generation after, also when the update failed; "in_place" cannot flush the cache
    (SGLang's flush asserts that no request is running), so flush_cache=True with it is refused.
    `timeout`: seconds for the daemon's update and for each bucket in the workers. `api_key`:
    sent as a Bearer token (a server started with --api-key / --admin-api-key).

    Returns the daemon's report (Client.update) with "server": {"status", "success", "message"}
    (the route's answer), "weight_version", and "paused" (the pause mode or None). Raises
    CkptError naming both sides' failures (the daemon's: which workers failed and why; the
    route's: its HTTP status and message), with `.result` = {"daemon": report or None,
    "server": the route's answer}. A version the daemon does not hold fails (NOT_FOUND) before
    anything is sent to the server.

    The workers attach to the daemon when SGLang has loaded the model (the plugin's hook), so
    the daemon knows them all before this runs. While no worker is attached yet (the daemon
    started after the server, or CKPT_SGLANG_ATTACH_AT_START=0), the daemon's update is retried
    until the route returns: the workers attach when the route reaches them. With several TP
    workers attaching that way, the first to attach may start the update without the others
    (they then fail it by timing out): keep the attach at start for TP > 1. The route answers
    with the result of TP rank 0 only (SGLang's IPC route); the daemon's report, which this
    checks too, covers every worker.
    """
    if pause is True:
        pause = "in_place"
    elif pause is False or pause is None:
        pause = None
    elif pause not in PAUSE_MODES:
        raise CkptError(INVALID_ARGUMENT, f"pause must be True, False or one of {PAUSE_MODES}, "
                                          f"not {pause!r}")
    if flush_cache is None:
        flush_cache = pause != "in_place"
    elif flush_cache and pause == "in_place":
        raise CkptError(INVALID_ARGUMENT, "flush_cache=True cannot go with pause 'in_place': "
                                          "SGLang cannot flush the cache while paused requests "
                                          "hold it (pass flush_cache=False, or another mode)")
    timeout = _adapter.as_float(timeout, "timeout")
    force = _adapter.as_bool(force, "force")
    client, version = _adapter.resolve_version(socket, version)
    try:
        body = ipc_request(version, socket=socket, force=force, timeout=timeout,
                           flush_cache=flush_cache, weight_version=weight_version)
        if pause is not None:
            paused = _call(url, "/pause_generation", {"mode": pause}, api_key=api_key)
            if not _call_ok(paused):
                resumed = _call(url, "/continue_generation", {}, api_key=api_key)
                extra = "" if _call_ok(resumed) else f"; then {_describe(resumed)}"
                raise CkptError(_code_of(paused), f"SGLang update to version {version} not "
                                                  f"started: {_describe(paused)}{extra}")
        try:
            daemon, server = _update_both(client, url, version, force, timeout, body, api_key)
        finally:
            resumed = (_call(url, "/continue_generation", {}, api_key=api_key)
                       if pause is not None else None)
    finally:
        client.close()
    failures = []
    if "error" in daemon:
        failures.append(f"daemon: {daemon['error']}")
    if not _call_ok(server):
        failures.append(f"server {url}: {_describe(server)}")
    if resumed is not None and not _call_ok(resumed):
        failures.append(f"server {url}: {_describe(resumed)} (generation stays paused)")
    answer = {"status": server["status"], "success": _call_ok(server),
              "message": server["body"].get("message") if isinstance(server["body"], dict)
              else server["body"]}
    if failures:
        if "error" in daemon:
            code = getattr(daemon["error"], "code", UNKNOWN)
        else:
            code = _code_of(server if not _call_ok(server) else resumed)
        e = CkptError(code, f"SGLang update to version {version} failed: " + "; ".join(failures))
        e.result = {"daemon": daemon.get("report"), "server": answer}
        raise e
    report = daemon["report"]
    report["server"] = answer
    report["weight_version"] = body.get("weight_version")
    report["paused"] = pause
    return report


def _update_both(client, url, version, force, timeout, body, api_key):
    """Client.update on a thread of its own (retried while no worker is attached and the route
    has not returned) and the route on this one. Returns ({"report"} or {"error"}, the route's
    _call result)."""
    daemon = {}
    route_done = threading.Event()
    deadline = time.monotonic() + timeout

    def run():
        while True:
            try:
                daemon["report"] = client.update(version=version, force=force, timeout=timeout)
                return
            except CkptError as e:
                if (e.code == FAILED_PRECONDITION and "no worker is attached" in e.message
                        and not route_done.is_set() and time.monotonic() < deadline):
                    route_done.wait(0.05)
                    continue
                daemon["error"] = e
                return
            except BaseException as e:  # noqa: B902 - handed to the caller's thread
                daemon["error"] = e
                return

    thread = threading.Thread(target=run, name="ckpt-engine-update", daemon=True)
    thread.start()
    try:
        server = _call(url, "/update_weights_from_ipc", body, timeout=timeout + HTTP_TIMEOUT_S,
                       api_key=api_key)
    finally:
        route_done.set()
        thread.join(timeout + 30)
    if thread.is_alive():
        daemon["error"] = CkptError(DEADLINE_EXCEEDED,
                                    "the daemon's update did not return after the route did")
    return daemon, server
