// Adaptive (OARS, Feng et al. CCS 2023) against non-adaptive Square and
// HopSkipJump, through a Guard with Parry's QueryMonitor at its default
// settings, for the actions Reject and Flag (docs/concealment.md).
//
// One run = one correctly classified Fashion-MNIST test image attacked by a
// new attacker: a fresh monitor (empty store), one client id. Square: L∞
// ε = 0.1, every class score visible (`Full`); HopSkipJump: labels only,
// success within L2 1.5 (the evaluation's default L2 budget). Success: the
// attacker's final image is misclassified by the model (no gates) within the
// budget. "Detected" counts the queries the monitor detected; "runs detected"
// those with at least one.
//
//   build/benchmarks/parry_oars_table [runs=20] [square budget=1000] [hsj budget=2000] [model.pt] [fashion-mnist dir]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <limits>
#include <optional>

#include "parry/detail/format.hpp"
#include "parry/parry.hpp"
#include "support.hpp"

namespace {

using namespace parry;
using bench::seconds_since;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Row {
  int64_t runs = 0, successes = 0, detected_runs = 0, stopped = 0;
  int64_t sent = 0, detected = 0;
  std::vector<double> queries, scale, l2;
};

}  // namespace

int main(int argc, char** argv) {
  configure_runtime(RuntimeOptions().threads(1));
  set_log_sink({});  // detections are counted here, not logged
  const int64_t runs = argc > 1 ? std::stoll(argv[1]) : 20;
  const int64_t square_budget = argc > 2 ? std::stoll(argv[2]) : 1000;
  const int64_t hsj_budget = argc > 3 ? std::stoll(argv[3]) : 2000;
  const std::string model_path = argc > 4 ? argv[4] : PARRY_REFERENCE_MODEL;
  const std::string data_dir = argc > 5 ? argv[5] : data::kDebianFashionMnistDir;
  constexpr double kEps = 0.1, kL2 = 1.5;
  try {
    torch::manual_seed(0);
    const Model model(models::load_reference_cnn(model_path));
    const auto test = data::load_fashion_mnist(data_dir, false, 0);
    torch::Tensor x, y;  // the first `runs` test images the model classifies correctly
    std::tie(x, y) = bench::correctly_classified(model, test.images, test.labels, runs);
    const InputSpec spec(1, 28, 28);
    std::printf(
        "# OARS vs plain attacks against QueryMonitor (default settings), %lld runs, Square eps %.2f (%lld queries), "
        "HopSkipJump L2 %.1f (%lld queries)\n\n",
        static_cast<long long>(runs), kEps, static_cast<long long>(square_budget), kL2,
        static_cast<long long>(hsj_budget));
    std::printf(
        "| monitor action | attack | success | runs detected | queries detected / sent | runs stopped | median "
        "queries sent | median learned scale | median final L2 |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");

    enum class Kind { Square, OarsSquare, Hsj, OarsHsj };
    const char* names[] = {"Square", "OARS-Square", "HopSkipJump", "OARS-HopSkipJump"};
    for (const auto action : {std::optional<conceal::MonitorAction>(),
                              std::optional<conceal::MonitorAction>(conceal::MonitorAction::Reject),
                              std::optional<conceal::MonitorAction>(conceal::MonitorAction::Flag)}) {
      for (const Kind kind : {Kind::Square, Kind::OarsSquare, Kind::Hsj, Kind::OarsHsj}) {
        const auto start = std::chrono::steady_clock::now();
        const bool scores = kind == Kind::Square || kind == Kind::OarsSquare;
        Row row;
        for (int64_t i = 0; i < runs; ++i) {
          GuardBuilder builder(model, spec);
          std::shared_ptr<conceal::QueryMonitor> monitor;
          if (action) {
            monitor = std::make_shared<conceal::QueryMonitor>(
                conceal::QueryMonitorOptions().match_spec(spec).action(*action));
            builder.add_gate(monitor);
          }
          if (scores) builder.set_output_policy(std::make_shared<conceal::Full>());
          const Guard guard = builder.build();
          const auto xi = x.slice(0, i, i + 1), yi = y.slice(0, i, i + 1);
          const auto seed = static_cast<uint64_t>(i);
          const auto square_options = attack::SquareOptions(kEps).max_queries(square_budget).seed(seed);
          const auto hsj_options = attack::HopSkipJumpOptions().max_queries(hsj_budget).seed(seed);
          attack::AttackResult r;
          int64_t sent = 0;
          switch (kind) {
            case Kind::Square:
              r = attack::square(guard, xi, yi, square_options);
              break;
            case Kind::OarsSquare: {
              const auto o = attack::oars_square(guard, xi, yi, attack::OarsSquareOptions(square_options));
              row.scale.push_back(o.scale[0].item<double>());
              sent = o.queries[0].item<int64_t>();
              r = o;
              break;
            }
            case Kind::Hsj:
              r = attack::hop_skip_jump(guard, xi, yi, hsj_options);
              break;
            case Kind::OarsHsj: {
              const auto o = attack::oars_hop_skip_jump(guard, xi, yi, attack::OarsHopSkipJumpOptions(hsj_options));
              row.scale.push_back(o.scale[0].item<double>());
              sent = o.queries[0].item<int64_t>();
              r = o;
              break;
            }
          }
          // Images sent and detected, as the monitor counted them (it sees
          // every image, also of a refused batch); without one, the attack's count.
          const auto stats = monitor ? monitor->stats() : conceal::QueryMonitorStats();
          if (monitor) sent = static_cast<int64_t>(stats.images);
          if (!monitor && sent == 0) sent = r.queries[0].item<int64_t>();
          const int64_t detected = static_cast<int64_t>(stats.detections);
          torch::NoGradGuard no_grad;
          const bool wrong = model.logits(r.adversarial).argmax(1)[0].item<int64_t>() != yi[0].item<int64_t>();
          const double l2 = (r.adversarial - xi).norm().item<double>();
          const bool within = scores ? (r.adversarial - xi).abs().max().item<double>() <= kEps + 1e-6 : l2 <= kL2;
          ++row.runs;
          row.successes += wrong && within;
          row.detected_runs += detected > 0;
          row.stopped += r.stopped_by_defense;
          row.sent += sent;
          row.detected += detected;
          row.queries.push_back(static_cast<double>(sent));
          row.l2.push_back(wrong ? l2 : std::numeric_limits<double>::infinity());
        }
        const std::string scale = row.scale.empty() ? "–" : parry::detail::format_fixed(median(row.scale), 2);
        std::printf("| %s | %s | %.0f%% (%lld/%lld) | %lld/%lld | %.1f%% | %lld | %.0f | %s | %.2f |\n",
                    action ? conceal::to_string(*action) : "none", names[static_cast<int>(kind)],
                    100.0 * static_cast<double>(row.successes) / static_cast<double>(row.runs),
                    static_cast<long long>(row.successes), static_cast<long long>(row.runs),
                    static_cast<long long>(row.detected_runs), static_cast<long long>(row.runs),
                    row.sent ? 100.0 * static_cast<double>(row.detected) / static_cast<double>(row.sent) : 0.0,
                    static_cast<long long>(row.stopped), median(row.queries), scale.c_str(), median(row.l2));
        std::fprintf(stderr, "  %s / %s: %.1f s\n", action ? conceal::to_string(*action) : "none",
                     names[static_cast<int>(kind)], seconds_since(start));
        std::fflush(stdout);
      }
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "%s (%s)\n", e.public_message(), e.detail().c_str());
    return 1;
  }
  return 0;
}
