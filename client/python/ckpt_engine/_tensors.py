"""Turns torch tensors and numpy arrays into C tensor descriptors without copying where possible.

Neither torch nor numpy is imported here: a value is recognized through the module that is already
loaded (a torch.Tensor can only exist if torch was imported), so importing ckpt_engine stays cheap
and either library is optional.
"""

import array
import ctypes
import itertools
import sys

from . import _native

# ckpt.v1.DType wire numbers by dtype name (torch's names without "torch.", numpy's names; numpy
# gets bfloat16 and float8 from ml_dtypes when that is installed).
DTYPES = {
    "bool": 1,
    "uint8": 2,
    "int8": 3,
    "int16": 4,
    "int32": 5,
    "int64": 6,
    "float16": 7,
    "bfloat16": 8,
    "float32": 9,
    "float64": 10,
    "float8_e4m3fn": 11,
    "float8_e5m2": 12,
}

DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class Unsupported(TypeError):
    pass


def _is_torch_tensor(value):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _is_numpy_array(value):
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray)


# torch dtype object -> wire number, filled as dtypes are met (str(dtype) per tensor is slow).
_TORCH_DTYPES = {}


def _torch_view(name, t):
    """(dtype, shape, data pointer, nbytes, object to keep alive) of a torch tensor."""
    torch = sys.modules["torch"]
    if t.layout != torch.strided or t.is_sparse:
        raise Unsupported(f"tensor '{name}': only dense (strided) tensors can be pushed, not {t.layout}")
    dtype = _TORCH_DTYPES.get(t.dtype)
    if dtype is None:
        dtype = DTYPES.get(str(t.dtype).replace("torch.", ""))
        if dtype is None:
            raise Unsupported(f"tensor '{name}': unsupported dtype {t.dtype} "
                              f"(supported: {', '.join(DTYPES)})")
        _TORCH_DTYPES[t.dtype] = dtype
    # The common case (a contiguous CPU tensor) is read in place as it is: data_ptr() needs no
    # detach. Anything to convert is detached first, so no autograd graph is built.
    negated = getattr(t, "is_neg", lambda: False)()  # a lazily negated view (conj().imag)
    if t.device.type != "cpu" or not t.is_contiguous() or t.is_conj() or negated:
        t = t.detach()
        if t.device.type not in ("cpu", "cuda"):
            t = t.to("cpu")  # other devices: one copy to host memory
        # CUDA tensors are made contiguous (and resolved) on their device; the push reads them
        # there (the daemon through CUDA IPC, or the client device-to-host).
        if not t.is_contiguous():
            t = t.contiguous()
        if t.is_conj():
            t = t.resolve_conj()
        if negated:
            t = t.resolve_neg()
    nbytes = t.numel() * t.element_size()
    # data_ptr() already includes the storage offset; bfloat16 and float8 need no numpy.
    return dtype, tuple(t.shape), t.data_ptr(), nbytes, t


def _numpy_view(name, a):
    np = sys.modules["numpy"]
    dtype = DTYPES.get(a.dtype.name)
    if dtype is None or a.dtype.hasobject:
        raise Unsupported(f"array '{name}': unsupported dtype {a.dtype} "
                          f"(supported: {', '.join(DTYPES)})")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))  # The daemon stores little-endian host order.
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return dtype, tuple(a.shape), a.ctypes.data, a.nbytes, a


def describe(tensors):
    """The C table (ckpt_tensor_table) of a {name: tensor} mapping (or an iterable of (name,
    tensor) pairs).

    Returns (_native.TensorTable, keep-alive list, total bytes). The table's columns are arrays
    built once per push (no ctypes struct per tensor); its data addresses point into the tensors'
    memory (or into contiguous/host copies held by the keep-alive list), which must outlive the push
    call. The common case, a contiguous CPU torch tensor of a known dtype, is read with a handful of
    attribute reads. A CUDA tensor's address is its device address, and its `devices` entry its
    GPU's index (-1 for host memory; the column is left NULL when no tensor is on a GPU).
    """
    items = tensors.items() if hasattr(tensors, "items") else tensors
    torch = sys.modules.get("torch")
    np = sys.modules.get("numpy")
    tensor_type = torch.Tensor if torch is not None else ()
    array_type = np.ndarray if np is not None else ()
    strided = torch.strided if torch is not None else None
    known = _TORCH_DTYPES
    names, dtypes, ndims, shapes, ptrs, sizes, keep = [], [], [], [], [], [], []
    devices = None  # made at the first CUDA tensor
    total = 0
    for name, value in items:
        if type(name) is not str and not isinstance(name, str):
            raise Unsupported(f"tensor names must be str, not {type(name).__name__} ({name!r})")
        device = -1
        if isinstance(value, tensor_type):
            dtype = known.get(value.dtype)
            if (dtype is not None and value.is_cpu and value.layout is strided
                    and value.is_contiguous() and not value.is_conj() and not value.is_neg()):
                shape = value.shape
                nbytes = value.numel() * value.element_size()
                ptr = value.data_ptr()
                keep.append(value)
            else:
                dtype, shape, ptr, nbytes, owner = _torch_view(name, value)
                keep.append(owner)
                if owner.device.type == "cuda":
                    device = owner.device.index
        elif isinstance(value, array_type):
            dtype, shape, ptr, nbytes, owner = _numpy_view(name, value)
            keep.append(owner)
        else:
            raise Unsupported(f"tensor '{name}': expected a torch.Tensor or numpy.ndarray, "
                              f"not {type(value).__module__}.{type(value).__name__}")
        if device >= 0 and devices is None:
            devices = array.array("i", [-1] * len(names))
        if devices is not None:
            devices.append(device)
        names.append(name)
        dtypes.append(dtype)
        ndims.append(len(shape))
        shapes.extend(shape)
        ptrs.append(ptr if nbytes > 0 else 0)
        sizes.append(nbytes)
        total += nbytes
    joined = "".join(names)
    if joined.isascii():
        blob = joined.encode("ascii")
        ends = itertools.accumulate(map(str.__len__, names))  # not a subclass's __len__
    else:
        encoded = [n.encode("utf-8") for n in names]
        blob = b"".join(encoded)
        ends = itertools.accumulate(map(len, encoded))
    columns = {
        "names": blob,
        "name_ends": array.array("Q", ends),
        "dtypes": array.array("i", dtypes),
        "ndims": array.array("i", ndims),
        "shapes": array.array("q", shapes or [0]),
        "data": array.array("Q", ptrs),
        "nbytes": array.array("Q", sizes),
    }
    table = _native.TensorTable()
    table.struct_size = ctypes.sizeof(_native.TensorTable)
    table.count = len(names)
    table.names = blob
    table.names_bytes = len(blob)
    table.shapes_count = len(shapes)
    for field in ("name_ends", "dtypes", "ndims", "shapes", "data", "nbytes"):
        setattr(table, field, columns[field].buffer_info()[0])
    if devices is not None:
        columns["devices"] = devices
        table.devices = devices.buffer_info()[0]
    keep.append(columns)
    return table, keep, total
