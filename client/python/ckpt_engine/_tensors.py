"""Turns torch tensors and numpy arrays into C tensor descriptors without copying where possible.

Neither torch nor numpy is imported here: a value is recognized through the module that is already
loaded (a torch.Tensor can only exist if torch was imported), so importing ckpt_engine stays cheap
and either library is optional.
"""

import ctypes
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
    if t.device.type != "cpu" or not t.is_contiguous() or t.is_conj():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")  # CUDA (or other device) tensors: one copy to host memory.
        if not t.is_contiguous():
            t = t.contiguous()
        if t.is_conj():
            t = t.resolve_conj()
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
    """C descriptors for a {name: tensor} mapping (or an iterable of (name, tensor) pairs).

    Returns (array of _native.Tensor, keep-alive list, total bytes). The descriptors point into
    the tensors' memory (or into contiguous/host copies held by the keep-alive list), which must
    outlive the push call.
    """
    items = list(tensors.items() if hasattr(tensors, "items") else tensors)
    descs = (_native.Tensor * len(items))()
    keep = []
    total = 0
    for i, (name, value) in enumerate(items):
        if not isinstance(name, str):
            raise Unsupported(f"tensor names must be str, not {type(name).__name__} ({name!r})")
        if _is_torch_tensor(value):
            dtype, shape, ptr, nbytes, owner = _torch_view(name, value)
        elif _is_numpy_array(value):
            dtype, shape, ptr, nbytes, owner = _numpy_view(name, value)
        else:
            raise Unsupported(f"tensor '{name}': expected a torch.Tensor or numpy.ndarray, "
                              f"not {type(value).__module__}.{type(value).__name__}")
        encoded = name.encode("utf-8")
        shape_arr = (ctypes.c_int64 * max(1, len(shape)))(*shape)
        keep.extend((owner, encoded, shape_arr))
        d = descs[i]
        d.name = encoded
        d.dtype = dtype
        d.ndim = len(shape)
        d.shape = shape_arr  # an array converts to its element pointer (no ctypes.cast)
        d.data = ptr if nbytes > 0 else None
        d.nbytes = nbytes
        total += nbytes
    return descs, keep, total
