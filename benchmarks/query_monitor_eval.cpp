// QueryMonitor detection figures for docs/concealment.md:
//   1. Square (scores visible) and HopSkipJump (labels only) runs through a
//      Guard with a QueryMonitor: fraction of runs flagged and queries before
//      the first flag, for several thresholds;
//   2. false positives over all 10,000 Fashion-MNIST test images sent in
//      sequence as benign queries, for the same thresholds;
//   3. with MonitorAction::Reject: attack success once detected queries are
//      refused;
//   4. what label-only answers cost an attacker: attack success within the
//      L∞ ball ε = 0.1 against query budget for Square (Full policy) and
//      HopSkipJump (LabelOnly), without a monitor;
//   5. benign clients that legitimately send near-duplicates: video frames
//      (a panning camera), test-time augmentation, LIME-style masks.
//
//   build/benchmarks/parry_query_monitor_eval [runs=20] [model.pt] [fashion-mnist dir] [salted|unsalted]
//       [sections=1234]
// The monitor is salted (the default, with a fixed key so that runs repeat)
// unless "unsalted" is given; `sections` picks which of 1–5 run.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>

#include "parry/parry.hpp"
#include "support.hpp"

namespace {

using namespace parry;
using bench::seconds_since;

constexpr int64_t kThresholds[] = {10, 15, 20, 25, 30, 35};

// A gate that runs a QueryMonitor and records, per client, the largest
// number of shared hashes of each image, in order. Thresholds are applied
// afterwards, so one run serves every threshold.
class RecordingGate final : public Gate {
 public:
  explicit RecordingGate(conceal::QueryMonitorOptions options) : monitor_(options) {}
  GateDecision admit(const RequestContext& context, const torch::Tensor& input) override {
    const auto observations = monitor_.observe(context, input);
    std::lock_guard<std::mutex> lock(mutex_);
    auto& series = matches_[context.client_id];
    for (const auto& o : observations) series.push_back(std::max(o.global_matches, o.client_matches));
    return GateDecision::admit();
  }
  std::string describe() const override { return "RecordingGate(" + monitor_.describe() + ")"; }
  const std::vector<int64_t>& series(const std::string& client) { return matches_[client]; }

 private:
  conceal::QueryMonitor monitor_;
  std::mutex mutex_;
  std::map<std::string, std::vector<int64_t>> matches_;
};

// 1-based index of the first image with at least `threshold` matches, or 0.
int64_t first_flag(const std::vector<int64_t>& series, int64_t threshold) {
  for (size_t i = 0; i < series.size(); ++i) {
    if (series[i] >= threshold) return static_cast<int64_t>(i + 1);
  }
  return 0;
}

double median(std::vector<int64_t> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? static_cast<double>(v[n / 2]) : 0.5 * static_cast<double>(v[n / 2 - 1] + v[n / 2]);
}

// Fraction of samples misclassified with ‖x_adv − x‖∞ <= eps (+ float slack).
double success_within(const Model& model, const attack::AttackResult& r, const torch::Tensor& x, const torch::Tensor& y,
                      double eps) {
  torch::NoGradGuard no_grad;
  const auto fooled = model.logits(r.adversarial).argmax(1).ne(y);
  const auto linf = (r.adversarial - x).abs().flatten(1).amax(1);
  return (fooled & linf.le(eps + 1e-6)).to(torch::kFloat64).mean().item<double>();
}

// Benign clients that legitimately send near-duplicates (section 5), each
// variant set built from one test image x (1×28×28 in [0, 1]).
// Video: a camera panning 1 pixel per frame over the image (zero-padded by
// 4): 9 frames, crops at x offsets 0..8.
std::vector<torch::Tensor> video_frames(const torch::Tensor& x) {
  const torch::Tensor padded = torch::constant_pad_nd(x, {4, 4, 4, 4}, 0);
  std::vector<torch::Tensor> out;
  for (int64_t dx = 0; dx <= 8; ++dx) out.push_back(padded.slice(1, 4, 32).slice(2, dx, dx + 28).contiguous());
  return out;
}

// Test-time augmentation: the image, its mirror, 1-pixel shifts in four
// directions and brightness ×0.9 and ×1.1: 8 queries.
std::vector<torch::Tensor> tta_views(const torch::Tensor& x) {
  std::vector<torch::Tensor> out{x, x.flip({2})};
  for (const auto& [dy, dx] : std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {0, -1}, {1, 0}, {-1, 0}}) {
    out.push_back(torch::roll(x, {dy, dx}, {1, 2}).contiguous());
  }
  out.push_back((x * 0.9).clamp(0, 1));
  out.push_back((x * 1.1).clamp(0, 1));
  return out;
}

