// The report's PNG plots (src/eval/plots.hpp).
#include "eval/plots.hpp"

#include <algorithm>
#include <cmath>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace parry::eval::detail {

namespace {

const std::vector<cv::Scalar>& palette() {
  static const std::vector<cv::Scalar> colors = {{180, 119, 31},  {14, 127, 255}, {44, 160, 44},   {40, 39, 214},
                                                 {189, 103, 148}, {75, 86, 140},  {194, 119, 227}, {127, 127, 127}};
  return colors;
}

void text(cv::Mat& img, const std::string& s, cv::Point at, double scale = 0.45, cv::Scalar color = {30, 30, 30}) {
  cv::putText(img, s, at, cv::FONT_HERSHEY_SIMPLEX, scale, color, 1, cv::LINE_AA);
}

// Axes with [0,1]-style ranges: returns the mapping from data to pixels.
struct Axes {
  cv::Rect area;
  double x0, x1, y0, y1;
  cv::Point map(double x, double y) const {
    return {area.x + static_cast<int>((x - x0) / (x1 - x0) * area.width),
            area.y + area.height - static_cast<int>((y - y0) / (y1 - y0) * area.height)};
  }
};

Axes draw_axes(cv::Mat& img, cv::Rect area, double x0, double x1, double y0, double y1, const std::string& xlabel,
               const std::string& ylabel, const std::string& title) {
  Axes axes{area, x0, x1, y0, y1};
  for (int i = 0; i <= 5; ++i) {
    const double fy = y0 + (y1 - y0) * i / 5.0, fx = x0 + (x1 - x0) * i / 5.0;
    cv::line(img, axes.map(x0, fy), axes.map(x1, fy), {225, 225, 225}, 1);
    text(img, fixed(fy, 1), axes.map(x0, fy) + cv::Point(-34, 5), 0.4);
    text(img, fixed(fx, 2), axes.map(fx, y0) + cv::Point(-14, 18), 0.4);
  }
  cv::rectangle(img, area, {60, 60, 60}, 1);
  text(img, xlabel, {area.x + area.width / 2 - 40, area.y + area.height + 38});
  text(img, ylabel, {area.x, area.y - 8}, 0.4);
  text(img, title, {area.x, 22}, 0.55);
  return axes;
}

void dashed_line(cv::Mat& img, cv::Point a, cv::Point b, cv::Scalar color) {
  const double length = std::hypot(b.x - a.x, b.y - a.y);
  const int dashes = std::max(1, static_cast<int>(length / 8));
  for (int i = 0; i < dashes; i += 2) {
    const cv::Point p = a + (b - a) * (static_cast<double>(i) / dashes);
    const cv::Point q = a + (b - a) * (static_cast<double>(std::min(i + 1, dashes)) / dashes);
    cv::line(img, p, q, color, 2, cv::LINE_AA);
  }
}

}  // namespace

cv::Mat plot_accuracy(const Evaluation& e) {
  cv::Mat img(520, 860, CV_8UC3, cv::Scalar(255, 255, 255));
  // The iterative attack with budgets: the first PGD, else the first with ε.
  std::string attack;
  for (const auto& a : e.defenses.front().attacks) {
    if (a.epsilon > 0 && (attack.empty() || a.attack.rfind("PGD", 0) == 0)) attack = a.attack;
  }
  double max_eps = 0;
  for (const auto& a : e.defenses.front().attacks) {
    if (a.attack == attack) max_eps = std::max(max_eps, a.epsilon);
  }
  const Axes axes = draw_axes(img, {60, 56, 560, 404}, 0.0, max_eps > 0 ? max_eps : 1.0, 0.0, 1.0, "epsilon (L-inf)",
                              "accuracy (right or flagged)", attack + ": solid = non-adaptive, dashed = adaptive");
  for (size_t d = 0; d < e.defenses.size(); ++d) {
    const auto color = palette()[d % palette().size()];
    cv::Point last, last_adaptive;
    bool has_last = false;
    const auto start = axes.map(0.0, e.defenses[d].clean_accuracy);
    last = last_adaptive = start;
    has_last = true;
    for (const auto& a : e.defenses[d].attacks) {
      if (a.attack != attack) continue;
      const auto p = axes.map(a.epsilon, a.accuracy), q = axes.map(a.epsilon, a.adaptive_accuracy);
      if (has_last) {
        cv::line(img, last, p, color, 2, cv::LINE_AA);
        dashed_line(img, last_adaptive, q, color);
      }
      cv::circle(img, p, 4, color, cv::FILLED, cv::LINE_AA);
      cv::circle(img, q, 4, color, 1, cv::LINE_AA);
      last = p;
      last_adaptive = q;
    }
    cv::line(img, {640, 60 + 24 * static_cast<int>(d)}, {670, 60 + 24 * static_cast<int>(d)}, color, 3);
    text(img, e.defenses[d].name, {678, 65 + 24 * static_cast<int>(d)});
  }
  return img;
}

