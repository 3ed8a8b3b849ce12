/* C ABI of the ckpt-engine client: libckpt_client.so.
 *
 * For trainers in any language (Python uses it through ctypes: client/python/ckpt_engine). Plain C,
 * no CPython API: one build serves every Python version.
 *
 * Conventions:
 * - Functions that can fail return an int status code: absl's (= gRPC's) canonical codes, 0 for
 *   success (CKPT_OK), e.g. 3 INVALID_ARGUMENT, 5 NOT_FOUND, 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE.
 *   On failure the message (one line, NUL-terminated, truncated to fit) is written to the caller's
 *   buffer `err` of `errlen` bytes; `err` may be NULL or `errlen` 0 to ignore it. On success `err`
 *   is left untouched.
 * - Strings returned through `char** out` are NUL-terminated JSON, allocated by the library: free
 *   them with ckpt_free. On failure `*out` is set to NULL.
 * - Nothing throws, nothing prints, nothing aborts the process on a bad argument (NULL pointers
 *   where data is required give INVALID_ARGUMENT).
 * - Threads: a ckpt_client may be used from several threads at once, except ckpt_client_close,
 *   which must be the last call on it. Calls block the calling thread; every request to the daemon
 *   has a deadline.
 *
 * JSON shapes (the same as `ckptctl versions --json` / `ckptctl show --json`):
 * - version info: {"version", "state" ("staging"|"committed"|"retired"), "tensor_count",
 *   "total_bytes", "created_unix_ms", "committed_unix_ms", "label", "received_bytes"};
 * - list: {"versions": [version info, ...]};
 * - detail: version info plus "dtypes": {"bfloat16": {"tensors": n, "bytes": b}, ...} and
 *   "tensors": [{"name", "dtype", "shape", "byte_size", "xxh3" (16 hex digits)}, ...].
 */
#ifndef CKPT_CLIENT_C_API_H_
#define CKPT_CLIENT_C_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CKPT_API __attribute__((visibility("default")))

#define CKPT_OK 0

/* Element types: the ckpt.v1.DType wire numbers. */
enum {
  CKPT_DTYPE_BOOL = 1,
  CKPT_DTYPE_UINT8 = 2,
  CKPT_DTYPE_INT8 = 3,
  CKPT_DTYPE_INT16 = 4,
  CKPT_DTYPE_INT32 = 5,
  CKPT_DTYPE_INT64 = 6,
  CKPT_DTYPE_FLOAT16 = 7,
  CKPT_DTYPE_BFLOAT16 = 8,
  CKPT_DTYPE_FLOAT32 = 9,
  CKPT_DTYPE_FLOAT64 = 10,
  CKPT_DTYPE_FLOAT8_E4M3FN = 11,
  CKPT_DTYPE_FLOAT8_E5M2 = 12,
};

/* A connection to one daemon. Opaque. */
typedef struct ckpt_client ckpt_client;

/* One tensor to push. Everything it points to is the caller's and is only read, in place, until
 * the push call returns. `nbytes` must equal product(shape) * element size; `data` may be NULL
 * only when nbytes is 0; `ndim` 0 is a scalar. */
typedef struct ckpt_tensor {
  const char* name;
  int dtype;
  int ndim;
  const int64_t* shape;
  const void* data;
  uint64_t nbytes;
} ckpt_tensor;

/* Progress of a push: bytes sent so far and the total. Called on the thread that called
 * ckpt_push, never concurrently, about every 50 ms while bytes go out and once with done == total
 * before the commit; `done` never decreases. Return 0 to go on, non-zero to cancel the push (it
 * then returns CANCELLED = 1 and leaves no version behind). */
typedef int (*ckpt_progress_fn)(uint64_t done, uint64_t total, void* user);

/* Options of a push. Fill with ckpt_push_options_init, then change what you need: zero fields mean
 * the defaults, so a zeroed struct works too. */
typedef struct ckpt_push_options {
  uint64_t version;          /* id to create; 0: the daemon picks the next one */
  const char* label;         /* NULL or "": none */
  int streams;               /* parallel upload streams, 1..64; 0: 4 */
  uint64_t chunk_bytes;      /* bytes per chunk, 1..16 MiB; 0: 4 MiB */
  double timeout_s;          /* per-request deadline and stall limit of a stream; 0: 60 s */
  ckpt_progress_fn progress; /* NULL: none */
  void* progress_user;       /* passed to `progress` */
} ckpt_push_options;

