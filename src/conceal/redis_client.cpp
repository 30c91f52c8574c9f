// conceal::detail::RedisClient: pooled hiredis connections, EVALSHA, back-off.
#include "conceal/redis_client.hpp"

#include <cerrno>
#include <cmath>
#include <sstream>

namespace parry::conceal::detail {

std::string RedisScript::sha() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sha_;
}

void RedisScript::set_sha(std::string sha) const {
  std::lock_guard<std::mutex> lock(mutex_);
  sha_ = std::move(sha);
}

struct RedisClient::Connection {
  redisContext* context = nullptr;
  ~Connection() {
    if (context) redisFree(context);
  }
};

namespace {

constexpr size_t kMaxIdle = 64;
constexpr double kMaxBackoffMs = 2000;

timeval to_timeval(double ms) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms / 1000);
  tv.tv_usec = static_cast<suseconds_t>(std::fmod(ms, 1000.0) * 1000);
  return tv;
}

std::string reply_text(const redisReply* reply) {
  if (!reply) return "no reply";
  if (reply->type == REDIS_REPLY_ERROR || reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS) {
    return std::string(reply->str, reply->len);
  }
  return "reply of type " + std::to_string(reply->type);
}

}  // namespace

RedisClient::RedisClient(RedisOptions options) : options_(std::move(options)) {}

RedisClient::~RedisClient() = default;

std::string RedisClient::describe() const {
  std::ostringstream out;
  out << options_.url() << " (prefix " << options_.prefix() << ", timeout " << options_.timeout_ms() << " ms, "
      << to_string(options_.failure()) << ")";
  return out.str();
}

void RedisClient::connection_failed() {
  std::lock_guard<std::mutex> lock(mutex_);
  idle_.clear();  // after a failure the others are likely dead too
  backoff_ms_ = backoff_ms_ == 0 ? options_.reconnect_ms() : std::min(kMaxBackoffMs, 2 * backoff_ms_);
  retry_at_ = std::chrono::steady_clock::now() + std::chrono::microseconds(static_cast<int64_t>(backoff_ms_ * 1000));
}

std::unique_ptr<RedisClient::Connection> RedisClient::acquire(bool& reused) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!idle_.empty()) {
      auto connection = std::move(idle_.back());
      idle_.pop_back();
      reused = true;
      return connection;
    }
    if (backoff_ms_ > 0 && std::chrono::steady_clock::now() < retry_at_) {
      throw UnavailableError("Redis " + options_.url() + ": not reconnecting yet (back-off of " +
                             std::to_string(static_cast<int64_t>(backoff_ms_)) + " ms after a failure)");
    }
  }
  reused = false;
  auto connection = std::make_unique<Connection>();
  const timeval tv = to_timeval(options_.timeout_ms());
  connection->context = redisConnectWithTimeout(options_.host().c_str(), options_.port(), tv);
  if (!connection->context || connection->context->err) {
    const std::string why = connection->context ? connection->context->errstr : "out of memory";
    connection_failed();
    throw UnavailableError("Redis " + options_.url() + ": cannot connect: " + why);
  }
  if (redisSetTimeout(connection->context, tv) != REDIS_OK) {
    connection_failed();
    throw UnavailableError("Redis " + options_.url() + ": cannot set the timeout");
  }
  redisEnableKeepAlive(connection->context);
  if (options_.database() != 0) {
    Reply reply = run(*connection, {"SELECT", std::to_string(options_.database())});
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
      const std::string why = reply ? reply_text(reply.get()) : connection->context->errstr;
      connection_failed();
      throw UnavailableError("Redis " + options_.url() + ": SELECT failed: " + why);
    }
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    backoff_ms_ = 0;
  }
  return connection;
}

void RedisClient::release(std::unique_ptr<Connection> connection) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (idle_.size() < kMaxIdle) idle_.push_back(std::move(connection));
}

Reply RedisClient::run(Connection& connection, const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  argv.reserve(args.size());
  lengths.reserve(args.size());
  for (const std::string& a : args) {
    argv.push_back(a.data());
    lengths.push_back(a.size());
  }
  void* reply = redisCommandArgv(connection.context, static_cast<int>(args.size()), argv.data(), lengths.data());
  return Reply(static_cast<redisReply*>(reply));
}

Reply RedisClient::with_retry(const std::vector<std::string>& args, const RedisScript* script) {
  for (int attempt = 0;; ++attempt) {
    bool reused = false;
    std::unique_ptr<Connection> connection = acquire(reused);
    Reply reply;
    std::vector<std::string> call;
    if (script) {
      std::string sha = script->sha();
      if (sha.empty()) {
        reply = run(*connection, {"SCRIPT", "LOAD", script->source()});
        if (reply && reply->type == REDIS_REPLY_STRING) {
          sha.assign(reply->str, reply->len);
          script->set_sha(sha);
        }
      }
      if (!sha.empty()) {
        call.reserve(args.size() + 3);
        call.push_back("EVALSHA");
        call.push_back(sha);
        call.push_back("0");
        call.insert(call.end(), args.begin(), args.end());
        reply = run(*connection, call);
        if (reply && reply->type == REDIS_REPLY_ERROR && reply_text(reply.get()).rfind("NOSCRIPT", 0) == 0) {
          // Redis restarted or flushed its script cache: load again, once.
          reply = run(*connection, {"SCRIPT", "LOAD", script->source()});
          if (reply && reply->type == REDIS_REPLY_STRING) {
            script->set_sha(std::string(reply->str, reply->len));
            call[1] = script->sha();
            reply = run(*connection, call);
          }
        }
      }
    } else {
      reply = run(*connection, args);
    }
    if (!reply) {
      // An I/O error: the connection is unusable. A connection that waited in
      // the pool may have been closed by a restarted server before the
      // command was sent; try once more on a fresh one, unless it timed out
      // (then the command may have run: never run it twice).
      const int error_number = errno;
      const std::string why = connection->context->errstr;
      const bool timed_out = connection->context->err == REDIS_ERR_IO &&
                             (error_number == EAGAIN || error_number == EWOULDBLOCK || error_number == ETIMEDOUT ||
                              why.find("temporarily unavailable") != std::string::npos);
      connection.reset();
      if (reused && !timed_out && attempt == 0) {
        std::lock_guard<std::mutex> lock(mutex_);
        idle_.clear();
        continue;
      }
      connection_failed();
      throw UnavailableError("Redis " + options_.url() + ": " + (timed_out ? "timed out: " : "connection failed: ") +
                             why);
    }
    release(std::move(connection));
    if (reply->type == REDIS_REPLY_ERROR) {
      throw UnavailableError("Redis " + options_.url() + ": error reply: " + reply_text(reply.get()));
    }
    return reply;
  }
}

Reply RedisClient::eval(const RedisScript& script, const std::vector<std::string>& args) {
  return with_retry(args, &script);
}

Reply RedisClient::command(const std::vector<std::string>& args) {
  return with_retry(args, nullptr);
}

}  // namespace parry::conceal::detail
