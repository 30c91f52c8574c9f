// Shared helpers for Parry's tests.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>

#include "parry/core/input_spec.hpp"
#include "parry/core/model.hpp"
#include "test_paths.hpp"

namespace parry::testing {

/// A copy of a model's parameters then buffers, in the module's order.
inline std::vector<torch::Tensor> state_of(const Model& model) {
  std::vector<torch::Tensor> out;
  for (const auto& p : model.parameters()) out.push_back(p.detach().clone());
  for (const auto& b : model.buffers()) out.push_back(b.detach().clone());
  return out;
}

/// A fresh temporary directory, removed when the object goes away.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "parry-test-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// The folder of committed test fixtures.
inline const std::string kFixtures = fixtures_dir();

/// Writes `bytes` gzip-compressed to `path`, creating its folder.
inline void write_gzip(const std::string& path, const std::string& bytes) {
  const auto folder = std::filesystem::path(path).parent_path();
  if (!folder.empty()) std::filesystem::create_directories(folder);
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(f);
}

/// Seeds LibTorch and uses one intra-op thread so results are reproducible.
class SeededTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(42);
    torch::set_num_threads(1);
  }
};

/// Words that must never appear in a public error message.
/// The Fashion-MNIST input of configs parsed without a data set.
inline const InputSpec kGrayInput{1, 28, 28};

inline const std::vector<std::string>& internal_words() {
  static const std::vector<std::string> words = {"/",
                                                 "\\",
                                                 ".pt",
                                                 ".cpp",
                                                 ".hpp",
                                                 "torch",
                                                 "c10",
                                                 "aten",
                                                 "libtorch",
                                                 "1.13",
                                                 "opencv",
                                                 "eigen",
                                                 "Impl",
                                                 "ReferenceCnn",
                                                 "stack",
                                                 "backtrace",
                                                 "Exception raised from",
                                                 "at::",
                                                 "std::"};
  return words;
}

/// Fails the test if `message` contains any internal word.
inline void expect_public(const std::string& message) {
  for (const auto& word : internal_words()) {
    EXPECT_EQ(message.find(word), std::string::npos) << "public message leaks '" << word << "': " << message;
  }
}

/// Finite-difference gradient check (like torch.autograd.gradcheck): compares
/// the autograd Jacobian-vector products of `fn` at `x` (float64) with central
/// differences, for a few random output weightings. Returns the largest
/// absolute error.
inline double gradcheck_error(const std::function<torch::Tensor(const torch::Tensor&)>& fn, const torch::Tensor& x,
                              double eps = 1e-6) {
  double worst = 0;
  for (int trial = 0; trial < 3; ++trial) {
    auto input = x.detach().clone().to(torch::kFloat64).requires_grad_(true);
    auto out = fn(input);
    auto weights = torch::randn_like(out);
    auto analytic = torch::autograd::grad({(out * weights).sum()}, {input})[0];
    auto flat = input.detach().flatten();
    auto numeric = torch::zeros_like(flat);
    torch::NoGradGuard no_grad;
    for (int64_t i = 0; i < flat.numel(); ++i) {
      auto plus = flat.clone();
      auto minus = flat.clone();
      plus[i] += eps;
      minus[i] -= eps;
      const double f_plus = (fn(plus.view_as(input)) * weights).sum().item<double>();
      const double f_minus = (fn(minus.view_as(input)) * weights).sum().item<double>();
      numeric[i] = (f_plus - f_minus) / (2 * eps);
    }
    worst = std::max(worst, (analytic.flatten() - numeric).abs().max().item<double>());
  }
  return worst;
}

/// Intra-op threads for a test that wants `wanted`: PARRY_TEST_THREADS
/// overrides it (scripts/sanitize.sh sets 1, because ThreadSanitizer cannot
/// see the synchronisation of LibTorch's uninstrumented OpenMP workers).
inline int intra_op_threads(int wanted) {
  const char* forced = std::getenv("PARRY_TEST_THREADS");
  return forced && std::atoi(forced) > 0 ? std::atoi(forced) : wanted;
}

}  // namespace parry::testing
