// Gate state in Redis (parry/conceal/state.hpp): the redis:// URL, the Redis
// query store against the in-process one, replicas sharing one Redis, shared
// throttle budgets, and the failure policies when Redis dies or stalls. Each
// test starts its own redis-server on a free loopback port (redis_support.hpp).
#include "parry/conceal/state.hpp"

#include <atomic>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "attack_support.hpp"
#include "conceal_support.hpp"
#include "parry/conceal/output_policies.hpp"
#include "parry/conceal/query_monitor.hpp"
#include "parry/conceal/throttle.hpp"
#include "parry/config/defense_config.hpp"
#include "parry/core/log.hpp"
#include "parry/data/image.hpp"
#include "redis_support.hpp"

using namespace parry;
using conceal::FailurePolicy;
using conceal::MonitorAction;
using conceal::MonitorScope;
using conceal::QueryMonitor;
using conceal::QueryMonitorOptions;
using conceal::QueryObservation;
using conceal::RedisOptions;
using conceal::Throttle;
using conceal::ThrottleOptions;
using parry::testing::RedisServer;

namespace {

using parry::testing::FakeClock;
using parry::testing::image;
using parry::testing::mixed_stream;
using parry::testing::observe_one;
using parry::testing::test_images;

// Silences the log (failure warnings are expected here) and keeps the lines.
class RedisStateTest : public parry::testing::LoggedTest {};


// Records every input a Guard receives (the attack's query stream).
class Recorder final : public Gate {
 public:
  GateDecision admit(const RequestContext&, const torch::Tensor& input) override {
    std::lock_guard<std::mutex> lock(mutex_);
    inputs.push_back(input.clone());
    return GateDecision::admit();
  }
  std::string describe() const override { return "Recorder"; }
  std::vector<torch::Tensor> inputs;

 private:
  std::mutex mutex_;
};

// Index (from 0) of the first detected query of `stream` sent through the
// monitors in turn, or -1.
int64_t first_detection(const std::vector<QueryMonitor*>& monitors, const std::vector<torch::Tensor>& stream,
                        const std::string& client) {
  for (size_t i = 0; i < stream.size(); ++i) {
    const auto observations = monitors[i % monitors.size()]->observe(RequestContext{client}, stream[i]);
    for (const auto& o : observations) {
      if (o.detected) return static_cast<int64_t>(i);
    }
  }
  return -1;
}

}  // namespace

TEST(RedisOptions, UrlsAreParsedAndBadOnesNamed) {
  const auto a = RedisOptions::from_url("redis://127.0.0.1:6380");
  EXPECT_EQ(a.host(), "127.0.0.1");
  EXPECT_EQ(a.port(), 6380);
  EXPECT_EQ(a.database(), 0);
  const auto b = RedisOptions::from_url("redis://localhost");
  EXPECT_EQ(b.host(), "localhost");
  EXPECT_EQ(b.port(), 6379);
  const auto c = RedisOptions::from_url("redis://redis-1.internal:7000/3");
  EXPECT_EQ(c.port(), 7000);
  EXPECT_EQ(c.database(), 3);
  EXPECT_EQ(c.url(), "redis://redis-1.internal:7000/3");

  const std::map<std::string, std::string> bad = {
      {"http://127.0.0.1:6379", "the scheme must be redis://"},
      {"127.0.0.1:6379", "the scheme must be redis://"},
      {"rediss://127.0.0.1:6379", "TLS"},
      {"redis://", "host"},
      {"redis://:6379", "host"},
      {"redis://bad_host:6379", "host"},
      {"redis://127.0.0.1:0", "the port must be a number in 1..65535"},
      {"redis://127.0.0.1:65536", "the port must be a number in 1..65535"},
      {"redis://127.0.0.1:", "the port must be a number in 1..65535"},
      {"redis://127.0.0.1:63a9", "the port must be a number in 1..65535"},
      {"redis://127.0.0.1:6379/x", "the database must be a number"},
      {"redis://user:secret@127.0.0.1:6379", "credentials"},
      {"redis://[::1]:6379", "IPv6"},
      {"redis://127.0.0.1:6379?timeout=1", "query string"},
  };
  for (const auto& [url, what] : bad) {
    try {
      RedisOptions::from_url(url);
      ADD_FAILURE() << url << " was accepted";
    } catch (const OptionError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(what), std::string::npos) << url << ": " << message;
      EXPECT_NE(message.find("expected redis://HOST[:PORT][/DATABASE]"), std::string::npos) << message;
      EXPECT_EQ(message.find("secret"), std::string::npos) << "a credential is never echoed: " << message;
    }
  }
  EXPECT_THROW(RedisOptions().prefix("has space"), OptionError);
  EXPECT_THROW(RedisOptions().prefix(""), OptionError);
  EXPECT_THROW(RedisOptions().timeout_ms(0), OptionError);
  EXPECT_THROW(RedisOptions().port(70000), OptionError);
}

