// serve::Server: a Guard served over HTTP (cpp-httplib), with API keys,
// Prometheus metrics and graceful shutdown. `parry serve` runs one.
//
// API:
//   POST /v1/predict  header X-Api-Key: <key>
//       body: PNG or JPEG (Content-Type image/png or image/jpeg), decoded to
//       the Guard's InputSpec (any C×H×W, grey or colour: data::predict_image),
//       or JSON (application/json) {"pixels": [C·H·W numbers, C×H×W order]}
//     200 {"label": 3, "class": "Dress", "verdict": "accepted" | "flagged"}
//     400 invalid body, 401 missing or unknown API key, 403 refused by a gate
//     (query monitor with action reject), 413 body larger than max_body_bytes,
//     415 other content types, 429 throttled (Retry-After: whole seconds),
//     500 internal error, 404 other paths and methods.
//   GET /healthz      200 "ok"
//   GET /metrics      Prometheus text (serve::Metrics), when options.metrics()
//
// Threat model: every caller of /v1/predict is untrusted. Authentication
// comes first; the Guard then throttles (before decoding), monitors the
// query stream, validates and answers with its output policy (label only by
// default). Every error body is {"error": "<generic text>", "reason": "<code>"}
// with a fixed text per status: nothing about the model, files, libraries or
// which check failed beyond the reason code. Details go to parry's log (the
// client name, never the key). The server speaks plain HTTP: put TLS in
// front (a reverse proxy) whenever keys cross a network; the default host is
// the loopback interface.
//
// Life cycle: start() binds and accepts on a background thread; stop() stops
// accepting, lets in-flight requests finish and joins the threads. The
// Guard is shared and immutable; the Server may be stopped from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "parry/core/guard.hpp"
#include "parry/data/image.hpp"
#include "parry/detail/arg.hpp"
#include "parry/serve/api_keys.hpp"
#include "parry/serve/metrics.hpp"

namespace parry::serve {

struct ServerOptions {
  PARRY_OPTIONS(ServerOptions);
  /// Address to bind (default the loopback 127.0.0.1; "0.0.0.0" for every interface).
  PARRY_CHECKED_ARG(std::string, host, "127.0.0.1", !v.empty(), "must not be empty");
  /// TCP port; 0 picks a free one (Server::port() tells which).
  PARRY_CHECKED_ARG(int, port, 0, v >= 0 && v <= 65535, "must be in 0..65535");
  /// HTTP worker threads (each answers one request at a time).
  PARRY_CHECKED_ARG(int, workers, 4, v >= 1 && v <= 256, "must be in 1..256");
  /// Largest request body in bytes; larger bodies get 413 before they are read whole.
  PARRY_CHECKED_ARG(int64_t, max_body_bytes, int64_t{1} << 20, v >= 1024 && v <= (int64_t{256} << 20),
                    "must be in 1024..268435456 bytes");
  /// Seconds a connection may take to send a request or receive an answer.
  PARRY_CHECKED_ARG(int, timeout_seconds, 5, v >= 1 && v <= 300, "must be in 1..300 seconds");
  /// Whether GET /metrics is served (default true).
  PARRY_ARG(bool, metrics) = true;
  /// Limits on PNG/JPEG bodies (declared size checked before decoding).
  PARRY_ARG(data::ImageLimits, image_limits) = data::ImageLimits().max_pixels(4 << 20).max_side(2048);
  /// Total of the requests the gates could not judge because their shared
  /// state (Redis) was unavailable, read at each scrape of /metrics as
  /// parry_state_failures_total (parry serve sums its throttles' and query
  /// monitors' counters). Empty (default): the metric is not exposed.
  PARRY_ARG(std::function<uint64_t()>, state_failures) = nullptr;
};

class Server;

namespace detail {
/// Feeds `bytes`, everything a client sends on one connection before it
/// closes, to the server's HTTP layer in the calling thread, without a socket:
/// cpp-httplib's request parser (request line, headers, Content-Length,
/// chunked and compressed bodies), then the routes and error handlers of
/// this server, for as many keep-alive requests as a socket connection
/// would serve. Returns every byte the server writes back. The server need
/// not be started. For the fuzzer (tests/fuzz/fuzz_http.cpp) and tests: the
/// socket path (accept, timeouts) is not exercised.
std::string process_connection(Server& server, const std::string& bytes);
}  // namespace detail

class Server {
 public:
  /// @param guard the defended model (shared, immutable).
  /// @param classes the name of each label (serve::class_names); answers carry
  ///   classes[label].
  /// @param keys the accepted API keys; null accepts any valid key
  ///   (is_valid_key) and uses a digest of it as client id: for local trials
  ///   only, since anyone can then invent keys and escape per-client throttling.
  /// @throws parry::OptionError if guard is null or classes is empty.
  Server(std::shared_ptr<const Guard> guard, std::vector<std::string> classes, ServerOptions options = {},
         std::shared_ptr<const ApiKeys> keys = nullptr);
  /// Stops the server (as stop()) if it runs.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// Binds options.host():options.port() and accepts connections on a
  /// background thread; returns once connections are accepted.
  /// @return the bound port.
  /// @throws parry::IoError if the address cannot be bound;
  ///   parry::StateError if already started.
  int start();
  /// Stops accepting, waits for in-flight requests to finish and joins the
  /// threads. Idempotent; safe from any thread but a request handler.
  void stop();
  /// Blocks until the server has stopped (by stop() from another thread, or
  /// because the listening socket failed). @return true after a stop(), false
  /// after a socket failure.
  bool wait();

  /// The bound port (0 before start()).
  int port() const;
  /// The counters and histogram of this server.
  const Metrics& metrics() const;
  /// The options it was built with.
  const ServerOptions& options() const;

 private:
  friend std::string detail::process_connection(Server& server, const std::string& bytes);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace parry::serve
