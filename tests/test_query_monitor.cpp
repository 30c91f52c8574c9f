#include "parry/conceal/query_monitor.hpp"
#include "parry/data/predict_image.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <deque>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "attack_support.hpp"
#include "conceal_support.hpp"
#include "parry/conceal/output_policies.hpp"
#include "parry/conceal/throttle.hpp"
#include "parry/core/log.hpp"
#include "parry/data/image.hpp"

#define XXH_INLINE_ALL
#include <xxhash.h>

using namespace parry;
using conceal::MonitorAction;
using conceal::MonitorScope;
using conceal::QueryMonitor;
using conceal::QueryMonitorOptions;

namespace {

using parry::testing::image;
using parry::testing::observe_one;
using parry::testing::test_images;

// Captures Parry's log for the test and silences it afterwards.
class QueryMonitorTest : public parry::testing::LoggedTest {};

Guard reference_guard(std::shared_ptr<QueryMonitor> monitor, std::shared_ptr<const OutputPolicy> policy = nullptr) {
  GuardBuilder builder(parry::testing::reference_model(), InputSpec(1, 28, 28));
  builder.add_gate(std::move(monitor));
  if (policy) builder.set_output_policy(std::move(policy));
  return builder.build();
}

}  // namespace

TEST_F(QueryMonitorTest, FingerprintIsTheLargestDistinctWindowHashes) {
  QueryMonitor monitor;
  const auto print = monitor.fingerprint(image(0));
  ASSERT_EQ(print.size(), 50u);
  EXPECT_TRUE(std::is_sorted(print.rbegin(), print.rend())) << "largest first";
  EXPECT_EQ(std::set<uint64_t>(print.begin(), print.end()).size(), print.size()) << "distinct";
  EXPECT_EQ(monitor.fingerprint(image(0)), print) << "deterministic";
  EXPECT_NE(monitor.fingerprint(image(1)), print);
  // A tiny image is one window.
  EXPECT_EQ(monitor.fingerprint(torch::full({1, 2, 2}, 0.5f)).size(), 1u);
  // Unsalted quantisation: values inside one level give the same
  // fingerprint; the level boundaries sit at multiples of step/255 of the range.
  QueryMonitor plain(QueryMonitorOptions().salted(false));
  EXPECT_EQ(plain.fingerprint(torch::full({1, 4, 8}, 0.0f)), plain.fingerprint(torch::full({1, 4, 8}, 49 / 255.f)));
  EXPECT_NE(plain.fingerprint(torch::full({1, 4, 8}, 0.0f)), plain.fingerprint(torch::full({1, 4, 8}, 50 / 255.f)));
  // Unsalted, a blank image's windows are all alike.
  EXPECT_EQ(plain.fingerprint(torch::zeros({1, 28, 28})).size(), 1u);
  // Blacklight's definition, computed here independently: level
  // floor(255·v/50), XXH3-64 of every 20-value window (step 1), the 50
  // largest distinct hashes (a hash of 0 becomes 1).
  {
    const torch::Tensor x = image(3).contiguous();
    std::vector<uint8_t> levels;
    for (int64_t i = 0; i < x.numel(); ++i) {
      levels.push_back(static_cast<uint8_t>(std::floor(255.0 * x.data_ptr<float>()[i] / 50 + 1e-6)));
    }
    std::set<uint64_t, std::greater<uint64_t>> hashes;
    for (size_t i = 0; i + 20 <= levels.size(); ++i) {
      const uint64_t h = XXH3_64bits(levels.data() + i, 20);
      hashes.insert(h == 0 ? 1 : h);
    }
    std::vector<uint64_t> expected(hashes.begin(), hashes.end());
    expected.resize(std::min<size_t>(expected.size(), 50));
    EXPECT_EQ(plain.fingerprint(x), expected);
  }
  // The value range is mapped onto [0, 255] before quantising.
  QueryMonitor keyed(QueryMonitorOptions().salt_key(7));
  QueryMonitor shifted(QueryMonitorOptions().value_range(-1, 1).salt_key(7));
  EXPECT_EQ(shifted.fingerprint(image(0) * 2 - 1), keyed.fingerprint(image(0)));
  EXPECT_THROW(monitor.fingerprint(torch::Tensor()), InputError);
  EXPECT_THROW(monitor.fingerprint(torch::full({1, 2, 2}, NAN)), InputError);
  EXPECT_THROW(monitor.fingerprint(torch::full({1, 2, 2}, 2.0f)), InputError);
}

