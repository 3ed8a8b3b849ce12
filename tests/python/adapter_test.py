"""The engine adapters ckpt_engine.vllm and ckpt_engine.sglang, driving the stand-in engine
(standin_engine.py: a tiny Llama with vLLM's fused qkv_proj / gate_up_proj and load_weights).

vLLM and SGLang are not installed here: the tests build the objects the adapters touch (vLLM's
worker with model_runner.model, device, model_config, and an LLM whose collective_rpc calls the
workers' methods; SGLang's Engine.update_weights_from_tensor calling the custom loader named by
load_format, as its ModelRunner does). The first class needs no daemon (a fake Worker feeds the
model); the others push a Hugging Face state dict to the real ckpt-engined (host backend).
"""

import importlib
import json
import os
import subprocess
import sys
import threading
import time
import types
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import standin_engine as se  # noqa: E402
from client_test import Daemon  # noqa: E402

import ckpt_engine as ce  # noqa: E402
from ckpt_engine import _adapter  # noqa: E402
from ckpt_engine import sglang as ce_sglang  # noqa: E402
from ckpt_engine import vllm as ce_vllm  # noqa: E402

DEADLINE_S = 60


class FakeWorker:
    """Stands in for ckpt_engine.Worker: receive() yields a state dict; records throws and
    finish() calls."""

    def __init__(self, state, version=7):
        self.state, self.next_version, self.version = state, version, 0
        self.thrown, self.finished, self.received = [], [], 0

    def receive(self, timeout=None, defer_loaded=False):
        assert defer_loaded, "the adapters report the version after post-processing"

        def gen():
            try:
                for item in self.state.items():
                    yield item
            except BaseException as e:
                self.thrown.append(e)
                raise
            self.received += 1
        return gen()

    def finish(self, error=None):
        self.finished.append(error)
        if error is None:
            self.version = self.next_version
        return self.next_version


class StandinTestCase(unittest.TestCase):
    def assert_loaded(self, model, state):
        """The model's parameters equal the fused HF state dict, bit for bit."""
        want = se.expected_parameters(model.config, state)
        params = dict(model.named_parameters())
        self.assertEqual(sorted(params), sorted(want))
        for name, value in want.items():
            with self.subTest(param=name):
                self.assertEqual(params[name].dtype, value.dtype)
                self.assertTrue(torch.equal(params[name], value), name)