/* Defaults: version 0, no label, 4 streams, 4 MiB chunks, 60 s, no progress. */
CKPT_API void ckpt_push_options_init(ckpt_push_options* options);

/* Opens a client for the daemon at `socket` (a Unix socket path) or `address` (HOST:PORT); both
 * NULL or "": $CKPT_SOCKET, else /run/ckpt-engine/ckpt-engined.sock. Setting both is an error.
 * Checks that a Unix socket exists and is accessible; the connection is made by the first call.
 * Returns NULL on failure with the message in `err`. */
CKPT_API ckpt_client* ckpt_client_open(const char* socket, const char* address, char* err,
                                       size_t errlen);

/* ckpt_client_open that also returns the status code: *out is the client or NULL. */
CKPT_API int ckpt_client_open2(const char* socket, const char* address, ckpt_client** out,
                               char* err, size_t errlen);

/* Where the daemon is and, for TCP, how this client proves who it is (docs/security.md). Fill with
 * ckpt_client_options_init, then set what you need; NULL or "" strings are unset. The library only
 * reads the caller's struct during ckpt_client_open3.
 *
 * `struct_size` lets the struct grow without breaking callers: fields past `struct_size` take their
 * defaults, and a caller built against a newer header may pass a larger struct as long as the
 * fields this library does not know are zero (INVALID_ARGUMENT otherwise). */
typedef struct ckpt_client_options {
  size_t struct_size;  /* sizeof(ckpt_client_options); set by ckpt_client_options_init */
  const char* socket;  /* the daemon's Unix socket path */
  const char* address; /* HOST:PORT for TCP; not together with `socket` */
  /* TCP only (ignored for a Unix socket, where the caller's uid decides, as in ckptctl). Each unset
   * field falls back to its environment variable: $CKPT_TLS_CA, $CKPT_TLS_CERT, $CKPT_TLS_KEY,
   * $CKPT_TOKEN_FILE. */
  const char* tls_ca;     /* PEM file of the CA that signed the daemon's certificate: TLS on */
  const char* tls_cert;   /* PEM client certificate (mTLS): TLS on; needs tls_key */
  const char* tls_key;    /* PEM private key of tls_cert */
  const char* token_file; /* file whose first line is a bearer token (sent on every call) */
  double timeout_s;       /* deadline of list / get / drop, as ckpt_client_set_timeout; 0: 10 s */
} ckpt_client_options;

/* Defaults: struct_size = sizeof(ckpt_client_options), every string NULL, timeout_s 10. */
CKPT_API void ckpt_client_options_init(ckpt_client_options* options);

/* ckpt_client_open2 with options: the endpoint as for ckpt_client_open (both socket and address
 * unset: $CKPT_SOCKET, else the default socket), then, for TCP, the credentials. The token and
 * TLS files are read here (the TLS files again for each upload stream's connection); the
 * connection itself is made by the first call. Errors:
 * INVALID_ARGUMENT (options or out NULL, struct_size 0 or unknown fields set, socket and address
 * both set, tls_cert without tls_key or the reverse, timeout_s negative or not finite);
 * FAILED_PRECONDITION naming a token or TLS file that cannot be read, or an empty token file;
 * UNAVAILABLE / PERMISSION_DENIED for a Unix socket as for ckpt_client_open. A daemon that
 * refuses the credentials answers the first call: UNAUTHENTICATED (16) without valid ones,
 * PERMISSION_DENIED (7) for a role that does not allow the call, UNAVAILABLE (14) when TLS fails
 * (no or a wrong client certificate, an untrusted server, TLS on one side only). */
CKPT_API int ckpt_client_open3(const ckpt_client_options* options, ckpt_client** out, char* err,
                               size_t errlen);

/* Deadline of the admin calls below (list, get, drop); default 10 s. Values <= 0 are ignored. */
CKPT_API void ckpt_client_set_timeout(ckpt_client* client, double seconds);

/* Closes the client; NULL is a no-op. */
CKPT_API void ckpt_client_close(ckpt_client* client);

/* Frees the memory the client keeps between pushes (the local path's shared-memory windows, the
 * pinned host copy of CUDA tensors for gRPC); the next push makes it again. NULL is a no-op. */
CKPT_API void ckpt_client_release_staging(ckpt_client* client);