TEST_F(QueryMonitorTest, IdenticalAndLightlyPerturbedQueriesMatch) {
  // An identical copy always matches all its hashes. Lightly perturbed ones
  // match unless the noise moves values across edges in most kept windows:
  // on the unsalted grid a blank background sits a whole step from its next
  // edge, with the salt at least half a step, and mid-range values sit
  // anywhere, so a few copies fall below the threshold (rates over 200
  // images, a fixed key; docs/concealment.md, "Secret salt").
  for (const bool salted : {false, true}) {
    QueryMonitor monitor(QueryMonitorOptions().max_stored_queries(10000).salted(salted).salt_key(42));
    const int64_t n = 200;
    int64_t one_level = 0, linf = 0;
    for (int64_t i = 0; i < n; ++i) {
      const torch::Tensor x = image(i);
      const auto first = observe_one(monitor, x);
      EXPECT_FALSE(first.detected) << "image " << i;
      const auto again = observe_one(monitor, x);
      EXPECT_TRUE(again.detected);
      EXPECT_EQ(again.global_matches, static_cast<int64_t>(monitor.fingerprint(x).size()));
      EXPECT_EQ(again.global_match_id, first.query_id);
      // ±1/255 on every pixel (8-bit rounding noise).
      const torch::Tensor noisy = (x + (torch::randint(0, 2, x.sizes()) * 2 - 1) / 255.0).clamp(0, 1);
      one_level += observe_one(monitor, noisy.to(torch::kFloat32)).detected;
      // Uniform noise with L∞ 0.01.
      const torch::Tensor uniform = (x + (torch::rand(x.sizes()) * 2 - 1) * 0.01).clamp(0, 1);
      linf += observe_one(monitor, uniform.to(torch::kFloat32)).detected;
    }
    std::cout << (salted ? "salted" : "unsalted") << ": copies still matched: ±1/255 noise " << one_level << "/" << n
              << ", uniform L-inf 0.01 noise " << linf << "/" << n << "\n";
    EXPECT_GE(one_level, n * 95 / 100);
    EXPECT_GE(linf, n * 85 / 100);
    EXPECT_EQ(monitor.stats().images, static_cast<uint64_t>(4 * n));
  }
}

TEST_F(QueryMonitorTest, UnrelatedImagesDoNotMatch) {
  QueryMonitor monitor(QueryMonitorOptions().max_stored_queries(10000));
  int64_t most = 0;
  for (int64_t i = 0; i < 1000; ++i) {
    const auto o = observe_one(monitor, image(i));
    most = std::max(most, o.global_matches);
  }
  std::cout << "most hashes shared by an image with any earlier one of 1000: " << most << "\n";
  EXPECT_EQ(monitor.stats().detections, 0u);
  EXPECT_LT(most, monitor.options().threshold());
  EXPECT_TRUE(logged().empty());
}

TEST_F(QueryMonitorTest, PrunedSearchIsExactAtTheThreshold) {
  // threshold(1) walks every posting list (exhaustive counts); the default
  // walks only the shortest n − 24. They must agree on every detection.
  // One salt key, so that both see the same fingerprints.
  QueryMonitor pruned(QueryMonitorOptions().threshold(25).salt_key(3));
  QueryMonitor exhaustive(QueryMonitorOptions().threshold(1).salt_key(3));
  int64_t at_threshold = 0;
  for (int64_t i = 0; i < 300; ++i) {
    // Test images, each followed by noisy copies of growing strength.
    const torch::Tensor x = image(i / 3);
    const double noise = std::array<double, 3>{0.0, 0.01, 0.03}[i % 3];
    const torch::Tensor q = (x + (torch::rand(x.sizes()) * 2 - 1) * noise).clamp(0, 1).to(torch::kFloat32);
    const auto p = observe_one(pruned, q);
    const auto e = observe_one(exhaustive, q);
    if (e.global_matches >= 25) {
      ++at_threshold;
      EXPECT_TRUE(p.detected) << i;
      EXPECT_EQ(p.global_matches, e.global_matches) << i;
      EXPECT_EQ(p.global_match_id, e.global_match_id) << i;
    } else {
      EXPECT_FALSE(p.detected) << i;
      EXPECT_LE(p.global_matches, e.global_matches) << i;
    }
  }
  std::cout << at_threshold << " of 300 images at the threshold\n";
  EXPECT_GT(at_threshold, 40) << "the stream must exercise detections";
  EXPECT_LT(at_threshold, 200) << "and non-detections";
}

TEST_F(QueryMonitorTest, EvictionBoundsMemoryAndEmptiesTheIndex) {
  constexpr int64_t kMax = 10;
  QueryMonitor monitor(QueryMonitorOptions().max_stored_queries(kMax));
  for (int64_t i = 0; i < 100; ++i) observe_one(monitor, image(i));
  auto stats = monitor.stats();
  EXPECT_EQ(stats.stored, static_cast<uint64_t>(kMax));
  EXPECT_EQ(stats.evictions, 90u);
  // The index holds exactly the postings and keys of the 10 newest images.
  uint64_t postings = 0;
  std::set<uint64_t> keys;
  for (int64_t i = 90; i < 100; ++i) {
    const auto print = monitor.fingerprint(image(i));
    postings += print.size();
    keys.insert(print.begin(), print.end());
  }
  EXPECT_EQ(stats.postings, postings);
  EXPECT_EQ(stats.index_entries, keys.size());
  const uint64_t memory = stats.memory_bytes;
  // An evicted image no longer matches; a stored one does.
  EXPECT_FALSE(observe_one(monitor, image(0)).detected);
  EXPECT_TRUE(observe_one(monitor, image(99)).detected);
  // Memory stops growing once the store is full.
  for (int64_t i = 100; i < 1000; ++i) observe_one(monitor, image(i));
  stats = monitor.stats();
  EXPECT_EQ(stats.stored, static_cast<uint64_t>(kMax));
  EXPECT_LE(stats.postings, static_cast<uint64_t>(kMax * 50));
  EXPECT_LE(stats.memory_bytes, 2 * memory);
  monitor.clear();
  stats = monitor.stats();
  EXPECT_EQ(stats.stored, 0u);
  EXPECT_EQ(stats.index_entries, 0u);
  EXPECT_EQ(stats.postings, 0u);
  EXPECT_EQ(stats.images, 0u);
}

