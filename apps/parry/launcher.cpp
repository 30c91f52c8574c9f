// parry train --nproc N: one machine, N ranks, one rendezvous store hosted by
// the launcher (so the store outlives a rank and the survivors can name it).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "commands.hpp"

namespace parry::cli {

namespace {

// This process's command line, from /proc/self/cmdline.
std::vector<std::string> own_arguments() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  std::string current;
  for (const char c : all) {
    if (c == '\0') {
      args.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  if (args.empty()) throw InternalError("parry train --nproc: could not read /proc/self/cmdline");
  return args;
}

// The arguments without the options the launcher sets for each rank.
std::vector<std::string> without_rank_options(const std::vector<std::string>& args) {
  static const std::vector<std::string> replaced = {"--nproc", "--world-size", "--rank", "--master"};
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); ++i) {
    bool skip = false;
    for (const std::string& name : replaced) {
      if (args[i] == name) {
        skip = true;
        ++i;  // and its value
      } else if (args[i].rfind(name + "=", 0) == 0) {
        skip = true;
      }
      if (skip) break;
    }
    if (!skip) out.push_back(args[i]);
  }
  return out;
}

}  // namespace

int launch_local_ranks(const TrainOptions& opts) {
  const train::RendezvousStore store("127.0.0.1", 0, opts.dist_timeout);
  std::vector<std::string> base = without_rank_options(own_arguments());
  const bool threads_given = std::any_of(
      base.begin(), base.end(), [](const std::string& a) { return a == "--threads" || a.rfind("--threads=", 0) == 0; });
  if (!threads_given && !base.empty()) {
    // The ranks share the cores this process found idle: each takes its part,
    // rather than each finding them all idle at the same moment.
    const int64_t per_rank = std::max<int64_t>(1, at::get_num_threads() / opts.nproc);
    base.insert(base.begin() + 1, {"--threads", std::to_string(per_rank)});
  }
  std::fprintf(stderr, "starting %lld local ranks (rendezvous on 127.0.0.1:%lld)\n", static_cast<long long>(opts.nproc),
               static_cast<long long>(store.port()));
  std::fflush(stderr);
  std::vector<pid_t> children;
  for (int64_t rank = 0; rank < opts.nproc; ++rank) {
    std::vector<std::string> args = base;
    for (const std::string& a :
         {std::string("--world-size"), std::to_string(opts.nproc), std::string("--rank"), std::to_string(rank),
          std::string("--master"), "127.0.0.1:" + std::to_string(store.port()), std::string("--master-hosted")}) {
      args.push_back(a);
    }
    const pid_t pid = ::fork();
    if (pid < 0) throw InternalError("parry train --nproc: fork failed");
    if (pid == 0) {
      // Ranks share the cores: OpenMP workers must sleep, not spin, while
      // they wait (libgomp reads this when it loads, so set it before exec).
      ::setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::_Exit(127);
    }
    children.push_back(pid);
  }
  // Wait for every rank; once one has failed, give the others the timeout
  // (plus the time to name the failed rank) before stopping them.
  int first_failure = 0;
  std::vector<bool> running(children.size(), true);
  size_t left = children.size();
  auto deadline = std::chrono::steady_clock::time_point::max();
  while (left > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (size_t r = 0; r < children.size(); ++r) {
        if (children[r] != pid || !running[r]) continue;
        running[r] = false;
        --left;
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (code != 0) {
          std::fprintf(stderr, "parry: rank %zu %s %d\n", r,
                       WIFEXITED(status) ? "exited with status" : "killed by signal",
                       WIFEXITED(status) ? code : WTERMSIG(status));
          if (first_failure == 0) {
            first_failure = code;
            deadline = std::chrono::steady_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(opts.dist_timeout * 1000) + 15000);
          }
        }
      }
      continue;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      for (size_t r = 0; r < children.size(); ++r) {
        if (running[r]) {
          std::fprintf(stderr, "parry: stopping rank %zu, still running after rank failure\n", r);
          ::kill(children[r], SIGKILL);
        }
      }
      deadline = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return first_failure;
}

}  // namespace parry::cli
