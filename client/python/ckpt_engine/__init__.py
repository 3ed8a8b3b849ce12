"""ckpt_engine: push checkpoint versions to ckpt-engined from Python.

Pure Python over the C ABI of libckpt_client.so (ctypes; no compiled extension, so one build
serves every Python 3). The library is found through $CKPT_CLIENT_LIB, else next to this package,
else in the repository's bazel-bin/client/.

    import ckpt_engine as ce

    client = ce.Client()                       # $CKPT_SOCKET or the default socket
    version = ce.push_state_dict(client, model.state_dict(), label="step-1200",
                                 progress=lambda done, total: print(done, "/", total))
    print(ce.get_version(client, version)["total_bytes"])

Tensors: torch.Tensor (any dtype of ckpt.v1: bool, (u)int8..int64, float16, bfloat16, float32,
float64, float8_e4m3fn, float8_e5m2) and numpy.ndarray. Contiguous CPU tensors are read in place
(zero copy); non-contiguous ones are made contiguous and CUDA tensors copied to host memory first.
Errors raise CkptError(code, message) with the daemon's or the client's status code.

Inference workers receive versions with Worker (torch needed only there), triggered by
Client.update / update() or `ckptctl update VERSION`:

    with ce.Worker(device=0, engine="vllm") as worker:     # attach once
        model.load_weights(worker.receive())              # one version, zero-copy views
        print(worker.version)

Engine adapters: ckpt_engine.vllm (a vLLM worker extension) and ckpt_engine.sglang (an SGLang
custom weight loader); docs/engines.md.
"""

import ctypes
import json
import operator
import os

from . import _native
from ._tensors import DTYPES, DTYPE_NAMES, Unsupported, describe

__all__ = [
    "CkptError", "Client", "push_state_dict", "push_files", "list_versions", "get_version",
    "drop_version", "update", "wait_loaded", "Worker", "RawTensor", "DTYPES", "library_version",
]

_ERR_LEN = 4096

# absl / gRPC canonical codes.
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
FAILED_PRECONDITION = 9
ABORTED = 10
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14


class CkptError(Exception):
    """A failed call: `code` is the status code (gRPC's canonical codes: 3 INVALID_ARGUMENT, 5
    NOT_FOUND, 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE, ...), `code_name` its name, `message` the
    one-line explanation."""

    def __init__(self, code, message):
        self.code = int(code)
        self.message = message
        super().__init__(f"{self.code_name}: {message}")

    @property
    def code_name(self):
        return _native.lib().ckpt_status_name(self.code).decode()


def _check(code, err):
    if code != OK:
        raise CkptError(code, err.value.decode("utf-8", "replace"))


_MAX_VERSION = 2 ** 64 - 1


def _version_id(version, what="version"):
    """`version` as the uint64 the library takes: an integer in [0, 2^64 - 1]. CkptError
    INVALID_ARGUMENT otherwise (ctypes would wrap it modulo 2^64 and name another version: -1 or
    2^64 + 1 silently became 2^64 - 1 or 1). A bool is no version id."""
    if isinstance(version, bool):
        raise CkptError(INVALID_ARGUMENT, f"{what} must be an integer, not {version!r}")
    try:
        if isinstance(version, str):
            value = int(version.strip(), 10)
        elif isinstance(version, float):
            if not version.is_integer():
                raise ValueError
            value = int(version)
        else:
            value = operator.index(version)
    except (TypeError, ValueError):
        raise CkptError(INVALID_ARGUMENT, f"{what} must be an integer, not {version!r}") from None
    if not 0 <= value <= _MAX_VERSION:
        raise CkptError(INVALID_ARGUMENT, f"{what} {value} is out of range (0 to 2^64 - 1)")
    return value


def _take_json(ptr):
    """Reads and frees a JSON string returned by the library."""
    try:
        return json.loads(ctypes.string_at(ptr.value).decode("utf-8"))
    finally:
        _native.lib().ckpt_free(ptr)


def _fspath(path):
    return os.fsencode(os.fspath(path))