TEST_F(QueryMonitorTest, EvictionKeepsMatchingCorrectWhenSlotsAreReused) {
  // A store of 3 receiving the same few images over and over: every slot is
  // reused many times and every key's posting list is cut at its old end.
  QueryMonitor monitor(QueryMonitorOptions().max_stored_queries(3));
  for (int round = 0; round < 20; ++round) {
    for (int64_t i = 0; i < 4; ++i) {
      const auto o = observe_one(monitor, image(i));
      // With 4 images cycling through 3 slots, image i was evicted just before.
      if (round > 0) {
        EXPECT_FALSE(o.detected) << "round " << round << " image " << i << ": " << o.global_matches;
      }
    }
    const auto o = observe_one(monitor, image(3));
    EXPECT_TRUE(o.detected);
    EXPECT_EQ(o.global_match_id, o.query_id - 1);
    observe_one(monitor, image(100 + round));  // push image 3 duplicates apart
  }
  const auto stats = monitor.stats();
  EXPECT_EQ(stats.stored, 3u);
  EXPECT_LE(stats.postings, 150u);
}

TEST_F(QueryMonitorTest, MatchesAgreeWithBruteForceUnderEviction) {
  // A small store receiving repeats, noisy copies and sparse images (few
  // distinct windows, so short fingerprints leave slot positions unused):
  // every count and match id must equal a brute-force search over the
  // fingerprints of the images currently stored. The in-process index keeps
  // up to capacity/32 evicted images (at least 1) until it removes them in a
  // batch: capacities 5, 70 and 160 keep 1, 2 and 5, so batches of several
  // images are removed, and the stats must count the live images only. With
  // threshold 1 every count is exact; with threshold 10 (the pruned search:
  // Bloom filters, key blocks) counts are exact at or above 10 and lower
  // bounds below, in both indexes of scope Both (one client: the per-client
  // count equals the global one).
  struct Setting {
    int64_t threshold;
    MonitorScope scope;
  };
  for (const Setting setting : {Setting{1, MonitorScope::Global}, Setting{10, MonitorScope::Both}})
    for (const size_t capacity : {5, 70, 160}) {
      QueryMonitor monitor(QueryMonitorOptions()
                               .threshold(setting.threshold)
                               .scope(setting.scope)
                               .max_stored_queries(static_cast<int64_t>(capacity)));
      const bool both = setting.scope == MonitorScope::Both;
      const std::string where =
          "threshold " + std::to_string(setting.threshold) + ", capacity " + std::to_string(capacity);
      std::deque<std::pair<uint64_t, std::set<uint64_t>>> stored;  // id, fingerprint; oldest first
      const auto stream = parry::testing::mixed_stream(400, 7);
      for (int step = 0; step < 400; ++step) {
        const torch::Tensor& x = stream[static_cast<size_t>(step)];
        const auto print = monitor.fingerprint(x);
        const std::set<uint64_t> keys(print.begin(), print.end());
        int64_t best = 0;
        uint64_t best_id = 0;
        for (const auto& [id, other] : stored) {  // oldest first: ties go to the newest
          int64_t shared = 0;
          for (const uint64_t k : keys) shared += other.count(k);
          if (shared > 0 && shared >= best) {
            best = shared;
            best_id = id;
          }
        }
        const auto o = observe_one(monitor, x);
        if (best >= setting.threshold) {
          ASSERT_EQ(o.global_matches, best) << where << ", step " << step;
          ASSERT_EQ(o.global_match_id, best_id) << where << ", step " << step;
        } else {
          ASSERT_LE(o.global_matches, best) << where << ", step " << step;
        }
        if (both) {
          if (best >= setting.threshold) {
            ASSERT_EQ(o.client_matches, best) << where << ", step " << step;
            ASSERT_EQ(o.client_match_id, best_id) << where << ", step " << step;
          } else {
            ASSERT_LE(o.client_matches, best) << where << ", step " << step;
          }
        }
        stored.emplace_back(o.query_id, keys);
        if (stored.size() > capacity) stored.pop_front();
        // Every 50 steps, and right after the first eviction (dead images held
        // while the slot ring is still growing).
        if (step % 50 == 49 || step == static_cast<int>(capacity) + 1) {
          uint64_t postings = 0;
          std::set<uint64_t> distinct;
          for (const auto& [id, other] : stored) {
            postings += other.size();
            distinct.insert(other.begin(), other.end());
          }
          const auto stats = monitor.stats();
          const uint64_t indexes = both ? 2 : 1;
          ASSERT_EQ(stats.stored, stored.size()) << where << ", step " << step;
          ASSERT_EQ(stats.postings, indexes * postings) << where << ", step " << step;
          ASSERT_EQ(stats.index_entries, indexes * distinct.size()) << where << ", step " << step;
        }
      }
    }
}

