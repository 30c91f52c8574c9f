// A redis-server of the test's own on a free loopback port, started as a
// child process without persistence and stopped (or killed, paused, restarted)
// by the test. Tests skip when redis-server is not installed.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "parry/conceal/state.hpp"

extern char** environ;

namespace parry::testing {

inline constexpr const char* kRedisServer = "/usr/bin/redis-server";

/// Skips the test unless redis-server is installed.
#define PARRY_REQUIRE_REDIS()                                                         \
  do {                                                                                \
    if (access(::parry::testing::kRedisServer, X_OK) != 0) {                          \
      GTEST_SKIP() << "redis-server is not installed (apt-get install redis-server)"; \
    }                                                                                 \
  } while (0)

class RedisServer {
 public:
  /// Picks a free loopback port (binding port 0) and starts the server there.
  RedisServer() {
    port_ = free_port();
    start();
  }
  ~RedisServer() { stop(); }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  /// Starts (or restarts) the server on the same port; waits until it accepts
  /// connections (at most 10 s).
  void start() {
    if (pid_ > 0) return;
    const std::string port = std::to_string(port_);
    const char* argv[] = {kRedisServer,   "--port", port.c_str(),  "--bind", "127.0.0.1",  "--save",  "",
                          "--appendonly", "no",     "--daemonize", "no",     "--loglevel", "warning", nullptr};
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    const int rc = posix_spawn(&pid_, kRedisServer, &actions, nullptr, const_cast<char* const*>(argv), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      pid_ = -1;
      ADD_FAILURE() << "cannot start redis-server";
      return;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!accepts() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling for readiness, not timing
    }
    if (!accepts()) ADD_FAILURE() << "redis-server did not start on port " << port_;
  }
  /// Stops the server with SIGKILL (a crash: nothing is flushed) and reaps it.
  void kill() { signal_and_reap(SIGKILL); }
  /// Stops the server with SIGTERM and reaps it.
  void stop() { signal_and_reap(SIGTERM); }
  /// SIGSTOP / SIGCONT: a server that stops answering without closing connections.
  void pause() { ::kill(pid_, SIGSTOP); }
  void resume() { ::kill(pid_, SIGCONT); }

  int port() const { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
  /// Options for this server with a test prefix.
  conceal::RedisOptions options(const std::string& prefix = "test") const {
    return conceal::RedisOptions::from_url(url()).prefix(prefix);
  }

  /// A free loopback TCP port.
  static int free_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;
    socklen_t length = sizeof address;
    int port = 0;
    if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
      port = ntohs(address.sin_port);
    }
    close(fd);
    return port;
  }

 private:
  bool accepts() const {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(static_cast<uint16_t>(port_));
    const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
    close(fd);
    return ok;
  }
  void signal_and_reap(int signal_number) {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, signal_number);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  pid_t pid_ = -1;
  int port_ = 0;
};

}  // namespace parry::testing
