#!/usr/bin/python3
"""Checks the Kubernetes example (deploy/kubernetes/*.yaml) against what the daemon needs.

Every YAML document must parse, the objects must fit together (the DaemonSet mounts the socket's
hostPath directory and gets the Secret's token where the TOML says, the headless Service's port
is cluster_listen's, cluster_members names the Service, ...), and the real daemon must accept the
ConfigMap's TOML with --check-config once the node-specific paths point into a temporary
directory. Run by `bazel test //deploy:kubernetes_test` with Debian's /usr/bin/python3 (python3-yaml
from tools/setup.sh); argv[1] is the daemon binary.
"""
import glob
import os
import re
import secrets
import subprocess
import sys
import tempfile
import tomllib
import unittest

import yaml

DAEMON = None  # set from argv in __main__
HERE = "deploy/kubernetes"
NODE = "gpu-node-1"  # what the downward API would give as spec.nodeName


def load_documents():
    docs = []
    for path in sorted(glob.glob(os.path.join(HERE, "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    docs.append((os.path.basename(path), doc))
    return docs


def size_bytes(text):
    """'64GiB', '72Gi', '80GB', '1024' -> bytes (the daemon's and Kubernetes' binary suffixes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    number, unit, binary = m.groups()
    power = "KMGT".find(unit.upper()) + 1 if unit else 0
    # The daemon reads "G" and "GiB" as binary; Kubernetes reads "G" as decimal, "Gi" as binary.
    base = 1024 if binary or not unit else 1000
    return int(float(number) * base**power)


def host_port(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


class Example(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.docs = load_documents()
        cls.by_kind = {}
        for name, d in cls.docs:
            cls.by_kind.setdefault(d["kind"], []).append(d)

    def one(self, kind):
        found = self.by_kind.get(kind, [])
        self.assertEqual(len(found), 1, f"expected one {kind}, found {len(found)}")
        return found[0]

    def toml(self):
        cm = self.one("ConfigMap")
        self.assertIn("ckpt-engined.toml", cm["data"])
        return tomllib.loads(cm["data"]["ckpt-engined.toml"])

    def daemonset(self):
        return self.one("DaemonSet")

    def pod(self):
        return self.daemonset()["spec"]["template"]["spec"]

    def daemon_container(self):
        containers = self.pod()["containers"]
        self.assertEqual(len(containers), 1)
        return containers[0]

    def volume(self, spec, name):
        for v in spec.get("volumes", []):
            if v["name"] == name:
                return v
        self.fail(f"no volume {name!r}")

    def mount_of(self, spec, container, path):
        """The volume mounted at `path` in `container` (no subPath)."""
        for m in container.get("volumeMounts", []):
            if m["mountPath"] == path and "subPath" not in m:
                return self.volume(spec, m["name"]), m
        self.fail(f"container {container['name']!r} mounts nothing at {path}")

    def test_every_document_is_a_named_object(self):
        self.assertGreaterEqual(len(self.docs), 6)
        for name, d in self.docs:
            with self.subTest(file=name, kind=d.get("kind")):
                self.assertIn("apiVersion", d)
                self.assertIn("kind", d)
                self.assertTrue(d["metadata"]["name"])
                if d["kind"] != "Namespace":
                    namespace = self.one("Namespace")["metadata"]["name"]
                    self.assertEqual(d["metadata"]["namespace"], namespace)
        for kind in ("Namespace", "Secret", "ConfigMap", "Service", "DaemonSet", "Deployment"):
            self.one(kind)

    def test_namespace_admits_host_namespaces(self):
        labels = self.one("Namespace")["metadata"]["labels"]
        self.assertEqual(labels["pod-security.kubernetes.io/enforce"], "privileged")

    def test_config_has_the_cluster_keys(self):
        c = self.toml()
        for key in ("listen_unix", "cluster_listen", "cluster_members", "cluster_token_file",
                    "metrics_listen", "state_dir", "host_memory_budget"):
            self.assertIn(key, c)
        self.assertEqual(c["backend"], "cuda")
        self.assertNotEqual(c["host_memory_budget"], "auto")  # half of the node, not the limit

    def test_headless_service_is_the_membership(self):
        c = self.toml()
        svc = self.one("Service")
        spec = svc["spec"]
        self.assertEqual(spec["clusterIP"], "None")
        self.assertIs(spec["publishNotReadyAddresses"], True)
        labels = self.daemonset()["spec"]["template"]["metadata"]["labels"]
        for k, v in spec["selector"].items():
            self.assertEqual(labels.get(k), v, "the Service selects the daemon pods")
        _, listen_port = host_port(c["cluster_listen"])
        self.assertEqual(len(spec["ports"]), 1)
        port = spec["ports"][0]
        self.assertEqual(port["port"], listen_port)
        target = {p["name"]: p["containerPort"] for p in self.daemon_container()["ports"]}
        self.assertEqual(target[port["targetPort"]], listen_port)
        fqdn = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
        self.assertEqual(c["cluster_members"], f"dns:{fqdn}:{listen_port}")

    def test_daemon_pod_shares_the_node(self):
        pod = self.pod()
        self.assertIs(pod["hostPID"], True)
        self.assertIs(pod["hostIPC"], True)
        self.assertEqual(pod["runtimeClassName"], "nvidia")
        self.assertIn("nvidia.com/gpu", str(pod["tolerations"]))
        c = self.daemon_container()
        env = {e["name"]: e for e in c["env"]}
        self.assertEqual(env["NVIDIA_VISIBLE_DEVICES"]["value"], "all")
        for container in pod["containers"] + pod.get("initContainers", []):
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                self.assertNotIn("nvidia.com/gpu", resources.get(part, {}),
                                 "the device plugin would give the daemon GPUs of its own")

    def test_node_name_comes_from_the_node(self):
        c = self.daemon_container()
        env = {e["name"]: e for e in c["env"]}
        self.assertEqual(env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName")
        self.assertIn("--node-name=$(NODE_NAME)", c["args"])

    def test_config_file_is_the_configmap(self):
        pod, c = self.pod(), self.daemon_container()
        config = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--config=")]
        self.assertEqual(len(config), 1)
        volume, _ = self.mount_of(pod, c, os.path.dirname(config[0]))
        self.assertEqual(volume["configMap"]["name"], self.one("ConfigMap")["metadata"]["name"])
        self.assertIn(os.path.basename(config[0]), self.one("ConfigMap")["data"])

    def test_socket_directory_is_shared_with_engines(self):
        socket_dir = os.path.dirname(self.toml()["listen_unix"])
        pod, c = self.pod(), self.daemon_container()
        volume, mount = self.mount_of(pod, c, socket_dir)
        self.assertEqual(volume["hostPath"]["path"], socket_dir)
        self.assertFalse(mount.get("readOnly", False))
        engine = self.one("Deployment")["spec"]["template"]["spec"]
        self.assertIs(engine["hostPID"], True)
        self.assertIs(engine["hostIPC"], True)
        worker = engine["containers"][0]
        env = {e["name"]: e.get("value") for e in worker.get("env", [])}
        engine_socket = env.get("CKPT_SOCKET", "/run/ckpt-engine/ckpt-engined.sock")
        engine_volume, _ = self.mount_of(engine, worker, os.path.dirname(engine_socket))
        self.assertEqual(engine_volume["hostPath"]["path"], socket_dir)
        self.assertEqual(os.path.basename(engine_socket),
                         os.path.basename(self.toml()["listen_unix"]))
        self.assertIn("nvidia.com/gpu", worker["resources"]["limits"])

    def test_state_directory_is_on_the_node(self):
        state_dir = self.toml()["state_dir"]
        volume, _ = self.mount_of(self.pod(), self.daemon_container(), state_dir)
        self.assertEqual(volume["hostPath"]["path"], state_dir)

    def test_token_lands_where_the_config_says(self):
        """The Secret's key is copied by the init container to cluster_token_file, a regular file
        of mode 0400 owned by the daemon's uid, on a volume that both containers mount."""
        token_file = self.toml()["cluster_token_file"]
        pod, c = self.pod(), self.daemon_container()
        self.assertNotIn("fsGroup", pod.get("securityContext", {}),
                         "fsGroup adds group read, which the daemon refuses")
        secret = self.one("Secret")
        secret_volumes = [v for v in pod["volumes"]
                          if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]]
        self.assertEqual(len(secret_volumes), 1)
        sv = secret_volumes[0]["secret"]
        self.assertEqual(sv.get("defaultMode", 0o644) & 0o077, 0)
        [item] = sv["items"]
        self.assertIn(item["key"], secret["stringData"])
        copy_volume, copy_mount = self.mount_of(pod, c, os.path.dirname(token_file))
        self.assertIn("emptyDir", copy_volume)
        self.assertTrue(copy_mount.get("readOnly"))
        [init] = [i for i in pod["initContainers"] if i["name"] == "prepare"]
        mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        self.assertEqual(mounts[copy_volume["name"]], os.path.dirname(token_file))
        source = os.path.join(mounts[secret_volumes[0]["name"]], item["path"])
        script = " ".join(init["command"] + init["args"])
        self.assertIn(f"cp {source} {token_file}", script)
        self.assertIn(f"chmod 0400 {token_file}", script)
        uid = pod["securityContext"]["runAsUser"]
        gid = pod["securityContext"]["runAsGroup"]
        self.assertIn(f"chown {uid}:{gid} {token_file}", script)
        self.assertNotEqual(uid, 0)
        for d in (os.path.dirname(self.toml()["listen_unix"]), self.toml()["state_dir"]):
            self.assertIn(f"chown {uid}:{gid} {d}", script)
            self.assertEqual(mounts[self.mount_of(pod, c, d)[0]["name"]], d)

    def test_probes_and_memory(self):
        cfg, c = self.toml(), self.daemon_container()
        host, port = host_port(cfg["metrics_listen"])
        self.assertNotIn(host, ("", "127.0.0.1", "localhost", "::1"),
                         "the kubelet probes the pod's address")
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
        for probe in ("livenessProbe", "readinessProbe"):
            self.assertEqual(ports[c[probe]["httpGet"]["port"]], port)
        limits, requests = c["resources"]["limits"], c["resources"]["requests"]
        self.assertEqual(size_bytes(limits["memory"]), size_bytes(requests["memory"]))
        self.assertGreater(size_bytes(limits["memory"]), size_bytes(cfg["host_memory_budget"]))

    # --- the real daemon on the ConfigMap's TOML ---------------------------------------------

    def check_config(self, token_text, token_mode=0o600, token_is_link=False):
        """Runs ckpt-engined --check-config with the container's args on the ConfigMap's TOML,
        the token file, socket and state paths moved into a temporary directory."""
        text = self.one("ConfigMap")["data"]["ckpt-engined.toml"]
        cfg = self.toml()
        with tempfile.TemporaryDirectory(prefix="k8s") as tmp:
            token = os.path.join(tmp, "cluster-token")
            target = os.path.join(tmp, "..data-token") if token_is_link else token
            with open(target, "w") as f:
                f.write(token_text + "\n")
            os.chmod(target, token_mode)
            if token_is_link:
                os.symlink(target, token)
            for key, value in (("cluster_token_file", token),
                               ("listen_unix", os.path.join(tmp, "d.sock")),
                               ("state_dir", tmp)):
                old = f'{key} = "{cfg[key]}"'
                self.assertIn(old, text)
                text = text.replace(old, f'{key} = "{value}"')
            config = os.path.join(tmp, "ckpt-engined.toml")
            with open(config, "w") as f:
                f.write(text)
            args = []
            for a in self.daemon_container()["args"]:
                a = a.replace("$(NODE_NAME)", NODE)
                args.append(f"--config={config}" if a.startswith("--config=") else a)
            return subprocess.run([DAEMON, "--check-config"] + args, capture_output=True,
                                  text=True, timeout=60)

    def test_daemon_accepts_the_config(self):
        r = self.check_config(secrets.token_hex(32))
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "config ok\n", ""))

    def test_daemon_refuses_the_placeholder_secret(self):
        r = self.check_config(self.one("Secret")["stringData"]["token"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("without spaces", r.stderr)

    def test_why_the_init_container_copies_the_token(self):
        # A Secret volume's key is a link; with fsGroup its file is group-readable.
        r = self.check_config(secrets.token_hex(32), token_is_link=True)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("symbolic link", r.stderr)
        r = self.check_config(secrets.token_hex(32), token_mode=0o440)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("chmod 600", r.stderr)


if __name__ == "__main__":
    DAEMON = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
