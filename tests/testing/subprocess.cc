#include "tests/testing/subprocess.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace ckpt::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

[[noreturn]] void Die(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

}  // namespace

std::string Runfile(const std::string& workspace_relative) {
  const char* bin_dir = std::getenv("CKPT_BIN_DIR");
  if (bin_dir != nullptr && *bin_dir != '\0') {
    return std::string(bin_dir) + "/" +
           std::filesystem::path(workspace_relative).filename().string();
  }
  const char* workspace = std::getenv("TEST_WORKSPACE");
  std::string ws = workspace ? workspace : "ckpt_engine";
  for (const char* var : {"TEST_SRCDIR", "RUNFILES_DIR"}) {
    const char* dir = std::getenv(var);
    if (dir != nullptr && *dir != '\0')
      return std::string(dir) + "/" + ws + "/" + workspace_relative;
  }
  // A binary started by hand from bazel-bin: its runfiles tree sits beside it.
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  std::string beside = self.string() + ".runfiles/" + ws + "/" + workspace_relative;
  if (!ec && std::filesystem::exists(beside)) return beside;
  throw std::runtime_error(
      "cannot find " + workspace_relative +
      ": no TEST_SRCDIR or RUNFILES_DIR, no runfiles beside the binary, no CKPT_BIN_DIR");
}

TempDir::TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/ck-XXXXXX";
  // Leave room for socket names below it; fall back to /tmp when TEST_TMPDIR is deep.
  if (tmpl.size() > 70) tmpl = "/tmp/ckpt-test-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) Die("mkdtemp " + tmpl);
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Subprocess::Subprocess(std::vector<std::string> argv, const SpawnOptions& options) {
  static int counter = 0;
  const char* base = std::getenv("TEST_TMPDIR");
  std::string prefix = std::string(base ? base : "/tmp") + "/proc-" + std::to_string(::getpid()) +
                       "-" + std::to_string(counter++);
  out_path_ = prefix + ".out";
  err_path_ = prefix + ".err";
  int out = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0 || err < 0) Die("open output files under " + prefix);

  std::vector<char*> args;
  for (std::string& a : argv) args.push_back(a.data());
  args.push_back(nullptr);

  pid_ = ::fork();
  if (pid_ < 0) Die("fork");
  if (pid_ == 0) {
    // Child: only async-signal-safe work until exec, apart from setenv (this test process is
    // single-threaded when it spawns).
    ::dup2(out, STDOUT_FILENO);
    ::dup2(err, STDERR_FILENO);
    int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, STDIN_FILENO);
    for (const auto& [k, v] : options.env) ::setenv(k.c_str(), v.c_str(), 1);
    for (const auto& k : options.unset_env) ::unsetenv(k.c_str());
    if (options.run_as_uid.has_value() && ::geteuid() == 0) {
      gid_t gid = *options.run_as_uid;
      if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 ||
          ::setuid(*options.run_as_uid) != 0) {
        ::_exit(126);
      }
    }
    ::execv(args[0], args.data());
    const char msg[] = "exec failed\n";
    (void)!::write(STDERR_FILENO, msg, sizeof(msg) - 1);
    ::_exit(127);
  }
  ::close(out);
  ::close(err);
}

Subprocess::~Subprocess() {
  if (running()) {
    ::kill(pid_, SIGKILL);
    int status;
    ::waitpid(pid_, &status, 0);
  }
}

ExitInfo Subprocess::Wait(std::chrono::milliseconds timeout) {
  if (exit_.has_value()) return *exit_;
  auto deadline = Clock::now() + timeout;
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) break;
    if (r < 0) Die("waitpid");
    if (Clock::now() >= deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      ExitInfo info;
      info.timed_out = true;
      info.signal = SIGKILL;
      exit_ = info;
      return info;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ExitInfo info;
  if (WIFEXITED(status)) {
    info.exited = true;
    info.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    info.signal = WTERMSIG(status);
  }
  exit_ = info;
  return info;
}

void Subprocess::Signal(int sig) {
  if (running()) ::kill(pid_, sig);
}

std::string Subprocess::Stdout() const { return ReadFile(out_path_); }
std::string Subprocess::Stderr() const { return ReadFile(err_path_); }

RunResult Run(std::vector<std::string> argv, const SpawnOptions& options,
              std::chrono::milliseconds timeout) {
  Subprocess p(std::move(argv), options);
  RunResult r;
  r.exit = p.Wait(timeout);
  r.out = p.Stdout();
  r.err = p.Stderr();
  return r;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

FakeNotifySocket::FakeNotifySocket(const std::string& path) : path_(path) {
  fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd_.valid()) Die("socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path))
    throw std::runtime_error("notify path too long: " + path);
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) Die("bind " + path);
}

std::optional<std::string> FakeNotifySocket::Receive(std::chrono::milliseconds timeout) {
  pollfd p{fd_.get(), POLLIN, 0};
  int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
  if (r <= 0) return std::nullopt;
  char buf[4096];
  ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
  if (n < 0) return std::nullopt;
  return std::string(buf, n);
}

std::optional<std::string> FakeNotifySocket::WaitFor(const std::string& needle,
                                                     std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return std::nullopt;
    auto msg = Receive(left);
    if (!msg.has_value()) return std::nullopt;
    if (msg->find(needle) != std::string::npos) return msg;
  }
}

DaemonProcess::DaemonProcess(std::vector<std::string> args, const SpawnOptions& options,
                             std::chrono::milliseconds timeout)
    : notify(dir / "notify"), socket(dir / "d.sock") {
  args.insert(args.begin(), {Runfile("daemon/ckpt-engined"), "--listen-unix", socket});
  SpawnOptions with_notify = options;
  with_notify.env.push_back({"NOTIFY_SOCKET", notify.path()});
  proc = std::make_unique<Subprocess>(std::move(args), with_notify);
  ready_message = notify.WaitFor("READY=1", timeout);
}

RunResult DaemonProcess::Ctl(std::vector<std::string> args, const SpawnOptions& options) const {
  args.insert(args.begin(), {Runfile("client/ckptctl/ckptctl"), "--socket", socket});
  return Run(std::move(args), options);
}

std::vector<int> FreeLoopbackPorts(int n) {
  std::vector<ScopedFd> held;
  std::vector<int> ports;
  for (int i = 0; i < n; ++i) {
    ScopedFd fd(::socket(AF_INET, SOCK_STREAM, 0));
    if (!fd.valid()) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    sockaddr_in a = {};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
        ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      throw std::runtime_error(std::string("bind 127.0.0.1:0: ") + std::strerror(errno));
    }
    ports.push_back(ntohs(a.sin_port));
    held.push_back(std::move(fd));
  }
  return ports;  // `held` closes them
}

std::string CopyExecutable(const std::string& source, const std::string& dir) {
  std::string dest = dir + "/" + std::filesystem::path(source).filename().string();
  std::filesystem::copy_file(source, dest, std::filesystem::copy_options::overwrite_existing);
  std::filesystem::permissions(dest, std::filesystem::perms(0755));
  return dest;
}

}  // namespace ckpt::testing