class LoadPathTest(StandinTestCase):
    """_adapter.load_version, shared by both adapters, with a fake Worker (no daemon)."""

    def test_fused_parameters_and_one_post_load(self):
        state = se.hf_state_dict(seed=1)
        model = se.StandinLlama()
        fake = FakeWorker(state)
        got = _adapter.load_version(fake, model, 10,
                                    lambda: se.process_weights_after_loading(model, "cfg", "cpu"))
        self.assertEqual(got, 7)
        self.assert_loaded(model, state)
        self.assertEqual(model.loaded_names, list(state))
        self.assertEqual(model.post_load_calls, [("cfg", "cpu")])
        self.assertEqual(fake.finished, [None])
        self.assertEqual(fake.version, 7)

    def test_the_standin_really_fuses(self):
        # Guards the stand-in itself: q, k, v land at their offsets of qkv_proj.
        c = se.StandinConfig()
        state = se.hf_state_dict(c, seed=2)
        model = se.StandinLlama(c)
        model.load_weights(state.items())
        qkv = model.model.layers[1].self_attn.qkv_proj.weight
        self.assertTrue(torch.equal(qkv[:c.q_size],
                                    state["model.layers.1.self_attn.q_proj.weight"]))
        self.assertTrue(torch.equal(qkv[c.q_size + c.kv_size:],
                                    state["model.layers.1.self_attn.v_proj.weight"]))
        up = model.model.layers[0].mlp.gate_up_proj.weight[c.intermediate_size:]
        self.assertTrue(torch.equal(up, state["model.layers.0.mlp.up_proj.weight"]))
        with self.assertRaisesRegex(ValueError, "expected"):
            model.load_weights([("model.norm.weight", torch.zeros(3, dtype=c.dtype))])

    def test_an_unknown_weight_is_thrown_into_the_receiver(self):
        state = se.hf_state_dict(seed=3)
        state["model.layers.0.mlp.bogus.weight"] = torch.zeros(2)
        model = se.StandinLlama()
        fake = FakeWorker(state)
        with self.assertRaisesRegex(ValueError, "unknown weight 'model.layers.0.mlp.bogus.weight'"):
            _adapter.load_version(fake, model, 10)
        self.assertEqual(len(fake.thrown), 1)
        self.assertIsInstance(fake.thrown[0], ValueError)
        self.assertEqual(fake.finished, [], "a failed load is not reported loaded")

    def test_a_post_load_failure_is_reported(self):
        fake = FakeWorker(se.hf_state_dict(seed=4))

        def boom():
            raise RuntimeError("out of memory in repacking")

        with self.assertRaisesRegex(RuntimeError, "repacking"):
            _adapter.load_version(fake, se.StandinLlama(), 10, boom)
        self.assertEqual(fake.finished,
                         ["post-load processing failed: RuntimeError: out of memory in repacking"])
        self.assertEqual(fake.version, 0)

    def test_load_weights_that_stops_early_is_an_error(self):
        class Lazy:
            def load_weights(self, weights):
                next(iter(weights))

        fake = FakeWorker(se.hf_state_dict(seed=5))
        with self.assertRaisesRegex(RuntimeError, "before consuming every tensor"):
            _adapter.load_version(fake, Lazy(), 10)
        self.assertEqual(len(fake.thrown), 1)

    def test_a_held_version_is_not_received_again(self):
        fake = FakeWorker(se.hf_state_dict(seed=6))
        fake.version = 7
        self.assertEqual(_adapter.load_version(fake, se.StandinLlama(), 10, version=7), 7)
        self.assertEqual(fake.received, 0)
        _adapter.load_version(fake, se.StandinLlama(), 10, version=7, force=True)
        self.assertEqual(fake.received, 1)

    def test_string_arguments(self):
        self.assertEqual(_adapter.as_int("12", "v"), 12)
        self.assertEqual(_adapter.as_int(12.0, "v"), 12)
        self.assertEqual(_adapter.as_float("2.5", "t"), 2.5)
        self.assertIs(_adapter.as_bool("false", "f"), False)
        self.assertIs(_adapter.as_bool("True", "f"), True)
        for bad in (lambda: _adapter.as_int("x", "version"),
                    lambda: _adapter.as_int(1.5, "version"),
                    lambda: _adapter.as_bool("maybe", "force")):
            with self.assertRaises(ce.CkptError) as e:
                bad()
            self.assertEqual(e.exception.code, 3)

    def test_versions_and_timeouts_are_checked(self):
        self.assertEqual(_adapter.as_version("7", "v"), 7)
        self.assertEqual(_adapter.as_version(2 ** 64 - 1, "v"), 2 ** 64 - 1)
        self.assertEqual(_adapter.as_timeout("2.5", "t"), 2.5)
        self.assertEqual(_adapter.as_timeout(0, "t"), 0.0)
        self.assertEqual(_adapter.as_timeout("inf", "t"), float("inf"))
        # Out of uint64 a version wrapped in ctypes (2^64 + 1 named version 1); a negative or NaN
        # timeout failed the receive at once while the daemon's update waited for this worker.
        bad = [lambda: _adapter.as_version(-1, "v"), lambda: _adapter.as_version(2 ** 64, "v"),
               lambda: _adapter.as_version("18446744073709551617", "v"),
               lambda: _adapter.as_version(True, "v"), lambda: _adapter.as_timeout(-5, "t"),
               lambda: _adapter.as_timeout("nan", "t"),
               lambda: _adapter.as_timeout(float("inf"), "t", finite=True),
               lambda: ce_sglang.request_tensors(version=-1),
               lambda: ce_sglang.request_tensors(version=2 ** 63),
               lambda: ce_sglang.request_tensors(timeout=float("nan")),
               lambda: ce_sglang.request_tensors(timeout=float("inf")),
               lambda: ce_sglang.ipc_request(version=2 ** 64 + 1),
               lambda: ce_sglang.ipc_request(timeout=-1)]
        for i, call in enumerate(bad):
            with self.subTest(case=i):
                with self.assertRaises(ce.CkptError) as e:
                    call()
                self.assertEqual(e.exception.code, 3)
        body = ce_sglang.ipc_request(version=3, timeout=1234567)
        self.assertEqual(float(body["zmq_handles"][ce_sglang.IPC_KEY_TIMEOUT]), 1234567.0)

    def test_sglang_request_round_trip(self):
        req = ce_sglang._request(ce_sglang.request_tensors(version=9, force=True, timeout=1.5,
                                                           socket="/run/x/d.sock"))
        self.assertEqual(req, {ce_sglang.SOCKET: "/run/x/d.sock", ce_sglang.VERSION: 9,
                               ce_sglang.FORCE: 1, ce_sglang.TIMEOUT_MS: 1500})
        self.assertEqual(ce_sglang._request(ce_sglang.request_tensors(attach_only=True)),
                         {ce_sglang.ATTACH: True})
        with self.assertRaisesRegex(ce.CkptError, "pulls the weights"):
            ce_sglang._request([("model.norm.weight", torch.zeros(1))])

    def test_adapters_import_without_the_engines(self):
        code = ("import sys, ckpt_engine.vllm, ckpt_engine.sglang; "
                "assert 'vllm' not in sys.modules and 'sglang' not in sys.modules; "
                "assert 'torch' not in sys.modules, 'torch is imported lazily'")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=DEADLINE_S)
        self.assertEqual(r.returncode, 0, r.stderr)