TEST_F(QueryMonitorTest, PerClientAndGlobalScopes) {
  const torch::Tensor x = image(5);
  {
    QueryMonitor global(QueryMonitorOptions().scope(MonitorScope::Global));
    EXPECT_FALSE(observe_one(global, x, "alice").detected);
    const auto o = observe_one(global, x, "bob");
    EXPECT_TRUE(o.detected) << "a second account does not hide a duplicate";
    EXPECT_EQ(o.client_matches, 0) << "per-client index not kept";
  }
  {
    QueryMonitor per_client(QueryMonitorOptions().scope(MonitorScope::PerClient));
    EXPECT_FALSE(observe_one(per_client, x, "alice").detected);
    const auto bob = observe_one(per_client, x, "bob");
    EXPECT_FALSE(bob.detected) << "bob has not sent it before";
    EXPECT_EQ(bob.global_matches, 0);
    const auto alice = observe_one(per_client, x, "alice");
    EXPECT_TRUE(alice.detected);
    EXPECT_EQ(alice.client_match_id, 1u);
  }
  {
    QueryMonitor both(QueryMonitorOptions().scope(MonitorScope::Both));
    EXPECT_FALSE(observe_one(both, x, "alice").detected);
    const auto bob = observe_one(both, x, "bob");
    EXPECT_TRUE(bob.detected);
    EXPECT_EQ(bob.client_matches, 0);
    const auto alice = observe_one(both, x, "alice");
    EXPECT_EQ(alice.client_matches, static_cast<int64_t>(both.fingerprint(x).size()));
    EXPECT_EQ(alice.client_match_id, 1u);
    EXPECT_EQ(alice.global_match_id, 2u) << "the newest of equally good matches";
    EXPECT_EQ(both.stats().postings, 2 * 3 * both.fingerprint(x).size());
  }
}

TEST_F(QueryMonitorTest, BatchImagesAreComparedWithEachOther) {
  QueryMonitor monitor;
  const torch::Tensor batch = torch::stack({image(0), image(1), image(0)});
  const auto observations = monitor.observe(RequestContext{"c"}, batch);
  ASSERT_EQ(observations.size(), 3u);
  EXPECT_FALSE(observations[0].detected);
  EXPECT_FALSE(observations[1].detected);
  EXPECT_TRUE(observations[2].detected);
  EXPECT_EQ(observations[2].global_match_id, observations[0].query_id);
  EXPECT_EQ(monitor.admit(RequestContext{"c"}, batch).action, GateDecision::Action::Flag);
  EXPECT_EQ(monitor.stats().requests_detected, 2u);
}

TEST_F(QueryMonitorTest, FlagActionThroughGuard) {
  auto monitor = std::make_shared<QueryMonitor>(QueryMonitorOptions().action(MonitorAction::Flag));
  Guard guard = reference_guard(monitor);
  const Response first = guard.predict(image(0), RequestContext{"mallory"});
  EXPECT_EQ(first.verdict, Verdict::Accepted);
  const Response second = guard.predict(image(0), RequestContext{"mallory"});
  EXPECT_EQ(second.verdict, Verdict::Flagged);
  EXPECT_EQ(second.reason, "flagged");
  EXPECT_EQ(second.labels, first.labels) << "flagged requests are still answered";
  EXPECT_FALSE(second.scores.defined());
  EXPECT_EQ(monitor->stats().detections, 1u);
}

// The encoded-image serving path: the throttle still runs before decoding,
// the monitor after it, on the decoded pixels (it used to be handed an empty
// tensor there and silently skip every request).
TEST_F(QueryMonitorTest, PredictImageFingerprintsTheDecodedImage) {
  auto monitor = std::make_shared<QueryMonitor>(QueryMonitorOptions().action(MonitorAction::Flag));
  double now = 0;
  Guard guard = GuardBuilder(parry::testing::reference_model(), InputSpec(1, 28, 28))
                    .add_gate(monitor)
                    .add_gate(std::make_shared<conceal::Throttle>(
                        conceal::ThrottleOptions().rate(1).burst(3).clock([&now] { return now; })))
                    .build();
  const std::string png = data::encode_png(image(0));
  EXPECT_EQ(parry::data::predict_image(guard, png, RequestContext{"mallory"}).verdict, Verdict::Accepted);
  const Response second = parry::data::predict_image(guard, png, RequestContext{"mallory"});
  EXPECT_EQ(second.verdict, Verdict::Flagged);
  EXPECT_EQ(second.reason, "flagged");
  EXPECT_EQ(monitor->stats().images, 2u);
  EXPECT_EQ(monitor->stats().skipped, 0u);
  // Undecodable bytes never reach the monitor; the throttle counted them first.
  EXPECT_THROW(parry::data::predict_image(guard, "garbage", RequestContext{"mallory"}), InputError);
  EXPECT_EQ(monitor->stats().images, 2u);
  EXPECT_EQ(parry::data::predict_image(guard, png, RequestContext{"mallory"}).verdict, Verdict::Rejected);
  EXPECT_EQ(monitor->stats().images, 2u) << "a throttled request costs no fingerprinting";
}

TEST_F(QueryMonitorTest, RejectActionThroughGuard) {
  auto monitor = std::make_shared<QueryMonitor>(QueryMonitorOptions().action(MonitorAction::Reject));
  Guard guard = reference_guard(monitor);
  EXPECT_EQ(guard.predict(image(0), RequestContext{"mallory"}).verdict, Verdict::Accepted);
  const Response second = guard.predict(image(0), RequestContext{"mallory"});
  EXPECT_EQ(second.verdict, Verdict::Rejected);
  EXPECT_EQ(second.reason, "flagged");
  EXPECT_TRUE(second.labels.empty());
  EXPECT_EQ(guard.predict(image(1), RequestContext{"mallory"}).verdict, Verdict::Accepted);
}