/* Pushes `count` tensors as one new version and commits it: checksums, BeginVersion, parallel
 * upload, Commit. `options` NULL: defaults. On success *version_out (if not NULL) is the committed
 * version and *info_json_out (if not NULL) its version info JSON. On failure nothing is left on
 * the daemon. */
CKPT_API int ckpt_push(ckpt_client* client, const ckpt_tensor* tensors, size_t count,
                       const ckpt_push_options* options, uint64_t* version_out,
                       char** info_json_out, char* err, size_t errlen);

/* Many tensors to push, as columns: what ckpt_push takes as one struct per tensor, for callers that
 * pay per struct and per field (Python's ctypes). Everything it points to is the caller's and is
 * only read until the push call returns. */
typedef struct ckpt_tensor_table {
  size_t struct_size;        /* sizeof(ckpt_tensor_table) */
  size_t count;              /* tensors */
  const char* names;         /* every name's UTF-8 bytes back to back (no separators) */
  uint64_t names_bytes;      /* the length of `names`: no name may end past it */
  const uint64_t* name_ends; /* tensor i's name is names[i ? name_ends[i - 1] : 0, name_ends[i]) */
  const int32_t* dtypes;     /* CKPT_DTYPE_* */
  const int32_t* ndims;
  const int64_t* shapes; /* every tensor's dimensions back to back (ndims[i] of tensor i) */
  uint64_t shapes_count; /* the length of `shapes`: the ndims may not add up to more */
  const uint64_t* data;  /* addresses of the bytes; 0 only where nbytes is 0 */
  const uint64_t* nbytes;
  /* Read only when struct_size covers it (older callers stop at nbytes); NULL: every tensor is
   * in host memory. devices[i] is -1 for host memory, else the CUDA ordinal (of this process) of
   * the GPU whose memory data[i] points into. The push first waits for all work queued on those
   * GPUs; a local daemon that drives the GPU copies the bytes from GPU memory itself (CUDA IPC),
   * otherwise the client copies them device-to-host. The memory must stay unchanged until the push
   * returns. */
  const int32_t* devices;
} ckpt_tensor_table;

/* ckpt_push of the tensors of `table`: the same checks, options, outputs and errors, and
 * INVALID_ARGUMENT for a NULL column, a struct_size smaller than the table without `devices`,
 * name_ends that go back or past names_bytes, or ndims adding up to more than shapes_count. */
CKPT_API int ckpt_push_table(ckpt_client* client, const ckpt_tensor_table* table,
                             const ckpt_push_options* options, uint64_t* version_out,
                             char** info_json_out, char* err, size_t errlen);

/* More options of a push, beside ckpt_push_options (which cannot grow: it has no struct_size).
 * Fill with ckpt_push_extra_init. Fields past `struct_size` take their defaults. */
typedef struct ckpt_push_extra {
  size_t struct_size;    /* sizeof(ckpt_push_extra); set by ckpt_push_extra_init */
  const char* transport; /* "auto" (NULL too): shared memory when the daemon is on this node's
                          * Unix socket and takes it, else gRPC; "local": shared memory or an
                          * error; "grpc": PushChunks messages. The version info JSON's
                          * "transport" says which was taken. */
  uint64_t window_bytes; /* the local path's shared-memory window, 1 MiB..16 GiB (two alternate);
                          * 0: 64 MiB */
  int update;            /* non-zero: push and update (the local path only; FAILED_PRECONDITION
                          * over gRPC; the operator role too): the daemon sends the version to its
                          * workers while it arrives; the call returns once it is committed, and
                          * ckpt_wait_loaded says when the workers have it */
  uint32_t part_index;   /* one part of a version pushed in parts (part_count 2..4096, part_index
                          * below it, a named version, update 0): trainer rank part_index of
                          * part_count pushes the whole tensors it owns; 0 and 0: whole */
  uint32_t part_count;
} ckpt_push_extra;

/* Defaults: struct_size = sizeof(ckpt_push_extra), transport NULL (auto), window_bytes 0,
 * update 0, part_index 0, part_count 0. */
CKPT_API void ckpt_push_extra_init(ckpt_push_extra* extra);

/* ckpt_push_table with `extra` (NULL: defaults, which is what ckpt_push and ckpt_push_table use).
 * INVALID_ARGUMENT for an unknown transport or a struct_size of 0. */
