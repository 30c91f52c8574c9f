// defended_server: a Fashion-MNIST classifier served over HTTP behind Parry's
// target-concealment defenses.
//
//   defended_server --model reference_cnn.pt [--host 127.0.0.1] [--port 8080]
//                   [--threads 4] [--rate 5] [--burst 20]
//                   [--monitor-action flag|reject|silent] [--max-body 1048576]
//
// API (see docs/concealment.md, "Defended HTTP server"):
//   POST /v1/predict   header X-Api-Key: <key> (its digest is the client id
//                      for throttling and monitoring; any non-empty key of up
//                      to 128 printable characters is accepted in this example:
//                      a real service checks it against its accounts)
//                      body: a PNG or JPEG (Content-Type image/png or
//                      image/jpeg; resized to 28×28 grayscale), or JSON
//                      (Content-Type application/json)
//                      {"pixels": [784 numbers in [0, 1], row-major 28×28]}
//     200 {"label": 3, "class": "Dress", "verdict": "accepted"}
//         (verdict "flagged" when the query monitor flags the request and
//         --monitor-action is flag)
//     400 bad body, 401 no API key, 403 refused by the query monitor
//     (--monitor-action reject), 413 body too large, 415 other content
//     types, 429 throttled (with Retry-After in seconds), 500 internal error.
//     Every error body is {"error": "<generic text>", "reason": "<code>"}:
//     nothing about the model, the files or the libraries.
//   GET /healthz       200 "ok"
//
// Defenses, in request order: Throttle (per API key and global token
// buckets), QueryMonitor (Blacklight, global index over all keys, so an
// attacker with many keys is still seen), input validation, LabelOnly
// answers. Details of every failure go to stderr, never to the client.
//
// With --port 0 the server picks a free port. Once it accepts connections it
// prints "listening on HOST:PORT" on stdout. SIGTERM or SIGINT stops it
// gracefully (in-flight requests finish) with exit status 0.
#include <httplib.h>
#include <pthread.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <parry/parry.hpp>
#include <thread>

namespace {

using json = nlohmann::json;

const char* const kClasses[] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

struct Settings {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8080;
  int threads = 4;
  int torch_threads = 1;
  double rate = 5.0;
  double burst = 20.0;
  double global_rate = 200.0;
  std::string monitor_action = "flag";
  int64_t max_body = 1 << 20;
};

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& reason) {
  send_json(res, status, json{{"error", message}, {"reason", reason}});
}

// The client id: a non-empty, printable API key of at most 128 characters.
bool api_key(const httplib::Request& req, std::string& key) {
  key = req.get_header_value("X-Api-Key");
  if (key.empty() || key.size() > 128) return false;
  for (const char c : key) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

// The client id for throttling, monitoring and logs: a digest of the API key,
// so that keys (credentials) never appear in the operator's log.
std::string client_id(const std::string& key) {
  char out[24];
  std::snprintf(out, sizeof out, "key-%016zx", std::hash<std::string>{}(key));
  return out;
}

// {"pixels": [C·H·W numbers]} -> C×H×W tensor. Range and finiteness are left
// to the Guard's validation.
torch::Tensor parse_json_pixels(const std::string& body, const parry::InputSpec& spec) {
  const int64_t expected = spec.channels() * spec.height() * spec.width();
  const json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("pixels") || !doc["pixels"].is_array() ||
      static_cast<int64_t>(doc["pixels"].size()) != expected) {
    throw parry::InputError("the JSON body must be {\"pixels\": [" + std::to_string(expected) + " numbers]}");
  }
  std::vector<float> values;
  values.reserve(static_cast<size_t>(expected));
  for (const json& v : doc["pixels"]) {
    if (!v.is_number()) throw parry::InputError("pixels must be numbers");
    values.push_back(v.get<float>());
  }
  return torch::from_blob(values.data(), {spec.channels(), spec.height(), spec.width()}, torch::kFloat32).clone();
}

