"""FP8 on the way (docs/conversion.md), host backend: a BF16 version delivered as float8_e4m3fn
with 128 x 128 block scales, bit for bit what the reference below computes (numpy, written from
the arithmetic the issue gives: scale_inv = amax / 448 in float32, 1 for a block of zeros, e4m3 of
W / scale_inv rounded to nearest even and saturated at +-448), for shapes that are not multiples
of 128 and a weight split over buckets; the tensors no rule names bit-exact as they were; a NaN
refuses the conversion naming the tensor.

Run on the GPU machine with CKPT_FP8_BACKEND=cuda (tools/gpu_session_check.sh): the same checks
against the cuda backend's kernel (device memory is copied to the host for the comparison).
"""

import ctypes
import os
import sys
import threading
import time
import unittest

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client_test import Daemon  # noqa: E402

import ckpt_engine as ce  # noqa: E402

DEADLINE_S = 60
BACKEND = os.environ.get("CKPT_FP8_BACKEND", "host")


def bf16_bits(t):
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def e4m3(x):
    """float32 array -> float8_e4m3fn bits, round to nearest even, saturating at 448."""
    x = np.asarray(x, np.float32)
    sign = np.signbit(x).astype(np.uint8) << 7
    a = np.abs(x).astype(np.float64)  # exact
    subnormal = a < 2.0 ** -6
    saturated = a >= 448.0
    sub_steps = np.rint(a * 512.0)  # steps of 2^-9; np.rint ties to even
    _, ex = np.frexp(np.where(subnormal | saturated, 1.0, a))
    exponent = ex - 1
    steps = np.rint(np.ldexp(np.where(subnormal | saturated, 1.0, a), 3 - exponent))
    normal = (exponent + 7) * 8 + steps - 8
    code = np.where(saturated, 0x7E, np.where(subnormal, sub_steps, normal)).astype(np.uint8)
    return code | sign


def reference(bits, rows, cols):
    """(e4m3 bytes rows x cols, float32 scales) of a BF16 matrix given as uint16 bits."""
    w = bf16_to_f32(bits.reshape(rows, cols))
    rb, cb = -(-rows // 128), -(-cols // 128)
    q = np.zeros((rows, cols), np.uint8)
    scales = np.zeros((rb, cb), np.float32)
    for i in range(rb):
        for j in range(cb):
            block = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            amax = np.max(np.abs(block))
            scale = np.float32(1.0) if amax == 0 else np.float32(amax) / np.float32(448.0)
            scales[i, j] = scale
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = e4m3(block / scale)
    return q.tobytes(), scales.tobytes()


def model(seed):
    g = torch.Generator().manual_seed(seed)

    def bf16(*shape, scale=0.02):
        return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16)

    q = bf16(300, 257)
    q[7, 3] = 40.0   # a block with one large value
    q[299, 256] = -1e-30  # a tiny value at the last corner
    return {
        "model.layers.0.self_attn.q_proj.weight": q,
        # 1000 x 100 e4m3 = 100,000 bytes: split over 64 KiB buckets in 128-row pieces.
        "model.layers.0.mlp.up_proj.weight": bf16(1000, 100),
        "model.layers.0.mlp.down_proj.weight": torch.zeros(128, 128, dtype=torch.bfloat16),
        "model.layers.0.tiny.weight": bf16(3, 5, scale=3.0),
        "model.layers.0.input_layernorm.weight": bf16(64),        # 1-D: as it is
        "model.layers.0.self_attn.o_proj.weight": bf16(64, 64),   # excluded: as it is
        "model.layers.0.gate.weight": torch.randn(8, 8, generator=g),  # float32: as it is
        "lm_head.weight": bf16(50, 64),                            # no rule: as it is
    }


CONVERTED = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight",
             "model.layers.0.mlp.down_proj.weight", "model.layers.0.tiny.weight"]


def raw_bytes(t):
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.dtype != torch.uint8 else \
        t.numpy().tobytes()


def collect(w):
    """{name: (dtype name, shape, bytes)} of one version received by `w` (raw: this torch may
    lack float8; on the cuda backend the bytes are copied to the host through torch)."""
    got = {}
    for bucket in w.receive_raw(timeout=DEADLINE_S):
        for raw in bucket:
            if BACKEND == "cuda":
                view = w.torch_view(raw).cpu().contiguous()
                data = view.view(torch.uint8).numpy().tobytes() if raw.nbytes else b""
            else:
                data = raw.tobytes()
            got[raw.name] = (raw.dtype_name, tuple(raw.shape), data)
    return got


