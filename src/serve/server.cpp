// serve::Server on cpp-httplib: routing, authentication, body parsing, the
// public error bodies and the metrics of each request.
#include "parry/serve/server.hpp"

#include <httplib.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "parry/core/log.hpp"
#include "parry/data/predict_image.hpp"

namespace parry::serve {

namespace {

using json = nlohmann::json;

namespace reason_code {
constexpr const char* kUnauthorized = "unauthorized";
constexpr const char* kUnsupportedMedia = "unsupported_media_type";
constexpr const char* kPayloadTooLarge = "payload_too_large";
constexpr const char* kNotFound = "not_found";
constexpr const char* kBadRequest = "bad_request";
// conceal::kReasonUnavailable: a gate's shared state is unavailable (the
// serve family does not depend on conceal, so the code is repeated here).
constexpr const char* kUnavailable = "unavailable";
}  // namespace reason_code

constexpr const char* kPredictPath = "/v1/predict";

// The one public text of each error status: fixed, so that no error body can
// carry anything but its status and reason code.
const char* public_text(int status) {
  switch (status) {
    case 400:
      return "invalid input";
    case 401:
      return "missing or invalid API key";
    case 403:
      return "request refused";
    case 404:
      return "not found";
    case 413:
      return "request body too large";
    case 415:
      return "unsupported content type";
    case 429:
      return "too many requests";
    case 500:
      return "internal error";
    case 503:
      return "service temporarily unavailable";
    default:
      return "bad request";
  }
}

void send_error(httplib::Response& res, int status, const std::string& reason) {
  res.status = status;
  res.set_content(json{{"error", public_text(status)}, {"reason", reason}}.dump(), "application/json");
}

// {"pixels": [C·H·W numbers]} -> C×H×W float tensor. Range and finiteness are
// left to the Guard's validation.
torch::Tensor parse_json_pixels(const std::string& body, const InputSpec& spec) {
  const int64_t expected = spec.channels() * spec.height() * spec.width();
  const json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object() || doc.size() != 1 || !doc.contains("pixels") ||
      !doc["pixels"].is_array() || static_cast<int64_t>(doc["pixels"].size()) != expected) {
    throw InputError("the JSON body must be {\"pixels\": [" + std::to_string(expected) + " numbers]}");
  }
  std::vector<float> values;
  values.reserve(static_cast<size_t>(expected));
  for (const json& v : doc["pixels"]) {
    if (!v.is_number()) throw InputError("pixels must be numbers");
    values.push_back(v.get<float>());
  }
  return torch::from_blob(values.data(), {spec.channels(), spec.height(), spec.width()}, torch::kFloat32).clone();
}

struct Outcome {
  std::string verdict;
  std::string reason;
};

// One connection in memory (detail::process_connection): reads the client's
// bytes, then end of stream as if the client had closed; collects the answer.
class MemoryStream final : public httplib::Stream {
 public:
  explicit MemoryStream(const std::string& in) : in_(in) {}
  bool is_readable() const override { return true; }
  bool is_writable() const override { return true; }
  ssize_t read(char* ptr, size_t size) override {
    const size_t n = std::min(size, in_.size() - position_);
    std::memcpy(ptr, in_.data() + position_, n);
    position_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    out_.append(ptr, size);
    return static_cast<ssize_t>(size);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    ip = "127.0.0.1";
    port = 40000;
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    ip = "127.0.0.1";
    port = 8080;
  }
  socket_t socket() const override { return INVALID_SOCKET; }
  bool at_end() const { return position_ >= in_.size(); }
  std::string& output() { return out_; }

 private:
  const std::string& in_;
  size_t position_ = 0;
  std::string out_;
};

// httplib::Server with its per-connection request loop reachable without a
// socket: process_request is protected, and this loop is the one of
// httplib's process_server_socket (up to the keep-alive count of requests,
// the last one answered with "Connection: close").
class HttpServer : public httplib::Server {
 public:
  std::string process_connection(const std::string& bytes) {
    MemoryStream stream(bytes);
    for (size_t count = keep_alive_max_count_; count > 0 && !stream.at_end(); --count) {
      bool connection_closed = false;
      if (!process_request(stream, count == 1, connection_closed, nullptr) || connection_closed) break;
    }
    return std::move(stream.output());
  }
};

}  // namespace

struct Server::Impl {
  std::shared_ptr<const Guard> guard;
  std::vector<std::string> classes;
  ServerOptions options;
  std::shared_ptr<const ApiKeys> keys;
  Metrics metrics;
  HttpServer http;
  std::thread listener;
  int port = 0;

