"""ckpt_engine.Client's TCP credentials (tls_ca, tls_cert, tls_key, token_file) against the real
ckpt-engined: bearer tokens and their roles, TLS with a server certificate, mTLS with roles from
the client certificate's SANs, the environment fallbacks, and the combinations refused locally.

Run by run_python_test.sh under /usr/bin/python3. Each class starts its own daemon (host backend)
listening on a Unix socket in a fresh temporary directory and on 127.0.0.1 port 0; the TCP port
it chose is read from `ckptctl status --json` over the Unix socket. Certificates are made with the
openssl command line.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from client_test import Daemon, short_tempdir, xxh3  # noqa: E402

import ckpt_engine as ce  # noqa: E402

OPENSSL = "/usr/bin/openssl"
ENV_VARS = ("CKPT_TLS_CA", "CKPT_TLS_CERT", "CKPT_TLS_KEY", "CKPT_TOKEN_FILE", "CKPT_SOCKET")
TIMEOUT = 10.0  # seconds: each call's deadline

# Status codes.
INVALID_ARGUMENT, FAILED_PRECONDITION, PERMISSION_DENIED = 3, 9, 7
UNAVAILABLE, UNAUTHENTICATED = 14, 16

TOKENS = {
    "trainer": "trainer-token-0123456789",
    "operator": "operator-token-0123456789",
    "reader": "reader-token-0123456789",
}


def setUpModule():
    # Only what a test sets on purpose may come from the environment.
    for var in ENV_VARS:
        os.environ.pop(var, None)


def write(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


class Files:
    """A temporary directory with a tokens file for the daemon and one token file per role."""

    def __init__(self):
        self.dir = short_tempdir()
        self.tokens = write(self.path("tokens"), "# token roles\n" + "".join(
            f"{secret} {role if role != 'reader' else 'read'}\n"
            for role, secret in TOKENS.items()))
        self.token = {role: write(self.path(role + ".token"), secret + "\n")
                      for role, secret in TOKENS.items()}
        self.token["unknown"] = write(self.path("unknown.token"), "not-a-listed-token-000\n")

    def path(self, name):
        return os.path.join(self.dir, name)

    def openssl(self, *args):
        r = subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)}: {r.stderr}")

    def ca(self, name):
        self.openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                     "/CN=" + name, "-keyout", self.path(name + ".key"),
                     "-out", self.path(name + ".pem"))

    def leaf(self, name, ca, san):
        """A certificate `name`.pem (key `name`.key) signed by `ca` with subjectAltName `san`."""
        self.openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name,
                     "-keyout", self.path(name + ".key"), "-out", self.path(name + ".csr"))
        write(self.path(name + ".ext"), "subjectAltName=" + san + "\n")
        self.openssl("x509", "-req", "-in", self.path(name + ".csr"), "-CA",
                     self.path(ca + ".pem"), "-CAkey", self.path(ca + ".key"),
                     "-CAcreateserial", "-days", "2", "-extfile", self.path(name + ".ext"),
                     "-out", self.path(name + ".pem"))

    def pki(self):
        """ca and other-ca; a server certificate for 127.0.0.1; a trainer client certificate
        (URI SAN spiffe://cluster/trainer) from ca and a stranger's from other-ca."""
        self.ca("ca")
        self.ca("other-ca")
        self.leaf("server", "ca", "IP:127.0.0.1,DNS:localhost")
        self.leaf("trainer", "ca", "DNS:trainer-1,URI:spiffe://cluster/trainer")
        self.leaf("stranger", "other-ca", "DNS:trainer-1")

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class TcpDaemonTest(unittest.TestCase):
    """Starts a daemon with TCP on 127.0.0.1:0 plus daemon_args(files)."""

    PKI = False

    @classmethod
    def daemon_args(cls, files):
        raise NotImplementedError

    @classmethod
    def setUpClass(cls):
        cls.files = Files()
        try:
            if cls.PKI:
                cls.files.pki()
            cls.daemon = Daemon(budget="16MiB", extra_args=[
                "--listen-tcp", "127.0.0.1:0", *cls.daemon_args(cls.files)])
        except BaseException:
            cls.files.remove()
            raise
        cls.status = cls.unix_status()
        cls.address = cls.status["listen_addresses"][1]
        assert cls.address.startswith("127.0.0.1:"), cls.status

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        cls.files.remove()

    @classmethod
    def unix_status(cls):
        r = cls.daemon.ctl("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def tearDown(self):
        for var in ENV_VARS:
            os.environ.pop(var, None)

    def client(self, **kwargs):
        kwargs.setdefault("timeout", TIMEOUT)
        return ce.Client(address=self.address, **kwargs)

    def assert_code(self, code, call, *args, **kwargs):
        """Runs call(*args, **kwargs), which must raise CkptError with `code`; returns it."""
        with self.assertRaises(ce.CkptError) as e:
            call(*args, **kwargs)
        self.assertEqual(e.exception.code, code, str(e.exception))
        return e.exception

    def push_and_check(self, client, label):
        """Pushes a small version through `client`, then checks it over TCP and (independently,
        through ckptctl on the Unix socket) that every byte arrived."""
        a = np.arange(4096, dtype=np.float32) * 0.5
        version = client.push_state_dict({"w": a, "b": np.ones(3, np.int64)}, label=label,
                                         timeout=30.0)
        info = client.get_version(version)
        self.assertEqual(info["state"], "committed")
        self.assertEqual(info["label"], label)
        self.assertEqual({t["name"]: t["xxh3"] for t in info["tensors"]},
                         {"w": xxh3(a.tobytes()), "b": xxh3(np.ones(3, np.int64).tobytes())})
        self.assertIn(version, [v["version"] for v in client.list_versions()])
        r = self.daemon.ctl("show", str(version), "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), info)
        return version

    def live_versions(self):
        r = self.daemon.ctl("versions", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return {v["version"] for v in json.loads(r.stdout)["versions"] if v["state"] != "retired"}


class TokenTest(TcpDaemonTest):
    @classmethod
    def daemon_args(cls, files):
        return ["--auth-tokens-file", files.tokens]

    def test_the_listener_asks_for_tokens(self):
        self.assertEqual(self.status["listeners"][1]["auth"], "token")

    def test_trainer_token_pushes_and_lists(self):
        with self.client(token_file=self.files.token["trainer"]) as c:
            self.push_and_check(c, "token-push")

    def test_token_file_may_be_a_path_object(self):
        with self.client(token_file=pathlib.Path(self.files.token["reader"])) as c:
            c.list_versions()

    def test_no_token_is_unauthenticated(self):
        before = self.live_versions()
        with self.client() as c:  # opening needs nothing from the daemon
            e = self.assert_code(UNAUTHENTICATED, c.list_versions)
            self.assertEqual(e.code_name, "UNAUTHENTICATED")
            self.assertIn("needs credentials on TCP", e.message)
            self.assert_code(UNAUTHENTICATED, c.push_state_dict, {"w": np.ones(4, np.float32)})
        self.assertEqual(self.live_versions(), before)

    def test_an_unknown_token_is_unauthenticated(self):
        with self.client(token_file=self.files.token["unknown"]) as c:
            self.assert_code(UNAUTHENTICATED, c.list_versions)
            self.assert_code(UNAUTHENTICATED, c.get_version, 1)

    def test_a_role_without_the_call_is_permission_denied(self):
        before = self.live_versions()
        with self.client(token_file=self.files.token["reader"]) as reader:
            reader.list_versions()  # every authenticated caller may read
            e = self.assert_code(PERMISSION_DENIED, reader.push_state_dict,
                                 {"w": np.ones(4, np.float32)})
            self.assertEqual(e.code_name, "PERMISSION_DENIED")
            self.assertIn("needs the trainer role", e.message)
        self.assertEqual(self.live_versions(), before)
        with self.client(token_file=self.files.token["trainer"]) as trainer, \
                self.client(token_file=self.files.token["operator"]) as operator:
            version = self.push_and_check(trainer, "to-drop")
            e = self.assert_code(PERMISSION_DENIED, trainer.drop_version, version)
            self.assertIn("needs the operator role", e.message)
            operator.drop_version(version)
        self.assertNotIn(version, self.live_versions())

    def test_the_environment_fills_in_and_explicit_arguments_win(self):
        os.environ["CKPT_TOKEN_FILE"] = self.files.token["reader"]
        with self.client() as c:
            c.list_versions()
            self.assert_code(PERMISSION_DENIED, c.push_state_dict, {"w": np.ones(4, np.float32)})
        with self.client(token_file=self.files.token["trainer"]) as c:
            self.push_and_check(c, "explicit-wins")
        os.environ["CKPT_TOKEN_FILE"] = self.files.path("missing.token")
        e = self.assert_code(FAILED_PRECONDITION, self.client)
        self.assertIn("missing.token", e.message)

    def test_bad_combinations_are_refused_before_any_call(self):
        ca = self.files.path("whatever.pem")
        e = self.assert_code(INVALID_ARGUMENT, self.client, tls_ca=ca, tls_cert=ca)
        self.assertIn("tls_cert is set but not tls_key", e.message)
        e = self.assert_code(INVALID_ARGUMENT, self.client, tls_key=ca)
        self.assertIn("tls_key is set but not tls_cert", e.message)
        e = self.assert_code(INVALID_ARGUMENT, ce.Client, socket=self.daemon.socket,
                             address=self.address)
        self.assertIn("not both", e.message)
        e = self.assert_code(INVALID_ARGUMENT, self.client, timeout=-1)
        self.assertIn("timeout", e.message)
        missing = self.files.path("no-such.token")
        e = self.assert_code(FAILED_PRECONDITION, self.client, token_file=missing)
        self.assertIn(missing, e.message)
        empty = write(self.files.path("empty.token"), "\n")
        e = self.assert_code(FAILED_PRECONDITION, self.client, token_file=empty)
        self.assertIn("is empty", e.message)
        e = self.assert_code(FAILED_PRECONDITION, self.client, tls_ca=self.files.path("no.pem"))
        self.assertIn("no.pem", e.message)

    def test_credentials_are_ignored_on_the_unix_socket(self):
        # As for ckptctl and the C++ client: on the Unix socket the caller's uid decides.
        with ce.Client(socket=self.daemon.socket, token_file=self.files.path("no-such.token"),
                       tls_cert=self.files.path("no.pem"), timeout=TIMEOUT) as c:
            c.list_versions()


class TlsTest(TcpDaemonTest):
    """TLS with a server certificate, callers authenticated by token."""

    PKI = True

    @classmethod
    def daemon_args(cls, files):
        return ["--tls-cert", files.path("server.pem"), "--tls-key", files.path("server.key"),
                "--auth-tokens-file", files.tokens]

    def test_the_listener_is_tls_with_tokens(self):
        self.assertEqual(self.status["listeners"][1]["auth"], "TLS + token")

    def test_tls_ca_and_token_push_and_list(self):
        with self.client(tls_ca=self.files.path("ca.pem"),
                         token_file=self.files.token["trainer"]) as c:
            self.push_and_check(c, "tls-push")

    def test_tls_without_a_token_reaches_the_daemon_and_is_unauthenticated(self):
        with self.client(tls_ca=self.files.path("ca.pem")) as c:
            self.assert_code(UNAUTHENTICATED, c.list_versions)

    def test_plaintext_or_an_untrusted_server_gets_no_connection(self):
        with self.client(token_file=self.files.token["trainer"]) as c:
            self.assert_code(UNAVAILABLE, c.list_versions)
        with self.client(tls_ca=self.files.path("other-ca.pem"),
                         token_file=self.files.token["trainer"]) as c:
            self.assert_code(UNAVAILABLE, c.list_versions)

    def test_tls_ca_from_the_environment(self):
        os.environ["CKPT_TLS_CA"] = self.files.path("ca.pem")
        with self.client(token_file=self.files.token["reader"]) as c:
            c.list_versions()


class MtlsTest(TcpDaemonTest):
    """mTLS: client certificates signed by ca; the trainer role by URI SAN."""

    PKI = True

    @classmethod
    def daemon_args(cls, files):
        return ["--tls-cert", files.path("server.pem"), "--tls-key", files.path("server.key"),
                "--tls-client-ca", files.path("ca.pem"),
                "--san-roles", "spiffe://cluster/trainer=trainer"]

    def mtls(self, who, **extra):
        return self.client(tls_ca=self.files.path("ca.pem"),
                           tls_cert=self.files.path(who + ".pem"),
                           tls_key=self.files.path(who + ".key"), **extra)

    def test_the_listener_is_mtls(self):
        self.assertEqual(self.status["listeners"][1]["auth"], "mTLS")

    def test_a_certificate_with_the_trainer_san_pushes_but_may_not_drop(self):
        with self.mtls("trainer") as c:
            version = self.push_and_check(c, "mtls-push")
            e = self.assert_code(PERMISSION_DENIED, c.drop_version, version)
            self.assertIn("needs the operator role", e.message)
            self.assertIn("certificate 'spiffe://cluster/trainer'", e.message)

    def test_no_certificate_or_one_of_another_ca_gets_no_connection(self):
        with self.client(tls_ca=self.files.path("ca.pem")) as c:
            self.assert_code(UNAVAILABLE, c.list_versions)
        with self.mtls("stranger") as c:
            self.assert_code(UNAVAILABLE, c.list_versions)

    def test_the_key_may_come_from_the_environment(self):
        os.environ["CKPT_TLS_KEY"] = self.files.path("trainer.key")
        with self.client(tls_ca=self.files.path("ca.pem"),
                         tls_cert=self.files.path("trainer.pem")) as c:
            c.list_versions()


if __name__ == "__main__":
    unittest.main()