CKPT_API int ckpt_push_table_ex(ckpt_client* client, const ckpt_tensor_table* table,
                                const ckpt_push_options* options, const ckpt_push_extra* extra,
                                uint64_t* version_out, char** info_json_out, char* err,
                                size_t errlen);

/* The daemon loads `count` safetensors files itself into one new version (0: next id) and commits
 * it. A path may also be a checkpoint directory (the shards of its model.safetensors.index.json,
 * else all its *.safetensors files) or an index file (*.index.json). Relative paths are resolved
 * against this process's working directory. `timeout_s` <= 0: 30 minutes. Outputs as for
 * ckpt_push. */
CKPT_API int ckpt_load_files(ckpt_client* client, const char* const* paths, size_t count,
                             uint64_t version, const char* label, double timeout_s,
                             uint64_t* version_out, char** info_json_out, char* err, size_t errlen);

/* The versions the daemon holds: list JSON into *json_out. */
CKPT_API int ckpt_list_versions(ckpt_client* client, char** json_out, char* err, size_t errlen);

/* One version with its manifest: detail JSON into *json_out. NOT_FOUND for an unknown version. */
CKPT_API int ckpt_get_version(ckpt_client* client, uint64_t version, char** json_out, char* err,
                              size_t errlen);

/* Retires a committed version or aborts a staging one. */
CKPT_API int ckpt_drop_version(ckpt_client* client, uint64_t version, char* err, size_t errlen);

/* Admin.Update: sends a COMMITTED version (0: the newest) to the attached workers and waits up to
 * `timeout_s` (0: 600 s) for all of them. `force` non-zero resends to workers that hold it.
 * `*json_out` (may be NULL) gets {"version", "seconds", "bytes", "buckets", "gb_per_s",
 * "wait_slot_seconds", "fill_seconds", "load_seconds", "finish_seconds", "workers": [{"pid",
 * "gpu_uuid", "engine", "ok", "skipped", "error", "tensors", "bytes"}]}. Errors: NOT_FOUND (unknown
 * or retired version), FAILED_PRECONDITION (an update runs; no worker attached), ABORTED /
 * DEADLINE_EXCEEDED naming the workers that failed. */
CKPT_API int ckpt_update(ckpt_client* client, uint64_t version, int force, double timeout_s,
                         char** json_out, char* err, size_t errlen);

/* Admin.Update as ckpt_update, with `options_json` (may be NULL or "{}"): {"convert": "default" |
 * "fp8" | "none", "fp8_weights": [pattern, ...], "fp8_exclude": [pattern, ...], "consistent":
 * bool} (docs/conversion.md). INVALID_ARGUMENT for malformed JSON or an unknown key. */
CKPT_API int ckpt_update_options(ckpt_client* client, uint64_t version, int force, double timeout_s,
                                 const char* options_json, char** json_out, char* err,
                                 size_t errlen);

/* Admin.Update with previous: resends to each worker left with mixed weights by a failed update
 * the last version it fully loaded. `*json_out` as for ckpt_update. Errors: FAILED_PRECONDITION
 * (no worker has mixed weights), ABORTED (some could not be restored: the version is no longer in
 * the store, or the resend failed; named). */
CKPT_API int ckpt_update_previous(ckpt_client* client, double timeout_s, char** json_out, char* err,
                                  size_t errlen);

/* Admin.WaitLoaded: waits up to `timeout_s` (0: 600 s) until every attached worker holds `version`
 * (0: the newest committed) or a newer one, or an update of it failed for some of them. Returns 0
 * with `*json_out` = {"version", "loaded", "summary", "workers": [{"pid", "engine", "gpu_uuid",
 * "loaded_version", "mixed_version", "last_update_version", "last_update_ok",
 * "last_update_error"}], "update": {"version", "state", "trigger", "started_unix_ms",
 * "ended_unix_ms", "code", "error", "result"} or null}: check "loaded". Errors: DEADLINE_EXCEEDED
 * naming the workers that lack the version; FAILED_PRECONDITION (nothing committed). */
CKPT_API int ckpt_wait_loaded(ckpt_client* client, uint64_t version, double timeout_s,
                              char** json_out, char* err, size_t errlen);

/* ---- Workers: receiving versions from the daemon (docs/clients.md, "Workers (C++ and C)") ----
 *
 * An inference worker attaches once, then receives each version bucket by bucket. The tensors of a
 * bucket are views into the daemon's staging slots, mapped once at attach: device pointers on the
 * worker's GPU (cuda backend, CUDA IPC) or read-only host pointers (host backend, shared memory).
 * A view is valid until its bucket is acked; copy what you keep before acking.
 * Unlike ckpt_client, a ckpt_consumer is driven by one thread at a time. */

