"""ckpt_engine's SGLang plugin path: the plugin (ckpt_engine.sglang_plugin) inside a stand-in SGLang
server (sglang_standin.py, a subprocess with one scheduler process per TP rank) and the driver
(ckpt_engine.sglang.update_server) from this process, against the real ckpt-engined (host
backend).

The stand-in finds the plugin as SGLang does: an entry point of the group "sglang.srt.plugins",
written next to the package by ckpt_engine.sglang_plugin.write_entry_point into a folder on its
PYTHONPATH, with SGLANG_PLUGINS=ckpt_engine. Weights are pushed with Client.push_state_dict and
read back from every TP rank's model (the stand-in's test-only /standin/state). The last class
runs the plugin's hooks in this process against fake SGLang modules (no daemon needed), and the
custom-loader path inside SGLang's begin/end weight-update session.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
import unittest
import urllib.error
import urllib.request

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import standin_engine as se  # noqa: E402
from adapter_test import DaemonHelpers, FakeSglangEngine  # noqa: E402
from client_test import Daemon, short_tempdir  # noqa: E402

import ckpt_engine as ce  # noqa: E402
from ckpt_engine import sglang as ces  # noqa: E402
from ckpt_engine import sglang_plugin  # noqa: E402

DEADLINE_S = 60
STANDIN = os.path.join(HERE, "sglang_standin.py")
IPC_TARGET = "sglang.srt.managers.tp_worker.BaseTpWorker.update_weights_from_ipc"
LOAD_TARGET = "sglang.srt.model_executor.model_runner.ModelRunner.load_model"


def http(url, path, body=None, timeout=DEADLINE_S):
    """(status, parsed JSON or None) of one call; POST when `body` is given."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    return status, (json.loads(raw) if raw else None)


class StandinServer:
    """sglang_standin.py as a subprocess (its own session), with the plugin's entry point on its
    PYTHONPATH and CKPT_SOCKET pointing at `daemon`."""

    def __init__(self, daemon, tp=1, env=None):
        self.dir = short_tempdir()
        plugins = os.path.join(self.dir, "site")
        sglang_plugin.write_entry_point(plugins)
        port_file = os.path.join(self.dir, "port")
        self.log = open(os.path.join(self.dir, "standin.log"), "wb")
        full_env = dict(os.environ, CKPT_SOCKET=daemon.socket, SGLANG_PLUGINS="ckpt_engine",
                        PYTHONPATH=os.pathsep.join(
                            [plugins] + [p for p in os.environ.get("PYTHONPATH", "").split(
                                os.pathsep) if p]),
                        **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, STANDIN, "--model-path", "standin", "--load-format", "dummy",
             "--tp", str(tp), "--checkpoint-engine-wait-weights-before-ready",
             "--host", "127.0.0.1", "--port", "0", "--port-file", port_file],
            env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + DEADLINE_S
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self.output()
                self.stop()
                raise RuntimeError("the SGLang stand-in did not start:\n" + output)
            time.sleep(0.05)
        with open(port_file) as f:
            self.url = f"http://127.0.0.1:{int(f.read())}"

    def output(self):
        self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def get(self, path):
        return http(self.url, path)

    def post(self, path, body):
        return http(self.url, path, body)

    def state(self):
        status, body = self.get("/standin/state")
        if status != 200:
            raise AssertionError(f"/standin/state: {status} {body}\n{self.output()}")
        return body

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its scheduler processes, if any are left
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def parameter_bytes(tensor):
    t = tensor.detach().cpu().contiguous()
    if t.element_size() == 2:
        t = t.view(torch.int16)
    return t.numpy().tobytes().hex()