class DefendedService {
 public:
  DefendedService(const Settings& settings, parry::Guard guard) : guard_(std::move(guard)) {
    limits_.max_bytes(settings.max_body).max_pixels(4 << 20).max_side(2048);
  }

  void predict(const httplib::Request& req, httplib::Response& res) const {
    std::string key;
    if (!api_key(req, key)) return send_error(res, 401, "missing or invalid API key", "unauthorized");
    const std::string type = req.get_header_value("Content-Type");
    const std::string media = type.substr(0, type.find(';'));
    try {
      torch::Tensor image;
      if (media == "image/png" || media == "image/jpeg") {
        // Decoded before every gate (data::predict_image runs throttles first) so that the
        // query monitor sees the pixels.
        image = parry::data::decode_image_for(req.body, guard_.input_spec(), limits_);
      } else if (media == "application/json") {
        image = parse_json_pixels(req.body, guard_.input_spec());
      } else {
        return send_error(res, 415, "unsupported content type", "unsupported_media_type");
      }
      const parry::Response answer = guard_.predict(image, parry::RequestContext{client_id(key)});
      if (answer.verdict == parry::Verdict::Rejected) {
        if (answer.reason == parry::reason::kRateLimited) {
          const double retry = answer.retry_after_seconds;
          res.set_header("Retry-After",
                         std::to_string(std::isfinite(retry) ? std::max<int64_t>(1, std::ceil(retry)) : 3600));
          return send_error(res, 429, "too many requests", answer.reason);
        }
        return send_error(res, 403, "request refused", answer.reason);
      }
      const int64_t label = answer.labels.at(0);
      send_json(res, 200,
                json{{"label", label}, {"class", kClasses[label % 10]}, {"verdict", parry::to_string(answer.verdict)}});
    } catch (const parry::InputError& e) {
      parry::log(parry::LogLevel::Info, "predict: client " + client_id(key) + ": " + e.detail());
      send_error(res, 400, "invalid input", parry::reason::kInvalidInput);
    } catch (const std::exception& e) {
      parry::log(parry::LogLevel::Error, std::string("predict: ") + e.what());
      send_error(res, 500, "internal error", parry::reason::kInternal);
    }
  }

  const parry::Guard& guard() const { return guard_; }

 private:
  parry::Guard guard_;
  parry::data::ImageLimits limits_;
};

parry::Guard build_guard(const Settings& s) {
  const parry::InputSpec spec = parry::InputSpec(1, 28, 28).max_batch(1);
  parry::conceal::MonitorAction action = parry::conceal::MonitorAction::Flag;
  if (s.monitor_action == "reject") action = parry::conceal::MonitorAction::Reject;
  if (s.monitor_action == "silent") action = parry::conceal::MonitorAction::Silent;
  return parry::GuardBuilder(parry::Model(parry::models::load_reference_cnn(s.model)), spec)
      .add_gate(std::make_shared<parry::conceal::Throttle>(parry::conceal::ThrottleOptions()
                                                               .rate(s.rate)
                                                               .burst(s.burst)
                                                               .global_rate(s.global_rate)
                                                               .global_burst(2 * s.global_rate)))
      .add_gate(std::make_shared<parry::conceal::QueryMonitor>(
          parry::conceal::QueryMonitorOptions().match_spec(spec).action(action)))
      .set_output_policy(std::make_shared<parry::conceal::LabelOnly>())
      .build();
}

