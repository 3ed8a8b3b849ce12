"""Worker: the inference side of an update. A worker attaches to its node's ckpt-engined once and
then receives each checkpoint version bucket by bucket, as zero-copy views into the daemon's
staging slots (CUDA IPC device memory on the cuda backend, read-only shared memory on the host
backend), and loads them into its model:

    import ckpt_engine as ce

    worker = ce.Worker(device=torch.device("cuda", 0), engine="vllm")   # attach (once)
    model.load_weights(worker.receive())       # blocks until the daemon sends a version
    print(worker.version)                      # the version this worker holds now

The daemon sends a version when someone asks it to (`ckptctl update VERSION`, Client.update, or
`auto_update`), to every worker attached at that moment; receive() must be running meanwhile (or
soon after: the daemon waits `ack_timeout` for each bucket).

Views are valid only while their bucket is current: the bucket is acked (and its slot refilled by
the daemon) as soon as the generator moves past its last tensor. Copy what you keep before asking
for the next tensor; model.load_weights copies each tensor into its parameter right away, which is
why passing receive() to it works.

torch is imported only by the methods that build torch tensors (receive, receive_buckets);
receive_raw gives addresses and sizes without it.
"""

import collections
import ctypes
import sys
import time

from . import (
    _ERR_LEN, DEADLINE_EXCEEDED, FAILED_PRECONDITION, INTERNAL, INVALID_ARGUMENT, OK,
    UNIMPLEMENTED, CkptError, _check, _fspath, _Handle, _native, _take_json)
from ._tensors import DTYPE_NAMES

# One native wait lasts at most this long, so that Ctrl-C (KeyboardInterrupt) is seen promptly.
_WAIT_SLICE_S = 0.25
# `timeout=None`: wait up to a day for each event.
_DAY_S = 86400.0
# Error texts sent to the daemon are cut to this length.
_MAX_ERROR_LEN = 2000


class RawTensor(collections.namedtuple("RawTensor", "name dtype shape data nbytes")):
    """One received tensor without torch: `name`, `dtype` (a CKPT_DTYPE number, see
    ckpt_engine.DTYPES), `shape` (tuple), `data` (the address of its bytes: a device pointer on
    the cuda backend, a read-only host pointer on the host backend; 0 when nbytes is 0) and
    `nbytes`. Valid only while its bucket is current."""

    __slots__ = ()

    @property
    def dtype_name(self):
        return DTYPE_NAMES.get(self.dtype, f"dtype#{self.dtype}")

    def tobytes(self):
        """A copy of the bytes (host backend only: on the cuda backend `data` is device memory).
        Any size: ctypes.string_at takes a C int and fails from 2 GiB on."""
        if not self.nbytes:
            return b""
        return bytes((ctypes.c_char * self.nbytes).from_address(self.data))


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("ckpt_engine.Worker.receive builds torch tensors and needs torch; "
                          "Worker.receive_raw works without it") from e
    return torch


def torch_dtype(code, name="?"):
    """The torch dtype of a CKPT_DTYPE number; CkptError UNIMPLEMENTED if this torch lacks it
    (float8 needs torch >= 2.1)."""
    torch = _torch()
    dtype_name = DTYPE_NAMES.get(code)
    dtype = getattr(torch, dtype_name, None) if dtype_name else None
    if not isinstance(dtype, torch.dtype):
        raise CkptError(UNIMPLEMENTED, f"tensor '{name}': dtype {dtype_name or code} is not "
                                       f"available in torch {torch.__version__}")
    return dtype