TEST_F(RedisStateTest, RedisQueryStoreMatchesTheInProcessStoreExactly) {
  PARRY_REQUIRE_REDIS();
  RedisServer redis;
  // threshold(1): every list is walked, so every count is exact in both
  // stores and all must agree, under eviction from a store of 5.
  for (const MonitorScope scope : {MonitorScope::Global, MonitorScope::PerClient, MonitorScope::Both}) {
    const auto options = QueryMonitorOptions().threshold(1).max_stored_queries(5).scope(scope).salt_key(5);
    QueryMonitor memory(options);
    QueryMonitor shared(QueryMonitorOptions(options).redis(redis.options(std::string("exact-") + to_string(scope))));
    const auto stream = mixed_stream(300, 7);
    for (size_t i = 0; i < stream.size(); ++i) {
      const std::string client = i % 3 == 0 ? "alice" : "bob";
      const auto m = observe_one(memory, stream[i], client);
      const auto r = observe_one(shared, stream[i], client);
      ASSERT_EQ(r.query_id, m.query_id) << to_string(scope) << " step " << i;
      ASSERT_EQ(r.global_matches, m.global_matches) << to_string(scope) << " step " << i;
      ASSERT_EQ(r.global_match_id, m.global_match_id) << to_string(scope) << " step " << i;
      ASSERT_EQ(r.client_matches, m.client_matches) << to_string(scope) << " step " << i;
      ASSERT_EQ(r.client_match_id, m.client_match_id) << to_string(scope) << " step " << i;
      ASSERT_EQ(r.detected, m.detected);
    }
    const auto ms = memory.stats();
    const auto rs = shared.stats();
    EXPECT_EQ(rs.stored, ms.stored);
    EXPECT_EQ(rs.evictions, ms.evictions);
    EXPECT_EQ(rs.postings, ms.postings);
    EXPECT_EQ(rs.index_entries, ms.index_entries);
    EXPECT_EQ(rs.images, ms.images);
    EXPECT_EQ(rs.detections, ms.detections);
  }
}

TEST_F(RedisStateTest, RedisQueryStoreAgreesAtTheDefaultThreshold) {
  PARRY_REQUIRE_REDIS();
  RedisServer redis;
  // Pruned search (threshold 25): below the threshold counts are lower bounds
  // that may differ; detections, and the counts and ids that reach the
  // threshold, are defined and must agree.
  const auto options = QueryMonitorOptions().max_stored_queries(40).scope(MonitorScope::Both).salt_key(5);
  QueryMonitor memory(options);
  QueryMonitor shared(QueryMonitorOptions(options).redis(redis.options("pruned")));
  const auto stream = mixed_stream(400, 11);
  int detected = 0;
  for (size_t i = 0; i < stream.size(); ++i) {
    const std::string client = "c" + std::to_string(i % 4);
    const auto m = observe_one(memory, stream[i], client);
    const auto r = observe_one(shared, stream[i], client);
    ASSERT_EQ(r.query_id, m.query_id);
    ASSERT_EQ(r.detected, m.detected) << "step " << i;
    if (m.global_matches >= 25 || r.global_matches >= 25) {
      ASSERT_EQ(r.global_matches, m.global_matches) << "step " << i;
      ASSERT_EQ(r.global_match_id, m.global_match_id) << "step " << i;
    }
    if (m.client_matches >= 25 || r.client_matches >= 25) {
      ASSERT_EQ(r.client_matches, m.client_matches) << "step " << i;
      ASSERT_EQ(r.client_match_id, m.client_match_id) << "step " << i;
    }
    detected += m.detected;
  }
  EXPECT_GT(detected, 50) << "the stream holds many repeats";
  EXPECT_LT(detected, 400);
}

