"""ckpt_engine.vllm_transfer, the "ckpt_engine" backend of vLLM's weight transfer, driving the
stand-in of vLLM (vllm_standin.py) through its HTTP routes, with the real ckpt-engined (host
backend).

vllm_standin.install() puts a fake vllm package in sys.modules before the backend is imported, so
the backend derives from the stand-in's WeightTransferEngine as it would from vLLM's. The daemon
runs with 16 KiB buckets and one slot per GPU: every update takes several buckets, a layer's
tensors (gate_proj and up_proj, 14 KiB each) always come in different buckets, and a view kept past
its bucket reads the next bucket's bytes, so a loader that keeps views shows it.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import vllm_standin as vs  # noqa: E402
from adapter_test import UpdateThread  # noqa: E402

vs.install()

import standin_engine as se  # noqa: E402
from client_test import Daemon  # noqa: E402

import ckpt_engine as ce  # noqa: E402
from ckpt_engine import vllm_transfer as vt  # noqa: E402

DEADLINE_S = 60
MODEL_CONFIG = vs.ModelConfig()
CPU = torch.device("cpu")


def setUpModule():
    vt.register()  # what the vllm.general_plugins entry point does in each process


def run_python(code, env=None, timeout=DEADLINE_S):
    base = dict(os.environ)
    base["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, base.get("PYTHONPATH")) if p)
    base.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=base)


class ImportTest(unittest.TestCase):
    def test_without_vllm_the_classes_have_local_bases(self):
        code = """
import sys
import ckpt_engine.vllm_transfer as vt
assert not vt.USES_VLLM
assert 'vllm' not in sys.modules, 'vllm is not imported'
assert 'torch' not in sys.modules, 'torch is imported lazily'
engine = vt.CkptEngineWeightTransferEngine(None, None, None, None)
try:
    engine.parse_init_info({'bogus': 1})
    raise SystemExit('an unknown init_info key was accepted')
except ValueError as e:
    assert 'Invalid init_info for CkptEngineWeightTransferEngine' in str(e), e
info = engine.parse_update_info({'version': '7', 'force': 'true'})
assert info == vt.CkptEngineUpdateInfo(7, True), info
assert vt.CkptEngineTrainerInitInfo(rank=0).backend == 'ckpt_engine'
try:
    vt.register()
    raise SystemExit('register() without vLLM did not fail')
except RuntimeError as e:
    assert 'no pluggable weight transfer' in str(e), e
print('LOCAL_BASES_OK')
"""
        r = run_python(code)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("LOCAL_BASES_OK", r.stdout)

    def test_bad_versions_and_timeouts_are_refused_when_parsed(self):
        # What parse_update_info / parse_init_info build (their dataclasses check the values).
        for info in ({"version": 2 ** 64 + 1}, {"version": "18446744073709551617"},
                     {"version": -1}, {"version": True}, {"timeout": -5}, {"timeout": "nan"}):
            with self.subTest(update_info=info):
                with self.assertRaises(ce.CkptError) as e:
                    vt.CkptEngineUpdateInfo(**info)
                self.assertEqual(e.exception.code, 3)
        for info in ({"attach_timeout": -1}, {"receive_timeout": "nan"},
                     {"receive_timeout": -0.5}):
            with self.subTest(init_info=info):
                with self.assertRaises(ce.CkptError) as e:
                    vt.CkptEngineInitInfo(**info)
                self.assertEqual(e.exception.code, 3)
        self.assertEqual(vt.CkptEngineUpdateInfo(version="7", timeout="0"),
                         vt.CkptEngineUpdateInfo(7, False, 0.0))

    def test_with_vllm_the_classes_derive_from_its_bases(self):
        self.assertTrue(vt.USES_VLLM)
        self.assertTrue(issubclass(vt.CkptEngineWeightTransferEngine, vs.WeightTransferEngine))
        self.assertTrue(issubclass(vt.CkptEngineInitInfo, vs.WeightTransferInitInfo))
        self.assertTrue(issubclass(vt.CkptEngineUpdateInfo, vs.WeightTransferUpdateInfo))
        self.assertTrue(issubclass(vt.CkptEngineTrainerInitInfo, vs.TrainerInitInfo))
        self.assertTrue(issubclass(vt.CkptEngineTrainerWeightTransferEngine,
                                   vs.TrainerWeightTransferEngine))
        self.assertEqual(vt.CkptEngineTrainerInitInfo.backend, "ckpt_engine")
        with self.assertRaises(TypeError):
            vt.CkptEngineTrainerInitInfo()  # vLLM's rank is keyword-only and required
        vt.register()  # again: a plugin runs in every process, maybe more than once
        self.assertIn("ckpt_engine", vs.WeightTransferEngineFactory._registry)
        self.assertIn("ckpt_engine", vs.WeightTransferTrainerFactory._registry)

    def test_an_entry_point_registers_the_backend_before_load_model(self):
        # The recipe of docs/engines.md: a dist-info folder on PYTHONPATH, no pip install.
        with tempfile.TemporaryDirectory(dir=os.environ.get("TEST_TMPDIR")) as tmp:
            info = os.path.join(tmp, "ckpt_engine_vllm_plugin-0.dist-info")
            os.mkdir(info)
            with open(os.path.join(info, "METADATA"), "w") as f:
                f.write("Metadata-Version: 2.1\nName: ckpt-engine-vllm-plugin\nVersion: 0\n")
            with open(os.path.join(info, "entry_points.txt"), "w") as f:
                f.write("[vllm.general_plugins]\n"
                        "ckpt_engine = ckpt_engine.vllm_transfer:register\n")
            code = """
