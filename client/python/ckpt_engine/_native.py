"""Loads libckpt_client.so and declares the C ABI of client/c_api.h for ctypes."""

import ctypes
import os
from pathlib import Path

LIB_ENV = "CKPT_CLIENT_LIB"
LIB_NAME = "libckpt_client.so"

PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p)


class Tensor(ctypes.Structure):
    """struct ckpt_tensor."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("dtype", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("data", ctypes.c_void_p),
        ("nbytes", ctypes.c_uint64),
    ]


class TensorTable(ctypes.Structure):
    """struct ckpt_tensor_table: the tensors of a push as columns."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("count", ctypes.c_size_t),
        ("names", ctypes.c_char_p),
        ("names_bytes", ctypes.c_uint64),
        ("name_ends", ctypes.c_void_p),
        ("dtypes", ctypes.c_void_p),
        ("ndims", ctypes.c_void_p),
        ("shapes", ctypes.c_void_p),
        ("shapes_count", ctypes.c_uint64),
        ("data", ctypes.c_void_p),
        ("nbytes", ctypes.c_void_p),
        ("devices", ctypes.c_void_p),  # NULL: every tensor in host memory
    ]


class PushOptions(ctypes.Structure):
    """struct ckpt_push_options."""

    _fields_ = [
        ("version", ctypes.c_uint64),
        ("label", ctypes.c_char_p),
        ("streams", ctypes.c_int),
        ("chunk_bytes", ctypes.c_uint64),
        ("timeout_s", ctypes.c_double),
        ("progress", PROGRESS_FN),
        ("progress_user", ctypes.c_void_p),
    ]


class PushExtra(ctypes.Structure):
    """struct ckpt_push_extra (fill with ckpt_push_extra_init: it sets struct_size)."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("transport", ctypes.c_char_p),
        ("window_bytes", ctypes.c_uint64),
        ("update", ctypes.c_int),
        ("part_index", ctypes.c_uint32),
        ("part_count", ctypes.c_uint32),
    ]


class ClientOptions(ctypes.Structure):
    """struct ckpt_client_options (fill with ckpt_client_options_init: it sets struct_size)."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("socket", ctypes.c_char_p),
        ("address", ctypes.c_char_p),
        ("tls_ca", ctypes.c_char_p),
        ("tls_cert", ctypes.c_char_p),
        ("tls_key", ctypes.c_char_p),
        ("token_file", ctypes.c_char_p),
        ("timeout_s", ctypes.c_double),
    ]


class TensorView(ctypes.Structure):
    """struct ckpt_tensor_view: one received tensor, a view into a staging slot."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("dtype", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("data", ctypes.c_void_p),
        ("nbytes", ctypes.c_uint64),
    ]


class ConsumerEvent(ctypes.Structure):
    """struct ckpt_consumer_event."""

    _fields_ = [
        ("kind", ctypes.c_int),
        ("version", ctypes.c_uint64),
        ("bucket", ctypes.c_uint64),
        ("last", ctypes.c_int),
        ("count", ctypes.c_size_t),
        ("tensors", ctypes.POINTER(TensorView)),
    ]


class BucketTable(ctypes.Structure):
    """struct ckpt_bucket_table: the last bucket's tensors as columns in one block."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("count", ctypes.c_size_t),
        ("layout", ctypes.c_void_p),
        ("layout_bytes", ctypes.c_size_t),
        ("name_ends", ctypes.c_void_p),
        ("data", ctypes.c_void_p),
        ("nbytes", ctypes.c_void_p),
        ("shapes", ctypes.c_void_p),
        ("slots", ctypes.c_void_p),
        ("dtypes", ctypes.c_void_p),
        ("ndims", ctypes.c_void_p),
        ("names", ctypes.c_void_p),
    ]


# CKPT_EVENT_*.
EVENT_BUCKET = 1
EVENT_VERSION_DONE = 2