// Operator log on stderr, one line per message, with a UTC timestamp.
void install_log() {
  static std::mutex mutex;
  parry::set_log_sink([](parry::LogLevel level, const std::string& message) {
    const std::time_t now = std::time(nullptr);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    static const char* const names[] = {"debug", "info", "warning", "error"};
    std::lock_guard<std::mutex> lock(mutex);
    std::cerr << stamp << ' ' << names[static_cast<int>(level)] << ' ' << message << std::endl;
  });
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  CLI::App app{"Serves the Parry reference model over HTTP behind throttling, query monitoring and label-only answers"};
  app.add_option("--model", s.model, "reference model saved with parry::Model::save")->required();
  app.add_option("--host", s.host, "address to bind")->capture_default_str();
  app.add_option("--port", s.port, "TCP port; 0 picks a free one")->check(CLI::Range(0, 65535))->capture_default_str();
  app.add_option("--threads", s.threads, "HTTP worker threads")->check(CLI::Range(1, 256))->capture_default_str();
  app.add_option("--torch-threads", s.torch_threads, "LibTorch intra-op threads")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--rate", s.rate, "images per second per API key")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--burst", s.burst, "images at once per API key")->check(CLI::Range(1.0, 1e9))->capture_default_str();
  app.add_option("--global-rate", s.global_rate, "images per second over all keys")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--monitor-action", s.monitor_action, "what the query monitor does on a detection")
      ->check(CLI::IsMember({"flag", "reject", "silent"}))
      ->capture_default_str();
  app.add_option("--max-body", s.max_body, "largest request body in bytes (larger: 413)")
      ->check(CLI::Range(int64_t{1024}, int64_t{64} << 20))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  // SIGTERM/SIGINT are blocked in every thread and taken by sigwait() below,
  // so stopping the server never runs inside a signal handler.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  install_log();
  parry::configure_runtime(parry::RuntimeOptions().threads(s.torch_threads));

  std::unique_ptr<DefendedService> service;
  try {
    service = std::make_unique<DefendedService>(s, build_guard(s));
  } catch (const parry::Error& e) {
    std::cerr << "defended_server: cannot start: " << e.detail() << std::endl;
    return 1;
  }
  parry::log(parry::LogLevel::Warning, "serving:\n" + service->guard().describe());

  httplib::Server server;
  server.new_task_queue = [threads = s.threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  server.set_payload_max_length(static_cast<size_t>(s.max_body));
  server.set_read_timeout(5);
  server.set_write_timeout(5);
  server.Post("/v1/predict", [&](const httplib::Request& req, httplib::Response& res) { service->predict(req, res); });
  server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) { res.set_content("ok", "text/plain"); });
  // Statuses produced by the HTTP layer itself (404, 405, 413, 400 on a
  // malformed request) get the same generic JSON bodies.
  server.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    const int status = res.status;
    const char* message = status == 413 ? "request body too large" : status == 404 ? "not found" : "bad request";
    const char* reason = status == 413 ? "payload_too_large" : status == 404 ? "not_found" : "bad_request";
    send_error(res, status, message, reason);
    return httplib::Server::HandlerResponse::Handled;
  }));
  server.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr error) {
    try {
      if (error) std::rethrow_exception(error);
    } catch (const std::exception& e) {
      parry::log(parry::LogLevel::Error, std::string("unhandled: ") + e.what());
    } catch (...) {
      parry::log(parry::LogLevel::Error, "unhandled non-standard exception");
    }
    send_error(res, 500, "internal error", parry::reason::kInternal);
  });

  int port = s.port;
  if (port == 0) {
    port = server.bind_to_any_port(s.host);
    if (port < 0) {
      std::cerr << "defended_server: cannot bind " << s.host << std::endl;
      return 1;
    }
  } else if (!server.bind_to_port(s.host, port)) {
    std::cerr << "defended_server: cannot bind " << s.host << ":" << port << std::endl;
    return 1;
  }

  std::atomic<bool> stopping{false};
  std::thread stopper([&server, &stopping, stop_signals] {
    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
    stopping = true;
    parry::log(parry::LogLevel::Warning,
               std::string("stopping on ") + (signal_number == SIGINT ? "SIGINT" : "SIGTERM"));
    server.stop();
  });

  std::cout << "listening on " << s.host << ":" << port << std::endl;
  const bool ok = server.listen_after_bind();
  // listen_after_bind() also returns when the socket fails: wake the stopper.
  if (!stopping) pthread_kill(stopper.native_handle(), SIGTERM);
  stopper.join();
  std::cout << "stopped" << std::endl;
  return ok ? 0 : 1;
}