TEST_F(QueryMonitorTest, SilentActionAnswersNormallyButRecords) {
  std::vector<conceal::QueryMonitorDetection> seen;
  auto monitor = std::make_shared<QueryMonitor>(
      QueryMonitorOptions().action(MonitorAction::Silent).on_detection([&](const conceal::QueryMonitorDetection& d) {
        seen.push_back(d);
      }));
  Guard guard = reference_guard(monitor);
  const Response first = guard.predict(image(0), RequestContext{"mallory"});
  const Response second = guard.predict(image(0), RequestContext{"mallory"});
  EXPECT_EQ(second.verdict, Verdict::Accepted);
  EXPECT_EQ(second.reason, "ok");
  EXPECT_EQ(second.labels, first.labels);
  EXPECT_EQ(monitor->stats().detections, 1u);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].client_id, "mallory");
  EXPECT_EQ(seen[0].query_id, 2u);
  EXPECT_EQ(seen[0].matched_query_id, 1u);
  EXPECT_EQ(seen[0].scope, MonitorScope::Global);
  const auto log = logged();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_NE(log[0].find("mallory"), std::string::npos);
  EXPECT_NE(log[0].find("silent"), std::string::npos);
}

TEST_F(QueryMonitorTest, DetectionLinesAreRateLimitedButEveryDetectionIsCounted) {
  int64_t callbacks = 0;
  QueryMonitor monitor(
      QueryMonitorOptions().action(MonitorAction::Silent).on_detection([&](const conceal::QueryMonitorDetection&) {
        ++callbacks;
      }));
  const torch::Tensor x = image(0);
  const int64_t copies = 3 * QueryMonitor::kDetectionLinesPerSecond;
  const auto started = std::chrono::steady_clock::now();
  for (int64_t i = 0; i <= copies; ++i) monitor.admit(RequestContext{"mallory"}, x);  // 1 original, `copies` repeats
  const auto spent = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(monitor.stats().detections, static_cast<uint64_t>(copies));
  EXPECT_EQ(callbacks, copies);
  if (spent < std::chrono::milliseconds(900)) {  // all inside one window (always, unless the machine stalls)
    EXPECT_EQ(static_cast<int64_t>(logged().size()), QueryMonitor::kDetectionLinesPerSecond);
  } else {
    EXPECT_LT(static_cast<int64_t>(logged().size()), copies);
  }
  // The next window logs again and says how many lines were left out.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  monitor.admit(RequestContext{"mallory"}, x);
  const auto log = logged();
  ASSERT_FALSE(log.empty());
  const std::string& last = log.back();
  if (spent < std::chrono::milliseconds(900)) {
    EXPECT_NE(
        last.find("(" + std::to_string(copies - QueryMonitor::kDetectionLinesPerSecond) + " detections not logged)"),
        std::string::npos)
        << last;
  }
  EXPECT_EQ(monitor.stats().detections, static_cast<uint64_t>(copies + 1));
}

TEST_F(QueryMonitorTest, OptionsValidated) {
  EXPECT_THROW(QueryMonitorOptions().quantization_step(0), OptionError);
  EXPECT_THROW(QueryMonitorOptions().quantization_step(256), OptionError);
  EXPECT_THROW(QueryMonitorOptions().quantization_step(NAN), OptionError);
  EXPECT_THROW(QueryMonitorOptions().window(0), OptionError);
  EXPECT_THROW(QueryMonitorOptions().window_step(0), OptionError);
  EXPECT_THROW(QueryMonitorOptions().hashes_kept(0), OptionError);
  EXPECT_THROW(QueryMonitorOptions().hashes_kept(1025), OptionError);
  EXPECT_THROW(QueryMonitorOptions().threshold(0), OptionError);
  EXPECT_THROW(QueryMonitorOptions().value_range(1, 1), OptionError);
  EXPECT_THROW(QueryMonitorOptions().value_range(0, INFINITY), OptionError);
  EXPECT_THROW(QueryMonitorOptions().image_shape(1, 0, 28), OptionError);
  EXPECT_THROW(QueryMonitorOptions().max_batch(0), OptionError);
  EXPECT_THROW(QueryMonitorOptions().max_stored_queries(0), OptionError);
  EXPECT_THROW(QueryMonitorOptions().max_scan_per_hash(0), OptionError);
  EXPECT_THROW(QueryMonitorOptions().scope(static_cast<MonitorScope>(7)), OptionError);
  EXPECT_THROW(QueryMonitorOptions().action(static_cast<MonitorAction>(7)), OptionError);
  EXPECT_THROW(QueryMonitor(QueryMonitorOptions().hashes_kept(20).threshold(21)), OptionError);
  EXPECT_THROW(QueryMonitor(QueryMonitorOptions().max_stored_queries(int64_t{1} << 30)), OptionError);
  // The boundary: 32-bit posting ids, room for one evicted image beyond the
  // capacity (nothing is allocated until images arrive).
  const int64_t most = (int64_t{0xffffffff} - 1) / 50 - 1;
  EXPECT_NO_THROW(QueryMonitor(QueryMonitorOptions().max_stored_queries(most)));
  EXPECT_THROW(QueryMonitor(QueryMonitorOptions().max_stored_queries(most + 1)), OptionError);
  try {
    QueryMonitorOptions().window(-3);
    FAIL() << "accepted a negative window";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("window"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("-3"), std::string::npos);
  }
  try {
    QueryMonitor(QueryMonitorOptions().hashes_kept(20).threshold(30));
    FAIL();
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("30"), std::string::npos);
  }
}

