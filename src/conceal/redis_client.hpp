// A small Redis client over hiredis for the gates' shared state: a pool of
// blocking connections with a timeout, Lua scripts run by EVALSHA (loaded on
// first use and again after NOSCRIPT), reconnection with back-off. Internal:
// not installed; only src/conceal includes it.
#pragma once

#include <hiredis/hiredis.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "parry/conceal/state.hpp"

namespace parry::conceal::detail {

/// A reply owned by its holder.
struct ReplyDeleter {
  void operator()(redisReply* reply) const { freeReplyObject(reply); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

/// A Lua script and its SHA1 as Redis reports it (SCRIPT LOAD).
class RedisScript {
 public:
  explicit RedisScript(std::string source) : source_(std::move(source)) {}
  const std::string& source() const { return source_; }
  /// The SHA1, empty until loaded once.
  std::string sha() const;
  void set_sha(std::string sha) const;

 private:
  std::string source_;
  mutable std::mutex mutex_;
  mutable std::string sha_;
};

/// Thread-safe: each call takes an idle connection from the pool (or opens
/// one), so concurrent requests run concurrently; at most 64 idle
/// connections are kept.
class RedisClient {
 public:
  explicit RedisClient(RedisOptions options);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  /// Runs `script` with no KEYS and `args` as ARGV (binary-safe).
  /// @throws UnavailableError if Redis cannot be reached within the timeout,
  ///   the connection fails, or the script answers with an error.
  Reply eval(const RedisScript& script, const std::vector<std::string>& args);
  /// Runs one command (binary-safe arguments). @throws UnavailableError as eval().
  Reply command(const std::vector<std::string>& args);

  const RedisOptions& options() const { return options_; }
  /// "redis://HOST:PORT/DB (prefix P, timeout T ms, fail_closed)".
  std::string describe() const;

 private:
  struct Connection;
  std::unique_ptr<Connection> acquire(bool& reused);
  void release(std::unique_ptr<Connection> connection);
  void connection_failed();
  // One command on a connection; nullptr on an I/O error (the connection is then unusable).
  Reply run(Connection& connection, const std::vector<std::string>& args);
  Reply with_retry(const std::vector<std::string>& args, const RedisScript* script);

  RedisOptions options_;
  std::mutex mutex_;  // guards the fields below
  std::vector<std::unique_ptr<Connection>> idle_;
  std::chrono::steady_clock::time_point retry_at_{};
  double backoff_ms_ = 0;
};

}  // namespace parry::conceal::detail