cv::Mat plot_certified(const Evaluation& e) {
  cv::Mat img(520, 860, CV_8UC3, cv::Scalar(255, 255, 255));
  double max_radius = 0.0;
  for (const auto& c : e.certified) {
    for (const double r : c.radii) max_radius = std::max(max_radius, r);
    for (const double r : c.correct_radius) max_radius = std::max(max_radius, r);
  }
  const Axes axes = draw_axes(img, {60, 56, 560, 404}, 0.0, max_radius > 0 ? max_radius : 1.0, 0.0, 1.0,
                              "L2 radius (pixel units)", "accuracy",
                              "certified (solid) and attacked (dashed) accuracy of the smoothed classifier");
  for (size_t k = 0; k < e.certified.size(); ++k) {
    const auto& c = e.certified[k];
    const auto color = palette()[k % palette().size()];
    // The certified accuracy is a step function of r: it drops at each correct image's radius.
    std::vector<double> radii;
    for (const double r : c.correct_radius) {
      if (r >= 0) radii.push_back(r);
    }
    std::sort(radii.begin(), radii.end());
    double previous = 0.0;
    cv::Point last = axes.map(0.0, c.certified_accuracy_at(0.0));
    for (const double r : radii) {
      if (r == previous) continue;
      const cv::Point corner = axes.map(r, c.certified_accuracy_at(previous));
      const cv::Point next = axes.map(r, c.certified_accuracy_at(r + 1e-12));
      cv::line(img, last, corner, color, 2, cv::LINE_AA);
      cv::line(img, corner, next, color, 2, cv::LINE_AA);
      last = next;
      previous = r;
    }
    cv::line(img, last, {axes.map(max_radius > 0 ? max_radius : 1.0, 0.0).x, last.y}, color, 2, cv::LINE_AA);
    for (size_t i = 0; i < c.empirical_accuracy.size(); ++i) {
      const cv::Point p = axes.map(c.radii[i], c.empirical_accuracy[i]);
      if (i > 0) dashed_line(img, axes.map(c.radii[i - 1], c.empirical_accuracy[i - 1]), p, color);
      cv::circle(img, p, 4, color, 1, cv::LINE_AA);
    }
    const int y = 60 + 24 * static_cast<int>(k);
    cv::line(img, {640, y}, {670, y}, color, 3);
    text(img, "sigma = " + parry::detail::format_number(c.sigma), {678, y + 5});
  }
  return img;
}

cv::Mat plot_roc(const Evaluation& e) {
  cv::Mat img(560, 860, CV_8UC3, cv::Scalar(255, 255, 255));
  const Axes axes = draw_axes(img, {60, 56, 460, 444}, 0.0, 1.0, 0.0, 1.0, "false-positive rate", "detection rate",
                              "ROC: clean vs PGD eps=" + fixed(e.example_epsilon, 2));
  dashed_line(img, axes.map(0, 0), axes.map(1, 1), {170, 170, 170});
  size_t k = 0;
  for (const auto& d : e.defenses) {
    for (const auto& r : d.detectors) {
      const auto color = palette()[k % palette().size()];
      for (size_t i = 1; i < r.roc_fpr.size(); ++i) {
        cv::line(img, axes.map(r.roc_fpr[i - 1], r.roc_tpr[i - 1]), axes.map(r.roc_fpr[i], r.roc_tpr[i]), color, 2,
                 cv::LINE_AA);
      }
      const int y = 60 + 24 * static_cast<int>(k);
      cv::line(img, {540, y}, {570, y}, color, 3);
      text(img, d.name + ": " + r.name + " (AUC " + fixed(r.auc, 3) + ")", {578, y + 5}, 0.4);
      ++k;
    }
  }
  if (k == 0) text(img, "no detectors in this configuration", {150, 260}, 0.6);
  return img;
}