TEST_F(QueryMonitorTest, MalformedInputIsAdmittedUnrecordedAndTheGuardRejectsIt) {
  const InputSpec spec = InputSpec(1, 28, 28).max_batch(4);
  auto monitor = std::make_shared<QueryMonitor>(QueryMonitorOptions().match_spec(spec));
  const std::vector<torch::Tensor> bad = {
      torch::Tensor(),
      torch::zeros({1, 28, 28}, torch::kInt64),
      torch::zeros({1, 28, 28}, torch::kFloat64),
      torch::zeros({28, 28}),
      torch::zeros({1, 1, 1, 28, 28}),
      torch::zeros({0, 1, 28, 28}),
      torch::zeros({5, 1, 28, 28}),
      torch::zeros({1, 0, 28}),
      torch::zeros({3, 28, 28}),
      torch::full({1, 28, 28}, NAN),
      torch::full({1, 28, 28}, INFINITY),
      torch::full({1, 28, 28}, 1.5f),
      torch::full({1, 28, 28}, -0.1f),
      torch::zeros({1, 28, 28}).to_sparse(),
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_EQ(monitor->admit(RequestContext{"x"}, bad[i]).action, GateDecision::Action::Admit) << i;
    EXPECT_THROW(monitor->observe(RequestContext{"x"}, bad[i]), InputError) << i;
  }
  auto stats = monitor->stats();
  EXPECT_EQ(stats.skipped, bad.size());
  EXPECT_EQ(stats.stored, 0u);
  Guard guard = GuardBuilder(parry::testing::reference_model(), spec).add_gate(monitor).build();
  for (size_t i = 0; i < bad.size(); ++i) EXPECT_THROW(guard.predict(bad[i], RequestContext{"x"}), InputError) << i;
  // A valid but non-contiguous view is fingerprinted like its contiguous copy.
  const torch::Tensor transposed = image(3).transpose(1, 2).contiguous().transpose(1, 2);
  ASSERT_FALSE(transposed.is_contiguous());
  EXPECT_FALSE(observe_one(*monitor, image(3)).detected);
  EXPECT_TRUE(observe_one(*monitor, transposed).detected);
}

TEST_F(QueryMonitorTest, ExactCountsUnderConcurrency) {
  for (const MonitorScope scope : {MonitorScope::Global, MonitorScope::PerClient, MonitorScope::Both}) {
    QueryMonitor monitor(QueryMonitorOptions().scope(scope).max_stored_queries(10000));
    constexpr int kThreads = 8;
    constexpr int kImages = 40;
    test_images();  // load before the threads start
    std::atomic<int> flagged{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        const RequestContext context{"client-" + std::to_string(t)};
        for (int i = 0; i < kImages; ++i) {
          const torch::Tensor x = image(t * kImages + i);
          // Each image twice: the second is a duplicate whatever the interleaving.
          flagged += monitor.admit(context, x).action == GateDecision::Action::Flag;
          flagged += monitor.admit(context, x).action == GateDecision::Action::Flag;
        }
      });
    }
    for (auto& th : threads) th.join();
    const auto stats = monitor.stats();
    EXPECT_EQ(flagged.load(), kThreads * kImages) << conceal::to_string(scope);
    EXPECT_EQ(stats.images, static_cast<uint64_t>(2 * kThreads * kImages));
    EXPECT_EQ(stats.detections, static_cast<uint64_t>(kThreads * kImages));
    EXPECT_EQ(stats.requests_detected, static_cast<uint64_t>(kThreads * kImages));
    EXPECT_EQ(stats.stored, static_cast<uint64_t>(2 * kThreads * kImages));
  }
}

// End to end: black-box attacks through Guard::predict against the reference
// model are flagged within a few queries (counted from the run's first query,
// by image id); benign traffic is not.

TEST_F(QueryMonitorTest, SquareAttackIsFlagged) {
  std::mutex mutex;
  std::map<std::string, uint64_t> first_detection;
  auto monitor = std::make_shared<QueryMonitor>(
      QueryMonitorOptions().match_spec(InputSpec(1, 28, 28)).on_detection([&](const conceal::QueryMonitorDetection& d) {
        std::lock_guard<std::mutex> lock(mutex);
        first_detection.emplace(d.client_id, d.query_id);
      }));
  Guard guard = reference_guard(monitor, std::make_shared<conceal::Full>());
  const auto data = parry::testing::correctly_classified(4);
  for (int64_t i = 0; i < 4; ++i) {
    const std::string client = "square-" + std::to_string(i);
    const uint64_t before = monitor->stats().images;
    const auto result = attack::square(guard, data.images.slice(0, i, i + 1), data.labels.slice(0, i, i + 1),
                                       attack::SquareOptions(0.1).max_queries(60).seed(i).client_id(client));
    ASSERT_TRUE(first_detection.count(client)) << "run " << i << " was never flagged";
    const uint64_t queries = first_detection[client] - before;
    EXPECT_LE(queries, 20u) << "run " << i;
    std::cout << "Square run " << i << ": flagged at query " << queries << " of " << result.queries[0].item<int64_t>()
              << "\n";
  }
}

