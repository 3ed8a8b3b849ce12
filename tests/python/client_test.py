"""ckpt_engine (Python over libckpt_client.so) against the real ckpt-engined (host backend).

Run by run_python_test.sh under /usr/bin/python3 with numpy and torch. Each test class starts its
own daemon on a socket in a fresh temporary directory and waits for its READY=1 notification.
"""

import ctypes
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest

import numpy as np
import torch

import ckpt_engine as ce
from ckpt_engine import _native

DAEMON = os.environ.get("CKPT_DAEMON", "bazel-bin/daemon/ckpt-engined")
CKPTCTL = os.environ.get("CKPTCTL", "bazel-bin/client/ckptctl/ckptctl")

_xxhash = ctypes.CDLL("libxxhash.so.0")
_xxhash.XXH3_64bits.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_xxhash.XXH3_64bits.restype = ctypes.c_uint64


def xxh3(data: bytes) -> str:
    return "%016x" % _xxhash.XXH3_64bits(data, len(data))


def raw_bytes(value) -> bytes:
    """The bytes the client must send: C-contiguous host order, whatever the dtype."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()) if t.numel() else b""
    if not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))
    return np.ascontiguousarray(value).tobytes()


def dtype_name(value) -> str:
    if isinstance(value, torch.Tensor):
        return str(value.dtype).replace("torch.", "")
    return value.dtype.name


def short_tempdir():
    base = os.environ.get("TEST_TMPDIR", "/tmp")
    return tempfile.mkdtemp(prefix="py-", dir=base if len(base) < 70 else "/tmp")


class Daemon:
    """ckpt-engined on a private socket; ready once it sent READY=1."""

    def __init__(self, budget="256MiB", extra_args=(), backend="host"):
        self.dir = short_tempdir()
        self.socket = os.path.join(self.dir, "d.sock")
        notify_path = os.path.join(self.dir, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        self.log = open(os.path.join(self.dir, "daemon.log"), "wb")
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        self.proc = subprocess.Popen(
            [DAEMON, "--backend", backend, "--listen-unix", self.socket, "--host-memory-budget",
             budget, *extra_args], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        try:
            while True:
                notify.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    if b"READY=1" in notify.recv(4096):
                        break
                except socket.timeout:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("daemon did not become ready: " + self.output())
        finally:
            notify.close()

    def output(self):
        self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def ctl(self, *args):
        r = subprocess.run([CKPTCTL, "--socket", self.socket, *args], capture_output=True,
                           text=True, timeout=60)
        return r

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def write_safetensors(path, tensors):
    """A minimal safetensors writer: {name: numpy array}."""
    codes = {"float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32", "uint8": "U8",
             "bool": "BOOL", "float64": "F64", "int8": "I8", "int16": "I16"}
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        data = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": codes[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def mixed_state_dict():
    g = torch.Generator().manual_seed(7)
    rng = np.random.default_rng(7)
    big = torch.randn(512, 300, generator=g)
    return {
        "np.f32": rng.standard_normal((64, 33), dtype=np.float32),
        "np.i64": rng.integers(-2**40, 2**40, size=(17,), dtype=np.int64),
        "np.bool": rng.integers(0, 2, size=(5, 5)).astype(np.bool_),
        "np.f16": rng.standard_normal((8, 8)).astype(np.float16),
        "np.strided": rng.standard_normal((40, 40), dtype=np.float32)[:, ::3],
        "np.bigendian": np.arange(12, dtype=">i4").reshape(3, 4),
        "torch.f32": big,  # 600 KiB: several chunks
        "torch.bf16": torch.randn(300, 257, generator=g).to(torch.bfloat16),
        "torch.i8": torch.randint(-128, 127, (99,), dtype=torch.int8, generator=g),
        "torch.transposed": torch.randn(30, 50, generator=g).t(),
        "torch.scalar": torch.tensor(3.5, dtype=torch.float64),
        "torch.empty": torch.zeros(0, 16),
        "torch.u8": torch.arange(256, dtype=torch.uint8).reshape(16, 16),
        "torch.requires_grad": torch.ones(10, requires_grad=True),
    }


class PushTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()
        cls.client = ce.Client(socket=cls.daemon.socket)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.daemon.stop()

    def show(self, version):
        r = self.daemon.ctl("show", str(version), "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def test_push_numpy_and_torch_round_trip(self):
        state = mixed_state_dict()
        calls = []
        version = ce.push_state_dict(self.client, state, label="py-step-1", streams=4,
                                     progress=lambda d, t: calls.append((d, t)),
                                     chunk_bytes=64 << 10)
        self.assertGreater(version, 0)
        total = sum(len(raw_bytes(v)) for v in state.values())
        self.assertTrue(calls)
        self.assertEqual(calls[-1], (total, total))
        for (d0, _), (d1, _) in zip(calls, calls[1:]):
            self.assertLessEqual(d0, d1)

        shown = self.show(version)
        self.assertEqual(shown["state"], "committed")
        self.assertEqual(shown["label"], "py-step-1")
        self.assertEqual(shown["tensor_count"], len(state))
        self.assertEqual(shown["total_bytes"], total)
        self.assertEqual([t["name"] for t in shown["tensors"]], list(state))
        for t in shown["tensors"]:
            value = state[t["name"]]
            with self.subTest(tensor=t["name"]):
                self.assertEqual(t["dtype"], dtype_name(value))
                self.assertEqual(t["shape"], list(value.shape))
                data = raw_bytes(value)
                self.assertEqual(t["byte_size"], len(data))
                self.assertEqual(t["xxh3"], xxh3(data))
        self.assertEqual(shown["dtypes"]["bfloat16"], {"tensors": 1, "bytes": 300 * 257 * 2})

        # The Python API sees the same.
        self.assertEqual(ce.get_version(self.client, version), shown)
        listed = {v["version"]: v for v in ce.list_versions(self.client)}
        self.assertEqual(listed[version]["state"], "committed")
        self.assertEqual(listed[version]["total_bytes"], total)

    def test_every_transport_is_bit_exact_and_says_which_it_took(self):
        state = mixed_state_dict()
        state["np.big"] = np.random.default_rng(1).integers(0, 255, 3 << 20, dtype=np.uint8)
        # The daemon reads host tensors out of this process (pull steps), or, with local_pull off,
        # this process copies them into its windows.
        windows_daemon = Daemon(extra_args=("--local-pull", "false"))
        windows_client = ce.Client(socket=windows_daemon.socket)
        try:
            for pulled, transport, window, expected in (
                    (True, "auto", 0, "local"), (True, "local", 1 << 20, "local"),
                    (False, "local", 1 << 20, "local"), (True, "grpc", 0, "grpc")):
                with self.subTest(transport=transport, window=window, pulled=pulled):
                    client = self.client if pulled else windows_client
                    calls = []
                    version = client.push_state_dict(
                        state, transport=transport, window_bytes=window,
                        progress=lambda d, t: calls.append(d))
                    self.assertEqual(client.last_push["version"], version)
                    self.assertEqual(client.last_push["transport"], expected)
                    daemon = self.daemon if pulled else windows_daemon
                    shown = json.loads(daemon.ctl("show", str(version), "--json").stdout)
                    self.assertEqual(shown["transport"], expected)
                    self.assertEqual(ce.get_version(client, version)["transport"], expected)
                    for t in shown["tensors"]:
                        self.assertEqual(t["xxh3"], xxh3(raw_bytes(state[t["name"]])), t["name"])
                    self.assertEqual(calls, sorted(calls))
                    if not pulled:
                        self.assertGreaterEqual(len(calls), 4)  # 4+ MiB in 1 MiB windows
                    ce.drop_version(client, version)
        finally:
            windows_client.close()
            windows_daemon.stop()

    def test_bad_transport_options_are_refused(self):
        state = {"w": np.ones(4, np.float32)}
        with self.assertRaises(ce.CkptError) as e:
            self.client.push_state_dict(state, transport="shm")
        self.assertEqual(e.exception.code_name, "INVALID_ARGUMENT")
        self.assertIn("'shm'", e.exception.message)
        with self.assertRaises(ce.CkptError) as e:
            self.client.push_state_dict(state, window_bytes=4096)
        self.assertEqual(e.exception.code_name, "INVALID_ARGUMENT")
        self.assertIn("window_bytes must be 1 MiB to 16 GiB", e.exception.message)

    def test_parts_of_one_version_merge_on_the_daemon(self):
        # Two trainer ranks, each pushing what it owns; "norm" is replicated in both.
        rng = np.random.default_rng(5)
        norm = rng.standard_normal(16).astype(np.float32)
        rank0 = {"a": rng.standard_normal(100).astype(np.float32), "norm": norm}
        rank1 = {"b": torch.randn(7, 3), "norm": norm.copy()}
        v = 2_000_000
        self.assertEqual(self.client.push_state_dict(rank1, version=v, part=(1, 2)), v)
        self.assertEqual(self.client.last_push["parts"], [1])
        self.assertEqual(self.client.last_push["part_count"], 2)
        self.client.push_state_dict(rank0, version=v, part=(0, 2), transport="grpc")
        self.assertEqual(self.client.last_push["parts"], [0, 1])
        shown = ce.get_version(self.client, v)
        self.assertEqual([t["name"] for t in shown["tensors"]], ["a", "norm", "b"])
        for name, t in (("a", rank0["a"]), ("norm", norm), ("b", rank1["b"])):
            got = [x for x in shown["tensors"] if x["name"] == name][0]
            self.assertEqual(got["xxh3"], xxh3(raw_bytes(t)), name)
        for bad, why in (((2, 2), "part_index below it"), ((0, 1), "part_count is 2..4096"),
                         ("x", "part must be (index, count)")):
            with self.subTest(part=bad):
                with self.assertRaises(ce.CkptError) as e:
                    self.client.push_state_dict(rank0, version=v + 1, part=bad)
                self.assertEqual(e.exception.code_name, "INVALID_ARGUMENT")
                self.assertIn(why, e.exception.message)
        with self.assertRaises(ce.CkptError) as e:
            self.client.push_state_dict(rank0, part=(0, 2))
        self.assertIn("named version", e.exception.message)
        ce.drop_version(self.client, v)

    def test_big_endian_numpy_is_sent_in_host_order(self):
        a = np.arange(6, dtype=">f4")
        v = self.client.push_state_dict({"be": a})
        t = ce.get_version(self.client, v)["tensors"][0]
        self.assertEqual(t["dtype"], "float32")
        self.assertEqual(t["xxh3"], xxh3(a.astype("<f4").tobytes()))

    def test_one_stream_and_explicit_version(self):
        state = {"w": torch.randn(1000, 100)}
        version = self.client.push_state_dict(state, version=1000, streams=1)
        self.assertEqual(version, 1000)
        with self.assertRaises(ce.CkptError) as e:
            self.client.push_state_dict(state, version=1000)
        self.assertEqual(e.exception.code_name, "ALREADY_EXISTS")
        self.assertIn("1000", e.exception.message)

    def test_drop(self):
        version = self.client.push_state_dict({"x": np.ones(4, np.float32)})
        ce.drop_version(self.client, version)
        with self.assertRaises(ce.CkptError) as e:
            ce.get_version(self.client, version)
        self.assertEqual(e.exception.code, 5)  # NOT_FOUND
        self.assertNotIn(version, [v["version"] for v in self.client.list_versions()
                                   if v["state"] != "retired"])

    def test_version_ids_out_of_uint64_are_refused_not_wrapped(self):
        # ctypes wrapped them modulo 2^64: drop_version(2**64 + v) dropped version v.
        version = self.client.push_state_dict({"w": np.ones(4, np.float32)})
        for bad in (2 ** 64 + version, -1, -(2 ** 64) + version, True, 1.5, "x"):
            for call in (self.client.get_version, self.client.drop_version,
                         lambda v: self.client.update(v, timeout=1),
                         lambda v: self.client.wait_loaded(v, timeout=1)):
                with self.subTest(version=bad, call=call):
                    with self.assertRaises(ce.CkptError) as e:
                        call(bad)
                    self.assertEqual(e.exception.code, 3)  # INVALID_ARGUMENT
        with self.assertRaises(ce.CkptError) as e:
            self.client.push_state_dict({"w": np.ones(4, np.float32)}, version=2 ** 64 + 5)
        self.assertEqual(e.exception.code, 3)
        self.assertEqual(self.client.get_version(version)["state"], "committed")
        self.assertEqual(self.client.get_version(float(version))["version"], version)
        self.assertEqual(self.client.get_version(str(version))["version"], version)
        self.assertEqual(self.client.get_version(np.uint64(version))["version"], version)
        with self.assertRaises(ce.CkptError) as e:
            self.client.get_version(2 ** 64 - 1)
        self.assertEqual(e.exception.code, 5)  # in range: NOT_FOUND from the daemon

    def test_bad_inputs_raise_ckpt_error(self):
        cases = {
            "unsupported dtype": {"c": torch.zeros(2, dtype=torch.complex64)},
            "not a tensor": {"l": [1, 2, 3]},
            "no tensors": {},
            "empty name": {"": np.zeros(1, np.float32)},
            "NUL in a name": {"w": np.zeros(1, np.float32), "w\0.evil": np.zeros(1, np.float32)},
        }
        for what, state in cases.items():
            with self.subTest(what), self.assertRaises(ce.CkptError) as e:
                self.client.push_state_dict(state)
            self.assertEqual(e.exception.code_name, "INVALID_ARGUMENT", e.exception.message)
        with self.assertRaises(ce.CkptError) as e:
            self.client.push_state_dict({"a": np.zeros(1, np.float32)}, streams=100)
        self.assertIn("streams", e.exception.message)

    def test_table_columns_past_their_lengths_are_refused(self):
        # The C ABI's column table carries the lengths of its variable columns: name ends past
        # names_bytes, or ndims adding up to more than shapes_count, are refused before a read.
        from ckpt_engine import _native, _tensors
        for field in ("names_bytes", "shapes_count"):
            with self.subTest(field):
                table, keep, _ = _tensors.describe({"weight": np.zeros((2, 3), np.float32)})
                setattr(table, field, getattr(table, field) - 1)
                err = ctypes.create_string_buffer(4096)
                out = ctypes.c_uint64()
                code = _native.lib().ckpt_push_table(self.client._h(), ctypes.byref(table), None,
                                                     ctypes.byref(out), None, err, 4096)
                self.assertEqual(code, 3, err.value)  # INVALID_ARGUMENT
                self.assertIn("past names_bytes" if field == "names_bytes" else "shapes_count",
                              err.value.decode())
                del keep

    def test_a_lazily_negated_tensor_is_pushed_with_its_values(self):
        # conj().imag is a contiguous float32 view with torch's negative bit set: its values are
        # the negated imaginary part, not the bytes in memory.
        t = torch.tensor([1 + 2j, 3 - 4j]).conj().imag
        self.assertTrue(t.is_neg())
        version = self.client.push_state_dict({"imag": t})
        [spec] = self.show(version)["tensors"]
        self.assertEqual(spec["xxh3"], xxh3(raw_bytes(torch.tensor([-2.0, 4.0]))))

    def test_too_big_for_the_budget(self):
        with self.assertRaises(ce.CkptError) as e:
            self.client.push_state_dict({"huge": np.zeros(300 << 20, np.uint8)})
        self.assertEqual(e.exception.code_name, "RESOURCE_EXHAUSTED")

    def test_progress_exception_cancels_and_leaves_nothing(self):
        before = {v["version"] for v in self.client.list_versions()}

        def boom(done, total):
            raise ValueError("stop here")

        with self.assertRaisesRegex(ValueError, "stop here"):
            self.client.push_state_dict({"w": torch.randn(256, 1024)}, progress=boom)
        after = [v for v in self.client.list_versions() if v["version"] not in before]
        self.assertEqual([v for v in after if v["state"] in ("staging", "committed")], [])

    def test_ctrl_c_during_a_push_cancels_it(self):
        before = {v["version"] for v in self.client.list_versions()}
        with self.assertRaises(KeyboardInterrupt):
            self.client.push_state_dict({"w": torch.randn(256, 1024)},
                                        progress=lambda d, t: os.kill(os.getpid(), signal.SIGINT))
        after = [v for v in self.client.list_versions() if v["version"] not in before]
        self.assertEqual([v for v in after if v["state"] in ("staging", "committed")], [])

    @unittest.skipUnless(torch.cuda.is_available(), "no CUDA device")
    def test_cuda_tensor_is_copied_to_host(self):
        t = torch.randn(128, 128, device="cuda")
        v = self.client.push_state_dict({"gpu": t})
        self.assertEqual(ce.get_version(self.client, v)["tensors"][0]["xxh3"], xxh3(raw_bytes(t)))

    def test_push_files(self):
        rng = np.random.default_rng(3)
        tensors = {"a": rng.standard_normal((16, 16), dtype=np.float32),
                   "b": np.arange(10, dtype=np.int64)}
        path = os.path.join(self.daemon.dir, "m.safetensors")
        write_safetensors(path, tensors)
        cwd = os.getcwd()
        os.chdir(self.daemon.dir)
        try:
            version = ce.push_files(self.client, ["m.safetensors"], label="from-file")
        finally:
            os.chdir(cwd)
        shown = ce.get_version(self.client, version)
        self.assertEqual(shown["label"], "from-file")
        by_name = {t["name"]: t for t in shown["tensors"]}
        self.assertEqual(sorted(by_name), ["a", "b"])
        for name, a in tensors.items():
            self.assertEqual(by_name[name]["dtype"], a.dtype.name)
            self.assertEqual(by_name[name]["shape"], list(a.shape))
            self.assertEqual(by_name[name]["xxh3"], xxh3(a.tobytes()))
        with self.assertRaises(ce.CkptError) as e:
            ce.push_files(self.client, [os.path.join(self.daemon.dir, "missing.safetensors")])
        self.assertIn("missing.safetensors", e.exception.message)

    def test_push_files_of_a_checkpoint_directory(self):
        # A Hugging Face checkpoint as it ships: shards, their index, and files that are not
        # weights. push_files([DIR]) loads the shards the index names (through the C ABI: the
        # C++ client expands the directory).
        model = os.path.join(self.daemon.dir, "hf-model")
        os.mkdir(model)
        rng = np.random.default_rng(4)
        shards = {
            "model-00001-of-00002.safetensors": {
                "embed.weight": rng.standard_normal((32, 8), dtype=np.float32)},
            "model-00002-of-00002.safetensors": {
                "lm_head.weight": rng.standard_normal((8, 32), dtype=np.float32),
                "norm.weight": np.ones(8, dtype=np.float32)},
        }
        weight_map = {}
        for name, tensors in shards.items():
            write_safetensors(os.path.join(model, name), tensors)
            weight_map.update({t: name for t in tensors})
        with open(os.path.join(model, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
        with open(os.path.join(model, "config.json"), "w") as f:
            json.dump({"architectures": ["Test"]}, f)
        for paths in ([model], model, [os.path.join(model, "model.safetensors.index.json")]):
            version = ce.push_files(self.client, paths, label="hf-dir")
            shown = ce.get_version(self.client, version)
            self.assertEqual(sorted(t["name"] for t in shown["tensors"]),
                             ["embed.weight", "lm_head.weight", "norm.weight"])
        with self.assertRaises(ce.CkptError) as e:
            ce.push_files(self.client, [os.path.join(model, "config.json")])
        self.assertIn(os.path.join(model, "config.json"), e.exception.message)
        self.assertIn("not a safetensors file", e.exception.message)


class LibraryTest(unittest.TestCase):
    def test_no_daemon_is_unavailable(self):
        d = short_tempdir()
        try:
            with self.assertRaises(ce.CkptError) as e:
                ce.Client(socket=os.path.join(d, "none.sock"))
            self.assertEqual(e.exception.code_name, "UNAVAILABLE")
            self.assertIn("none.sock", str(e.exception))
        finally:
            shutil.rmtree(d)

    def test_socket_and_address_are_exclusive(self):
        with self.assertRaises(ce.CkptError) as e:
            ce.Client(socket="/tmp/a.sock", address="127.0.0.1:1")
        self.assertEqual(e.exception.code, 3)

    def test_library_search_order(self):
        old = os.environ.get(_native.LIB_ENV)
        try:
            os.environ[_native.LIB_ENV] = "/x/libckpt_client.so"
            paths = [str(p) for p in _native.candidate_paths()]
            self.assertEqual(paths[0], "/x/libckpt_client.so")
            self.assertTrue(paths[-1].endswith("bazel-bin/client/libckpt_client.so"))
        finally:
            if old is None:
                del os.environ[_native.LIB_ENV]
            else:
                os.environ[_native.LIB_ENV] = old
        self.assertEqual(ce.library_version(), "0.1.0")

    def test_only_ckpt_symbols_are_exported(self):
        nm = shutil.which("nm") or "/usr/bin/nm"
        if not os.path.exists(nm):
            self.skipTest("no nm")
        out = subprocess.run([nm, "-D", "--defined-only", os.environ["CKPT_CLIENT_LIB"]],
                             capture_output=True, text=True, check=True).stdout
        names = [line.split()[-1] for line in out.splitlines() if line.strip()]
        self.assertIn("ckpt_push", names)
        self.assertEqual([n for n in names if not n.startswith("ckpt_")], [])


if __name__ == "__main__":
    unittest.main()
