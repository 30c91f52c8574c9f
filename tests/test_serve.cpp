// Tests of the serve family: ApiKeys, Metrics, class_names and Server (driven
// over loopback HTTP by httplib::Client).
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "parry/certify/smoothed_decision.hpp"
#include "parry/conceal/query_monitor.hpp"
#include "parry/conceal/throttle.hpp"
#include "parry/core/guard.hpp"
#include "parry/data/image.hpp"
#include "parry/serve/api_keys.hpp"
#include "parry/serve/class_names.hpp"
#include "parry/serve/metrics.hpp"
#include "parry/serve/server.hpp"
#include "test_support.hpp"

namespace parry {
namespace {

using json = nlohmann::json;
using testing::expect_public;

// ---------------------------------------------------------------- ApiKeys

TEST(ApiKeys, Sha256MatchesKnownTestVectors) {
  // FIPS 180-2 test vectors.
  EXPECT_EQ(serve::sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(serve::sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(serve::key_file_line("abc", "alice"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad alice");
  EXPECT_THROW(serve::key_file_line("has space", "alice"), OptionError);
  EXPECT_THROW(serve::key_file_line("abc", "bad name"), OptionError);
  EXPECT_THROW(serve::key_file_line("", "alice"), OptionError);
}

TEST(ApiKeys, ParsesTheFileAndAuthenticatesKnownKeysOnly) {
  const std::string text = "# Parry API keys\n\n" + serve::key_file_line("s3cret-alice", "alice") +
                           "\n   # indented comment\r\n"
                           "SHA256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD bob\r\n";
  // The prefix is case-sensitive; fix it and the upper-case hex is accepted.
  EXPECT_THROW(serve::ApiKeys::parse(text), OptionError);
  std::string fixed = text;
  fixed.replace(fixed.find("SHA256:"), 7, "sha256:");
  const auto keys = serve::ApiKeys::parse(fixed);
  EXPECT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys.authenticate("s3cret-alice").value_or(""), "alice");
  EXPECT_EQ(keys.authenticate("abc").value_or(""), "bob");
  EXPECT_FALSE(keys.authenticate("s3cret-alicE"));
  EXPECT_FALSE(keys.authenticate("unknown"));
  EXPECT_FALSE(keys.authenticate(""));
  EXPECT_FALSE(keys.authenticate("abc "));  // not a valid key
  EXPECT_FALSE(keys.authenticate(std::string(300, 'a')));
  EXPECT_FALSE(serve::ApiKeys().authenticate("abc"));
}

TEST(ApiKeys, ParseErrorsNameTheLine) {
  const std::string good = serve::key_file_line("k1", "alice");
  const std::string digest = serve::sha256_hex("k2");
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"# c\n" + good + "\nalice k1\n", "line 3: expected 'sha256:"},
      {"sha256:abcd alice\n", "line 1: the digest must have 64 hex digits, but has 4"},
      {"sha256:" + std::string(63, 'a') + "g alice\n", "line 1: the digest must be hex digits"},
      {"sha256:" + digest + "\n", "line 1: missing the client name"},
      {"sha256:" + digest + " al/ice\n", "line 1: a client name must be"},
      {"sha256:" + digest + " alice extra\n", "line 1: unexpected text"},
      {good + "\n" + good.substr(0, good.size() - 5) + "carol\n", "line 2: duplicate key digest"},
      {good + "\nsha256:" + digest + " alice\n", "line 2: duplicate client name \"alice\""},
  };
  for (const auto& [text, expected] : bad) {
    try {
      serve::ApiKeys::parse(text, "keys.txt");
      ADD_FAILURE() << "accepted: " << text;
    } catch (const OptionError& e) {
      EXPECT_NE(std::string(e.what()).find("keys.txt " + expected), std::string::npos) << e.what();
    }
  }
}

TEST(ApiKeys, LoadReadsAFileAndHidesItsPath) {
  testing::TempDir dir;
  {
    std::ofstream out(dir.file("keys.txt"));
    out << serve::key_file_line("k1", "alice") << "\n";
  }
  EXPECT_EQ(serve::ApiKeys::load(dir.file("keys.txt")).authenticate("k1").value_or(""), "alice");
  try {
    serve::ApiKeys::load(dir.file("missing.txt"));
    ADD_FAILURE() << "loaded a missing file";
  } catch (const IoError& e) {
    expect_public(e.what());
    EXPECT_NE(e.detail().find("missing.txt"), std::string::npos);
  }
}

// ---------------------------------------------------------------- Metrics

// The value of the sample line that starts with `prefix` (name and labels), or -1.
double sample(const std::string& text, const std::string& prefix) {
  size_t at = 0;
  while ((at = text.find(prefix, at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n') {
      const size_t space = text.find(' ', at + prefix.size());
      if (space == at + prefix.size()) return std::stod(text.substr(space + 1));
    }
    at += prefix.size();
  }
  return -1;
}

TEST(Metrics, TextHasCountersAndHistogramWithLabelsAndCounts) {
  serve::Metrics metrics;
  for (int i = 0; i < 5; ++i) metrics.record("accepted", "ok");
  for (int i = 0; i < 3; ++i) metrics.record("rejected", "rate_limited");
  metrics.record("flagged", "flagged");
  metrics.record("rejected", "flagged");
  metrics.record("error", "invalid_input");
  metrics.observe_seconds(0.0002);
  metrics.observe_seconds(0.003);
  metrics.observe_seconds(0.2);
  const std::string text = metrics.text();
  EXPECT_NE(text.find("# TYPE parry_requests_total counter"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE parry_request_seconds histogram"), std::string::npos) << text;
  EXPECT_EQ(sample(text, "parry_requests_total{reason=\"ok\",verdict=\"accepted\"}"), 5) << text;
  EXPECT_EQ(sample(text, "parry_requests_total{reason=\"rate_limited\",verdict=\"rejected\"}"), 3) << text;
  EXPECT_EQ(sample(text, "parry_requests_total{reason=\"flagged\",verdict=\"flagged\"}"), 1) << text;
  EXPECT_EQ(sample(text, "parry_requests_total{reason=\"flagged\",verdict=\"rejected\"}"), 1) << text;
  EXPECT_EQ(sample(text, "parry_requests_total{reason=\"invalid_input\",verdict=\"error\"}"), 1) << text;
  EXPECT_EQ(sample(text, "parry_throttled_total"), 3) << text;
  EXPECT_EQ(sample(text, "parry_flagged_total"), 2) << text;
  EXPECT_EQ(sample(text, "parry_request_seconds_count"), 3) << text;
  EXPECT_EQ(sample(text, "parry_request_seconds_bucket{le=\"0.0005\"}"), 1) << text;
  EXPECT_EQ(sample(text, "parry_request_seconds_bucket{le=\"0.005\"}"), 2) << text;
  EXPECT_EQ(sample(text, "parry_request_seconds_bucket{le=\"+Inf\"}"), 3) << text;
  EXPECT_NEAR(sample(text, "parry_request_seconds_sum"), 0.2032, 1e-9) << text;
}

// ---------------------------------------------------------------- Server

// A model with three classes: 0 for bright images (mean > 0.5), 1 for dark ones.
Model brightness_model() {
  return Model::from_callable([](const torch::Tensor& x) {
    const auto m = x.flatten(1).mean(1, /*keepdim=*/true);
    return torch::cat({m, 1 - m, torch::full_like(m, -1.0)}, 1);
  });
}

std::shared_ptr<const Guard> guard_for(const InputSpec& spec, std::vector<std::shared_ptr<Gate>> gates = {},
                                       Model model = brightness_model()) {
  GuardBuilder builder(std::move(model), spec);
  for (auto& g : gates) builder.add_gate(g);
  return builder.build_shared();
}

std::shared_ptr<const serve::ApiKeys> test_keys() {
  std::string text;
  for (const char* client : {"alice", "hammer", "c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"}) {
    text += serve::key_file_line(std::string("key-of-") + client, client) + "\n";
  }
  return std::make_shared<const serve::ApiKeys>(serve::ApiKeys::parse(text));
}

httplib::Headers with_key(const std::string& client) {
  return {{"X-Api-Key", "key-of-" + client}};
}

std::string image_png(const InputSpec& spec, double value) {
  return data::encode_png(torch::full({spec.channels(), spec.height(), spec.width()}, value));
}

std::string pixels_json(const InputSpec& spec, double value) {
  return json{{"pixels", std::vector<double>(spec.channels() * spec.height() * spec.width(), value)}}.dump();
}

// Checks a generic error body: exactly {"error", "reason"}, nothing internal.
void expect_error(const httplib::Result& r, int status, const std::string& reason) {
  ASSERT_TRUE(r) << "no answer";
  EXPECT_EQ(r->status, status) << r->body;
  const json doc = json::parse(r->body);
  EXPECT_EQ(doc.size(), 2u) << r->body;
  EXPECT_TRUE(doc.contains("error")) << r->body;
  EXPECT_EQ(doc.value("reason", ""), reason) << r->body;
  expect_public(r->body);
  EXPECT_EQ(r->body.find("httplib"), std::string::npos);
}

class ServeServer : public testing::SeededTest {
 protected:
  void start(std::shared_ptr<const Guard> guard, serve::ServerOptions options = {}) {
    server_ = std::make_unique<serve::Server>(std::move(guard), std::vector<std::string>{"bright", "dark", "never"},
                                              options.port(0).workers(8), test_keys());
    port_ = server_->start();
    ASSERT_GT(port_, 0);
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(30);
    return c;
  }
  std::shared_ptr<Gate> throttle(double burst) const {
    return std::make_shared<conceal::Throttle>(conceal::ThrottleOptions().rate(0.01).burst(burst));
  }
  const InputSpec spec_ = InputSpec(1, 28, 28).max_batch(1);
  std::unique_ptr<serve::Server> server_;
  int port_ = 0;
};

TEST_F(ServeServer, AnswersPngAndJsonPixelsWithLabelClassAndVerdict) {
  start(guard_for(spec_));
  auto c = client();
  auto r = c.Post("/v1/predict", with_key("alice"), image_png(spec_, 0.9), "image/png");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body), (json{{"label", 0}, {"class", "bright"}, {"verdict", "accepted"}}));
  r = c.Post("/v1/predict", with_key("alice"), pixels_json(spec_, 0.1), "application/json; charset=utf-8");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body), (json{{"label", 1}, {"class", "dark"}, {"verdict", "accepted"}}));
  r = c.Post("/v1/predict", with_key("alice"), data::encode_jpeg(torch::full({1, 40, 30}, 0.1)), "image/jpeg");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;  // any size: resized to the spec
}

TEST_F(ServeServer, ServesColourInputsOfAnyShape) {
  const InputSpec rgb = InputSpec(3, 16, 12).max_batch(1);
  start(guard_for(rgb));
  auto c = client();
  auto r = c.Post("/v1/predict", with_key("alice"), image_png(rgb, 0.8), "image/png");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  r = c.Post("/v1/predict", with_key("alice"), data::encode_png(torch::full({1, 20, 20}, 0.8)), "image/png");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;  // grey PNG, colour model
  r = c.Post("/v1/predict", with_key("alice"), pixels_json(rgb, 0.2), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(json::parse(r->body).value("class", ""), "dark") << r->body;
  expect_error(c.Post("/v1/predict", with_key("alice"), pixels_json(spec_, 0.2), "application/json"), 400,
               "invalid_input");  // a 1×28×28 pixel list for a 3×16×12 model
}

TEST_F(ServeServer, MissingOrUnknownKeysGet401) {
  start(guard_for(spec_));
  auto c = client();
  const std::string png = image_png(spec_, 0.9);
  expect_error(c.Post("/v1/predict", png, "image/png"), 401, "unauthorized");
  expect_error(c.Post("/v1/predict", {{"X-Api-Key", "key-of-mallory"}}, png, "image/png"), 401, "unauthorized");
  expect_error(c.Post("/v1/predict", {{"X-Api-Key", "alice"}}, png, "image/png"), 401, "unauthorized");
}

TEST_F(ServeServer, BadBodiesGetGeneric400s413s415sAnd404s) {
  start(guard_for(spec_), serve::ServerOptions().max_body_bytes(65536));
  auto c = client();
  const std::string png = image_png(spec_, 0.9);
  for (const auto& [body, type] : std::vector<std::pair<std::string, std::string>>{
           {"not an image", "image/png"},
           {png.substr(0, 40), "image/png"},
           {"{\"pixels\": [1, 2, 3]}", "application/json"},
           {pixels_json(spec_, 2.0), "application/json"},  // out of range
           {"{nope", "application/json"},
           {"{\"pixels\": " + json(std::vector<std::string>(784, "a")).dump() + "}", "application/json"}}) {
    expect_error(c.Post("/v1/predict", with_key("alice"), body, type.c_str()), 400, "invalid_input");
  }
  expect_error(c.Post("/v1/predict", with_key("alice"), std::string(70000, '\0'), "image/png"), 413,
               "payload_too_large");
  expect_error(c.Post("/v1/predict", with_key("alice"), "hello", "text/plain"), 415, "unsupported_media_type");
  expect_error(c.Get("/v2/nothing"), 404, "not_found");
}

TEST_F(ServeServer, ThrottledClientsGet429WithRetryAfter) {
  start(guard_for(spec_, {throttle(30)}));
  auto c = client();
  const std::string png = image_png(spec_, 0.9);
  int answered = 0;
  std::string retry;
  for (int i = 0; i < 40; ++i) {
    auto r = c.Post("/v1/predict", with_key("hammer"), png, "image/png");
    ASSERT_TRUE(r);
    if (r->status != 200) {
      expect_error(r, 429, "rate_limited");
      retry = r->get_header_value("Retry-After");
      break;
    }
    ++answered;
  }
  EXPECT_EQ(answered, 30);
  ASSERT_FALSE(retry.empty());
  EXPECT_GE(std::stoi(retry), 1);
  auto other = c.Post("/v1/predict", with_key("alice"), png, "image/png");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 200);  // another client is unaffected
}

TEST_F(ServeServer, QueryMonitorRejectionsGet403) {
  auto monitor = std::make_shared<conceal::QueryMonitor>(
      conceal::QueryMonitorOptions().match_spec(spec_).action(conceal::MonitorAction::Reject));
  start(guard_for(spec_, {monitor}));
  auto c = client();
  const torch::Tensor noise = torch::rand({784}, torch::kFloat64);  // seeded by the fixture
  const std::string body =
      json{{"pixels", std::vector<double>(noise.data_ptr<double>(), noise.data_ptr<double>() + 784)}}.dump();
  auto first = c.Post("/v1/predict", with_key("alice"), body, "application/json");
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, 200);
  expect_error(c.Post("/v1/predict", with_key("c0"), body, "application/json"), 403, "flagged");
}

TEST_F(ServeServer, HealthzAndMetricsReflectTheRequests) {
  start(guard_for(spec_, {throttle(2)}));
  auto c = client();
  auto health = c.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok");
  const std::string png = image_png(spec_, 0.9);
  for (int i = 0; i < 4; ++i) c.Post("/v1/predict", with_key("alice"), png, "image/png");  // 2 ok, 2 throttled
  c.Post("/v1/predict", png, "image/png");                                                 // 401
  c.Post("/v1/predict", with_key("c1"), "junk", "image/png");                              // 400
  auto metrics = c.Get("/metrics");
  ASSERT_TRUE(metrics);
  ASSERT_EQ(metrics->status, 200);
  EXPECT_EQ(metrics->get_header_value("Content-Type").rfind("text/plain", 0), 0u);
  const std::string& text = metrics->body;
  EXPECT_EQ(sample(text, "parry_requests_total{reason=\"ok\",verdict=\"accepted\"}"), 2) << text;
  EXPECT_EQ(sample(text, "parry_requests_total{reason=\"rate_limited\",verdict=\"rejected\"}"), 2) << text;
  EXPECT_EQ(sample(text, "parry_requests_total{reason=\"unauthorized\",verdict=\"error\"}"), 1) << text;
  EXPECT_EQ(sample(text, "parry_requests_total{reason=\"invalid_input\",verdict=\"error\"}"), 1) << text;
  EXPECT_EQ(sample(text, "parry_throttled_total"), 2) << text;
  EXPECT_EQ(sample(text, "parry_flagged_total"), 0) << text;
  EXPECT_EQ(sample(text, "parry_request_seconds_count"), 6) << text;
  EXPECT_EQ(text, server_->metrics().text());
}

TEST_F(ServeServer, ConcurrentClientsAreAllAnsweredAndCounted) {
  start(guard_for(spec_, {throttle(30)}));
  // Debian's cpp-httplib is a shared library built without ThreadSanitizer. It
  // builds function-local statics on first use (the server's set of method
  // names, the client's std::regex); TSan cannot see the guard of a static
  // initialised in uninstrumented code and reports the first concurrent
  // readers as racing with its construction (docs/reliability.md). One request
  // before the clients start builds both on one thread; it is not counted.
  ASSERT_TRUE(client().Get("/healthz"));
  constexpr int kClients = 8, kRequests = 20;
  std::atomic<int> ok{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      auto c = client();
      const std::string name = "c" + std::to_string(t);
      for (int i = 0; i < kRequests; ++i) {
        const bool bright = (i + t) % 2 == 0;
        auto r = c.Post("/v1/predict", with_key(name), pixels_json(spec_, bright ? 0.9 : 0.1), "application/json");
        if (r && r->status == 200 && json::parse(r->body).value("label", -1) == (bright ? 0 : 1)) {
          ++ok;
        } else {
          ++wrong;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kClients * kRequests);
  EXPECT_EQ(wrong.load(), 0);
  const std::string text = server_->metrics().text();
  EXPECT_EQ(sample(text, "parry_requests_total{reason=\"ok\",verdict=\"accepted\"}"), kClients * kRequests) << text;
  EXPECT_EQ(sample(text, "parry_request_seconds_count"), kClients * kRequests) << text;
}

// A model that blocks inside logits() until released: a request in flight.
struct Latch {
  std::mutex mutex;
  std::condition_variable cv;
  bool entered = false, released = false;
};

TEST_F(ServeServer, StopFinishesRequestsInFlight) {
  auto latch = std::make_shared<Latch>();
  Model slow = Model::from_callable([latch](const torch::Tensor& x) {
    std::unique_lock<std::mutex> lock(latch->mutex);
    latch->entered = true;
    latch->cv.notify_all();
    latch->cv.wait(lock, [&] { return latch->released; });
    return torch::cat({x.flatten(1).mean(1, true), 1 - x.flatten(1).mean(1, true), torch::zeros({x.size(0), 1})}, 1);
  });
  start(guard_for(spec_, {}, slow));
  std::optional<httplib::Result> in_flight;
  std::thread request([&] {
    auto c = client();
    in_flight.emplace(c.Post("/v1/predict", with_key("alice"), pixels_json(spec_, 0.9), "application/json"));
  });
  {
    std::unique_lock<std::mutex> lock(latch->mutex);
    latch->cv.wait(lock, [&] { return latch->entered; });
  }
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    server_->stop();
    stopped = true;
  });
  // stop() cannot return while the request is inside the model: give a
  // stop() that does not wait time to return, then check it has not.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(stopped.load());
  {
    std::lock_guard<std::mutex> lock(latch->mutex);
    latch->released = true;
  }
  latch->cv.notify_all();
  request.join();
  stopper.join();
  EXPECT_TRUE(stopped.load());
  ASSERT_TRUE(in_flight && *in_flight);
  EXPECT_EQ((*in_flight)->status, 200) << (*in_flight)->body;
  EXPECT_TRUE(server_->wait());  // stopped by stop(): returns at once
  auto after = client().Get("/healthz");
  EXPECT_FALSE(after);  // no longer accepting
}

TEST_F(ServeServer, OptionsAndConstructionAreValidated) {
  EXPECT_THROW(serve::ServerOptions().port(70000), OptionError);
  EXPECT_THROW(serve::ServerOptions().workers(0), OptionError);
  EXPECT_THROW(serve::ServerOptions().max_body_bytes(10), OptionError);
  EXPECT_THROW(serve::Server(nullptr, {"a"}), OptionError);
  EXPECT_THROW(serve::Server(guard_for(spec_), {}), OptionError);
  start(guard_for(spec_));
  EXPECT_THROW(server_->start(), StateError);
  serve::Server clash(guard_for(spec_), {"a", "b", "c"}, serve::ServerOptions().port(port_));
  EXPECT_THROW(clash.start(), IoError);
}

TEST_F(ServeServer, ProcessesAConnectionInMemoryWithoutStarting) {
  // serve::detail::process_connection (the HTTP fuzzer's entry point): the
  // same parser and routes as a socket, answers at once, keep-alive requests
  // one after another, and an incomplete body ends like a closed connection.
  serve::Server server(guard_for(spec_), {"bright", "dark", "never"}, serve::ServerOptions(), test_keys());
  const std::string png = image_png(spec_, 0.9);
  const std::string two =
      "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
      "POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Api-Key: key-of-alice\r\n"
      "Content-Type: image/png\r\nContent-Length: " +
      std::to_string(png.size()) + "\r\n\r\n" + png;
  const std::string answer = serve::detail::process_connection(server, two);
  ASSERT_EQ(answer.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << answer;
  const size_t second = answer.find("HTTP/1.1 ", 1);
  ASSERT_NE(second, std::string::npos) << answer;
  EXPECT_EQ(answer.substr(second, 15), "HTTP/1.1 200 OK") << answer;
  EXPECT_NE(answer.find(R"({"class":"bright","label":0,"verdict":"accepted"})"), std::string::npos) << answer;
  const std::string no_key = serve::detail::process_connection(
      server, "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 3\r\n\r\nabc");
  EXPECT_EQ(no_key.rfind("HTTP/1.1 401", 0), 0u) << no_key;
  const auto begin = std::chrono::steady_clock::now();
  const std::string truncated = serve::detail::process_connection(
      server, "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc");
  EXPECT_EQ(truncated.rfind("HTTP/1.1 400", 0), 0u) << truncated;
  EXPECT_LT(std::chrono::steady_clock::now() - begin, std::chrono::seconds(1));  // no read timeout
  EXPECT_EQ(serve::detail::process_connection(server, ""), "");
}

TEST_F(ServeServer, ASmoothedGuardAnswersAbstainedWithoutALabelAndShowsRadiiOnlyIfItsPolicyDoes) {
  // A linear two-class model on 1×4×4: class 1 where the pixels' mean exceeds ½.
  const Model model = Model::from_callable([](const torch::Tensor& x) {
    const torch::Tensor margin = (x.flatten(1) - 0.5).sum(1) / 4.0;  // distance to the boundary (‖w‖ = 1)
    return torch::stack({torch::zeros_like(margin), margin}, 1);
  });
  const auto smoothed = std::make_shared<const certify::SmoothedClassifier>(
      model, certify::SmoothingOptions().sigma(0.25).seed(1));
  const auto guard_with = [&](bool show_radius) {
    return GuardBuilder(model, InputSpec(1, 4, 4))
        .set_decision_rule(std::make_shared<certify::SmoothedDecision>(
            smoothed, certify::SmoothedDecisionOptions().certify(true).certification(certify::CertifyOptions().n(2000))))
        .set_output_policy(std::make_shared<LabelOnly>(show_radius))
        .build_shared();
  };
  const auto request = [](double value) {
    const std::string body = nlohmann::json{{"pixels", std::vector<double>(16, value)}}.dump();
    return "POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Api-Key: key-of-alice\r\nContent-Type: application/json\r\n"
           "Content-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
  };
  const auto json_of = [](const std::string& answer) {
    return nlohmann::json::parse(answer.substr(answer.find("\r\n\r\n") + 4));
  };
  serve::Server hidden(guard_with(false), {"dark", "bright"}, serve::ServerOptions(), test_keys());
  const std::string boundary = serve::detail::process_connection(hidden, request(0.5));
  ASSERT_EQ(boundary.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << boundary;
  EXPECT_EQ(json_of(boundary), nlohmann::json::parse(R"({"class":null,"label":null,"verdict":"abstained"})"));
  const std::string bright = serve::detail::process_connection(hidden, request(0.6));  // distance 0.4
  EXPECT_EQ(json_of(bright), nlohmann::json::parse(R"({"class":"bright","label":1,"verdict":"accepted"})"));
  serve::Server shown(guard_with(true), {"dark", "bright"}, serve::ServerOptions(), test_keys());
  const auto with_radius = json_of(serve::detail::process_connection(shown, request(0.6)));
  EXPECT_EQ(with_radius["label"], 1);
  EXPECT_GT(with_radius["certified_radius"].get<double>(), 0.3);
  EXPECT_LE(with_radius["certified_radius"].get<double>(), 0.4);
}

TEST(ServeClassNames, FromTheConfigOrNumberedFromTheModelsOutput) {
  const auto guard = guard_for(InputSpec(1, 8, 8));
  EXPECT_EQ(serve::model_classes(*guard), 3);
  EXPECT_EQ(serve::class_names(*guard), (std::vector<std::string>{"0", "1", "2"}));
  EXPECT_EQ(serve::class_names(*guard, {"a", "b", "c"}), (std::vector<std::string>{"a", "b", "c"}));
  try {
    serve::class_names(*guard, {"a", "b"});
    ADD_FAILURE() << "accepted 2 names for 3 classes";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("names 2 classes but the model outputs 3"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace parry