TEST_F(RedisStateTest, TwoReplicasSharingRedisFlagSquareAndHopSkipJumpAsEarlyAsOne) {
  PARRY_REQUIRE_REDIS();
  RedisServer redis;
  const auto data = parry::testing::correctly_classified(2);
  for (const std::string attack_name : {"square", "hop_skip_jump"}) {
    // The attack's query stream, recorded through an undefended Guard.
    auto recorder = std::make_shared<Recorder>();
    GuardBuilder builder(parry::testing::reference_model(), InputSpec(1, 28, 28));
    builder.add_gate(recorder);
    builder.set_output_policy(std::make_shared<conceal::Full>());
    const Guard guard = builder.build();
    if (attack_name == "square") {
      attack::square(guard, data.images.slice(0, 0, 1), data.labels.slice(0, 0, 1),
                     attack::SquareOptions(0.1).max_queries(60).seed(3));
    } else {
      attack::hop_skip_jump(guard, data.images.slice(0, 1, 2), data.labels.slice(0, 1, 2),
                            attack::HopSkipJumpOptions().max_queries(150).initial_probes(20).seed(3));
    }
    ASSERT_GT(recorder->inputs.size(), 20u);

    // One salt key for all, so that the stores see identical fingerprints.
    const auto options = QueryMonitorOptions().match_spec(InputSpec(1, 28, 28)).salt_key(5);
    QueryMonitor one(options);
    QueryMonitor replica_a(QueryMonitorOptions(options).redis(redis.options("replicas-" + attack_name)));
    QueryMonitor replica_b(QueryMonitorOptions(options).redis(redis.options("replicas-" + attack_name)));
    QueryMonitor alone_a{options};  // two replicas without shared state
    QueryMonitor alone_b{options};
    const int64_t single = first_detection({&one}, recorder->inputs, "attacker");
    const int64_t shared = first_detection({&replica_a, &replica_b}, recorder->inputs, "attacker");
    const int64_t split = first_detection({&alone_a, &alone_b}, recorder->inputs, "attacker");
    ASSERT_GE(single, 0) << attack_name << " was never flagged";
    EXPECT_EQ(shared, single) << attack_name;
    EXPECT_LE(single, 20) << attack_name;
    std::cout << attack_name << ": first detection at query " << single << " (one process), " << shared
              << " (two replicas, shared Redis), " << split << " (two replicas, in-process state)\n";
  }
}

TEST_F(RedisStateTest, TwoMonitorsSharingRedisGiveGlobalIdsAndOneHistory) {
  PARRY_REQUIRE_REDIS();
  RedisServer redis;
  QueryMonitor a(QueryMonitorOptions().redis(redis.options("ids")));
  QueryMonitor b(QueryMonitorOptions().redis(redis.options("ids")));
  const auto first = observe_one(a, image(1));
  const auto second = observe_one(b, image(1), "another-client");
  EXPECT_EQ(first.query_id, 1u);
  EXPECT_EQ(second.query_id, 2u) << "ids are global across replicas";
  EXPECT_TRUE(second.detected);
  EXPECT_EQ(second.global_match_id, 1u);
  EXPECT_EQ(b.stats().stored, 2u);
  EXPECT_EQ(a.stats().images, 1u) << "request counters are per object";
  a.clear();
  EXPECT_EQ(b.stats().stored, 0u) << "clear() empties the shared store";
  EXPECT_FALSE(observe_one(b, image(1)).detected);
}