import vllm_standin as vs
vs.install()
config = vs.VllmConfig(weight_transfer_config=vs.WeightTransferConfig(backend='ckpt_engine'))
worker = vs.GpuWorker(config)
worker.init_worker()
worker.init_worker()
worker.load_model()
print(type(worker.weight_transfer_engine).__name__, type(worker.weight_transfer_engine).__module__)
"""
            env = {"PYTHONPATH": os.pathsep.join(p for p in (
                tmp, HERE, os.environ.get("PYTHONPATH")) if p)}
            r = run_python(code, env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("CkptEngineWeightTransferEngine ckpt_engine.vllm_transfer", r.stdout)
            r = run_python(code, env=dict(env, VLLM_PLUGINS="another_plugin"))
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("Invalid weight transfer backend: ckpt_engine", r.stderr)

    def test_an_unknown_backend_fails_engine_start_up(self):
        with self.assertRaisesRegex(ValueError, "Invalid weight transfer backend: nope"):
            vs.StandinVllm(weight_transfer_config=vs.WeightTransferConfig(backend="nope"))

    def test_the_http_client_reads_vllms_error_bodies(self):
        self.assertEqual(vt._error_message(b'{"error": {"message": "boom", "code": 500}}'), "boom")
        self.assertEqual(vt._error_message(b'{"error": "bad mode"}'), "bad mode")
        self.assertEqual(vt._error_message(b'{"detail": [{"msg": "field required"}]}'),
                         '[{"msg": "field required"}]')
        self.assertEqual(vt._error_message(b"Internal Server Error"), "Internal Server Error")
        with self.assertRaises(vt.WeightSyncError) as e:
            vt.HttpWeightSyncClient("http://127.0.0.1:9", timeout=5).weight_info()
        self.assertIsNone(e.exception.status)
        self.assertIn("cannot reach", e.exception.message)


class TransferTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(extra_args=["--bucket-bytes", "16KiB", "--slots-per-gpu", "1",
                                        "--ack-timeout", "5s"])
        cls.client = ce.Client(socket=cls.daemon.socket)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.daemon.stop()

    def setUp(self):
        self.wait_detached()
        del vs.MTP_CHECK_DISABLED[:]

    def wait_detached(self):
        deadline = time.monotonic() + 20
        while True:
            r = self.daemon.ctl("status", "--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            if json.loads(r.stdout)["attached_workers"] == 0:
                return
            self.assertLess(time.monotonic(), deadline, "workers of an earlier test still attached")
            time.sleep(0.02)

    # ---- helpers ----

    def start_server(self, workers=1, backend="ckpt_engine", **kwargs):
        config = vs.WeightTransferConfig(backend=backend) if backend else None
        vllm = vs.StandinVllm(weight_transfer_config=config, workers=workers, **kwargs)
        self.addCleanup(vllm.shutdown)
        server = vs.StandinServer(vllm)
        self.addCleanup(server.close)
        return vllm, vt.HttpWeightSyncClient(server.url, timeout=DEADLINE_S + 30)

    def stop_server(self, vllm):
        vllm.shutdown()
        self.wait_detached()

    def init_info(self, **kwargs):
        return dict({"socket": self.daemon.socket, "receive_timeout": DEADLINE_S}, **kwargs)

    def trainer_info(self, **kwargs):
        return vt.CkptEngineTrainerInitInfo(rank=0, socket=self.daemon.socket,
                                            engine_socket=self.daemon.socket,
                                            receive_timeout=DEADLINE_S,
                                            update_timeout=DEADLINE_S, **kwargs)

    def sync(self, http, weights, **kwargs):
        kwargs.setdefault("timeout", DEADLINE_S)
        return vt.sync_weights(http.base_url, weights, socket=self.daemon.socket,
                               engine_socket=self.daemon.socket, receive_timeout=DEADLINE_S,
                               **kwargs)

    def push(self, seed, extra=None):
        state = se.hf_state_dict(seed=seed)
        return self.client.push_state_dict(dict(state, **(extra or {}))), state

    def http_update(self, http, version, weight_version=None):
        """The HTTP flow of one update, with the daemon's update alongside: its report."""
        http.start_weight_update()
        update = UpdateThread(self.client, version)
        http.update_weights({"version": version})
        http.finish_weight_update(weight_version)
        update.wait(self)
        self.assertIsNone(update.error)
        return update.report

    def http_error(self, call, status=500):
        with self.assertRaises(vt.WeightSyncError) as e:
            call()
        self.assertEqual(e.exception.status, status, e.exception)
        return e.exception.message

    def assert_loaded(self, model, state):
        """The model's parameters equal the fused HF `state`, bit for bit."""
        want = se.expected_parameters(model.config, state)
        params = dict(model.named_parameters())
        self.assertEqual(sorted(params), sorted(want))
        for name, value in want.items():
            with self.subTest(param=name):
                self.assertEqual(params[name].dtype, value.dtype)
                self.assertTrue(torch.equal(params[name], value), name)

    def route_events(self, vllm):
        return [e for e in vllm.events if e[0] != "error"]

    # ---- the HTTP flow ----

    def test_http_flow_loads_a_pushed_version_into_two_workers(self):
        version, state = self.push(20)
        vllm, http = self.start_server(workers=2)
        self.assertEqual(http.weight_info(), "default")
        http.init_weight_transfer_engine(self.init_info())
        engine = vllm.workers[0].weight_transfer_engine
        worker = engine.worker
        http.init_weight_transfer_engine(self.init_info())  # the same init_info keeps the attach
        self.assertIs(engine.worker, worker)

        http.pause(mode="keep")
        http.start_weight_update()
        update = UpdateThread(self.client, version)
        http.update_weights({"version": version})
        # Received, not reported: the daemon's update returns once the post-load step ran.
        time.sleep(0.2)
        self.assertTrue(update.is_alive(), "the version was reported before finish_weight_update")
        http.finish_weight_update(f"step-{version}")
        update.wait(self)
        self.assertIsNone(update.error)
        http.resume()

        self.assertEqual(http.weight_info(), f"step-{version}")
        self.assertEqual(update.report["version"], version)
        self.assertEqual([(w["engine"], w["ok"], w["tensors"]) for w in update.report["workers"]],
                         [("vllm", True, len(state))] * 2)
        for w in vllm.workers:
            model = w.model_runner.model
            self.assert_loaded(model, state)
            self.assertEqual(model.layerwise_calls, ["initialize", ("finalize", MODEL_CONFIG)])
            self.assertEqual(model.post_load_calls, [], "layerwise reloading post-processes")
            self.assertEqual(w.model_runner.lora_resets, 1)
            self.assertEqual(w.weight_transfer_engine.loaded_version, version)
            self.assertEqual(w.weight_transfer_engine.status()["version"], version)
        self.assertEqual(len(vs.MTP_CHECK_DISABLED), 2, "load_weights ran with the MTP check off")
        self.assertEqual(self.route_events(vllm), [
            ("init",), ("init",), ("pause", "keep", True), ("start",), ("update",), ("finish",),
            ("resume",)])

    def test_without_layerwise_reload_process_weights_after_loading_runs_at_finish(self):
        version, state = self.push(21)
        vllm, http = self.start_server()
        http.init_weight_transfer_engine(self.init_info(layerwise_reload=False))
        model = vllm.models[0]
        http.start_weight_update()
        update = UpdateThread(self.client, version)
        http.update_weights({"version": version})
        self.assertEqual(model.post_load_calls, [])
        http.finish_weight_update()
        update.wait(self)
        self.assertIsNone(update.error)
        self.assert_loaded(model, state)
        self.assertEqual(model.post_load_calls, [(MODEL_CONFIG, CPU)])
        self.assertFalse(getattr(model, "layerwise_calls", []))
        self.assertEqual(http.weight_info(), "default", "no weight_version given")

    def test_layerwise_reload_keeps_tensors_so_views_are_cloned(self):
        version, state = self.push(22)
        vllm, http = self.start_server()
        http.init_weight_transfer_engine(self.init_info())  # clone_tensors: None (auto)
        self.http_update(http, version)
        self.assert_loaded(vllm.models[0], state)
        self.stop_server(vllm)

        # Guards the stand-in: without copies, tensors kept across buckets read refilled slots.
        vllm, http = self.start_server()
        http.init_weight_transfer_engine(self.init_info(clone_tensors=False))
        self.http_update(http, version)
        model = vllm.models[0]
        want = se.expected_parameters(model.config, state)
        got = dict(model.named_parameters())
        self.assertFalse(all(torch.equal(got[n], want[n]) for n in want),
                         "kept views were still intact: the test does not show the hazard")

    # ---- the trainer side ----

    def test_trainer_engine_through_vllms_trainer_factory(self):
        vllm, http = self.start_server()
        state = se.hf_state_dict(seed=23)
        trainer_model = se.hf_module(state)
        engine = vs.WeightTransferTrainerFactory.trainer_init(
            self.trainer_info(), client=http, source=vs.ModuleSource(trainer_model))
        self.addCleanup(engine.shutdown)
        self.assertIsInstance(engine, vt.CkptEngineTrainerWeightTransferEngine)
        self.assertEqual(self.route_events(vllm), [("init",)])

        report = engine.send_weights()
        version = report["version"]
        self.assertEqual(report["weight_version"], str(version))
        self.assertEqual(http.weight_info(), str(version))
        self.assertTrue(report["workers"][0]["ok"], report)
        self.assert_loaded(vllm.models[0], state)

        # A training step later: new values, a new version.
        with torch.no_grad():
            for p in trainer_model.parameters():
                p.add_(1)
        report = engine.send_weights()
        self.assertGreater(report["version"], version)
        self.assert_loaded(vllm.models[0], {n: p.detach().clone()
                                            for n, p in trainer_model.named_parameters()})
        # The version the workers hold: nothing is sent or received again.
        again = engine.load(report["version"])
        self.assertTrue(again["workers"][0]["skipped"], again)
        self.assertEqual(self.route_events(vllm), [("init",)] + [
            ("start",), ("update",), ("finish",)] * 3)

    def test_ranks_that_do_not_send_only_iterate_the_source(self):
        class Recorder:
            calls = []

            def __getattr__(self, name):
                return lambda *a, **k: self.calls.append(name)

        seen = []

        class Source(vt.StateDictSource):
            def __iter__(self):
                for item in super().__iter__():
                    seen.append(item[0])
                    yield item

        state = se.hf_state_dict(seed=24)
        info = dataclasses.replace(self.trainer_info(), rank=1)
        engine = vt.CkptEngineTrainerWeightTransferEngine.trainer_init(
            info, client=Recorder(), source=Source(state))
        self.assertFalse(engine.is_sender)
        self.assertIsNone(engine.send_weights())
        self.assertEqual(seen, list(state))
        self.assertEqual(Recorder.calls, [])

    def test_sync_weights_pauses_around_the_update(self):
        vllm, http = self.start_server()
        state = se.hf_state_dict(seed=25)
        report = self.sync(http, se.hf_module(state), pause="wait", weight_version="rl-step-1")
        self.assertEqual(report["weight_version"], "rl-step-1")
        self.assertEqual(http.weight_info(), "rl-step-1")
        self.assertTrue(report["update"]["workers"][0]["ok"])
        self.assert_loaded(vllm.models[0], state)
        self.assertEqual(self.route_events(vllm), [
            ("init",), ("pause", "wait", True), ("start",), ("update",), ("finish",),
            ("resume",)])
        self.assertFalse(http.is_paused())

        # A state dict, no pause, version picked by the caller.
        state = se.hf_state_dict(seed=26)
        version = report["version"] + 5
        report = self.sync(http, state, version=version, pause=None)
        self.assertEqual((report["version"], http.weight_info()), (version, str(version)))
        self.assert_loaded(vllm.models[0], state)
        self.assertNotIn("pause", [e[0] for e in vllm.events[-4:]])

    # ---- sleep mode ----

    def test_an_update_needs_the_weights_awake_after_sleep_level_2(self):
        version, state = self.push(27)
        vllm, http = self.start_server()
        model = vllm.models[0]
        http.init_weight_transfer_engine(self.init_info())
        http.sleep(level=2)
        self.assertTrue(http.is_sleeping())
        message = self.http_error(http.start_weight_update)
        self.assertIn("weights are not resident", message)
        self.assertIn("/wake_up?tags=weights", message)
        self.assertFalse(vllm.workers[0]._weight_update_active)
        self.assertEqual(getattr(model, "layerwise_calls", []), [])

        http.wake_up(["weights"])
        self.assertTrue(torch.isnan(model.model.norm.weight).all(), "level 2 discarded them")
        self.assertTrue(http.is_sleeping(), "the KV cache still sleeps")
        self.http_update(http, version, "after-sleep")
        http.wake_up(["kv_cache"])
        self.assertFalse(http.is_sleeping())
        self.assert_loaded(model, state)
        self.assertEqual(http.weight_info(), "after-sleep")

    def test_sync_weights_wakes_the_weights_then_the_kv_cache(self):
        vllm, http = self.start_server()
        for level, seed in ((2, 28), (1, 29)):
            with self.subTest(level=level):
                http.sleep(level=level)
                del vllm.events[:]
                state = se.hf_state_dict(seed=seed)
                self.sync(http, se.hf_module(state))
                self.assertEqual(self.route_events(vllm), [
                    ("init",), ("pause", "keep", True), ("wake_up", ("weights",)), ("start",),
                    ("update",), ("finish",), ("wake_up", ("kv_cache",)), ("resume",)])
                self.assertFalse(http.is_sleeping())
                self.assertIsNotNone(vllm.workers[0].kv_cache)
                self.assert_loaded(vllm.models[0], state)  # not level 1's copy of the old ones

    # ---- failures ----

    def test_a_failed_update_reaches_the_caller_and_generation_resumes(self):
        vllm, http = self.start_server()
        bad = dict(se.hf_state_dict(seed=30))
        bad["model.layers.0.mlp.bogus.weight"] = torch.ones(3, dtype=torch.bfloat16)
        with self.assertRaises(vt.WeightSyncError) as e:
            self.sync(http, bad)
        self.assertEqual((e.exception.route, e.exception.status), ("/update_weights", 500))
        self.assertIn("unknown weight 'model.layers.0.mlp.bogus.weight'", e.exception.message)
        notes = " ".join(getattr(e.exception, "__notes__", []))
        self.assertIn(f"worker pid {os.getpid()} (vllm)", notes, "the daemon's error is attached")
        self.assertEqual(self.route_events(vllm), [
            ("init",), ("pause", "keep", True), ("start",), ("update",), ("finish",),
            ("resume",)])
        self.assertFalse(http.is_paused())
        self.assertEqual(http.weight_info(), "default")
        self.assertEqual(vllm.models[0].layerwise_calls[-1], ("finalize", MODEL_CONFIG),
                         "no layer is left waiting for its tensors")

        # The next update starts afresh.
        state = se.hf_state_dict(seed=31)
        report = self.sync(http, state)
        self.assertEqual(http.weight_info(), str(report["version"]))
        self.assert_loaded(vllm.models[0], state)

    def test_calls_out_of_order_and_bad_requests_reach_the_caller(self):
        vllm, http = self.start_server()
        self.assertIn("init_weight_transfer_engine must be called before start_weight_update",
                      self.http_error(http.start_weight_update))
        self.assertIn("Invalid init_info for CkptEngineWeightTransferEngine",
                      self.http_error(lambda: http.init_weight_transfer_engine({"bogus": 1})))
        self.assertIn("Missing 'init_info'", self.http_error(
            lambda: http.request("POST", "/init_weight_transfer_engine", {}), status=400))
        self.assertIn("cannot attach this vLLM worker", self.http_error(
            lambda: http.init_weight_transfer_engine({"socket": "/nonexistent/d.sock"})))
        http.init_weight_transfer_engine(self.init_info())

        self.assertIn("start_weight_update must be called before update_weights",
                      self.http_error(lambda: http.update_weights({"version": 1})))
        self.assertIn("finish_weight_update called without a matching start_weight_update",
                      self.http_error(http.finish_weight_update))
        http.start_weight_update()
        self.assertIn("already active", self.http_error(http.start_weight_update))
        self.assertIn("Invalid update_info for CkptEngineWeightTransferEngine",
                      self.http_error(lambda: http.update_weights({"verzion": 1})))
        http.start_weight_update()  # the failed update_weights closed the update
        started = time.monotonic()
        self.assertIn("ckpt-engined holds no version 999999",
                      self.http_error(lambda: http.update_weights({"version": 999999})))
        self.assertLess(time.monotonic() - started, 10, "an unknown version fails at once")
        self.assertIn("without a matching start_weight_update",
                      self.http_error(lambda: http.finish_weight_update("v")))
        self.assertEqual(http.weight_info(), "default")
        self.assertIn("Invalid pause mode", self.http_error(
            lambda: http.pause(mode="later"), status=400))

        _, plain = self.start_server(backend=None)
        self.assertIn("Weight transfer not configured", self.http_error(
            lambda: plain.init_weight_transfer_engine(self.init_info())))

    def test_a_failed_post_load_step_fails_finish_and_the_daemons_update(self):
        version, state = self.push(32)
        vllm, http = self.start_server()
        http.init_weight_transfer_engine(self.init_info(layerwise_reload=False))

        def boom(model, model_config, device):
            raise RuntimeError("repacking ran out of memory")

        vllm.workers[0].weight_transfer_engine.post_load = boom
        http.start_weight_update()
        update = UpdateThread(self.client, version)
        http.update_weights({"version": version})
        self.assertIn("repacking ran out of memory",
                      self.http_error(lambda: http.finish_weight_update("v")))
        update.wait(self)
        self.assertIsNotNone(update.error)
        self.assertIn("post-load processing failed: RuntimeError: repacking ran out of memory",
                      update.error.message)
        self.assertEqual(http.weight_info(), "default", "a failed finish publishes no version")

    # ---- the worker extension (older vLLM) on the same stand-in ----

    def test_the_worker_extension_through_collective_rpc(self):
        version, state = self.push(33)
        vllm, http = self.start_server(
            backend=None, worker_extension_cls="ckpt_engine.vllm.CkptEngineWorkerExtension")
        self.addCleanup(vllm.collective_rpc, "ckpt_engine_detach")
        answer = http.request("POST", "/collective_rpc", {
            "method": "ckpt_engine_attach", "kwargs": {"socket": self.daemon.socket}})
        self.assertTrue(answer["results"][0]["attached"])
        update = UpdateThread(self.client, version)
        answer = http.request("POST", "/collective_rpc", {
            "method": "ckpt_engine_update", "kwargs": {"version": str(version), "timeout": "60"}})
        self.assertEqual(answer["results"], [version])
        update.wait(self)
        self.assertIsNone(update.error)
        model = vllm.models[0]
        self.assert_loaded(model, state)
        self.assertEqual(model.post_load_calls, [(MODEL_CONFIG, CPU)])


if __name__ == "__main__":
    unittest.main()
