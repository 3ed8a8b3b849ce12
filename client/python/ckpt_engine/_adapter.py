"""What the engine adapters (ckpt_engine.vllm, ckpt_engine.sglang) share: loading one version into
a model through its load_weights, and parsing arguments that may arrive as strings (vLLM's HTTP
/collective_rpc passes only strings)."""

import logging
import math
import threading

from . import INVALID_ARGUMENT, NOT_FOUND, CkptError, Client, _version_id

log = logging.getLogger("ckpt_engine")

_END = object()


def as_float(value, what):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CkptError(INVALID_ARGUMENT, f"{what} must be a number, not {value!r}") from None


def as_int(value, what):
    try:
        if isinstance(value, str):
            return int(value.strip(), 0)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise CkptError(INVALID_ARGUMENT, f"{what} must be an integer, not {value!r}") from None


def as_version(value, what="version"):
    """A version id: as_int, then an integer in [0, 2^64 - 1] (a bool is none). Out of range it
    would reach the library modulo 2^64 and name another version (-1: 2^64 - 1, 2^64 + 1: 1)."""
    if isinstance(value, bool):
        raise CkptError(INVALID_ARGUMENT, f"{what} must be an integer, not {value!r}")
    return _version_id(as_int(value, what), what)


def as_timeout(value, what, finite=False):
    """Seconds to wait: as_float, then not NaN and not negative (either meant "do not wait at all"
    before: the receive failed at once while the daemon's update went on without this worker, until
    its ack_timeout). `finite`: infinity refused too (where it becomes milliseconds)."""
    seconds = as_float(value, what)
    if math.isnan(seconds) or seconds < 0 or (finite and math.isinf(seconds)):
        raise CkptError(INVALID_ARGUMENT, f"{what} must be a {'finite ' if finite else ''}number "
                                          f"of seconds >= 0, not {value!r}")
    return seconds


def as_bool(value, what):
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise CkptError(INVALID_ARGUMENT, f"{what} must be true or false, not {value!r}")
    return bool(value)


def load_version(worker, model, timeout, post_load=None, version=0, force=False):
    """Receives one version from `worker` into `model` with model.load_weights(pairs), runs
    `post_load()` (if any), then reports the version loaded; returns the version.

    `version` (non-zero) and not `force`: when the worker already holds that version the daemon
    skips it, so nothing is received and it is returned at once. A failure of load_weights is
    reported to the daemon for the current bucket, one of post_load when the version is reported;
    both propagate.
    """
    if version and not force and worker.version == version:
        log.info("ckpt-engine: version %d is already loaded; nothing to receive", version)
        return version
    pairs = worker.receive(timeout=timeout, defer_loaded=True)
    try:
        model.load_weights(pairs)
        # load_weights must have consumed every tensor; the generator then saw VersionDone.
        if next(pairs, _END) is not _END:
            raise RuntimeError("model.load_weights returned before consuming every tensor of the "
                               "version")
    except BaseException as e:  # noqa: B902 - Ctrl-C is reported too.
        try:
            pairs.throw(e)
        except BaseException:  # noqa: B902 - it re-raises e.
            pass
        raise
    try:
        if post_load is not None:
            post_load()
    except BaseException as e:  # noqa: B902
        try:
            worker.finish(error=f"post-load processing failed: {type(e).__name__}: {e}")
        except CkptError:
            pass  # The stream is gone: the daemon fails this worker anyway.
        raise
    loaded = worker.finish()
    log.info("ckpt-engine: loaded version %d", loaded)
    return loaded


def newest_committed(client):
    """The newest committed version the daemon holds (CkptError NOT_FOUND if none)."""
    versions = [v["version"] for v in client.list_versions() if v.get("state") == "committed"]
    if not versions:
        raise CkptError(NOT_FOUND, "the daemon holds no committed version")
    return max(versions)


def resolve_version(socket, version):
    """(Client, version): `version` 0 becomes the newest committed one; an explicit version is
    checked to exist (CkptError NOT_FOUND otherwise) before any worker starts waiting for it."""
    client = Client(socket=socket)
    try:
        version = as_version(version, "version")
        if version == 0:
            version = newest_committed(client)
        else:
            client.get_version(version)
    except BaseException:
        client.close()
        raise
    return client, version


def update_alongside(client, version, force, timeout, receive):
    """The two halves of one update from the process that owns the engine: asks the daemon for it
    (client.update on a thread of its own) while `receive()` has the engine's workers receive it on
    this thread. Returns (the daemon's report, what receive returned). Raises receive's error, else
    the daemon's."""
    result = {}

    def run():
        try:
            result["report"] = client.update(version=version, force=force, timeout=timeout)
        except BaseException as e:  # noqa: B902 - handed to the caller's thread.
            result["error"] = e

    thread = threading.Thread(target=run, name="ckpt-engine-update", daemon=True)
    thread.start()
    try:
        received = receive()
    finally:
        thread.join(timeout + 30)
    if thread.is_alive():
        raise TimeoutError("the daemon's update did not return after the workers finished")
    if "error" in result:
        raise result["error"]
    return result["report"], received