TEST_F(QueryMonitorTest, RejectingMonitorStopsSquare) {
  auto monitor = std::make_shared<QueryMonitor>(
      QueryMonitorOptions().match_spec(InputSpec(1, 28, 28)).action(MonitorAction::Reject));
  Guard guard = reference_guard(monitor, std::make_shared<conceal::Full>());
  const auto data = parry::testing::correctly_classified(2);
  const auto result = attack::square(guard, data.images, data.labels, attack::SquareOptions(0.1).max_queries(200));
  EXPECT_TRUE(result.stopped_by_defense);
  EXPECT_EQ(result.stop_reason, "flagged");
  EXPECT_LE(result.queries.max().item<int64_t>(), 20);
}

TEST_F(QueryMonitorTest, HopSkipJumpIsFlagged) {
  std::mutex mutex;
  std::map<std::string, uint64_t> first_detection;
  auto monitor = std::make_shared<QueryMonitor>(
      QueryMonitorOptions().match_spec(InputSpec(1, 28, 28)).on_detection([&](const conceal::QueryMonitorDetection& d) {
        std::lock_guard<std::mutex> lock(mutex);
        first_detection.emplace(d.client_id, d.query_id);
      }));
  Guard guard = reference_guard(monitor);  // label-only
  const auto data = parry::testing::correctly_classified(3);
  for (int64_t i = 0; i < 3; ++i) {
    const std::string client = "hsj-" + std::to_string(i);
    const uint64_t before = monitor->stats().images;
    attack::hop_skip_jump(guard, data.images.slice(0, i, i + 1), data.labels.slice(0, i, i + 1),
                          attack::HopSkipJumpOptions().max_queries(150).initial_probes(20).seed(i).client_id(client));
    ASSERT_TRUE(first_detection.count(client)) << "run " << i << " was never flagged";
    const uint64_t queries = first_detection[client] - before;
    EXPECT_LE(queries, 20u) << "run " << i;
    std::cout << "HopSkipJump run " << i << ": flagged at query " << queries << "\n";
  }
}

TEST_F(QueryMonitorTest, BenignTestImagesAreNotFlagged) {
  auto monitor = std::make_shared<QueryMonitor>(QueryMonitorOptions().match_spec(InputSpec(1, 28, 28)));
  Guard guard = reference_guard(monitor);
  int64_t flagged = 0;
  for (int64_t begin = 0; begin < 1000; begin += 50) {
    const Response r = guard.predict(test_images().slice(0, begin, begin + 50), RequestContext{"benign"});
    flagged += r.verdict != Verdict::Accepted;
  }
  EXPECT_EQ(flagged, 0);
  EXPECT_EQ(monitor->stats().images, 1000u);
  EXPECT_EQ(monitor->stats().detections, 0u);
}

namespace {

// Blacklight's salt for value i under `key`, as documented in
// QueryMonitorOptions::salted: (step/2)·u_i, u_i the top 53 bits of XXH3-64
// of i seeded with the key.
double reference_salt(uint64_t key, uint64_t i) {
  return 25.0 * static_cast<double>(XXH3_64bits_withSeed(&i, sizeof i, key) >> 11) * 0x1.0p-53;
}

// An attacker who knows the quantisation step (and the value range) but not
// the salt moves every value that lies within ε of a bin edge of the
// unsalted grid just across it (0.5/255 inside the neighbouring bin): every
// window holding such a value changes its hash if the grid is the real one.
torch::Tensor cross_known_edges(const torch::Tensor& x, double epsilon, double step) {
  const torch::Tensor t = x.to(torch::kFloat64) * 255;
  const torch::Tensor low = torch::floor(t / step + 1e-6) * step;
  const torch::Tensor high = low + step;
  const torch::Tensor up_cost = high - t + 0.5;
  const torch::Tensor down_cost = t - low + 0.5;
  const torch::Tensor up_ok = (high <= 254.5) & (up_cost <= 255 * epsilon);
  const torch::Tensor down_ok = (low >= 1) & (down_cost <= 255 * epsilon);
  const torch::Tensor go_up = up_ok & (down_ok.logical_not() | (up_cost <= down_cost));
  const torch::Tensor go_down = down_ok & go_up.logical_not();
  torch::Tensor moved = torch::where(go_up, high + 0.5, torch::where(go_down, low - 0.5, t));
  return (moved / 255).clamp(0, 1).to(torch::kFloat32);
}

// The same budget spent blindly: ±ε on every value, signs at random.
torch::Tensor random_signs(const torch::Tensor& x, double epsilon) {
  return (x + (torch::randint(0, 2, x.sizes()) * 2 - 1) * epsilon).clamp(0, 1).to(torch::kFloat32);
}

// Share of n images whose perturbed copy matches the stored original.
double share_matched(const QueryMonitorOptions& options, int64_t n,
                     const std::function<torch::Tensor(const torch::Tensor&)>& perturb) {
  QueryMonitor monitor(QueryMonitorOptions(options).max_stored_queries(1));  // each copy meets its original only
  int64_t matched = 0;
  for (int64_t i = 0; i < n; ++i) {
    observe_one(monitor, image(i));
    matched += observe_one(monitor, perturb(image(i))).detected;
  }
  return static_cast<double>(matched) / static_cast<double>(n);
}

}  // namespace