class ServerTestCase(DaemonHelpers, unittest.TestCase):
    TP = 1
    ENV = {}

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(extra_args=["--bucket-bytes", "64KiB", "--ack-timeout", "5s"])
        cls.client = ce.Client(socket=cls.daemon.socket)
        try:
            cls.server = StandinServer(cls.daemon, tp=cls.TP, env=cls.ENV)
        except BaseException:
            cls.client.close()
            cls.daemon.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.client.close()
        cls.daemon.stop()

    def update(self, version, **kwargs):
        return ces.update_server(self.server.url, version, socket=self.daemon.socket,
                                 timeout=kwargs.pop("timeout", DEADLINE_S), **kwargs)

    def weight_version(self):
        return ces.get_weight_version(self.server.url)

    def wait_health(self, want):
        deadline = time.monotonic() + DEADLINE_S
        while True:
            status, _ = self.server.get("/health")
            if status == want:
                return
            self.assertLess(time.monotonic(), deadline,
                            f"/health stayed {status}, not {want}:\n{self.server.output()}")
            time.sleep(0.05)

    def assert_rank_holds(self, rank, state):
        want = se.expected_parameters(se.StandinConfig(), state)
        got = rank["parameters"]
        self.assertEqual(sorted(got), sorted(want))
        for name, value in want.items():
            with self.subTest(rank=rank["tp_rank"], param=name):
                self.assertEqual(got[name]["shape"], list(value.shape))
                self.assertEqual(got[name]["dtype"], str(value.dtype).replace("torch.", ""))
                self.assertEqual(got[name]["hex"], parameter_bytes(value), name)

    def events_since(self, before, rank):
        """What `rank` (a rank of /standin/state) logged after `before` (the same rank earlier)."""
        self.assertEqual(rank["events"][:len(before["events"])], before["events"])
        return rank["events"][len(before["events"]):]


class PluginServerTest(ServerTestCase):
    """Two TP ranks attached when SGLang loaded the model (the plugin's AFTER hook)."""

    TP = 2

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Before any update (the tests may run in any order).
        cls.initial = {"health": cls.server.get("/health")[0], "ping": cls.server.get("/ping")[0],
                       "weight_version": ces.get_weight_version(cls.server.url),
                       "state": cls.server.state()}

    def test_before_the_first_update(self):
        self.assertEqual(self.initial["ping"], 200)
        self.assertEqual(self.initial["health"], 503, "waiting for the initial weights")
        self.assertEqual(self.initial["weight_version"], "default")
        state = self.initial["state"]
        self.assertFalse(state["initial_weights_loaded"])
        self.assertEqual(len(state["ranks"]), 2)
        for rank in state["ranks"]:
            self.assertIn(IPC_TARGET, rank["patched"], "the plugin ran in the TP worker process")
            self.assertIn(LOAD_TARGET, rank["patched"])
            self.assertNotEqual(rank["pid"], os.getpid())
        self.assertEqual(self.attached(), 2, "each TP worker attached after loading the model")

    def test_update_loads_bit_exact_into_every_rank_and_releases_the_wait(self):
        before = self.server.state()
        version, state = self.push(20)
        report = self.update(version)
        pids = sorted(r["pid"] for r in before["ranks"])
        self.assertEqual(report["version"], version)
        self.assertEqual(sorted(w["pid"] for w in report["workers"]), pids)
        for w in report["workers"]:
            self.assertTrue(w["ok"], report)
            self.assertFalse(w["skipped"], report)
            self.assertEqual((w["engine"], w["tensors"]), ("sglang", len(state)))
        self.assertTrue(report["server"]["success"], report)
        self.assertEqual(report["server"]["status"], 200)
        self.assertIn(f"ckpt-engine: loaded version {version}", report["server"]["message"])
        self.assertIn(f"Weight version updated to {version}.", report["server"]["message"])
        self.assertEqual(report["weight_version"], str(version))
        self.assertIsNone(report["paused"])

        self.wait_health(200)
        self.assertEqual(self.weight_version(), str(version))
        after = self.server.state()
        self.assertTrue(after["initial_weights_loaded"])
        self.assertEqual(after["events"][-1], ["update_weights_from_ipc", True, str(version)])
        for old, rank in zip(before["ranks"], after["ranks"]):
            self.assert_rank_holds(rank, state)
            # SGLang's call order, then ours: receive (restore the layout at the first tensor,
            # load_weights), post-load (quant methods in device_loading_context, then
            # post_load_weights), then SGLang's cache flush. SGLang's own path was not called.
            self.assertEqual(self.events_since(old, rank), [
                ["scheduler.update_weights_from_ipc", True, str(version)],
                ["restore_weights_before_loading"],
                ["load_weights"],
                ["process_weights_after_loading", "model.layers.0.mlp.down_proj", "cpu"],
                ["process_weights_after_loading", "model.layers.1.mlp.down_proj", "cpu"],
                ["post_load_weights"],
                ["flush_cache"],
            ])

        # The same version again: the daemon skips the workers, the plugin answers at once;
        # the label given becomes SGLang's weight version.
        report = self.update(version, weight_version="step-20")
        self.assertTrue(all(w["skipped"] for w in report["workers"]), report)
        self.assertIn("is loaded already", report["server"]["message"])
        self.assertEqual(self.weight_version(), "step-20")
        again = self.server.state()
        for old, rank in zip(after["ranks"], again["ranks"]):
            self.assertNotIn(["load_weights"], self.events_since(old, rank))

        # force=True sends it again.
        report = self.update(version, force=True)
        self.assertTrue(all(w["ok"] and not w["skipped"] for w in report["workers"]), report)
        for old, rank in zip(again["ranks"], self.server.state()["ranks"]):
            self.assertIn(["load_weights"], self.events_since(old, rank))
            self.assert_rank_holds(rank, state)

    def test_a_newer_version_replaces_the_weights(self):
        self.update(self.push(21)[0])
        version, state = self.push(22)
        self.update(0)  # 0: the newest committed version
        self.assertEqual(self.weight_version(), str(version))
        for rank in self.server.state()["ranks"]:
            self.assert_rank_holds(rank, state)


