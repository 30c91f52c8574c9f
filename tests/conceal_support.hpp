// Helpers shared by the tests of the conceal family's gates (throttle, query
// monitor, their Redis state): in one header so that the unity build, which
// puts several test files in one translation unit, sees one definition.
#pragma once

#include <torch/torch.h>

#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "parry/conceal/query_monitor.hpp"
#include "parry/conceal/throttle.hpp"
#include "parry/core/log.hpp"
#include "parry/data/idx.hpp"
#include "test_support.hpp"

namespace parry::testing {

/// A seeded test that captures Parry's log (warnings and errors) instead of
/// printing it, and silences it afterwards.
class LoggedTest : public SeededTest {
 protected:
  void SetUp() override {
    SeededTest::SetUp();
    set_log_sink([this](LogLevel level, const std::string& message) {
      std::lock_guard<std::mutex> lock(log_mutex_);
      if (level >= LogLevel::Warning) logged_.push_back(message);
    });
  }
  void TearDown() override { set_log_sink({}); }
  /// The lines logged so far.
  std::vector<std::string> logged() {
    std::lock_guard<std::mutex> lock(log_mutex_);
    return logged_;
  }

 private:
  std::mutex log_mutex_;
  std::vector<std::string> logged_;
};

/// Fashion-MNIST test images (N×1×28×28 in [0, 1]), the first 1,000.
inline const torch::Tensor& test_images() {
  static const torch::Tensor images =
      data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, false, 1000).images.contiguous();
  return images;
}

/// Test image i (1×28×28).
inline torch::Tensor image(int64_t i) {
  return test_images()[i];
}

/// A stream of `count` images for the query monitor: repeats of 8 test
/// images, noisy copies of them (uniform ±0.02, from torch's generator) and
/// sparse images (a few bright pixels on black: short fingerprints).
inline std::vector<torch::Tensor> mixed_stream(int count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<torch::Tensor> out;
  for (int step = 0; step < count; ++step) {
    torch::Tensor x;
    switch (rng() % 3) {
      case 0:
        x = image(rng() % 8);
        break;
      case 1:
        x = (image(rng() % 8) + (torch::rand({1, 28, 28}) * 2 - 1) * 0.02).clamp(0, 1).to(torch::kFloat32);
        break;
      default:
        x = torch::zeros({1, 28, 28});
        for (int k = 0; k < 1 + static_cast<int>(rng() % 6); ++k) x[0][rng() % 28][rng() % 28] = 1.0f;
    }
    out.push_back(x);
  }
  return out;
}

/// The one observation the monitor makes of a single image `x`.
inline conceal::QueryObservation observe_one(conceal::QueryMonitor& monitor, const torch::Tensor& x,
                                             const std::string& client = "client") {
  auto observations = monitor.observe(RequestContext{client}, x);
  EXPECT_EQ(observations.size(), 1u);
  return observations.at(0);
}

/// A manual clock shared with a throttle.
struct FakeClock {
  std::shared_ptr<double> now = std::make_shared<double>(1000.0);
  conceal::Clock fn() const {
    auto n = now;
    return [n] { return *n; };
  }
  void advance(double seconds) const { *now += seconds; }
};

}  // namespace parry::testing