typedef struct ckpt_consumer ckpt_consumer;

typedef struct ckpt_tensor_view {
  const char* name;
  int dtype; /* CKPT_DTYPE_* */
  int ndim;
  const int64_t* shape;
  void* data; /* device pointer (cuda) or host pointer (host); read only */
  uint64_t nbytes;
} ckpt_tensor_view;

enum {
  CKPT_EVENT_BUCKET = 1,       /* tensors to load, then ckpt_consumer_ack */
  CKPT_EVENT_VERSION_DONE = 2, /* all buckets of `version` sent: ckpt_consumer_loaded */
};

/* Owned by the consumer; valid until the next ckpt_consumer_next / _receive_version / _close. */
typedef struct ckpt_consumer_event {
  int kind;
  uint64_t version;
  uint64_t bucket;
  int last; /* the version's last bucket */
  size_t count;
  const ckpt_tensor_view* tensors;
} ckpt_consumer_event;

/* Attaches to the daemon on Unix socket `socket` (NULL or "": $CKPT_SOCKET, else the default
 * path). `cuda_device`: the CUDA device ordinal this worker loads into (-1: none; host backend).
 * `engine`: "vllm", "sglang", ... (NULL: "c"). `tensor_names`: only these (NULL/0: all).
 * `timeout_s` 0: 30 s. Errors keep the daemon's code: PERMISSION_DENIED (uid not allowed),
 * FAILED_PRECONDITION (a GPU the daemon does not drive), UNAVAILABLE (no daemon). */
CKPT_API int ckpt_consumer_attach(const char* socket, int cuda_device, const char* engine,
                                  const char* const* tensor_names, size_t name_count,
                                  double timeout_s, ckpt_consumer** out, char* err, size_t errlen);

/* The consistent switch (docs/clients.md, "Pause and resume"). `pause` is called when a
 * consistent update begins, before any of its buckets: stop generating, then return 0, or non-zero
 * with a reason in `why` (the update then sends nothing and fails). `resume` is called once every
 * worker of the update loaded it (`loaded` 1) or it failed (0, `error` says why). Both run on the
 * consumer's reader thread, whatever the driving thread does, and must not call this consumer. */
typedef int (*ckpt_pause_fn)(uint64_t version, void* user, char* why, size_t why_len);
typedef void (*ckpt_resume_fn)(uint64_t version, int loaded, const char* error, void* user);

/* ckpt_consumer_attach for a worker with a pause hook (`pause` required, `resume` may be NULL):
 * it may take part in consistent updates. `user` is passed to both. */
CKPT_API int ckpt_consumer_attach_pausable(const char* socket, int cuda_device, const char* engine,
                                           const char* const* tensor_names, size_t name_count,
                                           double timeout_s, ckpt_pause_fn pause,
                                           ckpt_resume_fn resume, void* user, ckpt_consumer** out,
                                           char* err, size_t errlen);

/* Checksum verification, off after attach (docs/clients.md, "Verifying checksums"). With `enabled`
 * non-zero, every bucket that ckpt_consumer_next or ckpt_consumer_receive_version hands out from
 * then on has been checked first: the XXH3-64 of each tensor's bytes in the slot equals the
 * version's checksum. A mismatch fails that bucket instead: the library acks it with an error
 * naming the tensor, the expected and the actual hash (the daemon fails this worker's update with
 * it), and next / receive_version return DATA_LOSS (15) with that text; do not ack that bucket
 * again. Cost per bucket: hashing it from shared memory (host backend), or a device-to-host copy
 * through a 16 MiB pinned buffer and the hashing (cuda backend). INVALID_ARGUMENT for NULL. */
CKPT_API int ckpt_consumer_set_verify_checksums(ckpt_consumer* consumer, int enabled, char* err,
                                                size_t errlen);

/* Waits up to `timeout_s` (0: return at once if nothing is queued) for the next event.
 * DEADLINE_EXCEEDED (4) when none came; UNAVAILABLE (14) when the daemon ended the stream (its
 * reason in `err`, e.g. shutting down): attach again later; DATA_LOSS (15): see
 * ckpt_consumer_set_verify_checksums. */