class FailureServerTest(ServerTestCase):
    """One TP rank that attaches only at its first update (CKPT_SGLANG_ATTACH_AT_START=0)."""

    ENV = {"CKPT_SGLANG_ATTACH_AT_START": "0"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.attached_at_start = None
        cls.first = None
        try:
            t = cls("test_first_update_attaches_the_worker")
            cls.attached_at_start = t.attached()
            version, state = t.push(30)
            cls.first = (version, state, ces.update_server(
                cls.server.url, version, socket=cls.daemon.socket, timeout=DEADLINE_S))
        except BaseException:
            cls.tearDownClass()
            raise

    def test_first_update_attaches_the_worker(self):
        self.assertEqual(self.attached_at_start, 0)
        version, state, report = self.first
        [w] = report["workers"]
        self.assertTrue(w["ok"], report)
        self.assertEqual(w["engine"], "sglang")
        self.assertEqual(self.attached(), 1)
        self.wait_health(200)

    def test_load_weights_raising_fails_both_sides_and_the_server_goes_on(self):
        label = self.weight_version()
        bad, _ = self.push(31, {"model.layers.0.mlp.bogus.weight": torch.ones(4)})
        with self.assertRaises(ce.CkptError) as e:
            self.update(bad)
        message = e.exception.message
        self.assertIn(f"SGLang update to version {bad} failed", message)
        self.assertIn("daemon:", message)
        self.assertIn("(sglang)", message)  # the daemon names the worker
        self.assertIn("server http://", message)
        self.assertIn("HTTP 400", message)
        self.assertIn("unknown weight 'model.layers.0.mlp.bogus.weight'", message)
        self.assertFalse(e.exception.result["server"]["success"])
        self.assertIn("unknown weight", e.exception.result["server"]["message"])
        self.assertEqual(self.weight_version(), label, "a failed update sets no weight version")
        # The server is still there and takes the next update.
        self.assertEqual(self.server.get("/ping")[0], 200)
        version, state = self.push(32)
        report = self.update(version)
        self.assertTrue(report["server"]["success"], report)
        self.assert_rank_holds(self.server.state()["ranks"][0], state)

    def test_route_failures_come_back_as_success_false(self):
        label = self.weight_version()
        # A version the daemon does not hold: refused at once.
        status, body = self.server.post("/update_weights_from_ipc", {
            "zmq_handles": {ces.IPC_KEY: self.daemon.socket, ces.IPC_KEY_VERSION: "987654"},
            "flush_cache": True, "weight_version": "987654"})
        self.assertEqual(status, 400, body)
        self.assertFalse(body["success"])
        self.assertIn("version 987654", body["message"])
        self.assertIn("NOT_FOUND", body["message"])
        # No update from the daemon within the request's timeout.
        version, _ = self.push(33)
        status, body = self.server.post("/update_weights_from_ipc", {
            "zmq_handles": {ces.IPC_KEY: "", ces.IPC_KEY_VERSION: str(version),
                            ces.IPC_KEY_TIMEOUT: "0.3"}, "weight_version": str(version)})
        self.assertEqual(status, 400, body)
        self.assertFalse(body["success"])
        self.assertIn("no update from the daemon within 0.3 s", body["message"])
        # Versions outside uint64 (2^64 + v wrapped to v) and negative or NaN timeouts (no wait
        # at all) are refused before anything is received.
        for handles in ({ces.IPC_KEY_VERSION: str(2 ** 64 + version)},
                        {ces.IPC_KEY_VERSION: "-1"},
                        {ces.IPC_KEY_VERSION: str(version), ces.IPC_KEY_TIMEOUT: "-5"},
                        {ces.IPC_KEY_VERSION: str(version), ces.IPC_KEY_TIMEOUT: "nan"}):
            with self.subTest(handles=handles):
                status, body = self.server.post("/update_weights_from_ipc", {
                    "zmq_handles": {ces.IPC_KEY: "", **handles}})
                self.assertEqual(status, 400, body)
                self.assertIn("INVALID_ARGUMENT", body["message"])
        self.assertEqual(self.weight_version(), label)
        self.assertEqual(self.server.get("/ping")[0], 200)

    def test_an_unknown_key_goes_to_sglangs_own_method(self):
        before = self.server.state()["ranks"][0]
        status, body = self.server.post("/update_weights_from_ipc", {
            "zmq_handles": {"GPU-0a1b": "ipc:///tmp/nowhere"}, "flush_cache": False})
        self.assertEqual(status, 400, body)
        self.assertFalse(body["success"])
        self.assertIn("not found in zmq_handles", body["message"])
        rank = self.server.state()["ranks"][0]
        self.assertEqual(self.events_since(before, rank), [
            ["scheduler.update_weights_from_ipc", False, None],
            ["model_runner.update_weights_from_ipc", ["GPU-0a1b"]],
        ])

    def test_pause_and_continue_around_the_update(self):
        with self.assertRaisesRegex(ce.CkptError, "flush_cache=True cannot go with pause"):
            self.update(0, pause=True, flush_cache=True)
        version, state = self.push(34)
        before = self.server.state()
        report = self.update(version, pause=True)
        self.assertEqual(report["paused"], "in_place")
        after = self.server.state()
        self.assertEqual(after["events"][len(before["events"]):], [
            ["pause_generation", "in_place"],
            ["update_weights_from_ipc", False, str(version)],
            ["continue_generation"],
        ])
        self.assertNotIn(["flush_cache"], self.events_since(before["ranks"][0],
                                                            after["ranks"][0]))
        self.assert_rank_holds(after["ranks"][0], state)

        # A failed update resumes generation too.
        bad, _ = self.push(35, {"model.bogus.weight": torch.ones(2)})
        with self.assertRaisesRegex(ce.CkptError, "unknown weight 'model.bogus.weight'"):
            self.update(bad, pause=True)
        last = self.server.state()
        self.assertEqual(last["events"][len(after["events"]):], [
            ["pause_generation", "in_place"],
            ["update_weights_from_ipc", False, str(bad)],
            ["continue_generation"],
        ])
        self.assertEqual(self.server.post("/generate", {"text": "hi"})[0], 200,
                         "generation goes on")

    def test_a_missing_version_fails_before_the_server_is_called(self):
        before = self.server.state()["events"]
        with self.assertRaises(ce.CkptError) as e:
            self.update(987654)
        self.assertEqual(e.exception.code, 5)  # NOT_FOUND
        self.assertEqual(self.server.state()["events"], before)

    def test_an_unreachable_server_is_named_with_the_daemons_failure(self):
        self.assertEqual(self.attached(), 1)  # a worker that will not receive: failed after 5 s
        version, state = self.push(36)
        with self.assertRaises(ce.CkptError) as e:
            ces.update_server("http://127.0.0.1:9", version, socket=self.daemon.socket,
                              timeout=DEADLINE_S)
        message = e.exception.message
        self.assertIn("server http://127.0.0.1:9: /update_weights_from_ipc: no answer", message)
        self.assertIn("daemon: DEADLINE_EXCEEDED", message)
        self.assertIn("(sglang)", message)
        self.assertIsNone(e.exception.result["server"]["status"])
        # The daemon closed that worker's stream: the next update attaches it again.
        self.assertEqual(self.attached(), 0)
        report = self.update(version)
        self.assertTrue(report["workers"][0]["ok"], report)
        self.assert_rank_holds(self.server.state()["ranks"][0], state)


class FakeSglang:
    """SGLang's module names in this process, for the duration of a test: a TP worker class
    (update_weights_from_ipc on TpModelWorker, the older layout) and optionally a HookRegistry."""

    def __init__(self, test, registry=False):
        self.modules = {}

        class TpModelWorker:
            calls = []

            def __init__(self, model):
                self.model_runner = types.SimpleNamespace(model=model)

            def update_weights_from_ipc(self, recv_req):
                TpModelWorker.calls.append(recv_req)
                return False, "Device UUID GPU-x not found in zmq_handles"

        class ModelRunner:
            def load_model(self):
                return "loaded"

        self.TpModelWorker, self.ModelRunner = TpModelWorker, ModelRunner
        self.registered = []
        layout = {"sglang": {}, "sglang.srt": {}, "sglang.srt.managers": {},
                  "sglang.srt.managers.tp_worker": {"TpModelWorker": TpModelWorker},
                  "sglang.srt.model_executor": {},
                  "sglang.srt.model_executor.model_runner": {"ModelRunner": ModelRunner}}
        if registry:
            outer = self

            class HookType:
                AROUND = types.SimpleNamespace(name="AROUND")
                AFTER = types.SimpleNamespace(name="AFTER")

            class HookRegistry:
                _patched = {"sglang.srt.model_executor.model_runner.ModelRunner.load_model"}

                @classmethod
                def register(cls, target, hook, hook_type):
                    outer.registered.append((target, hook, hook_type.name))

            layout["sglang.srt.plugins"] = {}
            layout["sglang.srt.plugins.hook_registry"] = {"HookRegistry": HookRegistry,
                                                          "HookType": HookType}
        for name, attrs in layout.items():
            module = types.ModuleType(name)
            module.__path__ = []
            module.__dict__.update(attrs)
            self.modules[name] = module
        test.assertFalse(any(name in sys.modules for name in self.modules), "SGLang is here")
        sys.modules.update(self.modules)
        test.addCleanup(self.remove)

    def remove(self):
        for name in self.modules:
            sys.modules.pop(name, None)


class InProcessTest(unittest.TestCase):
    """The hooks and helpers without a server: fake SGLang modules in this process."""

    def test_install_without_the_registry_wraps_the_defining_class_once(self):
        fake = FakeSglang(self)
        targets = sglang_plugin.install()
        self.assertEqual(targets, [
            "sglang.srt.managers.tp_worker.TpModelWorker.update_weights_from_ipc", LOAD_TARGET])
        wrapped = fake.TpModelWorker.update_weights_from_ipc
        self.assertEqual(sglang_plugin.install(), targets)
        self.assertIs(fake.TpModelWorker.update_weights_from_ipc, wrapped, "idempotent")
        self.assertEqual(fake.ModelRunner().load_model(), "loaded", "AFTER keeps the result")

        worker = fake.TpModelWorker(se.StandinLlama())
        other = types.SimpleNamespace(zmq_handles={"GPU-x": "ipc://a"}, flush_cache=True)
        self.assertEqual(worker.update_weights_from_ipc(other),
                         (False, "Device UUID GPU-x not found in zmq_handles"))
        self.assertEqual(fake.TpModelWorker.calls, [other])

        # Our key with no daemon: (False, message), never an exception.
        self.addCleanup(ces.detach)
        missing = os.path.join(short_tempdir(), "none.sock")
        ours = types.SimpleNamespace(zmq_handles={ces.IPC_KEY: missing}, flush_cache=True)
        with self.assertLogs("ckpt_engine", "ERROR") as logs:
            ok, message = worker.update_weights_from_ipc(ours)
        self.assertIn("UNAVAILABLE", logs.output[0])
        self.assertFalse(ok)
        self.assertIn(f"ckpt-engine: SGLang worker pid {os.getpid()}", message)
        self.assertEqual(fake.TpModelWorker.calls, [other], "not passed on")

    def test_register_uses_the_registry_and_patches_what_it_applied_already(self):
        fake = FakeSglang(self, registry=True)
        targets = sglang_plugin.register()
        ipc = "sglang.srt.managers.tp_worker.TpModelWorker.update_weights_from_ipc"
        self.assertEqual(targets, [ipc, LOAD_TARGET])
        self.assertEqual([(t, k) for t, _, k in fake.registered], [(ipc, "AROUND")])
        self.assertIs(fake.registered[0][1], sglang_plugin.around_update_weights_from_ipc)
        # load_model was in HookRegistry._patched: wrapped directly instead.
        self.assertTrue(getattr(fake.ModelRunner.load_model, "__ckpt_engine_hook__", False))

    def test_attach_at_start_can_be_turned_off(self):
        fake = FakeSglang(self)
        os.environ[sglang_plugin.ATTACH_AT_START_ENV] = "0"
        self.addCleanup(os.environ.pop, sglang_plugin.ATTACH_AT_START_ENV)
        self.assertEqual(sglang_plugin.install(),
                         ["sglang.srt.managers.tp_worker.TpModelWorker.update_weights_from_ipc"])
        self.assertFalse(hasattr(fake.ModelRunner.load_model, "__ckpt_engine_hook__"))

    def test_ipc_request(self):
        self.assertEqual(ces.ipc_request(7, socket="/run/d.sock", timeout=30), {
            "zmq_handles": {"ckpt-engine": "/run/d.sock", "ckpt-engine/version": "7",
                            "ckpt-engine/timeout": "30"},
            "flush_cache": True, "weight_version": "7"})
        self.assertEqual(ces.ipc_request(7, force=True, flush_cache=False, weight_version="s7"), {
            "zmq_handles": {"ckpt-engine": "", "ckpt-engine/version": "7",
                            "ckpt-engine/force": "1", "ckpt-engine/timeout": "600"},
            "flush_cache": False, "weight_version": "s7"})
        json.dumps(ces.ipc_request(1))  # plain JSON

    def test_bad_arguments_fail_before_anything_is_sent(self):
        for kwargs, text in [({"pause": "sometimes"}, "pause must be"),
                             ({"pause": True, "flush_cache": True}, "cannot go with pause")]:
            with self.assertRaisesRegex(ce.CkptError, text) as e:
                ces.update_server("http://127.0.0.1:9", 1, socket="/nonexistent", **kwargs)
            self.assertEqual(e.exception.code, 3)

    def test_the_entry_point_is_found_by_importlib_metadata(self):
        folder = short_tempdir()
        self.addCleanup(shutil.rmtree, folder, True)
        sglang_plugin.write_entry_point(folder)
        code = ("import importlib.metadata as m; "
                "print([(e.name, e.value) for e in m.entry_points(group='sglang.srt.plugins')])")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=DEADLINE_S, env=dict(os.environ, PYTHONPATH=folder))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(),
                         "[('ckpt_engine', 'ckpt_engine.sglang_plugin:register')]")
        # python3 -m ckpt_engine.sglang_plugin FOLDER does the same.
        r = subprocess.run([sys.executable, "-m", "ckpt_engine.sglang_plugin", folder],
                           capture_output=True, text=True, timeout=DEADLINE_S)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.strip().endswith(".dist-info"), r.stdout)

    def test_the_plugin_imports_without_sglang_and_torch(self):
        code = ("import sys, ckpt_engine.sglang_plugin; "
                "assert 'sglang' not in sys.modules and 'torch' not in sys.modules")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=DEADLINE_S)
        self.assertEqual(r.returncode, 0, r.stderr)