  std::mutex mutex;  // guards the fields below
  std::condition_variable finished_cv;
  bool started = false;
  bool finished = false;
  bool stopping = false;
  bool listen_ok = false;
  std::mutex join_mutex;

  // The client id of a request, or nothing if it may not be served.
  std::optional<std::string> client_of(const httplib::Request& req) const {
    const std::string key = req.get_header_value("X-Api-Key");
    if (keys) return keys->authenticate(key);
    if (!is_valid_key(key)) return std::nullopt;
    return "key-" + sha256_hex(key).substr(0, 16);  // never the key itself: it is a credential
  }

  Outcome answer(const httplib::Request& req, httplib::Response& res) const {
    const auto client = client_of(req);
    if (!client) {
      send_error(res, 401, reason_code::kUnauthorized);
      return {"error", reason_code::kUnauthorized};
    }
    const std::string type = req.get_header_value("Content-Type");
    std::string media = type.substr(0, type.find(';'));
    while (!media.empty() && media.back() == ' ') media.pop_back();
    for (char& c : media) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    try {
      Response answer;
      const RequestContext context{*client};
      if (media == "image/png" || media == "image/jpeg") {
        // Throttles run before decoding; the query monitor sees the decoded pixels.
        answer = data::predict_image(*guard, req.body, context, options.image_limits());
      } else if (media == "application/json") {
        answer = guard->predict(parse_json_pixels(req.body, guard->input_spec()), context);
      } else {
        send_error(res, 415, reason_code::kUnsupportedMedia);
        return {"error", reason_code::kUnsupportedMedia};
      }
      if (answer.verdict == Verdict::Rejected) {
        if (answer.reason == reason::kRateLimited) {
          const double retry = answer.retry_after_seconds;
          res.set_header("Retry-After",
                         std::to_string(std::isfinite(retry) ? std::max<int64_t>(1, std::ceil(retry)) : 3600));
          send_error(res, 429, answer.reason);
        } else if (answer.reason == reason_code::kUnavailable) {
          res.set_header("Retry-After", "1");
          send_error(res, 503, answer.reason);
        } else {
          send_error(res, 403, answer.reason);
        }
        return {to_string(answer.verdict), answer.reason};
      }
      const int64_t label = answer.labels.at(0);
      json body{{"verdict", to_string(answer.verdict)}};
      if (label == kNoLabel) {
        // A smoothed classifier withheld its answer: no label, no class.
        body["label"] = nullptr;
        body["class"] = nullptr;
      } else if (label < 0 || label >= static_cast<int64_t>(classes.size())) {
        throw InternalError("label " + std::to_string(label) + " has no class name (" + std::to_string(classes.size()) +
                            " names)");
      } else {
        body["label"] = label;
        body["class"] = classes[static_cast<size_t>(label)];
      }
      if (!answer.certified_radius.empty()) body["certified_radius"] = answer.certified_radius.at(0);
      res.status = 200;
      res.set_content(body.dump(), "application/json");
      return {to_string(answer.verdict), answer.reason};
    } catch (const InputError& e) {
      log(LogLevel::Info, "predict: client " + *client + ": " + e.detail());
      send_error(res, 400, reason::kInvalidInput);
      return {"error", reason::kInvalidInput};
    } catch (const Error& e) {
      log(LogLevel::Error, "predict: client " + *client + ": " + e.detail());
    } catch (const std::exception& e) {
      log(LogLevel::Error, "predict: client " + *client + ": " + e.what());
    }
    send_error(res, 500, reason::kInternal);
    return {"error", reason::kInternal};
  }

