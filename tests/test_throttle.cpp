#include "parry/conceal/throttle.hpp"

#include <atomic>
#include <cmath>
#include <thread>

#include "conceal_support.hpp"
#include "test_support.hpp"

using namespace parry;
using conceal::Throttle;
using conceal::ThrottleOptions;

namespace {

using parry::testing::FakeClock;

GateDecision ask(Throttle& t, const std::string& client, int64_t images = 1) {
  return t.admit(RequestContext{client}, torch::zeros({images, 1, 2, 2}));
}

}  // namespace

TEST(Throttle, TokenBucketArithmetic) {
  FakeClock clock;
  Throttle t(ThrottleOptions().rate(2).burst(4).clock(clock.fn()));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(ask(t, "a").action, GateDecision::Action::Admit) << i;
  auto d = ask(t, "a");
  EXPECT_EQ(d.action, GateDecision::Action::Reject);
  EXPECT_EQ(d.reason, "rate_limited");
  EXPECT_DOUBLE_EQ(d.retry_after_seconds, 0.5);  // one token at 2/s
  clock.advance(0.49);
  EXPECT_EQ(ask(t, "a").action, GateDecision::Action::Reject);
  clock.advance(0.01);
  EXPECT_EQ(ask(t, "a").action, GateDecision::Action::Admit);
  // Another client has its own bucket.
  EXPECT_EQ(ask(t, "b", 4).action, GateDecision::Action::Admit);
  // Refill caps at the burst.
  clock.advance(100);
  EXPECT_EQ(ask(t, "a", 4).action, GateDecision::Action::Admit);
  EXPECT_EQ(ask(t, "a", 1).action, GateDecision::Action::Reject);
}

TEST(Throttle, ChargesPerImageAndNeverAdmitsMoreThanTheBurst) {
  FakeClock clock;
  Throttle t(ThrottleOptions().rate(1).burst(3).clock(clock.fn()));
  auto d = ask(t, "a", 5);
  EXPECT_EQ(d.action, GateDecision::Action::Reject);
  EXPECT_TRUE(std::isinf(d.retry_after_seconds)) << "a batch above the burst can never pass";
  EXPECT_EQ(ask(t, "a", 2).action, GateDecision::Action::Admit);
  d = ask(t, "a", 3);
  EXPECT_DOUBLE_EQ(d.retry_after_seconds, 2.0);  // has 1 token, needs 3, at 1/s
  // Malformed input still costs one token.
  EXPECT_EQ(t.admit(RequestContext{"a"}, torch::Tensor()).action, GateDecision::Action::Admit);
  EXPECT_EQ(t.admit(RequestContext{"a"}, torch::zeros({3})).action, GateDecision::Action::Reject);
}

TEST(Throttle, GlobalBucketBoundsManyClients) {
  FakeClock clock;
  Throttle t(ThrottleOptions().rate(100).burst(100).global_rate(10).global_burst(5).clock(clock.fn()));
  int admitted = 0;
  for (int i = 0; i < 20; ++i) admitted += ask(t, "sybil-" + std::to_string(i)).action == GateDecision::Action::Admit;
  EXPECT_EQ(admitted, 5);
  auto d = ask(t, "fresh");
  EXPECT_EQ(d.action, GateDecision::Action::Reject);
  EXPECT_DOUBLE_EQ(d.retry_after_seconds, 0.1);
}

TEST(Throttle, ClockGoingBackwardsRefillsNothing) {
  FakeClock clock;
  Throttle t(ThrottleOptions().rate(1).burst(1).clock(clock.fn()));
  EXPECT_EQ(ask(t, "a").action, GateDecision::Action::Admit);
  clock.advance(-50);
  EXPECT_EQ(ask(t, "a").action, GateDecision::Action::Reject);
}

TEST(Throttle, MemoryIsBoundedByEvictingTheLeastRecentlySeen) {
  FakeClock clock;
  Throttle t(ThrottleOptions().rate(1).burst(1).max_clients(3).clock(clock.fn()));
  ask(t, "a");
  ask(t, "b");
  ask(t, "c");
  ask(t, "a");  // a is now most recent; b is the oldest
  ask(t, "d");  // evicts b
  EXPECT_EQ(t.tracked_clients(), 3u);
  EXPECT_EQ(t.evictions(), 1u);
  EXPECT_EQ(ask(t, "a").action, GateDecision::Action::Reject) << "a must still be tracked (and empty)";
  for (int i = 0; i < 1000; ++i) ask(t, "x" + std::to_string(i));
  EXPECT_EQ(t.tracked_clients(), 3u);
}

TEST(Throttle, OptionsValidated) {
  EXPECT_THROW(ThrottleOptions().rate(0), OptionError);
  EXPECT_THROW(ThrottleOptions().rate(-1), OptionError);
  EXPECT_THROW(ThrottleOptions().burst(0.5), OptionError);
  EXPECT_THROW(ThrottleOptions().global_rate(-1), OptionError);
  EXPECT_THROW(ThrottleOptions().max_clients(0), OptionError);
  EXPECT_THROW(ThrottleOptions().clock({}), OptionError);
  try {
    ThrottleOptions().rate(-2.5);
    FAIL() << "accepted a negative rate";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("-2.5"), std::string::npos);
  }
}

TEST(Throttle, ExactCountsUnderConcurrency) {
  FakeClock clock;  // frozen: no refill, so exactly `burst` requests pass per client
  Throttle t(ThrottleOptions().rate(1).burst(50).global_rate(1).global_burst(300).clock(clock.fn()));
  constexpr int kThreads = 8;
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < kThreads; ++th) {
    threads.emplace_back([&, th] {
      for (int i = 0; i < 100; ++i) {
        // Two threads share each client id.
        if (ask(t, "client-" + std::to_string(th % 4)).action == GateDecision::Action::Admit) ++admitted;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(admitted.load(), 200);  // 4 clients × burst 50, under the global 300
  EXPECT_EQ(t.tracked_clients(), 4u);
}