class FakeVllmWorker(ce_vllm.CkptEngineWorkerExtension):
    """What the extension touches of vLLM's GPU worker."""

    def __init__(self, model):
        self.model_runner = types.SimpleNamespace(model=model)
        self.device = torch.device("cpu")
        self.model_config = "the-model-config"
        self.ckpt_engine_post_load = se.process_weights_after_loading


class FakeLLM:
    """vllm.LLM.collective_rpc: calls the method on every worker, returns the results."""

    def __init__(self, workers):
        self.workers = workers
        self.calls = []

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append(method)
        return [getattr(w, method)(*args, **(kwargs or {})) for w in self.workers]


class FakeSglangEngine:
    """sglang.Engine.update_weights_from_tensor with one TP worker: ModelRunner resolves
    `load_format` among the allowed custom loaders and calls it with (model, named_tensors)."""

    def __init__(self, model, custom_weight_loader):
        self.model = model
        self.custom_weight_loader = list(custom_weight_loader)
        self.flushes = []

    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True):
        if load_format not in self.custom_weight_loader:
            raise NotImplementedError(f"Unknown load_format={load_format}")
        module, _, name = load_format.rpartition(".")
        loader = getattr(importlib.import_module(module), name)
        loader(self.model, [(n, t.to("cpu")) for n, t in named_tensors])
        self.flushes.append(flush_cache)
        return True, "Success"


class UpdateThread(threading.Thread):
    def __init__(self, client, version):
        super().__init__(daemon=True)
        self.client, self.version, self.report, self.error = client, version, None, None
        self.start()

    def run(self):
        try:
            self.report = self.client.update(self.version, timeout=DEADLINE_S)
        except ce.CkptError as e:
            self.error = e

    def wait(self, test):
        self.join(DEADLINE_S + 10)
        test.assertFalse(self.is_alive(), "Client.update did not return")


