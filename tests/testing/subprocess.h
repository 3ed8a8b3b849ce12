// Test helpers for starting real binaries: child processes with captured output and deadlines,
// short temporary directories (Unix socket paths must stay under 108 bytes), runfiles lookup, and a
// fake systemd notify socket.
#ifndef CKPT_TESTS_TESTING_SUBPROCESS_H_
#define CKPT_TESTS_TESTING_SUBPROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/scoped_fd.h"

namespace ckpt::testing {

using Clock = std::chrono::steady_clock;

// Absolute path of a file in the test's runfiles, e.g. Runfile("daemon/ckpt-engined"). Outside
// Bazel (the GPU bundle), $CKPT_BIN_DIR/<file name> when CKPT_BIN_DIR is set.
std::string Runfile(const std::string& workspace_relative);

// A fresh directory, short enough for socket paths, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct SpawnOptions {
  // Added to (or replacing in) the child's environment.
  std::vector<std::pair<std::string, std::string>> env;
  // Removed from the child's environment.
  std::vector<std::string> unset_env;
  // When set and this process is root, the child runs as this uid/gid (e.g. 65534, nobody).
  std::optional<uid_t> run_as_uid;
};

struct ExitInfo {
  bool exited = false;     // false: killed by a signal
  int code = -1;           // exit code when exited
  int signal = 0;          // signal when killed
  bool timed_out = false;  // the deadline passed first (the child was killed)
};

// A child process whose stdout and stderr go to files. The destructor kills (SIGKILL) and reaps it
// if it is still running.
class Subprocess {
 public:
  Subprocess(std::vector<std::string> argv, const SpawnOptions& options = {});
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  // Waits for the exit until `timeout`; on timeout kills the child and says so.
  ExitInfo Wait(std::chrono::milliseconds timeout);
  // Sends `sig`.
  void Signal(int sig);
  bool running() const { return pid_ > 0 && !exit_.has_value(); }

  std::string Stdout() const;
  std::string Stderr() const;

 private:
  pid_t pid_ = -1;
  std::optional<ExitInfo> exit_;
  std::string out_path_, err_path_;
};

struct RunResult {
  ExitInfo exit;
  std::string out, err;
};

// Runs to completion (deadline `timeout`) and returns exit status and output.
RunResult Run(std::vector<std::string> argv, const SpawnOptions& options = {},
              std::chrono::milliseconds timeout = std::chrono::seconds(20));

// Lines of `text`, without empty trailing line.
std::vector<std::string> Lines(const std::string& text);

// A datagram socket that plays systemd's NOTIFY_SOCKET.
class FakeNotifySocket {
 public:
  explicit FakeNotifySocket(const std::string& path);
  const std::string& path() const { return path_; }
  // The next datagram, or nullopt if none comes within `timeout`.
  std::optional<std::string> Receive(std::chrono::milliseconds timeout);
  // Receives until a datagram contains `needle`; returns it, or nullopt after `timeout`.
  std::optional<std::string> WaitFor(const std::string& needle, std::chrono::milliseconds timeout);

 private:
  std::string path_;
  ScopedFd fd_;
};

// A real ckpt-engined on a socket in its own temporary directory: started as
//   ckpt-engined --listen-unix <dir>/d.sock ARGS...
// with NOTIFY_SOCKET pointing at a FakeNotifySocket, and waited for (READY=1) until `timeout`.
// Callers check ready() (false: the daemon did not report ready in time; see proc->Stderr()).
struct DaemonProcess {
  explicit DaemonProcess(std::vector<std::string> args, const SpawnOptions& options = {},
                         std::chrono::milliseconds timeout = std::chrono::seconds(20));

  bool ready() const { return ready_message.has_value(); }
  // Runs ckptctl --socket <socket> ARGS... to completion.
  RunResult Ctl(std::vector<std::string> args, const SpawnOptions& options = {}) const;

  // Declared first: removed last, after the process is gone.
  TempDir dir;
  FakeNotifySocket notify;
  std::string socket;
  std::unique_ptr<Subprocess> proc;
  // The READY=1 datagram (with its STATUS= line).
  std::optional<std::string> ready_message;
};

// `n` distinct TCP ports free right now on 127.0.0.1: the kernel picks them, all held until every
// one is chosen, then released (a daemon binds its own a moment later). Throws std::runtime_error.
std::vector<int> FreeLoopbackPorts(int n);

// Copies an executable into `dir` (mode 0755) and returns the copy's path: lets a child running as
// another user execute it (runfiles sit under /root, which other users cannot enter).
std::string CopyExecutable(const std::string& source, const std::string& dir);

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_SUBPROCESS_H_