TEST_F(QueryMonitorTest, SaltOffsetsFollowTheDocumentedFormula) {
  // One value is one window: its hash is the hash of its quantised byte,
  // which an unsalted monitor reproduces from a value inside that level.
  const uint64_t key = 0x9e3779b97f4a7c15ull;
  QueryMonitor salted(QueryMonitorOptions().salt_key(key));
  QueryMonitor plain(QueryMonitorOptions().salted(false));
  // A step-1 unsalted monitor quantises the 8-bit value k to level k.
  QueryMonitor bytes(QueryMonitorOptions().salted(false).quantization_step(1));
  for (const double v : {0.0, 0.1, 0.37, 0.5, 0.81, 0.99, 1.0}) {
    const double level = std::floor((255.0 * v + reference_salt(key, 0)) / 50);
    EXPECT_EQ(salted.fingerprint(torch::full({1, 1, 1}, static_cast<float>(v))),
              bytes.fingerprint(torch::full({1, 1, 1}, static_cast<float>(level / 255))))
        << "v = " << v << ", salt " << reference_salt(key, 0);
  }
  // Constant regions stay constant where the offsets cannot move a level (a
  // blank image: 0 + s_i < 25), and vary with the offsets where they can.
  EXPECT_EQ(salted.fingerprint(torch::zeros({1, 28, 28})).size(), 1u);
  EXPECT_EQ(plain.fingerprint(torch::full({1, 28, 28}, 0.5f)).size(), 1u);
  EXPECT_EQ(salted.fingerprint(torch::full({1, 28, 28}, 0.5f)).size(), 50u);
}

TEST_F(QueryMonitorTest, SaltKeysGiveRepeatableAndDistinctFingerprints) {
  QueryMonitor a(QueryMonitorOptions().salt_key(1));
  QueryMonitor a_again(QueryMonitorOptions().salt_key(1));
  QueryMonitor b(QueryMonitorOptions().salt_key(2));
  QueryMonitor random1, random2;  // default: salted, a fresh random key each
  const torch::Tensor x = image(3);
  EXPECT_EQ(a.fingerprint(x), a_again.fingerprint(x));
  EXPECT_NE(a.fingerprint(x), b.fingerprint(x));
  EXPECT_EQ(random1.fingerprint(x), random1.fingerprint(x));
  EXPECT_NE(random1.fingerprint(x), random2.fingerprint(x));
  EXPECT_TRUE(random1.options().salted());
  EXPECT_FALSE(random1.options().salt_key().has_value()) << "the drawn key is not exposed";
  // Never shown: describe() says salted, not the key.
  const std::string text = QueryMonitor(QueryMonitorOptions().salt_key(123456789)).describe();
  EXPECT_NE(text.find("salted"), std::string::npos) << text;
  EXPECT_EQ(text.find("123456789"), std::string::npos) << text;
  EXPECT_NE(QueryMonitor(QueryMonitorOptions().salted(false)).describe().find("unsalted"), std::string::npos);
}

TEST_F(QueryMonitorTest, SaltDefeatsAnAttackerWhoKnowsTheStep) {
  // Issue 17: the share of an edge-aware attacker's copies that still match
  // their original, with and without the salt (n = 300 Fashion-MNIST test
  // images, step 50, threshold 25 of 50; figures in docs/concealment.md).
  const int64_t n = 300;
  const QueryMonitorOptions plain = QueryMonitorOptions().salted(false);
  const QueryMonitorOptions salted = QueryMonitorOptions().salt_key(42);
  std::map<double, std::array<double, 4>> shares;
  for (const double eps : {0.02, 0.05, 0.1}) {
    shares[eps] = {share_matched(plain, n, [&](const torch::Tensor& x) { return cross_known_edges(x, eps, 50); }),
                   share_matched(plain, n, [&](const torch::Tensor& x) { return random_signs(x, eps); }),
                   share_matched(salted, n, [&](const torch::Tensor& x) { return cross_known_edges(x, eps, 50); }),
                   share_matched(salted, n, [&](const torch::Tensor& x) { return random_signs(x, eps); })};
    std::cout << "eps " << eps << ": still matched, unsalted: edge-aware " << shares[eps][0] << ", random signs "
              << shares[eps][1] << "; salted: edge-aware " << shares[eps][2] << ", random signs " << shares[eps][3]
              << "\n";
  }
  // Without the salt, knowing the step lets the attacker change most windows
  // for a small budget; with it, the same moves land at random relative to
  // the edges and many copies still match (all at ε = 0.02). At ε = 0.1 the
  // moves are large enough to cross most edges wherever they are.
  EXPECT_LT(shares[0.02][0], 0.2);
  EXPECT_GT(shares[0.02][2], 0.9);
  EXPECT_LT(shares[0.05][0], 0.1);
  EXPECT_GT(shares[0.05][2], 0.35);
}