cv::Mat plot_examples(const Evaluation& e) {
  const int n = static_cast<int>(e.example_clean.size(0)), cell = 84, pad = 8, left = 120;
  cv::Mat img(3 * (cell + pad) + 56, left + n * (cell + pad), CV_8UC3, cv::Scalar(255, 255, 255));
  const auto delta = e.example_adversarial - e.example_clean;
  const double eps = std::max(1e-6, e.example_epsilon);
  const std::vector<std::pair<std::string, torch::Tensor>> rows = {
      {"clean", e.example_clean}, {"adversarial", e.example_adversarial}, {"perturbation", 0.5 + delta / (2 * eps)}};
  for (int r = 0; r < 3; ++r) {
    text(img, rows[r].first, {8, 30 + r * (cell + pad) + cell / 2});
    for (int i = 0; i < n; ++i) {
      // H×W×C bytes; colour images are RGB, OpenCV draws BGR.
      const auto t = (rows[r].second[i].clamp(0, 1) * 255).round().to(torch::kUInt8).permute({1, 2, 0}).contiguous();
      const int channels = static_cast<int>(t.size(2));
      cv::Mat image(static_cast<int>(t.size(0)), static_cast<int>(t.size(1)), channels == 3 ? CV_8UC3 : CV_8UC1,
                    t.data_ptr<uint8_t>());
      cv::Mat big, color;
      cv::resize(image, big, {cell, cell}, 0, 0, cv::INTER_NEAREST);
      cv::cvtColor(big, color, channels == 3 ? cv::COLOR_RGB2BGR : cv::COLOR_GRAY2BGR);
      color.copyTo(img(cv::Rect(left + i * (cell + pad), 30 + r * (cell + pad), cell, cell)));
      if (r == 0 && static_cast<size_t>(i) < e.example_labels.size() && !e.classes.empty()) {
        const auto label = e.example_labels[static_cast<size_t>(i)];
        const std::string name = label >= 0 && label < static_cast<int64_t>(e.classes.size())
                                     ? e.classes[static_cast<size_t>(label)]
                                     : std::to_string(label);
        text(img, name.substr(0, 12), {left + i * (cell + pad), 30 + 3 * (cell + pad) + 14}, 0.4);
      }
    }
  }
  text(img, "PGD eps=" + fixed(eps, 2) + " on the bare model; perturbation shown as 0.5 + delta/(2 eps)", {8, 18});
  return img;
}

cv::Mat plot_latency(const Evaluation& e) {
  const int row = 34;
  cv::Mat img(70 + row * static_cast<int>(e.defenses.size()), 860, CV_8UC3, cv::Scalar(255, 255, 255));
  double top = 1e-9;
  for (const auto& d : e.defenses) top = std::max(top, d.latency_ms);
  text(img, "Guard::predict latency, batch 1 (ms)", {10, 22}, 0.55);
  for (size_t i = 0; i < e.defenses.size(); ++i) {
    const int y = 40 + row * static_cast<int>(i);
    const int width = static_cast<int>(560 * e.defenses[i].latency_ms / top);
    cv::rectangle(img, {200, y, std::max(width, 1), row - 10}, palette()[i % palette().size()], cv::FILLED);
    text(img, e.defenses[i].name, {10, y + 17});
    text(img, fixed(e.defenses[i].latency_ms, 2) + " ms", {205 + width, y + 17});
  }
  return img;
}

std::string png_bytes(const cv::Mat& img) {
  std::vector<uchar> buffer;
  if (!cv::imencode(".png", img, buffer)) throw IoError("cannot write the report", "cv::imencode(.png) failed");
  return std::string(buffer.begin(), buffer.end());
}

}  // namespace parry::eval::detail