// An explanation tool's perturbation queries (LIME-style): the image cut into
// 4×4 patches of 7×7 pixels, 50 masks keeping each patch with probability
// 1/2 and blanking the others to 0.
std::vector<torch::Tensor> lime_masks(const torch::Tensor& x, torch::Generator& gen) {
  std::vector<torch::Tensor> out;
  for (int k = 0; k < 50; ++k) {
    const torch::Tensor keep = (torch::rand({1, 4, 4}, gen) < 0.5).to(torch::kFloat32);
    const torch::Tensor mask = keep.repeat_interleave(7, 1).repeat_interleave(7, 2);
    out.push_back((x * mask).contiguous());
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  configure_runtime(RuntimeOptions().threads(2));
  set_log_sink({});  // detections are counted here, not logged
  const int64_t runs = argc > 1 ? std::stoll(argv[1]) : 20;
  const std::string model_path = argc > 2 ? argv[2] : PARRY_REFERENCE_MODEL;
  const std::string data_dir = argc > 3 ? argv[3] : data::kDebianFashionMnistDir;
  const std::string salt = argc > 4 ? argv[4] : "salted";
  const std::string sections = argc > 5 ? argv[5] : "12345";
  if (salt != "salted" && salt != "unsalted") {
    std::fprintf(stderr, "the fourth argument must be salted or unsalted, not '%s'\n", salt.c_str());
    return 2;
  }
  auto section = [&](char c) { return sections.find(c) != std::string::npos; };
  try {
    torch::manual_seed(0);
    const Model model(models::load_reference_cnn(model_path));
    const auto test = data::load_fashion_mnist(data_dir, false, 0);
    torch::Tensor x, y;  // the first `runs` test images the model classifies correctly
    std::tie(x, y) = bench::correctly_classified(model, test.images, test.labels, runs);
    const InputSpec spec(1, 28, 28);
    auto options = conceal::QueryMonitorOptions().match_spec(spec).max_stored_queries(100000);
    if (salt == "salted") {
      options.salt_key(20261203);
    } else {
      options.salted(false);
    }
    std::printf("(monitor %s)\n\n", salt.c_str());

    // ---------------------------------------------------------- 1. detection
    // threshold(1): exact match counts for every image (see QueryObservation).
    const auto recording = conceal::QueryMonitorOptions(options).threshold(1);
    if (section('1')) {
      std::printf("## 1. Detection of attack runs (%lld runs each, one image per run, own client id)\n\n",
                  static_cast<long long>(runs));
      auto recorder = std::make_shared<RecordingGate>(recording);
      Guard scored =
          GuardBuilder(model, spec).add_gate(recorder).set_output_policy(std::make_shared<conceal::Full>()).build();
      Guard labels = GuardBuilder(model, spec).add_gate(recorder).build();
      std::vector<std::string> square_clients, hsj_clients;
      auto start = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < runs; ++i) {
        square_clients.push_back("square-" + std::to_string(i));
        attack::square(scored, x.slice(0, i, i + 1), y.slice(0, i, i + 1),
                       attack::SquareOptions(0.1).max_queries(200).seed(i).client_id(square_clients.back()));
        hsj_clients.push_back("hsj-" + std::to_string(i));
        attack::hop_skip_jump(labels, x.slice(0, i, i + 1), y.slice(0, i, i + 1),
                              attack::HopSkipJumpOptions().max_queries(200).seed(i).client_id(hsj_clients.back()));
      }
      std::printf("(Square ε=0.1 and HopSkipJump, 200 queries per run; %.1f s)\n\n", seconds_since(start));
      auto single = [&](const std::vector<std::string>& clients) {
        return std::count_if(clients.begin(), clients.end(),
                             [&](const std::string& c) { return recorder->series(c).size() <= 1; });
      };
      std::printf(
          "runs that ended after their first query (already fooled by it: nothing to compare it with): "
          "Square %lld, HSJ %lld\n\n",
          static_cast<long long>(single(square_clients)), static_cast<long long>(single(hsj_clients)));
      std::printf(
          "| threshold | Square runs flagged | Square median queries to flag (max) | HSJ runs flagged | "
          "HSJ median queries to flag (max) |\n| ---: | ---: | ---: | ---: | ---: |\n");
      for (const int64_t t : kThresholds) {
        auto summary = [&](const std::vector<std::string>& clients, int64_t& flagged, std::vector<int64_t>& q) {
          flagged = 0;
          for (const auto& c : clients) {
            const int64_t f = first_flag(recorder->series(c), t);
            if (f > 0) {
              ++flagged;
              q.push_back(f);
            }
          }
        };
        int64_t sf = 0, hf = 0;
        std::vector<int64_t> sq, hq;
        summary(square_clients, sf, sq);
        summary(hsj_clients, hf, hq);
        std::printf("| %lld | %lld/%lld | %.1f (%lld) | %lld/%lld | %.1f (%lld) |\n", static_cast<long long>(t),
                    static_cast<long long>(sf), static_cast<long long>(runs), median(sq),
                    static_cast<long long>(sq.empty() ? 0 : *std::max_element(sq.begin(), sq.end())),
                    static_cast<long long>(hf), static_cast<long long>(runs), median(hq),
                    static_cast<long long>(hq.empty() ? 0 : *std::max_element(hq.begin(), hq.end())));
      }
    }
    // ------------------------------------------------------ 2. false positives
    if (section('2')) {
      std::printf("\n## 2. False positives: the 10,000 test images in sequence, one client, global index\n\n");
      RecordingGate benign(recording);
      const auto start = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < test.images.size(0); ++i) benign.admit(RequestContext{"benign"}, test.images[i]);
      const auto& series = benign.series("benign");
      std::vector<int64_t> sorted = series;
      std::sort(sorted.begin(), sorted.end());
      std::printf(
          "(%.1f s) shared hashes with the best earlier image: median %.0f, 99th percentile %lld, "
          "99.9th %lld, max %lld\n\n",
          seconds_since(start), median(series), static_cast<long long>(sorted[sorted.size() * 99 / 100]),
          static_cast<long long>(sorted[sorted.size() * 999 / 1000]), static_cast<long long>(sorted.back()));
      std::printf("| threshold | benign images flagged | false-positive rate |\n| ---: | ---: | ---: |\n");
      for (const int64_t t : kThresholds) {
        const auto flagged = std::count_if(series.begin(), series.end(), [t](int64_t m) { return m >= t; });
        std::printf("| %lld | %lld | %.2f%% |\n", static_cast<long long>(t), static_cast<long long>(flagged),
                    100.0 * static_cast<double>(flagged) / static_cast<double>(series.size()));
      }
    }
    // --------------------------------------------------- 3. Reject stops them
    if (section('3')) {
      std::printf("\n## 3. MonitorAction::Reject (threshold %lld): attack success and queries answered\n\n",
                  static_cast<long long>(options.threshold()));
      auto rejecting = [&](bool score_based) {
        auto monitor = std::make_shared<conceal::QueryMonitor>(
            conceal::QueryMonitorOptions(options).action(conceal::MonitorAction::Reject));
        GuardBuilder builder(model, spec);
        builder.add_gate(monitor);
        if (score_based) builder.set_output_policy(std::make_shared<conceal::Full>());
        const Guard guard = builder.build();
        int64_t stopped = 0, answered = 0;
        double success = 0;
        for (int64_t i = 0; i < runs; ++i) {
          const auto xi = x.slice(0, i, i + 1), yi = y.slice(0, i, i + 1);
          const attack::AttackResult r =
              score_based
                  ? attack::square(guard, xi, yi, attack::SquareOptions(0.1).max_queries(2000).seed(i))
                  : attack::hop_skip_jump(guard, xi, yi, attack::HopSkipJumpOptions().max_queries(2000).seed(i));
          stopped += r.stopped_by_defense;
          answered += r.queries.sum().item<int64_t>();
          success += success_within(model, r, xi, yi, 0.1);
        }
        std::printf("| %s | %lld/%lld | %.1f | %.0f%% |\n",
                    score_based ? "Square ε=0.1, 2000 queries" : "HSJ, 2000 queries", static_cast<long long>(stopped),
                    static_cast<long long>(runs), static_cast<double>(answered) / static_cast<double>(runs),
                    100 * success / static_cast<double>(runs));
      };
      std::printf(
          "| attack | runs stopped | queries per run before the stop | success within L∞ 0.1 |\n"
          "| --- | ---: | ---: | ---: |\n");
      rejecting(true);
      rejecting(false);
    }
    // ------------------------------------------ 4. what label-only costs
    if (section('4')) {
      std::printf(
          "\n## 4. Scores vs labels only, no monitor: success within L∞ ε = 0.1 by query budget "
          "(%lld images)\n\n",
          static_cast<long long>(runs));
      Guard full = GuardBuilder(model, spec).set_output_policy(std::make_shared<conceal::Full>()).build();
      Guard label_only(model, spec);
      std::printf(
          "| budget | Square (scores) | HopSkipJump (labels) | HSJ median L2 | HSJ median L∞ |\n"
          "| ---: | ---: | ---: | ---: | ---: |\n");
      for (const int64_t budget : {50, 100, 200, 500, 1000, 2000, 5000}) {
        const auto sq = attack::square(full, x, y, attack::SquareOptions(0.1).max_queries(budget));
        const auto hsj = attack::hop_skip_jump(label_only, x, y, attack::HopSkipJumpOptions().max_queries(budget));
        torch::NoGradGuard no_grad;
        const auto delta = hsj.adversarial - x;
        std::printf("| %lld | %.0f%% | %.0f%% | %.2f | %.3f |\n", static_cast<long long>(budget),
                    100 * success_within(model, sq, x, y, 0.1), 100 * success_within(model, hsj, x, y, 0.1),
                    delta.flatten(1).norm(2, 1).median().item<double>(),
                    delta.abs().flatten(1).amax(1).median().item<double>());
        std::fflush(stdout);
      }
      const auto sq = attack::square(full, x, y, attack::SquareOptions(0.1).max_queries(5000));
      const auto q = sq.queries.masked_select(sq.success).to(torch::kFloat32);
      std::printf("\nSquare: median queries of successful runs %.0f (budget 5000)\n",
                  q.numel() ? q.median().item<float>() : 0.f);
    }
    // ------------------------------ 5. benign clients that send near-duplicates
    if (section('5')) {
      std::printf(
          "\n## 5. Benign near-duplicates: one client per test image, clients in sequence, one monitor per "
          "scenario\n\n");
      std::printf(
          "| client sends | queries per client | clients flagged at 25 | queries flagged at 25 | clients flagged at 35 "
          "|\n| --- | ---: | ---: | ---: | ---: |\n");
      torch::Generator gen = at::detail::createCPUGenerator(5);
      const int64_t clients = 200;
      for (const std::string scenario : {"video frames (pan, 1 px/frame)", "test-time augmentation", "LIME masks"}) {
        RecordingGate gate(recording);
        int64_t per_client = 0;
        for (int64_t i = 0; i < clients; ++i) {
          const torch::Tensor xi = test.images[i];
          const auto queries = scenario[0] == 'v'   ? video_frames(xi)
                               : scenario[0] == 't' ? tta_views(xi)
                                                    : lime_masks(xi, gen);
          per_client = static_cast<int64_t>(queries.size());
          for (const auto& q : queries) gate.admit(RequestContext{"client-" + std::to_string(i)}, q);
        }
        int64_t flagged25 = 0, flagged35 = 0, queries25 = 0, total = 0;
        for (int64_t i = 0; i < clients; ++i) {
          const auto& series = gate.series("client-" + std::to_string(i));
          flagged25 += first_flag(series, 25) > 0;
          flagged35 += first_flag(series, 35) > 0;
          queries25 += std::count_if(series.begin(), series.end(), [](int64_t m) { return m >= 25; });
          total += static_cast<int64_t>(series.size());
        }
        std::printf("| %s | %lld | %lld/%lld | %.1f%% | %lld/%lld |\n", scenario.c_str(),
                    static_cast<long long>(per_client), static_cast<long long>(flagged25),
                    static_cast<long long>(clients),
                    100.0 * static_cast<double>(queries25) / static_cast<double>(total),
                    static_cast<long long>(flagged35), static_cast<long long>(clients));
        std::fflush(stdout);
      }
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "%s (%s)\n", e.public_message(), e.detail().c_str());
    return 1;
  }
  return 0;
}