class Fp8Test(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        args = ["--bucket-bytes", "64KiB", "--ack-timeout", "10s",
                "--fp8-weights", "model.layers.*.weight", "--fp8-exclude", "*.o_proj.*"]
        cls.daemon = Daemon(extra_args=args, backend=BACKEND)
        cls.client = ce.Client(socket=cls.daemon.socket)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.daemon.stop()

    def worker(self):
        device = "cuda:0" if BACKEND == "cuda" else None
        w = ce.Worker(socket=self.daemon.socket, device=device, engine="fp8-test")
        self.addCleanup(w.close)
        return w

    def receive(self, w, version, **update_args):
        """Runs the update on a thread while `w` receives; {name: (dtype name, shape, bytes)}."""
        result = {}

        def run():
            try:
                result["report"] = self.client.update(version, timeout=DEADLINE_S, **update_args)
            except ce.CkptError as e:
                result["error"] = e

        t = threading.Thread(target=run, daemon=True)
        t.start()
        got = collect(w)
        t.join(DEADLINE_S + 10)
        self.assertFalse(t.is_alive())
        if "error" in result:
            raise result["error"]
        return got, result["report"]

    def test_fp8_bit_exact_against_the_reference(self):
        state = model(1)
        version = self.client.push_state_dict(state, label="fp8")
        w = self.worker()
        got, report = self.receive(w, version, convert="fp8")
        self.assertEqual(report["fp8_tensors"], 4, report)
        for name in CONVERTED:
            with self.subTest(tensor=name):
                rows, cols = state[name].shape
                want_q, want_s = reference(bf16_bits(state[name]), rows, cols)
                dtype, shape, data = got[name]
                self.assertEqual(shape, (rows, cols))
                self.assertEqual(dtype, "float8_e4m3fn")
                self.assertEqual(len(data), rows * cols)
                differing = np.count_nonzero(np.frombuffer(data, np.uint8) !=
                                             np.frombuffer(want_q, np.uint8))
                self.assertEqual(differing, 0, f"{differing} e4m3 bytes differ")
                sdtype, sshape, sdata = got[name + "_scale_inv"]
                self.assertEqual(sdtype, "float32")
                self.assertEqual(sshape, (-(-rows // 128), -(-cols // 128)))
                self.assertEqual(sdata, want_s)
        # The zero block's scale is 1 and its bytes are 0.
        _, _, zeros = got["model.layers.0.mlp.down_proj.weight"]
        self.assertEqual(zeros, bytes(128 * 128))
        self.assertEqual(np.frombuffer(got["model.layers.0.mlp.down_proj.weight_scale_inv"][2],
                                       np.float32).tolist(), [1.0])
        # Everything else as it was, bit for bit.
        for name, t in state.items():
            if name in CONVERTED:
                continue
            with self.subTest(tensor=name):
                self.assertEqual(got[name][2], t.contiguous().view(torch.uint8).numpy().tobytes())
        self.assertEqual(len(got), len(state) + 4)
        sent = sum(len(v[2]) for v in got.values())
        self.assertEqual(report["bytes"], sent)
        self.assertEqual(report["fp8_source_bytes"],
                         sum(state[n].numel() * 2 for n in CONVERTED))
        # Asked without conversion (forced: the worker holds the version): BF16 as pushed.
        got, report = self.receive(w, version, convert="none", force=True)
        self.assertEqual(report["fp8_tensors"], 0)
        for name, t in state.items():
            self.assertEqual(got[name][2], t.contiguous().view(torch.uint8).numpy().tobytes())
        # Patterns of the update's own: only the tiny weight.
        got, report = self.receive(w, version, fp8_weights=["*.tiny.weight"], force=True)
        self.assertEqual(report["fp8_tensors"], 1)
        self.assertIn("model.layers.0.tiny.weight_scale_inv", got)
        self.assertNotIn("model.layers.0.mlp.up_proj.weight_scale_inv", got)

    def test_a_nan_refuses_the_conversion_naming_the_tensor(self):
        state = model(2)
        bad = {"model.layers.0.aaa.weight": state["model.layers.0.tiny.weight"].clone()}
        bad["model.layers.0.aaa.weight"][1, 2] = float("nan")
        bad.update(state)
        version = self.client.push_state_dict(bad, label="nan")
        w = self.worker()
        # The first bucket holds the NaN: the update fails before anything is sent.
        with self.assertRaises(ce.CkptError) as e:
            self.client.update(version, timeout=DEADLINE_S, convert="fp8")
        self.assertIn("'model.layers.0.aaa.weight' holds a NaN or infinity", str(e.exception))
        # Without conversion it goes as pushed (the NaN is the trainer's business).
        got, report = self.receive(w, version, convert="none")
        self.assertEqual(report["fp8_tensors"], 0)
        self.assertEqual(len(got), len(bad))

    def test_conversion_that_matches_nothing_or_is_malformed_is_refused(self):
        version = self.client.push_state_dict({"x.bias": torch.zeros(4)}, label="none")
        self.worker()
        with self.assertRaises(ce.CkptError) as e:
            self.client.update(version, timeout=DEADLINE_S, convert="fp8")
        self.assertEqual(e.exception.code_name, "FAILED_PRECONDITION")
        self.assertIn("no 2-D bfloat16 tensor of it matches", str(e.exception))
        with self.assertRaises(ce.CkptError) as e:
            self.client.update(version, timeout=DEADLINE_S, convert="fp16")
        self.assertEqual(e.exception.code_name, "INVALID_ARGUMENT")
        with self.assertRaises(ce.CkptError) as e:
            self.client.update(version, timeout=DEADLINE_S, fp8_weights=["*"], convert="none")
        self.assertEqual(e.exception.code_name, "INVALID_ARGUMENT")
        r = self.daemon.ctl("update", str(version), "--convert", "fp8")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no 2-D bfloat16 tensor", r.stderr)

    def test_ckptctl_update_reports_the_conversion(self):
        state = {"model.layers.1.mlp.up_proj.weight": torch.ones(256, 64, dtype=torch.bfloat16)}
        version = self.client.push_state_dict(state, label="ctl")
        w = self.worker()
        received = []
        t = threading.Thread(target=lambda: received.extend(collect(w)), daemon=True)
        t.start()
        r = self.daemon.ctl("update", str(version), "--convert", "fp8")
        t.join(DEADLINE_S)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("1 weight sent as FP8 (e4m3, 128 x 128 block scales): 32.0 KiB in the store",
                      r.stdout)
        self.assertEqual(received, ["model.layers.1.mlp.up_proj.weight",
                                    "model.layers.1.mlp.up_proj.weight_scale_inv"])


    def test_verify_checksums_skips_converted_tensors_and_checks_the_rest(self):
        # A bucket of converted tensors only (the weight and its scales) has no checksum: the
        # daemon marks them, so the worker does not take it for an old daemon's.
        for state in ({"model.layers.5.mlp.up_proj.weight": torch.ones(64, 64, dtype=torch.bfloat16)},
                      dict(model(5), **{"model.norm.bias": torch.randn(7)})):
            version = self.client.push_state_dict(state, label="verify")
            w = ce.Worker(socket=self.daemon.socket, engine="fp8-verify", verify_checksums=True,
                          device="cuda:0" if BACKEND == "cuda" else None)
            self.addCleanup(w.close)
            got, report = self.receive(w, version, convert="fp8")
            self.assertTrue(report["workers"][0]["ok"], report)
            self.assertGreater(report["fp8_tensors"], 0)
            for name, t in state.items():
                if got[name][0] != "float8_e4m3fn":  # as pushed, and verified on the way
                    self.assertEqual(got[name][2], t.contiguous().view(torch.uint8).numpy().tobytes())
            w.close()

    def test_a_request_joins_a_running_update_only_with_the_same_conversion(self):
        state = {"model.layers.0.a.weight": torch.ones(64, 64, dtype=torch.bfloat16),
                 "model.layers.0.b.weight": torch.full((64, 64), 2.0, dtype=torch.bfloat16)}
        version = self.client.push_state_dict(state, label="join")
        for running, other in [
                (dict(convert="none"), dict(convert="fp8")),
                (dict(fp8_weights=["*.a.weight"]), dict(fp8_weights=["*.b.weight"])),
                (dict(fp8_weights=["*.a.weight"]), dict(fp8_weights=["*.a.weight"],
                                                        fp8_exclude=["*.zzz"])),
                (dict(convert="none"), dict(fp8_exclude=["*.zzz"]))]:  # malformed
            with self.subTest(running=running, other=other):
                w = self.worker()
                result = {}

                def run(tag, args):
                    try:
                        result[tag] = self.client.update(version, timeout=DEADLINE_S, force=True,
                                                         **args) if tag == "a" else \
                            self.client.update(version, timeout=DEADLINE_S, **args)
                    except ce.CkptError as e:
                        result[tag] = e

                a = threading.Thread(target=run, args=("a", running), daemon=True)
                a.start()
                buckets = w.receive_raw(timeout=DEADLINE_S)
                next(buckets)  # the running update waits for this bucket's ack meanwhile
                b = threading.Thread(target=run, args=("b", other), daemon=True)
                b.start()
                # Not joined: answered at once, while the other update still waits for the ack
                # (ack_timeout 10 s: a joined request would wait that long at least).
                b.join(5)
                self.assertFalse(b.is_alive(), "the request joined an update it differs from")
                self.assertIsInstance(result["b"], ce.CkptError)
                self.assertIn(result["b"].code_name, ("FAILED_PRECONDITION", "INVALID_ARGUMENT"))
                self.assertTrue(a.is_alive())
                for _ in buckets:
                    pass
                a.join(DEADLINE_S)
                self.assertNotIsInstance(result["a"], ce.CkptError, result["a"])
                w.close()
        # The same conversion joins (and gets the running update's report).
        w = self.worker()
        result = {}
        same = dict(fp8_weights=["*.a.weight"])
        joins = self.daemon.output().count("joining it")
        a = threading.Thread(target=lambda: result.setdefault("a", self.client.update(
            version, timeout=DEADLINE_S, **same)), daemon=True)  # unforced: joinable
        a.start()
        buckets = w.receive_raw(timeout=DEADLINE_S)
        next(buckets)
        b = threading.Thread(target=lambda: result.setdefault("b", self.client.update(
            version, timeout=DEADLINE_S, **same)), daemon=True)
        b.start()
        deadline = time.monotonic() + DEADLINE_S
        while self.daemon.output().count("joining it") == joins and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(self.daemon.output().count("joining it"), joins + 1)
        for _ in buckets:
            pass
        a.join(DEADLINE_S)
        b.join(DEADLINE_S)
        self.assertEqual(result["b"]["fp8_tensors"], 1)
        self.assertEqual(result["a"]["fp8_tensors"], 1)


class Fp8ConfigTest(unittest.TestCase):
    def test_without_fp8_weights_fp8_is_refused_and_by_default_converts(self):
        plain = Daemon(backend=BACKEND)
        self.addCleanup(plain.stop)
        client = ce.Client(socket=plain.socket)
        self.addCleanup(client.close)
        version = client.push_state_dict({"a.weight": torch.ones(4, 4, dtype=torch.bfloat16)})
        w = ce.Worker(socket=plain.socket, device="cuda:0" if BACKEND == "cuda" else None)
        self.addCleanup(w.close)
        with self.assertRaises(ce.CkptError) as e:
            client.update(version, timeout=DEADLINE_S, convert="fp8")
        self.assertIn("fp8_weights is not configured", str(e.exception))
        w.close()
        by_default = Daemon(backend=BACKEND, extra_args=[
            "--fp8-weights", "*.weight", "--fp8-by-default", "true", "--auto-update", "true"])
        self.addCleanup(by_default.stop)
        client2 = ce.Client(socket=by_default.socket)
        self.addCleanup(client2.close)
        w2 = ce.Worker(socket=by_default.socket, device="cuda:0" if BACKEND == "cuda" else None)
        self.addCleanup(w2.close)
        deadline = threading.Event()
        names = []

        def recv():
            names.extend(collect(w2))
            deadline.set()

        t = threading.Thread(target=recv, daemon=True)
        t.start()
        # auto_update sends the commit, converted by default.
        client2.push_state_dict({"a.weight": torch.ones(4, 4, dtype=torch.bfloat16)})
        self.assertTrue(deadline.wait(DEADLINE_S))
        self.assertEqual(names, ["a.weight", "a.weight_scale_inv"])


if __name__ == "__main__":
    unittest.main()