  void predict(const httplib::Request& req, httplib::Response& res) {
    const auto begin = std::chrono::steady_clock::now();
    const Outcome outcome = answer(req, res);
    metrics.record(outcome.verdict, outcome.reason);
    metrics.observe_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count());
  }

  void routes() {
    if (options.state_failures()) metrics.set_state_failures(options.state_failures());
    http.new_task_queue = [workers = options.workers()] {
      return new httplib::ThreadPool(static_cast<size_t>(workers));
    };
    http.set_payload_max_length(static_cast<size_t>(options.max_body_bytes()));
    http.set_read_timeout(options.timeout_seconds());
    http.set_write_timeout(options.timeout_seconds());
    // An idle keep-alive connection holds a worker: keep it short, so stop() is prompt too.
    http.set_keep_alive_timeout(2);
    // SO_REUSEADDR only: httplib's default also sets SO_REUSEPORT, which would
    // let a second process bind the same port and take a share of the
    // connections (and their API keys) without an error.
    // TCP_NODELAY: without it, Nagle's algorithm and the client's delayed ACK
    // add about 40 ms to every keep-alive answer (measured: p50 43 ms instead
    // of under 1 ms; docs/benchmarks.md).
    http.set_tcp_nodelay(true);
    http.set_socket_options([](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const char*>(&yes), sizeof yes);
      setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, reinterpret_cast<const char*>(&yes), sizeof yes);
    });
    http.Post(kPredictPath, [this](const httplib::Request& req, httplib::Response& res) { predict(req, res); });
    http.Get("/healthz", [](const httplib::Request&, httplib::Response& res) { res.set_content("ok", "text/plain"); });
    if (options.metrics()) {
      http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(metrics.text(), Metrics::content_type());
      });
    }
    // Statuses made by the HTTP layer itself (404, 413, 400 on a malformed
    // request) get the same generic bodies; a refused prediction counts.
    http.set_error_handler(
        httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
          if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // ours, already generic
          const int status = res.status;
          const std::string code = status == 413   ? reason_code::kPayloadTooLarge
                                   : status == 404 ? reason_code::kNotFound
                                                   : reason_code::kBadRequest;
          send_error(res, status, code);
          if (req.path == kPredictPath) metrics.record("error", code);
          return httplib::Server::HandlerResponse::Handled;
        }));
    http.set_exception_handler([this](const httplib::Request& req, httplib::Response& res, std::exception_ptr error) {
      try {
        if (error) std::rethrow_exception(error);
      } catch (const std::exception& e) {
        log(LogLevel::Error, std::string("serve: unhandled: ") + e.what());
      } catch (...) {
        log(LogLevel::Error, "serve: unhandled non-standard exception");
      }
      send_error(res, 500, reason::kInternal);
      if (req.path == kPredictPath) metrics.record("error", reason::kInternal);
    });
  }
};

Server::Server(std::shared_ptr<const Guard> guard, std::vector<std::string> classes, ServerOptions options,
               std::shared_ptr<const ApiKeys> keys)
    : impl_(std::make_unique<Impl>()) {
  if (!guard) throw OptionError("serve::Server: the guard must not be null");
  if (classes.empty()) throw OptionError("serve::Server: at least one class name is required");
  impl_->guard = std::move(guard);
  impl_->classes = std::move(classes);
  impl_->options = std::move(options);
  impl_->keys = std::move(keys);
  impl_->routes();
}

Server::~Server() {
  stop();
}

int Server::start() {
  Impl& s = *impl_;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.started) throw StateError("serve::Server: start() was already called");
    s.started = true;
  }
  const std::string& host = s.options.host();
  int port = s.options.port();
  if (port == 0) {
    port = s.http.bind_to_any_port(host);
  } else if (!s.http.bind_to_port(host, port)) {
    port = -1;
  }
  if (port < 0) {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.finished = true;
    throw IoError("cannot bind the server address",
                  "cannot bind " + host + ":" + std::to_string(s.options.port()) + " (in use, or no such address)");
  }
  s.port = port;
  s.listener = std::thread([&s] {
    const bool ok = s.http.listen_after_bind();  // returns once workers have finished
    std::lock_guard<std::mutex> lock(s.mutex);
    s.finished = true;
    s.listen_ok = ok;
    s.finished_cv.notify_all();
  });
  // httplib's stop() only acts on a running server: return once it runs.
  while (!s.http.is_running()) {
    {
      std::lock_guard<std::mutex> lock(s.mutex);
      if (s.finished) break;
    }
    std::this_thread::yield();
  }
  return port;
}

void Server::stop() {
  Impl& s = *impl_;
  {
    std::unique_lock<std::mutex> lock(s.mutex);
    if (!s.started) return;
    s.stopping = true;
  }
  s.http.stop();
  {
    std::unique_lock<std::mutex> lock(s.mutex);
    s.finished_cv.wait(lock, [&] { return s.finished; });
  }
  std::lock_guard<std::mutex> join(s.join_mutex);
  if (s.listener.joinable()) s.listener.join();
}

bool Server::wait() {
  Impl& s = *impl_;
  std::unique_lock<std::mutex> lock(s.mutex);
  if (!s.started) return false;
  s.finished_cv.wait(lock, [&] { return s.finished; });
  return s.stopping && s.listen_ok;
}

int Server::port() const {
  return impl_->port;
}

const Metrics& Server::metrics() const {
  return impl_->metrics;
}

const ServerOptions& Server::options() const {
  return impl_->options;
}

std::string detail::process_connection(Server& server, const std::string& bytes) {
  return server.impl_->http.process_connection(bytes);
}

}  // namespace parry::serve