class DaemonHelpers:
    """For test cases with a `daemon` (client_test.Daemon) and a `client`: attached workers, and a
    push of the stand-in model large enough for several 64 KiB buckets."""

    def attached(self):
        r = self.daemon.ctl("status", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["attached_workers"]

    def push(self, seed, extra=None):
        state = se.hf_state_dict(seed=seed)
        self.assertGreater(sum(t.numel() * t.element_size() for t in state.values()), 2 << 16,
                           "several buckets")
        return self.client.push_state_dict(dict(state, **(extra or {}))), state


class DaemonAdapterTest(DaemonHelpers, StandinTestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(extra_args=["--bucket-bytes", "64KiB", "--ack-timeout", "5s"])
        cls.client = ce.Client(socket=cls.daemon.socket)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.daemon.stop()

    def setUp(self):
        deadline = time.monotonic() + 20
        while self.attached() != 0:
            self.assertLess(time.monotonic(), deadline, "workers of an earlier test still attached")
            time.sleep(0.02)

    def test_vllm_extension_through_collective_rpc(self):
        version, state = self.push(10)
        model = se.StandinLlama()
        worker = FakeVllmWorker(model)
        self.addCleanup(worker.ckpt_engine_detach)
        llm = FakeLLM([worker])
        report = ce_vllm.update(llm, version=version, socket=self.daemon.socket,
                                timeout=DEADLINE_S)
        self.assertEqual(llm.calls, ["ckpt_engine_attach", "ckpt_engine_update"])
        self.assertEqual(report["version"], version)
        [w] = report["workers"]
        self.assertTrue(w["ok"], report)
        self.assertEqual((w["engine"], w["pid"], w["tensors"]), ("vllm", os.getpid(), len(state)))
        self.assertEqual(report["worker_versions"], [version])
        self.assert_loaded(model, state)
        self.assertEqual(model.post_load_calls, [("the-model-config", torch.device("cpu"))])
        status = worker.ckpt_engine_status()
        self.assertEqual((status["backend"], status["version"]), ("host", version))

        # The same version again: nothing is received, post-processing does not run again.
        report = ce_vllm.update(llm, version=version, socket=self.daemon.socket,
                                timeout=DEADLINE_S)
        self.assertTrue(report["workers"][0]["skipped"], report)
        self.assertEqual(len(model.post_load_calls), 1)

        # Version 0 means the newest; arguments as strings, as HTTP /collective_rpc sends them.
        version2, state2 = self.push(11)
        update = UpdateThread(self.client, version2)
        self.assertEqual(worker.ckpt_engine_update(version="0", force="false", timeout="60"),
                         version2)
        update.wait(self)
        self.assertIsNone(update.error)
        self.assert_loaded(model, state2)
        self.assertEqual(len(model.post_load_calls), 2)

    def test_vllm_load_failure_fails_the_update_naming_the_worker(self):
        version, _ = self.push(12, {"model.layers.1.self_attn.rotary.weight": torch.ones(4)})
        model = se.StandinLlama()
        worker = FakeVllmWorker(model)
        self.addCleanup(worker.ckpt_engine_detach)
        worker.ckpt_engine_attach(socket=self.daemon.socket)
        update = UpdateThread(self.client, version)
        with self.assertRaisesRegex(ValueError, "unknown weight"):
            worker.ckpt_engine_update(version=version, timeout=DEADLINE_S)
        update.wait(self)
        self.assertIsNotNone(update.error)
        self.assertIn(f"worker pid {os.getpid()} (vllm)", update.error.message)
        self.assertIn("unknown weight 'model.layers.1.self_attn.rotary.weight'",
                      update.error.message)
        self.assertEqual(model.post_load_calls, [])
        self.assertEqual(worker.ckpt_engine_status()["version"], 0)

    def test_sglang_custom_loader_through_update_weights_from_tensor(self):
        version, state = self.push(13)
        model = se.StandinLlama()
        engine = FakeSglangEngine(model, [ce_sglang.LOAD_FORMAT])
        hooked = []
        ce_sglang.set_post_load_hook(hooked.append)
        self.addCleanup(ce_sglang.set_post_load_hook, None)
        self.addCleanup(ce_sglang.detach)
        report = ce_sglang.update_engine(engine, version=version, socket=self.daemon.socket,
                                         timeout=DEADLINE_S)
        [w] = report["workers"]
        self.assertTrue(w["ok"], report)
        self.assertEqual((w["engine"], w["pid"], w["tensors"]),
                         ("sglang", os.getpid(), len(state)))
        self.assertEqual(report["engine_result"], (True, "Success"))
        self.assertEqual(engine.flushes, [False, True], "attach, then update with a cache flush")
        self.assert_loaded(model, state)
        self.assertEqual(hooked, [model])
        self.assertEqual(ce_sglang.worker().version, version)

    def test_sglang_failure_is_reported_by_the_daemon_not_raised_in_the_engine(self):
        version, _ = self.push(14, {"model.bogus.weight": torch.ones(2)})
        model = se.StandinLlama()
        engine = FakeSglangEngine(model, [ce_sglang.LOAD_FORMAT])
        self.addCleanup(ce_sglang.detach)
        with self.assertLogs("ckpt_engine", "ERROR") as logs, \
                self.assertRaises(ce.CkptError) as e:
            ce_sglang.update_engine(engine, version=version, socket=self.daemon.socket,
                                    timeout=DEADLINE_S)
        self.assertIn(f"worker pid {os.getpid()} (sglang)", e.exception.message)
        self.assertIn("unknown weight 'model.bogus.weight'", e.exception.message)
        self.assertIn("update of this SGLang worker", logs.output[0])
        self.assertEqual(ce_sglang.worker().version, 0)


if __name__ == "__main__":
    unittest.main()