def cuda_ordinal(device):
    """The CUDA device ordinal for `device`: None or "cpu" -> -1 (host tensors, host backend); an
    int; "cuda:N" or "cuda" (the current device); a torch.device."""
    if device is None:
        return -1
    if isinstance(device, bool):
        raise CkptError(INVALID_ARGUMENT, f"device must not be a bool ({device!r})")
    if isinstance(device, int):
        if device < -1:
            raise CkptError(INVALID_ARGUMENT, f"device must be >= -1, not {device}")
        return device
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(device, torch.device):
        kind, index = device.type, device.index
    elif isinstance(device, str):
        kind, _, index = device.strip().lower().partition(":")
        if index:
            try:
                index = int(index)
            except ValueError:
                raise CkptError(INVALID_ARGUMENT, f"bad device {device!r}") from None
        else:
            index = None
    else:
        raise CkptError(INVALID_ARGUMENT, "device must be None, an int, 'cpu', 'cuda', 'cuda:N' "
                                          f"or a torch.device, not {device!r}")
    if kind == "cpu":
        return -1
    if kind != "cuda":
        raise CkptError(INVALID_ARGUMENT, f"device {device!r}: only cuda devices (or cpu for the "
                                          "host backend) can receive versions")
    if index is None:
        return _torch().cuda.current_device()
    return int(index)


class _CudaBytes:
    """nbytes of device memory at `ptr`, presented through __cuda_array_interface__ (v3) so that
    torch.as_tensor wraps it without copying. The daemon finished writing the bucket before it was
    announced, so there is no stream to wait on. The read-only flag is False although the views
    must never be written: torch refuses read-only CUDA arrays ("the read only flag is not
    supported")."""

    __slots__ = ("__cuda_array_interface__",)

    def __init__(self, ptr, nbytes):
        self.__cuda_array_interface__ = {
            "shape": (nbytes,), "typestr": "|u1", "data": (ptr, False), "version": 3,
            "strides": None,
        }


_END = object()


def _throw_into(gen, exc):
    """Throws `exc` into generator `gen` (which reports it and re-raises); swallows the re-raise."""
    try:
        gen.throw(exc)
    except BaseException:  # noqa: B902 - it re-raises what it was given, by design.
        pass