CKPT_API int ckpt_consumer_next(ckpt_consumer* consumer, double timeout_s,
                                ckpt_consumer_event* event, char* err, size_t errlen);

/* Acks a bucket (frees its slot). `error` non-NULL and non-empty: this worker failed to load it. */
CKPT_API int ckpt_consumer_ack(ckpt_consumer* consumer, uint64_t version, uint64_t bucket,
                               const char* error, char* err, size_t errlen);

/* Answers CKPT_EVENT_VERSION_DONE with what was loaded (or the worker's error). */
CKPT_API int ckpt_consumer_loaded(ckpt_consumer* consumer, uint64_t version, uint64_t tensors,
                                  uint64_t bytes, const char* error, char* err, size_t errlen);

/* Called per bucket by ckpt_consumer_receive_version. Return 0 when loaded; otherwise non-zero
 * after writing the reason into `why` (why_len bytes): it is reported to the daemon. */
typedef int (*ckpt_bucket_fn)(const ckpt_consumer_event* bucket, void* user, char* why,
                              size_t why_len);

/* Waits up to `timeout_s` for the next version and receives all of it: `fn` per bucket, acked when
 * it returns, then reports the version loaded. `*version_out` (may be NULL) gets its id. */
CKPT_API int ckpt_consumer_receive_version(ckpt_consumer* consumer, double timeout_s,
                                           ckpt_bucket_fn fn, void* user, uint64_t* version_out,
                                           char* err, size_t errlen);

/* The tensors of the last CKPT_EVENT_BUCKET as columns, for callers that pay per call and per
 * field (Python's ctypes): the same tensors, in the same order, as the event's `tensors`. Every
 * column lies in one block, `layout` (`layout_bytes` long), in this order: name_ends, data, nbytes,
 * shapes, slots, dtypes, ndims, names; two buckets whose blocks are equal byte for byte have the
 * same tensors at the same addresses (a worker may reuse what it built for the first). Owned by the
 * consumer; valid until the next ckpt_consumer_next / _receive_version / _close.
 *
 * `struct_size` as for ckpt_client_options: set it to sizeof(ckpt_bucket_table); the library fills
 * the fields it knows that fit. INVALID_ARGUMENT for NULL or struct_size 0; FAILED_PRECONDITION
 * when the last event is not a bucket. */
typedef struct ckpt_bucket_table {
  size_t struct_size;
  size_t count;       /* tensors */
  const void* layout; /* the block holding every column below */
  size_t layout_bytes;
  const uint64_t* name_ends; /* tensor i's name is names[i ? name_ends[i - 1] : 0, name_ends[i]) */
  const uint64_t* data;      /* as ckpt_tensor_view.data (0 for an empty tensor) */
  const uint64_t* nbytes;
  const int64_t* shapes; /* every tensor's dimensions back to back (ndims[i] of tensor i) */
  const int32_t* slots;  /* the slot (index of slot_addresses) holding it; -1: a buffer of its
                            own (a tensor larger than a slot, put together from pieces) */
  const int32_t* dtypes; /* CKPT_DTYPE_* */
  const int32_t* ndims;
  const char* names; /* UTF-8, not NUL-separated */
} ckpt_bucket_table;

CKPT_API int ckpt_consumer_bucket_table(ckpt_consumer* consumer, ckpt_bucket_table* table,
                                        char* err, size_t errlen);

/* {"backend": "cuda"|"host", "gpu_uuid", "slots", "slot_bytes", "slot_addresses": [where each
 * slot is mapped in this process: a device pointer on cuda]}. The views of tensors that fit a slot
 * lie inside one slot; a tensor larger than a slot is handed out from a buffer of its own. */
CKPT_API int ckpt_consumer_info(ckpt_consumer* consumer, char** json_out, char* err, size_t errlen);

/* Detaches and unmaps the slots. NULL is ignored. */
CKPT_API void ckpt_consumer_close(ckpt_consumer* consumer);

/* Frees a string returned by this library; NULL is a no-op. */
CKPT_API void ckpt_free(void* p);

/* "INVALID_ARGUMENT", ... for a status code; "UNKNOWN" for others. Static storage. */
CKPT_API const char* ckpt_status_name(int code);

/* The client library's release, e.g. "0.1.0". Static storage. */
CKPT_API const char* ckpt_version(void);

#ifdef __cplusplus
}
#endif

#endif /* CKPT_CLIENT_C_API_H_ */