def library_version():
    """The client library's release, e.g. "0.1.0"."""
    return _native.lib().ckpt_version().decode()


class _Handle:
    """Owns one handle of the C library: close() (or a with block, or garbage collection) releases
    it once. Subclasses name the library's close function and what the handle is, for errors."""

    _CLOSE = None  # e.g. "ckpt_client_close"
    _WHAT = "handle"
    _handle = None

    def close(self):
        if self._handle is not None:
            getattr(self._lib, self._CLOSE)(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _h(self):
        if self._handle is None:
            raise CkptError(INVALID_ARGUMENT, f"the {self._WHAT} is closed")
        return self._handle


class Client(_Handle):
    """A connection to one ckpt-engined.

    `socket`: the daemon's Unix socket path; `address`: HOST:PORT for TCP (not both); neither:
    $CKPT_SOCKET, else /run/ckpt-engine/ckpt-engined.sock. `timeout`: the deadline in seconds of
    list/get/drop calls (0: 10 s).

    TCP credentials (docs/security.md), file paths; each one not given falls back to its
    environment variable ($CKPT_TLS_CA, $CKPT_TLS_CERT, $CKPT_TLS_KEY, $CKPT_TOKEN_FILE):
    `tls_ca`: PEM CA of the daemon's certificate (TLS on); `tls_cert` and `tls_key`: a client
    certificate and its key for mTLS (only together); `token_file`: a file whose first line is a
    bearer token. They are ignored on a Unix socket, where the caller's uid decides (as for
    ckptctl and the C++ client).

    Opening checks what it can without the daemon: CkptError INVALID_ARGUMENT (socket and
    address, tls_cert without tls_key, a negative timeout), FAILED_PRECONDITION (a token or TLS
    file that cannot be read, an empty token file), UNAVAILABLE or PERMISSION_DENIED (a Unix
    socket that is missing or not ours). The connection is made by the first call, which raises
    the daemon's verdict on the credentials: UNAUTHENTICATED without valid ones,
    PERMISSION_DENIED when their role does not allow the call, UNAVAILABLE when TLS fails.
    Thread-safe; close() (or a with block) releases it.
    """

    _CLOSE = "ckpt_client_close"
    _WHAT = "client"

    def __init__(self, socket=None, address=None, timeout=10.0, tls_ca=None, tls_cert=None,
                 tls_key=None, token_file=None):
        self._lib = _native.lib()
        self._handle = None
        self.last_push = None
        options = _native.ClientOptions()
        self._lib.ckpt_client_options_init(ctypes.byref(options))
        options.socket = _fspath(socket) if socket else None
        options.address = address.encode() if address else None
        options.tls_ca = _fspath(tls_ca) if tls_ca else None
        options.tls_cert = _fspath(tls_cert) if tls_cert else None
        options.tls_key = _fspath(tls_key) if tls_key else None
        options.token_file = _fspath(token_file) if token_file else None
        options.timeout_s = float(timeout)
        err = ctypes.create_string_buffer(_ERR_LEN)
        handle = ctypes.c_void_p()
        code = self._lib.ckpt_client_open3(ctypes.byref(options), ctypes.byref(handle), err,
                                           _ERR_LEN)
        _check(code, err)
        self._handle = handle

    def push_state_dict(self, tensors, version=0, label="", streams=4, progress=None,
                        chunk_bytes=0, timeout=60.0, transport="auto", window_bytes=0,
                        update=False, part=None):
        """Pushes a {name: tensor} mapping as one new version and commits it; returns the version.

        `version` 0 lets the daemon pick the next id. `progress(done_bytes, total_bytes)` is
        called on this thread about every 50 ms and once at the end with done == total; if it
        raises, the push is cancelled (nothing is left on the daemon) and the exception
        propagates. Ctrl-C cancels the push the same way. `timeout` (seconds) is the deadline of
        each request and how long an upload stream may stall.

        `transport`: "auto" (shared memory when the daemon is on this node's Unix socket, else
        gRPC), "local" (shared memory or an error) or "grpc". The tensors must stay alive and
        unchanged until the call returns. `window_bytes` (0: 64 MiB) is the local path's
        shared-memory window (two alternate). The committed version's info, whose "transport"
        says which path was taken, is kept in `self.last_push`.

        `update=True`: push and update (the local path only; the caller needs the operator role
        too). The daemon sends the version to its attached workers while it arrives, each bucket
        once its tensors are in and verified, and finishes the update after the commit; a push
        that fails is loaded by no worker (those sent some of it report it as mixed_version). The call returns once the version is
        committed: `wait_loaded(version)` says when the workers have it.

        `part=(index, count)`: one part of a version pushed in parts (docs/cluster.md "Versions in
        parts"): trainer rank `index` of `count` (2..4096) pushes the whole tensors it owns, every
        rank under the same named `version`, to the daemon of its choice (not with update=True). A
        tensor several ranks hold (replicated) may be in several parts with the same bytes. The
        version info's "parts" says which parts the daemon holds; a cluster update is refused,
        naming what is missing, until every part is held by some member.

        CUDA tensors are read where they are, once all work queued on their GPUs is done (the
        client synchronizes those devices first, as torch.cuda.synchronize). A local daemon that
        drives their GPU copies them out of GPU memory itself (CUDA IPC: `last_push["ipc_bytes"]`
        counts those bytes); others (memory that cannot be shared, such as PyTorch's expandable
        segments, or a daemon on another node) are copied device-to-host by the client, into its
        pinned shared-memory windows or, for gRPC, into pinned host memory kept for the next push
        (release_staging() or close() frees it).
        """
        part_index, part_count = 0, 0
        if part is not None:
            try:
                part_index, part_count = (int(x) for x in part)
            except (TypeError, ValueError):
                raise CkptError(INVALID_ARGUMENT,
                                f"part must be (index, count), not {part!r}") from None
            if part_index < 0 or part_count < 0 or part_count > 0xFFFFFFFF or \
                    part_index > 0xFFFFFFFF:
                raise CkptError(INVALID_ARGUMENT, f"part {part!r} is out of range")
        if transport not in ("auto", "local", "grpc"):
            raise CkptError(INVALID_ARGUMENT,
                            f"transport must be 'auto', 'local' or 'grpc', not {transport!r}")
        try:
            table, keep, _ = describe(tensors)
        except Unsupported as e:
            raise CkptError(INVALID_ARGUMENT, str(e)) from None
        raised = []

        def on_progress(done, total, _user):
            try:
                if progress is not None:
                    progress(done, total)
                return 0
            except BaseException as e:  # noqa: B902 - KeyboardInterrupt cancels too.
                raised.append(e)
                return 1

        callback = _native.PROGRESS_FN(on_progress)
        options = _native.PushOptions()
        self._lib.ckpt_push_options_init(ctypes.byref(options))
        options.version = _version_id(version)
        options.label = label.encode("utf-8") if label else None
        options.streams = int(streams)
        options.chunk_bytes = int(chunk_bytes)
        options.timeout_s = float(timeout)
        options.progress = callback
        extra = _native.PushExtra()
        self._lib.ckpt_push_extra_init(ctypes.byref(extra))
        extra.transport = transport.encode("ascii")
        extra.window_bytes = int(window_bytes)
        extra.update = 1 if update else 0
        extra.part_index = part_index
        extra.part_count = part_count
        err = ctypes.create_string_buffer(_ERR_LEN)
        out_version = ctypes.c_uint64()
        info = ctypes.c_void_p()
        code = self._lib.ckpt_push_table_ex(self._h(), ctypes.byref(table), ctypes.byref(options),
                                            ctypes.byref(extra), ctypes.byref(out_version),
                                            ctypes.byref(info), err, _ERR_LEN)
        del keep  # The tensors (and any copies) may go now.
        info_json = _take_json(info) if code == 0 else None
        if raised:
            raise raised[0]
        _check(code, err)
        self.last_push = info_json
        return out_version.value

    def release_staging(self):
        """Frees the memory kept between pushes: the shared-memory windows and the pinned host
        copy of CUDA tensors (the next push makes them again)."""
        self._lib.ckpt_client_release_staging(self._h())

    def push_files(self, paths, version=0, label="", timeout=1800.0):
        """The daemon loads the safetensors files itself into one new version and commits it;
        returns the version. A path may also be a checkpoint directory (the shards its
        model.safetensors.index.json names, else all its *.safetensors files) or an index file
        (*.index.json). Relative paths are resolved here. On the Unix socket this process opens
        the files and passes them; over TCP the daemon reads them (under its load_files_dirs)."""
        if isinstance(paths, (str, bytes, os.PathLike)):
            paths = [paths]
        encoded = [os.fsencode(os.path.abspath(os.fspath(p))) for p in paths]
        array = (ctypes.c_char_p * max(1, len(encoded)))(*encoded)
        err = ctypes.create_string_buffer(_ERR_LEN)
        out_version = ctypes.c_uint64()
        code = self._lib.ckpt_load_files(
            self._h(), array, len(encoded), _version_id(version),
            label.encode("utf-8") if label else None,
            float(timeout), ctypes.byref(out_version), None, err, _ERR_LEN)
        _check(code, err)
        return out_version.value

    def list_versions(self):
        """Every version the daemon holds: a list of dicts (version, state, tensor_count,
        total_bytes, created_unix_ms, committed_unix_ms, label, received_bytes)."""
        err = ctypes.create_string_buffer(_ERR_LEN)
        out = ctypes.c_void_p()
        _check(self._lib.ckpt_list_versions(self._h(), ctypes.byref(out), err, _ERR_LEN), err)
        return _take_json(out)["versions"]

    def get_version(self, version):
        """One version: list_versions' fields plus "dtypes" ({dtype: {"tensors", "bytes"}}) and
        "tensors" ([{"name", "dtype", "shape", "byte_size", "xxh3" (16 hex digits)}]).
        CkptError NOT_FOUND for an unknown version."""
        err = ctypes.create_string_buffer(_ERR_LEN)
        out = ctypes.c_void_p()
        code = self._lib.ckpt_get_version(self._h(), _version_id(version), ctypes.byref(out), err,
                                          _ERR_LEN)
        _check(code, err)
        return _take_json(out)

    def drop_version(self, version):
        """Retires a committed version or aborts a staging one."""
        err = ctypes.create_string_buffer(_ERR_LEN)
        _check(self._lib.ckpt_drop_version(self._h(), _version_id(version), err, _ERR_LEN), err)

    def update(self, version=0, force=False, timeout=600.0, convert=None, fp8_weights=None,
               fp8_exclude=None, consistent=False):
        """Sends a committed version (0: the newest) to the workers attached to the daemon and
        waits up to `timeout` seconds until all of them loaded it; `force` resends it to workers
        that already hold it (they are skipped otherwise). Returns the daemon's report: {"version",
        "seconds", "bytes", "buckets", "gb_per_s", "wait_slot_seconds", "fill_seconds",
        "load_seconds", "finish_seconds", "fp8_tensors", "fp8_source_bytes", "fp8_bytes",
        "workers": [{"pid", "gpu_uuid", "engine", "ok", "skipped", "error", "tensors", "bytes"}]}.

        FP8 on the way (docs/conversion.md): convert="fp8" delivers the 2-D bfloat16 tensors the
        daemon's fp8_weights names as float8_e4m3fn `X` plus float32 `X_scale_inv` (128 x 128
        block scales); fp8_weights / fp8_exclude (lists of name patterns) choose them for this
        update instead; "none" sends the version as it is; None: the daemon's fp8_by_default.
        `consistent`: every worker pauses before any bucket and all resume together.

        The workers must be receiving meanwhile (Worker.receive in their own thread or process):
        the call blocks until they loaded the version. CkptError NOT_FOUND for an unknown or
        retired version; FAILED_PRECONDITION when another update runs or no worker is attached;
        ABORTED or DEADLINE_EXCEEDED naming the workers that failed (pid, GPU, engine).
        """
        err = ctypes.create_string_buffer(_ERR_LEN)
        out = ctypes.c_void_p()
        options = {}
        if convert is not None:
            options["convert"] = str(convert)
        if fp8_weights is not None:
            options["fp8_weights"] = [str(p) for p in fp8_weights]
        if fp8_exclude is not None:
            options["fp8_exclude"] = [str(p) for p in fp8_exclude]
        if consistent:
            options["consistent"] = True
        if options:
            code = self._lib.ckpt_update_options(
                self._h(), _version_id(version), 1 if force else 0, float(timeout),
                json.dumps(options).encode(), ctypes.byref(out), err, _ERR_LEN)
        else:
            code = self._lib.ckpt_update(self._h(), _version_id(version), 1 if force else 0,
                                         float(timeout), ctypes.byref(out), err, _ERR_LEN)
        _check(code, err)
        return _take_json(out)

    def update_previous(self, timeout=600.0):
        """Recovery after a failed update: resends to each worker left with mixed weights (status
        "mixed_version") the last version it fully loaded. Returns the update report (as update).
        CkptError FAILED_PRECONDITION when no worker has mixed weights; ABORTED naming the workers
        that could not be restored (e.g. their version is no longer in the store: push it again).
        """
        err = ctypes.create_string_buffer(_ERR_LEN)
        out = ctypes.c_void_p()
        code = self._lib.ckpt_update_previous(self._h(), float(timeout), ctypes.byref(out), err,
                                              _ERR_LEN)
        _check(code, err)
        return _take_json(out)

    def wait_loaded(self, version=0, timeout=600.0, raise_on_failure=True):
        """Waits until every worker attached to the daemon holds `version` (0: the newest
        committed) or a newer one, e.g. after a push with auto_update, or while another process
        runs the update. Returns {"version", "loaded": True, "summary", "workers": [...],
        "update": the last update of that version or None}.

        When an update of the version failed for some workers (and none is running or queued):
        CkptError ABORTED with the summary (who failed and why) and the report as its `.result`;
        with raise_on_failure=False the report is returned with "loaded": False instead.
        CkptError DEADLINE_EXCEEDED naming the workers that lack it when `timeout` passes first.
        """
        err = ctypes.create_string_buffer(_ERR_LEN)
        out = ctypes.c_void_p()
        code = self._lib.ckpt_wait_loaded(self._h(), _version_id(version), float(timeout),
                                          ctypes.byref(out), err, _ERR_LEN)
        _check(code, err)
        report = _take_json(out)
        if raise_on_failure and not report["loaded"]:
            e = CkptError(ABORTED, report["summary"])
            e.result = report
            raise e
        return report


def push_state_dict(client, tensors, version=0, label="", streams=4, progress=None, **kwargs):
    """Client.push_state_dict as a function; returns the committed version."""
    return client.push_state_dict(tensors, version=version, label=label, streams=streams,
                                  progress=progress, **kwargs)


def push_files(client, paths, version=0, label="", **kwargs):
    """Client.push_files as a function; returns the committed version."""
    return client.push_files(paths, version=version, label=label, **kwargs)


def list_versions(client):
    return client.list_versions()


def get_version(client, version):
    return client.get_version(version)


def drop_version(client, version):
    client.drop_version(version)


def update(client, version=0, force=False, timeout=600.0):
    """Client.update as a function: the daemon's update report (a dict)."""
    return client.update(version=version, force=force, timeout=timeout)


def wait_loaded(client, version=0, timeout=600.0, raise_on_failure=True):
    """Client.wait_loaded as a function."""
    return client.wait_loaded(version=version, timeout=timeout, raise_on_failure=raise_on_failure)


# Workers (imported last: worker.py uses the definitions above).
from .worker import RawTensor, Worker  # noqa: E402
