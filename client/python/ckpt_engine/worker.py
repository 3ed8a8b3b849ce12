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
import weakref

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

# What a receive generator hands out per bucket (Worker._bucket_items).
_TORCH, _RAW, _RAW_PAIRS = 0, 1, 2


def _parse_columns(block, table, n):
    """[(name, dtype, shape, data, nbytes, slot)] from a ckpt_bucket_table's block (a bytes copy
    of it; the table's pointers locate the columns inside it)."""
    base = table.layout
    view = memoryview(block)

    def column(ptr, fmt, count, size):
        start = ptr - base
        return view[start:start + count * size].cast(fmt).tolist()

    ends = column(table.name_ends, "Q", n, 8)
    data = column(table.data, "Q", n, 8)
    nbytes = column(table.nbytes, "Q", n, 8)
    slots = column(table.slots, "i", n, 4)
    dtypes = column(table.dtypes, "i", n, 4)
    ndims = column(table.ndims, "i", n, 4)
    shapes = column(table.shapes, "q", sum(ndims), 8)
    start = table.names - base
    raw_names = block[start:start + ends[-1]]
    text = raw_names.decode("utf-8", "replace")
    out = []
    begin = dim = 0
    if len(text) == len(raw_names):  # ASCII (every real checkpoint): byte offsets are str offsets
        for i in range(n):
            end, nd = ends[i], ndims[i]
            out.append((text[begin:end], dtypes[i], tuple(shapes[dim:dim + nd]), data[i],
                        nbytes[i], slots[i]))
            begin, dim = end, dim + nd
    else:
        for i in range(n):
            end, nd = ends[i], ndims[i]
            out.append((raw_names[begin:end].decode("utf-8", "replace"), dtypes[i],
                        tuple(shapes[dim:dim + nd]), data[i], nbytes[i], slots[i]))
            begin, dim = end, dim + nd
    return out


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
    `reuse_views`: the views (and RawTensors) built for a bucket are kept and handed out again for
    a later bucket with the same layout (the same tensors at the same places in the same slot), as
    every update of the same model has, so a repeated update builds no views (docs/clients.md,
    "Per-tensor cost"). The same tensor objects then come back in later updates: never change a
    view in place (resize_, set_, t_, as_strided_, requires_grad_...; writing into one was never
    allowed). False builds new views for every bucket.
    `on_pause(version)` / `on_resume(version, loaded, error)`: the consistent switch (`ckptctl
    update --consistent`). on_pause is called when a consistent update begins, before any of its
    buckets: stop generating and return (raise to refuse: the update then sends nothing and fails,
    with the exception's text). on_resume is called once every worker of the update loaded it
    (loaded True) or it failed (False, error says why): generation may go on. Both run on the
    client library's reader thread, while this Worker's own thread generates or receives; they
    must not call this Worker.

    Errors: CkptError UNAVAILABLE (no daemon), PERMISSION_DENIED (uid not allowed),
    FAILED_PRECONDITION (a GPU the daemon does not drive).

    A Worker is driven by one thread at a time, and one receive generator runs at a time. close()
    (or a with block, or garbage collection) detaches; views from it must not be used afterwards.
    """

    _CLOSE = "ckpt_consumer_close"
    _WHAT = "worker"

    def __init__(self, socket=None, device=None, engine="python", tensor_names=None,
                 timeout=30.0, verify_checksums=False, reuse_views=True, on_pause=None,
                 on_resume=None):
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
        if on_resume is not None and on_pause is None:
            raise CkptError(INVALID_ARGUMENT, "on_resume needs on_pause: a worker that resumes "
                            "must pause")
        if on_pause is not None:
            # Kept alive with the worker: the C library calls them on its reader thread.
            self._hooks = (_native.PAUSE_FN(self._pause_hook(on_pause)),
                           _native.RESUME_FN(self._resume_hook(on_resume)))
            code = self._lib.ckpt_consumer_attach_pausable(
                _fspath(socket) if socket else None, self._cuda_device,
                engine.encode("utf-8") if engine else None, array if encoded else None,
                len(encoded), float(timeout), self._hooks[0], self._hooks[1], None,
                ctypes.byref(handle), err, _ERR_LEN)
        else:
            self._hooks = None
            code = self._lib.ckpt_consumer_attach(
                _fspath(socket) if socket else None, self._cuda_device,
                engine.encode("utf-8") if engine else None, array if encoded else None,
                len(encoded), float(timeout), ctypes.byref(handle), err, _ERR_LEN)
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
        self._typed_slots = {}
        self._device = None
        self._dtypes = {}
        self._table = _native.BucketTable()
        self._table.struct_size = ctypes.sizeof(_native.BucketTable)
        # Items built per bucket layout, handed out again for an equal layout (_bucket_items).
        self._reuse_views = bool(reuse_views)
        self._kept = {}
        self._kept_used = set()
        # load_into: id(bucket list) -> (that list, weak references to the destinations whose
        # shapes were checked, their element counts).
        self._into_checked = {}

    # ---- the consistent switch ----

    @staticmethod
    def _pause_hook(on_pause):
        def hook(version, _user, why, why_len):
            try:
                on_pause(int(version))
                return 0
            except BaseException as e:  # the engine could not pause: say why
                text = f"{type(e).__name__}: {e}".encode("utf-8", "replace")[:max(0, why_len - 1)]
                ctypes.memmove(why, text + b"\0", len(text) + 1)
                return 1
        return hook

    @staticmethod
    def _resume_hook(on_resume):
        def hook(version, loaded, error, _user):
            if on_resume is None:
                return
            try:
                on_resume(int(version), bool(loaded), (error or b"").decode("utf-8", "replace"))
            except BaseException:  # nothing to answer: the engine's own error
                import traceback
                traceback.print_exc()
        return hook

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
        self._typed_slots = {}
        self._kept = {}
        self._kept_used = set()
        # load_into: id(bucket list) -> (that list, weak references to the destinations whose
        # shapes were checked, their element counts).
        self._into_checked = {}
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
        return self._drive(timeout, defer_loaded, flat=True, kind=_TORCH)

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
        # Reported at the end, only once load_fn has returned: it may still fail after the last
        # tensor (e.g. a loader that checks that every parameter was set).
        pairs = self._drive(timeout, True, flat=True, kind=_RAW_PAIRS if raw else _TORCH)
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

    def load_into(self, params, timeout=None):
        """Receives ONE version straight into `params`, a {name: torch.Tensor} of destinations
        (e.g. dict(model.named_parameters()) or model.state_dict() when the engine keeps one
        tensor per checkpoint tensor, unfused and unsharded), copying each bucket with one
        torch._foreach_copy_ per device pair (torch >= 2.1; one copy_ per tensor otherwise);
        returns the version.

        Every tensor received must have a destination of the same shape (and a dtype torch copies
        into); otherwise its bucket fails naming the tensor (KeyError or ValueError, reported to
        the daemon as load() reports), and the version is not loaded. Shapes are checked again
        whenever a bucket's destinations are other tensor objects than last time or hold another
        number of elements. Copies run under torch.no_grad(), so parameters that require grad
        take them. The library keeps no reference to the destinations. Destinations no tensor of
        the version names are left as they are. The copies are complete (the device synchronized)
        before each bucket is acked, as in receive().
        """
        torch = _torch()
        foreach = getattr(torch, "_foreach_copy_", None)

        def check(items):
            for name, src in items:
                dst = params.get(name)
                if dst is None:
                    raise KeyError(f"load_into: tensor '{name}' of the version has no destination")
                if dst.shape != src.shape:
                    raise ValueError(f"load_into: tensor '{name}' has shape {tuple(src.shape)}, "
                                     f"its destination {tuple(dst.shape)}")

        def copy_buckets(buckets):
            for items in buckets:
                try:
                    dsts = [params[name] for name, _ in items]
                except KeyError:
                    check(items)  # raises, naming the tensor
                    raise
                srcs = [src for _, src in items]
                # Shapes are checked again when the bucket's views, its destination objects or
                # their element counts changed (`param.data = other` keeps the object; a copy_
                # into a destination with more elements than the source would broadcast).
                numels = [d.numel() for d in dsts]
                checked = self._into_checked.get(id(items))
                if (checked is None or checked[0] is not items or checked[2] != numels
                        or len(checked[1]) != len(dsts)
                        or not all(ref() is d for ref, d in zip(checked[1], dsts))):
                    check(items)
                    # The list is held so that its id stays its own; the destinations are not.
                    self._into_checked[id(items)] = (items, [weakref.ref(d) for d in dsts],
                                                     numels)
                if foreach is not None and dsts and all(
                        d.device == srcs[0].device for d in (dsts[0], dsts[-1])):
                    try:
                        foreach(dsts, srcs)
                        continue
                    except RuntimeError:
                        pass  # mixed devices or dtypes torch will not batch: one by one
                for d, src in zip(dsts, srcs):
                    d.copy_(src)

        buckets = self._drive(timeout, True, flat=False, kind=_TORCH, own_lists=False)
        try:
            with torch.no_grad():  # parameters that require grad take copies without autograd
                copy_buckets(buckets)
        except BaseException as e:  # noqa: B902 - Ctrl-C is reported too.
            if self._done is not None:
                try:
                    self.finish(error=f"{type(e).__name__}: {e}")
                except CkptError:
                    pass
            else:
                _throw_into(buckets, e)
            raise
        return self.finish()

    def receive_buckets(self, timeout=None, defer_loaded=False):
        """Like receive(), one list of (name, torch.Tensor) per bucket. The views of a list are
        valid until the next list is asked for."""
        return self._drive(timeout, defer_loaded, flat=False, kind=_TORCH)

    def receive_raw(self, timeout=None, defer_loaded=False):
        """Like receive_buckets() without torch: one list of RawTensor per bucket."""
        return self._drive(timeout, defer_loaded, flat=False, kind=_RAW)

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
        slot = -1
        for i, address in enumerate(self._slot_addresses):
            if address <= tensor.data < address + self._slot_bytes:
                slot = i
        return self._torch_view((tensor.name, tensor.dtype, tensor.shape, tensor.data,
                                 tensor.nbytes, slot))

    # ---- internals ----

    def _drive(self, timeout, defer_loaded, flat, kind, own_lists=True):
        buckets = self._buckets(timeout, defer_loaded, kind)
        try:
            for items in buckets:
                if flat:
                    yield from items
                elif own_lists:
                    yield list(items)  # the caller's list: the kept one stays as it is
                else:
                    yield items  # internal callers that do not change it (load_into)
                items = None
        except BaseException as e:  # noqa: B902 - report GeneratorExit and Ctrl-C too.
            _throw_into(buckets, e)
            raise
        finally:
            buckets.close()

    def _buckets(self, timeout, defer_loaded, kind):
        """Yields each bucket's items (`kind`: see _bucket_items); acks it when resumed; handles
        VersionDone."""
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
                kind_of_event, v, b = event.kind, event.version, event.bucket
                if version is not None and v != version:
                    raise CkptError(INTERNAL, f"the daemon sent an event of version {v} in the "
                                              f"middle of version {version}")
                version = v
                if kind_of_event == _native.EVENT_BUCKET:
                    items = None
                    try:
                        # Building the views may fail too (a dtype this torch lacks): reported.
                        items, n, nbytes = self._bucket_items(kind)
                        yield items
                        self._sync()
                    except BaseException as e:  # noqa: B902
                        self._fail(v, b, e)
                        raise
                    count += n
                    total += nbytes
                    items = None
                    self._ack(v, b)
                elif kind_of_event == _native.EVENT_VERSION_DONE:
                    if defer_loaded:
                        self._done = (v, count, total)
                    else:
                        self._loaded(v, count, total, None)
                    return
                else:
                    raise CkptError(INTERNAL, f"unknown event kind {kind_of_event} from the daemon")
        finally:
            self._busy = False
            # Also after a failed version: what it did not use is dropped, so kept views stay
            # bounded by one version's layouts.
            self._end_of_version()

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

    def _layout(self):
        """The current bucket's table (one ckpt_consumer_bucket_table call, no ctypes access per
        tensor) and a bytes copy of its block."""
        table = self._table
        err = ctypes.create_string_buffer(_ERR_LEN)
        _check(self._lib.ckpt_consumer_bucket_table(self._h(), ctypes.byref(table), err,
                                                    _ERR_LEN), err)
        block = ctypes.string_at(table.layout, table.layout_bytes) if table.count else b""
        return table, block

    def _bucket_items(self, kind):
        """(items, tensors, bytes) of the current bucket. `kind` _TORCH: [(name, torch view)];
        _RAW: [RawTensor]; _RAW_PAIRS: [(name, RawTensor)].

        Items are kept per bucket layout (the table's block: names, dtypes, shapes, addresses) and
        handed out again for a bucket with the same layout, as later updates of the same model
        have: the views then cost nothing to build. Only views into the slots are kept (they stay
        valid while the slots are mapped); kept items of layouts no update used in its last
        version are dropped when a version ends."""
        table, block = self._layout()
        key = (kind, block)
        entry = self._kept.get(key) if self._reuse_views else None
        if entry is None:
            columns = _parse_columns(block, table, table.count) if table.count else []
            if kind == _TORCH:
                items = self._torch_items(columns)
            else:
                items = [RawTensor(*c[:5]) for c in columns]
                if kind == _RAW_PAIRS:
                    items = [(t.name, t) for t in items]
            entry = (items, len(columns), sum(c[4] for c in columns))
            if self._reuse_views and all(c[5] >= 0 or c[4] == 0 for c in columns):
                self._kept[key] = entry
        if self._reuse_views:
            self._kept_used.add(block)
        return entry

    def _end_of_version(self):
        used = self._kept_used
        if not used:
            return  # no bucket came (e.g. a receive that timed out): keep what is kept
        self._kept = {key: entry for key, entry in self._kept.items() if key[1] in used}
        self._kept_used = set()
        kept_lists = {id(entry[0]) for entry in self._kept.values()}
        self._into_checked = {key: held for key, held in self._into_checked.items()
                              if key in kept_lists}

    def _torch_device(self):
        torch = _torch()
        if self._backend == "cuda":
            return torch.device("cuda", self._cuda_device)
        return torch.device("cpu")

    def _slot_flat(self, torch, device):
        """One flat uint8 tensor over each whole slot, built once."""
        if self._slot_tensors is None:
            flats = []
            for address in self._slot_addresses:
                if self._backend == "cuda":
                    flat = torch.as_tensor(_CudaBytes(address, self._slot_bytes), device=device)
                else:
                    buf = (ctypes.c_uint8 * self._slot_bytes).from_address(address)
                    flat = torch.frombuffer(buf, dtype=torch.uint8)
                flats.append(flat)
            self._slot_tensors = flats
        return self._slot_tensors

    def _dtype(self, code, name):
        """(torch dtype, element size) of a CKPT_DTYPE number."""
        known = self._dtypes.get(code)
        if known is None:
            torch = _torch()
            dtype = torch_dtype(code, name)
            known = self._dtypes[code] = (dtype, torch.empty((), dtype=dtype).element_size())
        return known

    def _typed_slot(self, torch, device, slot, code, dtype, size):
        """Slot `slot` viewed as a flat tensor of `dtype`, built once per slot and dtype."""
        typed = self._typed_slots.get((slot, code))
        if typed is None:
            flat = self._slot_flat(torch, device)[slot]
            usable = self._slot_bytes // size * size
            typed = self._typed_slots[(slot, code)] = flat[:usable].view(dtype)
        return typed

    def _torch_items(self, columns):
        """[(name, torch view)] of a bucket's columns: _torch_view with the common case (a tensor
        in a slot at an offset its element size divides) inlined."""
        torch = _torch()
        if self._device is None:
            self._device = self._torch_device()
        device, addresses, slot_bytes = self._device, self._slot_addresses, self._slot_bytes
        dtypes, typed_slots = self._dtypes, self._typed_slots
        fast = bool(addresses) and hasattr(torch, "frombuffer")
        out = []
        append = out.append
        for c in columns:
            name, code, shape, data, nbytes, slot = c
            if fast and slot >= 0 and nbytes:
                dtype, size = dtypes.get(code) or self._dtype(code, name)
                offset = data - addresses[slot]
                if offset % size == 0 and 0 <= offset <= slot_bytes - nbytes:
                    typed = typed_slots.get((slot, code))
                    if typed is None:
                        typed = self._typed_slot(torch, device, slot, code, dtype, size)
                    first = offset // size
                    view = typed[first:first + nbytes // size]
                    append((name, view if len(shape) == 1 else view.view(shape)))
                    continue
            append((name, self._torch_view(c)))
        return out

    def _torch_view(self, column):
        """A torch view of one tensor: (name, dtype code, shape, data, nbytes, slot)."""
        name, code, shape, data, nbytes, slot = column
        torch = _torch()
        dtype, size = self._dtype(code, name)
        device = self._device
        if device is None:
            device = self._device = self._torch_device()
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype, device=device)
        if slot >= 0 and self._slot_addresses and hasattr(torch, "frombuffer"):
            offset = data - self._slot_addresses[slot]
            if 0 <= offset and offset + nbytes <= self._slot_bytes:
                if offset % size == 0:
                    # One typed slice (and a reshape unless 1-D) of the slot viewed as `dtype`.
                    first = offset // size
                    view = self._typed_slot(torch, device, slot, code, dtype, size)[
                        first:first + nbytes // size]
                    return view if len(shape) == 1 else view.view(shape)
                flat = self._slot_flat(torch, device)[slot]
                return flat[offset:offset + nbytes].view(dtype).view(shape)
        # A tensor larger than a slot (put together in a buffer of its own), or an old library.
        if self._backend == "cuda":
            flat = torch.as_tensor(_CudaBytes(data, nbytes), device=device)
        else:
            buf = (ctypes.c_uint8 * nbytes).from_address(data)
            if hasattr(torch, "frombuffer"):
                flat = torch.frombuffer(buf, dtype=torch.uint8)
            else:  # torch < 1.10
                import numpy
                flat = torch.from_numpy(numpy.frombuffer(buf, dtype=numpy.uint8))
        return flat.view(dtype).reshape(shape)

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