class Worker(_Handle):
    """An inference worker attached to ckpt-engined: receives checkpoint versions.

    `socket`: the daemon's Unix socket (None: $CKPT_SOCKET, else the default path); workers attach
    over the local socket only. `device`: where this worker's model lives: None (or "cpu") for
    host tensors (host backend), else a CUDA device (an int, "cuda:N" or torch.device("cuda", N));
    its GPU must be one the daemon drives. `engine`: shown by `ckptctl status` and in errors
    ("vllm", "sglang", ...). `tensor_names`: receive only these tensors (None: all). `timeout`:
    the deadline of the attach in seconds. `verify_checksums`: before a bucket is handed out,
    check every tensor's XXH3-64 in the slot against the version's checksum (costs one read of
    each bucket's bytes; on the cuda backend a device-to-host copy of them too); a mismatch
    fails that bucket (the daemon's report names the tensor and both hashes) and receive raises
    CkptError DATA_LOSS. Settable later through the `verify_checksums` property.

    Errors: CkptError UNAVAILABLE (no daemon), PERMISSION_DENIED (uid not allowed),
    FAILED_PRECONDITION (a GPU the daemon does not drive).

    A Worker is driven by one thread at a time, and one receive generator runs at a time. close()
    (or a with block, or garbage collection) detaches; views from it must not be used afterwards.
    """

    _CLOSE = "ckpt_consumer_close"
    _WHAT = "worker"

    def __init__(self, socket=None, device=None, engine="python", tensor_names=None,
                 timeout=30.0, verify_checksums=False):
        self._lib = _native.lib()
        self._handle = None
        self._cuda_device = cuda_ordinal(device)
        if isinstance(tensor_names, str):
            tensor_names = [tensor_names]
        names = list(tensor_names or [])
        for n in names:
            if not isinstance(n, str) or not n:
                raise CkptError(INVALID_ARGUMENT, f"tensor names must be non-empty str, not {n!r}")
        encoded = [n.encode("utf-8") for n in names]
        array = (ctypes.c_char_p * max(1, len(encoded)))(*encoded)
        err = ctypes.create_string_buffer(_ERR_LEN)
        handle = ctypes.c_void_p()
        code = self._lib.ckpt_consumer_attach(
            _fspath(socket) if socket else None, self._cuda_device,
            engine.encode("utf-8") if engine else None, array if encoded else None, len(encoded),
            float(timeout), ctypes.byref(handle), err, _ERR_LEN)
        _check(code, err)
        self._handle = handle
        self._verify_checksums = False
        if verify_checksums:
            self.verify_checksums = True
        self._engine = engine or "c"
        self._tensor_names = tuple(names)
        self._version = 0
        self._busy = False       # a receive generator is running
        self._done = None        # (version, tensors, bytes) awaiting finish() (defer_loaded)
        self._event = _native.ConsumerEvent()
        out = ctypes.c_void_p()
        _check(self._lib.ckpt_consumer_info(self._handle, ctypes.byref(out), err, _ERR_LEN), err)
        info = _take_json(out)
        self._backend = info["backend"]
        self._gpu_uuid = info.get("gpu_uuid", "")
        self._slots = int(info.get("slots", 0))
        self._slot_bytes = int(info.get("slot_bytes", 0))
        self._slot_addresses = [int(a) for a in info.get("slot_addresses", [])]
        # Built on first use: one flat uint8 torch tensor per slot, sliced per received tensor
        # (a view per tensor from its address costs several times more), the torch device and
        # dtypes.
        self._slot_tensors = None
        self._device = None
        self._dtypes = {}

    # ---- state ----

    @property
    def backend(self):
        """"cuda" (views are device memory on this worker's GPU) or "host" (read-only host
        memory)."""
        return self._backend

    @property
    def gpu_uuid(self):
        """The UUID of this worker's GPU as the daemon knows it ("" on the host backend)."""
        return self._gpu_uuid

    @property
    def slots(self):
        """Staging slots mapped from the daemon (buckets in flight at most)."""
        return self._slots

    @property
    def slot_bytes(self):
        """Size of one slot: the largest bucket. A larger tensor comes in pieces and is handed out
        whole, from a buffer of its size that the client library holds while it is put together."""
        return self._slot_bytes

    @property
    def cuda_device(self):
        """The CUDA device ordinal this worker loads into; -1 for host tensors."""
        return self._cuda_device

    @property
    def engine(self):
        return self._engine

    @property
    def tensor_names(self):
        """The tensors this worker asked for; () means all."""
        return self._tensor_names

    @property
    def version(self):
        """The last version this worker fully loaded (reported to the daemon); 0 before any."""
        return self._version

    @property
    def verify_checksums(self):
        """Whether each bucket's tensors are checked against the version's XXH3-64 before they
        are handed out (see the class). Setting it applies to the buckets received from then on.
        """
        return self._verify_checksums

    @verify_checksums.setter
    def verify_checksums(self, enabled):
        err = ctypes.create_string_buffer(_ERR_LEN)
        _check(self._lib.ckpt_consumer_set_verify_checksums(self._h(), 1 if enabled else 0, err,
                                                            _ERR_LEN), err)
        self._verify_checksums = bool(enabled)

    @property
    def closed(self):
        return self._handle is None

    def __repr__(self):
        state = "closed" if self._handle is None else f"version {self._version}"
        return (f"<ckpt_engine.Worker engine={self._engine!r} backend={self._backend!r} "
                f"cuda_device={self._cuda_device} {state}>")

    # ---- lifetime ----

    def close(self):
        """Detaches from the daemon and unmaps the slots: every view received so far becomes
        invalid. Idempotent."""
        self._slot_tensors = None
        super().close()

    # ---- receiving ----

    def receive(self, timeout=None, defer_loaded=False):
        """A generator over ONE version: yields (name, torch.Tensor) for each tensor sent to this
        worker, then ends once the daemon said the version is complete (having reported it loaded
        and set `version`).

        The tensors are zero-copy views into the daemon's staging slots: CUDA tensors on this
        worker's device (cuda backend) or CPU tensors over read-only shared memory (host backend:
        writing into them crashes the process). A view is valid only until the generator moves
        on past its bucket's last tensor: that acks the bucket, and the daemon refills the slot.
        Copy each tensor before asking for the next one (model.load_weights does); on the cuda
        backend the device is synchronized before each ack, so asynchronous copies are safe.

        `timeout`: seconds to wait for each event, the first bucket included (None: a day);
        CkptError DEADLINE_EXCEEDED when nothing came; UNAVAILABLE when the daemon ended the
        stream (it shut down, or gave up on this worker after its ack_timeout): attach a new
        Worker; DATA_LOSS (verify_checksums) when a tensor of a bucket did not match its checksum:
        that bucket was failed (the daemon's report names the tensor), the generator ends, and
        the worker stays attached for the next update. `defer_loaded`: do not report the version
        loaded at its end; call finish() after post-processing instead.

        If the code iterating raises (an exception thrown in with .throw()) or closes the
        generator early, the current bucket is acked with that error, so the daemon fails this
        worker's update naming it (pid, GPU, engine), and the exception propagates.
        """
        return self._drive(timeout, defer_loaded, flat=True, convert=self._named_torch_view)

    def load(self, load_fn, timeout=None, raw=False):
        """Receives ONE version into `load_fn`, e.g. model.load_weights, called with the receive()
        generator of (name, torch.Tensor) pairs (raw=True: (name, RawTensor) pairs, no torch);
        returns the version once `load_fn` consumed every tensor and the version was reported
        loaded.

        Use it rather than load_fn(worker.receive()): when `load_fn` raises, the bucket it was
        loading is failed with that exception's type and message (the daemon's update report and
        `ckptctl status` show them), and the exception propagates. A bare generator only learns
        that it was closed early. When `load_fn` returns before consuming every tensor, the
        version is failed with a RuntimeError saying so.
        """
        convert = (lambda t: (t.name, t)) if raw else self._named_torch_view
        # Reported at the end, only once load_fn has returned: it may still fail after the last
        # tensor (e.g. a loader that checks that every parameter was set).
        pairs = self._drive(timeout, True, flat=True, convert=convert)
        try:
            load_fn(pairs)
            if next(pairs, _END) is not _END:
                raise RuntimeError(f"{getattr(load_fn, '__qualname__', 'load_fn')} returned before "
                                   "consuming every tensor of the version")
        except BaseException as e:  # noqa: B902 - Ctrl-C is reported too.
            if self._done is not None:
                # Every tensor was received: fail the version itself.
                try:
                    self.finish(error=f"{type(e).__name__}: {e}")
                except CkptError:
                    pass  # The stream is gone: the daemon fails this worker anyway.
            else:
                _throw_into(pairs, e)
            raise
        return self.finish()

    def receive_buckets(self, timeout=None, defer_loaded=False):
        """Like receive(), one list of (name, torch.Tensor) per bucket. The views of a list are
        valid until the next list is asked for."""
        return self._drive(timeout, defer_loaded, flat=False, convert=self._named_torch_view)

    def receive_raw(self, timeout=None, defer_loaded=False):
        """Like receive_buckets() without torch: one list of RawTensor per bucket."""
        return self._drive(timeout, defer_loaded, flat=False, convert=lambda t: t)

    def finish(self, error=None):
        """Reports the version received with defer_loaded=True as loaded (error None) or failed
        to load (`error`: the text the daemon reports). Returns the version, or 0 if there was
        none to report. Without an error, `version` becomes that version."""
        if self._done is None:
            return 0
        version, tensors, nbytes = self._done
        self._done = None
        self._loaded(version, tensors, nbytes, error)
        return version

    def torch_view(self, tensor):
        """A torch.Tensor view of a RawTensor from receive_raw (same validity)."""
        return self._torch_view(tensor)

    # ---- internals ----

    def _drive(self, timeout, defer_loaded, flat, convert):
        buckets = self._buckets(timeout, defer_loaded)
        try:
            for raw in buckets:
                items = [convert(t) for t in raw]
                raw = None
                if flat:
                    for item in items:
                        yield item
                else:
                    yield items
                items = item = None  # noqa: F841 - drop our references before the ack.
        except BaseException as e:  # noqa: B902 - report GeneratorExit and Ctrl-C too.
            _throw_into(buckets, e)
            raise
        finally:
            buckets.close()

    def _buckets(self, timeout, defer_loaded):
        """Yields each bucket's RawTensors; acks it when resumed; handles VersionDone."""
        self._h()
        if self._busy:
            raise CkptError(FAILED_PRECONDITION, "this worker is already receiving a version: one "
                                                 "receive generator at a time")
        if self._done is not None:
            raise CkptError(FAILED_PRECONDITION,
                            f"version {self._done[0]} was received with defer_loaded=True and not "
                            "reported yet: call finish() first")
        wait = _DAY_S if timeout is None else max(0.0, float(timeout))
        self._busy = True
        version, count, total = None, 0, 0
        try:
            while True:
                event = self._next(wait)
                # The library drops what the daemon had queued of an attempt this worker failed.
                kind, v, b = event.kind, event.version, event.bucket
                if version is not None and v != version:
                    raise CkptError(INTERNAL, f"the daemon sent an event of version {v} in the "
                                              f"middle of version {version}")
                version = v
                if kind == _native.EVENT_BUCKET:
                    raw = self._raw(event)
                    try:
                        yield raw
                        self._sync()
                    except BaseException as e:  # noqa: B902
                        self._fail(v, b, e)
                        raise
                    count += len(raw)
                    total += sum(t.nbytes for t in raw)
                    raw = None
                    self._ack(v, b)
                elif kind == _native.EVENT_VERSION_DONE:
                    if defer_loaded:
                        self._done = (v, count, total)
                    else:
                        self._loaded(v, count, total, None)
                    return
                else:
                    raise CkptError(INTERNAL, f"unknown event kind {kind} from the daemon")
        finally:
            self._busy = False

    def _next(self, wait):
        """The next event, waiting up to `wait` seconds in short slices (Ctrl-C stays prompt)."""
        deadline = time.monotonic() + wait
        err = ctypes.create_string_buffer(_ERR_LEN)
        while True:
            left = deadline - time.monotonic()
            code = self._lib.ckpt_consumer_next(self._h(), max(0.0, min(left, _WAIT_SLICE_S)),
                                                ctypes.byref(self._event), err, _ERR_LEN)
            if code == OK:
                return self._event
            if code == DEADLINE_EXCEEDED:
                if time.monotonic() < deadline:
                    continue
                raise CkptError(DEADLINE_EXCEEDED,
                                f"no update from the daemon within {wait:g} s (is one running? "
                                "ckptctl update VERSION)")
            _check(code, err)

    @staticmethod
    def _raw(event):
        out = []
        for i in range(event.count):
            v = event.tensors[i]
            shape = tuple(v.shape[j] for j in range(v.ndim))
            out.append(RawTensor(v.name.decode("utf-8", "replace"), v.dtype, shape,
                                 v.data or 0, v.nbytes))
        return out

    def _torch_device(self):
        torch = _torch()
        if self._backend == "cuda":
            return torch.device("cuda", self._cuda_device)
        return torch.device("cpu")

    def _slot_flat(self, torch, device):
        """[(address, flat uint8 tensor over the whole slot)], built once."""
        if self._slot_tensors is None:
            flats = []
            for address in self._slot_addresses:
                if self._backend == "cuda":
                    flat = torch.as_tensor(_CudaBytes(address, self._slot_bytes), device=device)
                else:
                    buf = (ctypes.c_uint8 * self._slot_bytes).from_address(address)
                    flat = torch.frombuffer(buf, dtype=torch.uint8)
                flats.append((address, flat))
            self._slot_tensors = flats
        return self._slot_tensors

    def _torch_view(self, t):
        torch = _torch()
        dtype = self._dtypes.get(t.dtype)
        if dtype is None:
            dtype = self._dtypes[t.dtype] = torch_dtype(t.dtype, t.name)
        device = self._device
        if device is None:
            device = self._device = self._torch_device()
        if t.nbytes == 0:
            return torch.empty(t.shape, dtype=dtype, device=device)
        if self._slot_addresses and hasattr(torch, "frombuffer"):
            for address, flat in self._slot_flat(torch, device):
                offset = t.data - address
                if 0 <= offset and offset + t.nbytes <= self._slot_bytes:
                    return flat[offset:offset + t.nbytes].view(dtype).view(t.shape)
        # A tensor larger than a slot (put together in a buffer of its own), or an old library.
        if self._backend == "cuda":
            flat = torch.as_tensor(_CudaBytes(t.data, t.nbytes), device=device)
        else:
            buf = (ctypes.c_uint8 * t.nbytes).from_address(t.data)
            if hasattr(torch, "frombuffer"):
                flat = torch.frombuffer(buf, dtype=torch.uint8)
            else:  # torch < 1.10
                import numpy
                flat = torch.from_numpy(numpy.frombuffer(buf, dtype=numpy.uint8))
        return flat.view(dtype).reshape(t.shape)

    def _named_torch_view(self, t):
        return t.name, self._torch_view(t)

    def _sync(self):
        """Waits for work queued on the GPU that may still read the current bucket."""
        torch = sys.modules.get("torch")
        if torch is None:
            return
        if self._backend == "cuda":
            torch.cuda.synchronize(self._cuda_device)
        elif torch.cuda.is_initialized():
            # Host views copied to a GPU: a pageable copy is staged before it returns, but a
            # kernel reading host memory directly would not be; be safe.
            torch.cuda.synchronize()

    def _ack(self, version, bucket, error=None):
        err = ctypes.create_string_buffer(_ERR_LEN)
        code = self._lib.ckpt_consumer_ack(self._h(), version, bucket,
                                           error.encode("utf-8", "replace") if error else None,
                                           err, _ERR_LEN)
        _check(code, err)

    def _fail(self, version, bucket, exc):
        if isinstance(exc, GeneratorExit):
            # Closed while the caller handles an exception (inside its except block): that
            # exception is the real reason, and Python chains it as the GeneratorExit's context.
            handled = exc.__context__
            if handled is not None and not isinstance(handled, GeneratorExit):
                exc = handled
        if isinstance(exc, GeneratorExit):
            why = (f"the worker stopped reading version {version} in bucket {bucket} (its receive "
                   "generator was closed early; if the code reading it raised, Worker.load(fn) "
                   "reports that exception instead)")
        elif isinstance(exc, KeyboardInterrupt):
            why = f"the worker was interrupted (KeyboardInterrupt) in bucket {bucket}"
        else:
            why = f"{type(exc).__name__}: {exc}"
        why = " ".join(why.split())[:_MAX_ERROR_LEN] or type(exc).__name__
        try:
            self._ack(version, bucket, why)
        except CkptError:
            pass  # The stream is gone: the daemon fails this worker anyway.

    def _loaded(self, version, tensors, nbytes, error):
        err = ctypes.create_string_buffer(_ERR_LEN)
        text = " ".join(str(error).split())[:_MAX_ERROR_LEN] if error else None
        code = self._lib.ckpt_consumer_loaded(self._h(), version, tensors, nbytes,
                                              text.encode("utf-8", "replace") if text else None,
                                              err, _ERR_LEN)
        _check(code, err)
        if not text:
            self._version = version