class SessionEngine(FakeSglangEngine):
    """sglang.Engine with weight-update sessions: update_weights_from_tensor asserts that one is
    open (SGLang >= PR #28710)."""

    def __init__(self, model):
        super().__init__(model, [ces.LOAD_FORMAT])
        self.session = False
        self.calls = []

    def begin_weight_update(self):
        assert not self.session
        self.session = True
        self.calls.append("begin")

    def end_weight_update(self):
        assert self.session
        self.session = False
        self.calls.append("end")
        return True, "Success"

    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True):
        assert self.session, "no weight-update session is open"
        self.calls.append("update_weights_from_tensor")
        return super().update_weights_from_tensor(named_tensors, load_format, flush_cache)


class CustomLoaderSessionTest(ServerTestCase):
    """The custom-loader path (older SGLang's way) inside begin/end sessions; no server."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(extra_args=["--bucket-bytes", "64KiB", "--ack-timeout", "5s"])
        cls.client = ce.Client(socket=cls.daemon.socket)
        cls.server = types.SimpleNamespace(stop=lambda: None)

    def test_update_engine_opens_and_ends_the_session(self):
        version, state = self.push(40)
        model = se.StandinLlama()
        engine = SessionEngine(model)
        self.addCleanup(ces.detach)
        report = ces.update_engine(engine, version=version, socket=self.daemon.socket,
                                   timeout=DEADLINE_S)
        self.assertEqual(engine.calls, ["begin", "update_weights_from_tensor",
                                        "update_weights_from_tensor", "end"])
        self.assertEqual(report["session_result"], (True, "Success"))
        self.assertTrue(report["workers"][0]["ok"], report)
        want = se.expected_parameters(model.config, state)
        for name, p in model.named_parameters():
            self.assertTrue(torch.equal(p, want[name]), name)

        # A failed update still ends the session.
        bad, _ = self.push(41, {"model.bogus.weight": torch.ones(2)})
        engine.calls.clear()
        with self.assertLogs("ckpt_engine", "ERROR"), self.assertRaises(ce.CkptError):
            ces.update_engine(engine, version=bad, socket=self.daemon.socket, timeout=DEADLINE_S)
        self.assertEqual(engine.calls[0], "begin")
        self.assertEqual(engine.calls[-1], "end")
        self.assertFalse(engine.session)


if __name__ == "__main__":
    unittest.main()