TEST_F(RedisStateTest, SaltIsSharedThroughRedisAndKeptByClear) {
  PARRY_REQUIRE_REDIS();
  RedisServer redis;
  // Each monitor draws its own random key; the first one's is stored and
  // every monitor of the prefix uses it, so replicas quantise alike.
  QueryMonitor a(QueryMonitorOptions().redis(redis.options("salt")));
  QueryMonitor b(QueryMonitorOptions().redis(redis.options("salt")));
  EXPECT_EQ(a.fingerprint(image(4)), b.fingerprint(image(4)));
  EXPECT_NE(a.fingerprint(image(4)), QueryMonitor().fingerprint(image(4))) << "not an unsalted or fixed grid";
  observe_one(a, image(4));
  EXPECT_TRUE(observe_one(b, image(4), "other").detected);
  // clear() empties the store but keeps the key: a monitor started later
  // still agrees with the running ones.
  a.clear();
  QueryMonitor later(QueryMonitorOptions().redis(redis.options("salt")));
  observe_one(a, image(5));
  EXPECT_TRUE(observe_one(later, image(5), "other").detected);
  // An explicit key that differs from the stored one is refused by the policy.
  QueryMonitor wrong(QueryMonitorOptions().salt_key(99).redis(redis.options("salt")));
  const auto refused = wrong.admit(RequestContext{"c"}, image(0));
  EXPECT_EQ(refused.action, GateDecision::Action::Reject);
  EXPECT_EQ(refused.reason, conceal::kReasonUnavailable);
  EXPECT_THROW(wrong.fingerprint(image(0)), conceal::UnavailableError);
  // Salted and unsalted monitors cannot share a prefix.
  QueryMonitor unsalted(QueryMonitorOptions().salted(false).redis(redis.options("salt")));
  EXPECT_EQ(unsalted.admit(RequestContext{"c"}, image(0)).reason, conceal::kReasonUnavailable);
}

TEST_F(RedisStateTest, MonitorsWithOtherSettingsUnderOnePrefixAreRefused) {
  PARRY_REQUIRE_REDIS();
  RedisServer redis;
  QueryMonitor a(QueryMonitorOptions().max_stored_queries(100).redis(redis.options("mismatch")));
  QueryMonitor b(QueryMonitorOptions().max_stored_queries(200).redis(redis.options("mismatch")));
  EXPECT_EQ(a.admit(RequestContext{"c"}, image(0)).action, GateDecision::Action::Admit);
  const auto refused = b.admit(RequestContext{"c"}, image(0));
  EXPECT_EQ(refused.action, GateDecision::Action::Reject);
  EXPECT_EQ(refused.reason, conceal::kReasonUnavailable);
  EXPECT_EQ(b.stats().state_failures, 1u);
  EXPECT_THROW(b.observe(RequestContext{"c"}, image(0)), conceal::UnavailableError);
}

TEST_F(RedisStateTest, QueryMonitorFailurePoliciesWhenRedisIsKilledAndRestarted) {
  PARRY_REQUIRE_REDIS();
  RedisServer redis;
  auto closed = std::make_shared<QueryMonitor>(
      QueryMonitorOptions().redis(redis.options("closed").failure(FailurePolicy::FailClosed).reconnect_ms(0)));
  QueryMonitor open(
      QueryMonitorOptions().redis(redis.options("open").failure(FailurePolicy::FailOpen).reconnect_ms(0)));
  const RequestContext context{"client"};
  EXPECT_EQ(closed->admit(context, image(2)).action, GateDecision::Action::Admit);
  EXPECT_EQ(open.admit(context, image(2)).action, GateDecision::Action::Admit);
  EXPECT_EQ(open.admit(context, image(2)).action, GateDecision::Action::Flag);

  redis.kill();
  const auto refused = closed->admit(context, image(3));
  EXPECT_EQ(refused.action, GateDecision::Action::Reject);
  EXPECT_EQ(refused.reason, "unavailable");
  // Through a Guard: a generic public answer, no internals.
  GuardBuilder builder(parry::testing::reference_model(), InputSpec(1, 28, 28));
  builder.add_gate(closed);
  const Guard guard = builder.build();
  const Response response = guard.predict(image(3), context);
  EXPECT_EQ(response.verdict, Verdict::Rejected);
  EXPECT_EQ(response.reason, "unavailable");
  EXPECT_EQ(closed->stats().state_failures, 2u);

  // Fail-open admits, even a duplicate it cannot see, and counts each one.
  EXPECT_EQ(open.admit(context, image(2)).action, GateDecision::Action::Admit);
  EXPECT_EQ(open.admit(context, image(2)).action, GateDecision::Action::Admit);
  EXPECT_EQ(open.stats().state_failures, 2u);
  EXPECT_EQ(open.stats().images, 2u) << "unjudged requests are not counted as fingerprinted";
  bool warned = false;
  for (const auto& line : logged()) warned = warned || line.find("fail_open") != std::string::npos;
  EXPECT_TRUE(warned);

  // A restarted (empty) Redis is reconnected on the next request.
  redis.start();
  EXPECT_EQ(closed->admit(context, image(4)).action, GateDecision::Action::Admit);
  EXPECT_EQ(open.admit(context, image(2)).action, GateDecision::Action::Admit) << "Redis restarted empty";
  EXPECT_EQ(open.admit(context, image(2)).action, GateDecision::Action::Flag);
  EXPECT_EQ(open.stats().state_failures, 2u);
}