# int (*ckpt_bucket_fn)(const ckpt_consumer_event*, void* user, char* why, size_t why_len).
# The consistent switch's hooks (c_api.h: ckpt_pause_fn, ckpt_resume_fn).
PAUSE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_size_t)
RESUME_FN = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p,
                             ctypes.c_void_p)
BUCKET_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ConsumerEvent), ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_size_t)


def candidate_paths():
    """Where the library is looked for, in order: $CKPT_CLIENT_LIB, next to the package, the
    repository's bazel-bin (when the package runs from a source checkout)."""
    here = Path(__file__).resolve().parent
    env = os.environ.get(LIB_ENV)
    paths = [Path(env)] if env else []
    paths += [here / LIB_NAME, here.parent / LIB_NAME]
    # client/python/ckpt_engine -> the repository root is three levels up.
    paths.append(here.parents[2] / "bazel-bin" / "client" / LIB_NAME)
    return paths


def _declare(lib):
    c = ctypes
    err = [c.c_char_p, c.c_size_t]
    lib.ckpt_push_options_init.argtypes = [c.POINTER(PushOptions)]
    lib.ckpt_push_options_init.restype = None
    lib.ckpt_client_open2.argtypes = [c.c_char_p, c.c_char_p, c.POINTER(c.c_void_p)] + err
    lib.ckpt_client_open2.restype = c.c_int
    lib.ckpt_client_options_init.argtypes = [c.POINTER(ClientOptions)]
    lib.ckpt_client_options_init.restype = None
    lib.ckpt_client_open3.argtypes = [c.POINTER(ClientOptions), c.POINTER(c.c_void_p)] + err
    lib.ckpt_client_open3.restype = c.c_int
    lib.ckpt_client_set_timeout.argtypes = [c.c_void_p, c.c_double]
    lib.ckpt_client_set_timeout.restype = None
    lib.ckpt_client_close.argtypes = [c.c_void_p]
    lib.ckpt_client_close.restype = None
    lib.ckpt_client_release_staging.argtypes = [c.c_void_p]
    lib.ckpt_client_release_staging.restype = None
    lib.ckpt_push.argtypes = [
        c.c_void_p, c.POINTER(Tensor), c.c_size_t, c.POINTER(PushOptions),
        c.POINTER(c.c_uint64), c.POINTER(c.c_void_p)] + err
    lib.ckpt_push.restype = c.c_int
    lib.ckpt_push_table.argtypes = [
        c.c_void_p, c.POINTER(TensorTable), c.POINTER(PushOptions), c.POINTER(c.c_uint64),
        c.POINTER(c.c_void_p)] + err
    lib.ckpt_push_table.restype = c.c_int
    lib.ckpt_push_extra_init.argtypes = [c.POINTER(PushExtra)]
    lib.ckpt_push_extra_init.restype = None
    lib.ckpt_push_table_ex.argtypes = [
        c.c_void_p, c.POINTER(TensorTable), c.POINTER(PushOptions), c.POINTER(PushExtra),
        c.POINTER(c.c_uint64), c.POINTER(c.c_void_p)] + err
    lib.ckpt_push_table_ex.restype = c.c_int
    lib.ckpt_load_files.argtypes = [
        c.c_void_p, c.POINTER(c.c_char_p), c.c_size_t, c.c_uint64, c.c_char_p, c.c_double,
        c.POINTER(c.c_uint64), c.POINTER(c.c_void_p)] + err
    lib.ckpt_load_files.restype = c.c_int
    lib.ckpt_list_versions.argtypes = [c.c_void_p, c.POINTER(c.c_void_p)] + err
    lib.ckpt_list_versions.restype = c.c_int
    lib.ckpt_get_version.argtypes = [c.c_void_p, c.c_uint64, c.POINTER(c.c_void_p)] + err
    lib.ckpt_get_version.restype = c.c_int
    lib.ckpt_drop_version.argtypes = [c.c_void_p, c.c_uint64] + err
    lib.ckpt_drop_version.restype = c.c_int
    lib.ckpt_update.argtypes = [
        c.c_void_p, c.c_uint64, c.c_int, c.c_double, c.POINTER(c.c_void_p)] + err
    lib.ckpt_update.restype = c.c_int
    lib.ckpt_update_options.argtypes = [
        c.c_void_p, c.c_uint64, c.c_int, c.c_double, c.c_char_p, c.POINTER(c.c_void_p)] + err
    lib.ckpt_update_options.restype = c.c_int
    lib.ckpt_update_previous.argtypes = [c.c_void_p, c.c_double, c.POINTER(c.c_void_p)] + err
    lib.ckpt_update_previous.restype = c.c_int
    lib.ckpt_wait_loaded.argtypes = [
        c.c_void_p, c.c_uint64, c.c_double, c.POINTER(c.c_void_p)] + err
    lib.ckpt_wait_loaded.restype = c.c_int
    # Workers.
    lib.ckpt_consumer_attach.argtypes = [
        c.c_char_p, c.c_int, c.c_char_p, c.POINTER(c.c_char_p), c.c_size_t, c.c_double,
        c.POINTER(c.c_void_p)] + err
    lib.ckpt_consumer_attach.restype = c.c_int
    lib.ckpt_consumer_attach_pausable.argtypes = [
        c.c_char_p, c.c_int, c.c_char_p, c.POINTER(c.c_char_p), c.c_size_t, c.c_double,
        PAUSE_FN, RESUME_FN, c.c_void_p, c.POINTER(c.c_void_p)] + err
    lib.ckpt_consumer_attach_pausable.restype = c.c_int
    lib.ckpt_consumer_set_verify_checksums.argtypes = [c.c_void_p, c.c_int] + err
    lib.ckpt_consumer_set_verify_checksums.restype = c.c_int
    lib.ckpt_consumer_next.argtypes = [c.c_void_p, c.c_double, c.POINTER(ConsumerEvent)] + err
    lib.ckpt_consumer_next.restype = c.c_int
    lib.ckpt_consumer_ack.argtypes = [c.c_void_p, c.c_uint64, c.c_uint64, c.c_char_p] + err
    lib.ckpt_consumer_ack.restype = c.c_int
    lib.ckpt_consumer_loaded.argtypes = [
        c.c_void_p, c.c_uint64, c.c_uint64, c.c_uint64, c.c_char_p] + err
    lib.ckpt_consumer_loaded.restype = c.c_int
    lib.ckpt_consumer_receive_version.argtypes = [
        c.c_void_p, c.c_double, BUCKET_FN, c.c_void_p, c.POINTER(c.c_uint64)] + err
    lib.ckpt_consumer_receive_version.restype = c.c_int
    lib.ckpt_consumer_bucket_table.argtypes = [c.c_void_p, c.POINTER(BucketTable)] + err
    lib.ckpt_consumer_bucket_table.restype = c.c_int
    lib.ckpt_consumer_info.argtypes = [c.c_void_p, c.POINTER(c.c_void_p)] + err
    lib.ckpt_consumer_info.restype = c.c_int
    lib.ckpt_consumer_close.argtypes = [c.c_void_p]
    lib.ckpt_consumer_close.restype = None
    lib.ckpt_free.argtypes = [c.c_void_p]
    lib.ckpt_free.restype = None
    lib.ckpt_status_name.argtypes = [c.c_int]
    lib.ckpt_status_name.restype = c.c_char_p
    lib.ckpt_version.argtypes = []
    lib.ckpt_version.restype = c.c_char_p
    return lib


_lib = None


def lib():
    """The loaded library (loaded on first use). OSError naming every place tried if none loads."""
    global _lib
    if _lib is None:
        tried = []
        for path in candidate_paths():
            if not path.is_file():
                tried.append(f"{path} (missing)")
                continue
            try:
                _lib = _declare(ctypes.CDLL(str(path)))
                break
            except OSError as e:
                tried.append(f"{path} ({e})")
        if _lib is None:
            raise OSError(
                f"cannot load {LIB_NAME}: set ${LIB_ENV} to its path "
                f"(bazel build //client:{LIB_NAME}); tried: " + "; ".join(tried))
    return _lib