TEST_F(RedisStateTest, StalledRedisTimesOutWithinTheBound) {
  PARRY_REQUIRE_REDIS();
  RedisServer redis;
  QueryMonitor monitor(QueryMonitorOptions().redis(redis.options("stall").timeout_ms(50).reconnect_ms(0)));
  Throttle throttle(ThrottleOptions().redis(redis.options("stall").timeout_ms(50).reconnect_ms(0)));
  const RequestContext context{"client"};
  EXPECT_EQ(monitor.admit(context, image(5)).action, GateDecision::Action::Admit);
  EXPECT_EQ(throttle.admit(context, image(5)).action, GateDecision::Action::Admit);
  redis.pause();
  const auto begin = std::chrono::steady_clock::now();
  const auto decision = monitor.admit(context, image(6));
  const auto throttled = throttle.admit(context, image(6));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  redis.resume();
  EXPECT_EQ(decision.reason, "unavailable");
  EXPECT_EQ(throttled.reason, "unavailable");
  EXPECT_LT(seconds, 1.0) << "two requests, each bounded by the 50 ms timeout (connect + round trip)";
  EXPECT_EQ(monitor.admit(context, image(7)).action, GateDecision::Action::Admit) << "reconnected after the stall";
}

TEST_F(RedisStateTest, ConcurrentRequestsOnOneRedisMonitor) {
  PARRY_REQUIRE_REDIS();
  RedisServer redis;
  QueryMonitor monitor(QueryMonitorOptions().max_stored_queries(10000).redis(redis.options("threads")));
  constexpr int kThreads = 4;
  constexpr int kImages = 25;
  test_images();
  std::atomic<int> flagged{0};
  std::mutex mutex;
  std::set<uint64_t> ids;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const RequestContext context{"client-" + std::to_string(t)};
      for (int i = 0; i < kImages; ++i) {
        const torch::Tensor x = image(t * kImages + i);
        for (int repeat = 0; repeat < 2; ++repeat) {  // the second is a duplicate whatever the interleaving
          const auto o = monitor.observe(context, x).at(0);
          flagged += o.detected;
          std::lock_guard<std::mutex> lock(mutex);
          ids.insert(o.query_id);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  const auto stats = monitor.stats();
  EXPECT_EQ(flagged.load(), kThreads * kImages);
  EXPECT_EQ(ids.size(), static_cast<size_t>(2 * kThreads * kImages)) << "ids are unique";
  EXPECT_EQ(*ids.rbegin(), static_cast<uint64_t>(2 * kThreads * kImages));
  EXPECT_EQ(stats.stored, static_cast<uint64_t>(2 * kThreads * kImages));
  EXPECT_EQ(stats.state_failures, 0u);
}

TEST_F(RedisStateTest, RedisThrottleSharesTheBudgetWithTheSameArithmetic) {
  PARRY_REQUIRE_REDIS();
  RedisServer redis;
  FakeClock clock;
  const auto options = ThrottleOptions().rate(2.5).burst(4).global_rate(7).global_burst(9).clock(clock.fn());
  Throttle memory(options);
  Throttle replica_a(ThrottleOptions(options).redis(redis.options("budget")));
  Throttle replica_b(ThrottleOptions(options).redis(redis.options("budget")));
  std::mt19937 rng(5);
  int admitted = 0;
  for (int step = 0; step < 300; ++step) {
    const std::string client = "client-" + std::to_string(rng() % 3);
    const torch::Tensor x = torch::zeros({1 + static_cast<int64_t>(rng() % 3), 1, 2, 2});
    Throttle& replica = step % 2 == 0 ? replica_a : replica_b;
    const auto m = memory.admit(RequestContext{client}, x);
    const auto r = replica.admit(RequestContext{client}, x);
    ASSERT_EQ(r.action, m.action) << "step " << step;
    ASSERT_EQ(r.reason, m.reason) << "step " << step;
    ASSERT_EQ(r.retry_after_seconds, m.retry_after_seconds) << "step " << step << ": exact, not approximately";
    admitted += m.action == GateDecision::Action::Admit;
    clock.advance(0.05 * static_cast<double>(rng() % 8));
  }
  EXPECT_GT(admitted, 50);
  EXPECT_LT(admitted, 250);
  EXPECT_EQ(replica_a.state_failures(), 0u);
}

TEST_F(RedisStateTest, RedisThrottleUsesRedisTimeWithoutAClock) {
  PARRY_REQUIRE_REDIS();
  RedisServer redis;
  Throttle a(ThrottleOptions().rate(0.01).burst(3).redis(redis.options("time")));
  Throttle b(ThrottleOptions().rate(0.01).burst(3).redis(redis.options("time")));
  const RequestContext context{"alice"};
  EXPECT_EQ(a.admit(context, torch::zeros({2, 1, 2, 2})).action, GateDecision::Action::Admit);
  EXPECT_EQ(b.admit(context, torch::zeros({1, 1, 2, 2})).action, GateDecision::Action::Admit);
  const auto refused = a.admit(context, torch::zeros({1, 1, 2, 2}));
  EXPECT_EQ(refused.reason, reason::kRateLimited);
  EXPECT_GT(refused.retry_after_seconds, 90);  // 1 token at 0.01/s
  EXPECT_LE(refused.retry_after_seconds, 100);
  EXPECT_EQ(b.admit(RequestContext{"bob"}, torch::zeros({1, 1, 2, 2})).action, GateDecision::Action::Admit);
}

TEST_F(RedisStateTest, ThrottleFailurePoliciesWhenRedisIsKilled) {
  PARRY_REQUIRE_REDIS();
  RedisServer redis;
  Throttle closed(ThrottleOptions().redis(redis.options("th-closed").reconnect_ms(0)));
  Throttle open(ThrottleOptions().redis(redis.options("th-open").failure(FailurePolicy::FailOpen).reconnect_ms(0)));
  const RequestContext context{"client"};
  EXPECT_EQ(closed.admit(context, image(0)).action, GateDecision::Action::Admit);
  redis.kill();
  const auto refused = closed.admit(context, image(0));
  EXPECT_EQ(refused.action, GateDecision::Action::Reject);
  EXPECT_EQ(refused.reason, conceal::kReasonUnavailable);
  EXPECT_EQ(open.admit(context, image(0)).action, GateDecision::Action::Admit);
  EXPECT_EQ(closed.state_failures(), 1u);
  EXPECT_EQ(open.state_failures(), 1u);
  redis.start();
  EXPECT_EQ(closed.admit(context, image(0)).action, GateDecision::Action::Admit);
  EXPECT_EQ(open.admit(context, image(0)).action, GateDecision::Action::Admit);
  EXPECT_EQ(open.state_failures(), 1u);
}

TEST_F(RedisStateTest, UnreachableRedisBacksOffInsteadOfWaiting) {
  // Nothing listens on the port: connections are refused, then refused at
  // once during the back-off, without a crash or an exception out of admit().
  const int port = RedisServer::free_port();
  QueryMonitor monitor(QueryMonitorOptions().redis(
      RedisOptions::from_url("redis://127.0.0.1:" + std::to_string(port)).reconnect_ms(1000)));
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(monitor.admit(RequestContext{"c"}, image(0)).reason, conceal::kReasonUnavailable);
  }
  EXPECT_EQ(monitor.stats().state_failures, 5u);
  EXPECT_NE(monitor.describe().find("redis://127.0.0.1:"), std::string::npos);
}

TEST_F(RedisStateTest, ConfigStatePutsTheGatesOfEveryDefenseInRedis) {
  PARRY_REQUIRE_REDIS();
  RedisServer redis;
  const std::string input = R"("input": {"channels": 1, "height": 28, "width": 28})";
  const std::string text = R"({"state": {"url": ")" + redis.url() +
                           R"(", "prefix": "svc", "failure": "fail_open", "timeout_ms": 20},
    "defenses": [{"name": "gated", )" +
                           input +
                           R"(, "gates": [{"type": "throttle", "rate": 0.01, "burst": 2}, {"type": "query_monitor"}]},
                 {"name": "own state", )" +
                           input + R"(, "gates": [{"type": "query_monitor", "state": "memory"}]}]})";
  const auto model = parry::testing::reference_model();
  const auto replica_a = config::parse_config(text, model, std::nullopt);
  const auto replica_b = config::parse_config(text, model, std::nullopt);
  auto* throttle = dynamic_cast<Throttle*>(replica_a.defenses[0].gates.at(0).get());
  auto* monitor = dynamic_cast<QueryMonitor*>(replica_a.defenses[0].gates.at(1).get());
  ASSERT_TRUE(throttle && throttle->options().redis());
  ASSERT_TRUE(monitor && monitor->options().redis());
  EXPECT_EQ(throttle->options().redis()->prefix(), "svc:gated") << "each defense gets its own key space";
  EXPECT_EQ(throttle->options().redis()->failure(), FailurePolicy::FailOpen);
  EXPECT_EQ(throttle->options().redis()->timeout_ms(), 20);
  EXPECT_EQ(throttle->options().redis()->port(), redis.port());
  EXPECT_FALSE(dynamic_cast<QueryMonitor*>(replica_a.defenses[1].gates.at(0).get())->options().redis())
      << "a gate's own state wins";
  const auto fresh = replica_a.defenses[0].fresh_gates({});
  EXPECT_FALSE(dynamic_cast<Throttle*>(fresh.at(0).get())->options().redis())
      << "fresh gates (evaluations) never write into the served Redis";

  // Two replicas built from the same config share the budget.
  auto* other = dynamic_cast<Throttle*>(replica_b.defenses[0].gates.at(0).get());
  const RequestContext context{"alice"};
  EXPECT_EQ(throttle->admit(context, image(0)).action, GateDecision::Action::Admit);
  EXPECT_EQ(other->admit(context, image(0)).action, GateDecision::Action::Admit);
  EXPECT_EQ(throttle->admit(context, image(0)).reason, reason::kRateLimited);
  EXPECT_EQ(other->admit(context, image(0)).reason, reason::kRateLimited);

  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"state": "http://127.0.0.1:1", "defenses": [{"name": "d", )" + input + "}]}", "config: state: "},
      {R"({"state": 5, "defenses": [{"name": "d", )" + input + "}]}", "config: state: must be \"memory\""},
      {R"({"state": {"url": "redis://127.0.0.1:1", "failure": "maybe"}, "defenses": [{"name": "d", )" + input + "}]}",
       "config: state.failure: must be one of fail_closed, fail_open"},
      {R"({"state": {"url": "redis://127.0.0.1:1", "timeout_ms": 0}, "defenses": [{"name": "d", )" + input + "}]}",
       "config: state.timeout_ms: "},
      {R"({"state": {"prefix": "x"}, "defenses": [{"name": "d", )" + input + "}]}", "config: state.url: is required"},
      {R"({"defenses": [{"name": "d", )" + input + R"(, "gates": [{"type": "throttle", "state": "redis://:1"}]}]})",
       "config: defenses[0].gates[0].state: "},
  };
  for (const auto& [json_text, message] : bad) {
    try {
      config::parse_config(json_text, model, std::nullopt);
      ADD_FAILURE() << "accepted " << json_text;
    } catch (const OptionError& e) {
      EXPECT_EQ(std::string(e.what()).rfind(message, 0), 0u) << e.what();
    }
  }
}
