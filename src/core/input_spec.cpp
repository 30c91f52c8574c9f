// parry::InputSpec: the boundary check of every Guard.
#include "parry/core/input_spec.hpp"

#include <cmath>
#include <sstream>

#include "parry/detail/format.hpp"

namespace parry {

using detail::format_number;

InputSpec::InputSpec(int64_t channels, int64_t height, int64_t width)
    : channels_(channels), height_(height), width_(width) {
  if (channels <= 0 || height <= 0 || width <= 0) {
    throw OptionError("InputSpec: channels, height and width must be positive, but got " + std::to_string(channels) +
                      "x" + std::to_string(height) + "x" + std::to_string(width));
  }
}

InputSpec& InputSpec::value_range(double min_value, double max_value) {
  if (!std::isfinite(min_value) || !std::isfinite(max_value) || !(min_value < max_value)) {
    throw OptionError("InputSpec::value_range: need finite min < max, but got [" + format_number(min_value) + ", " +
                      format_number(max_value) + "]");
  }
  min_value_ = min_value;
  max_value_ = max_value;
  return *this;
}

InputSpec& InputSpec::max_batch(int64_t max_batch) {
  if (max_batch < 1) {
    throw OptionError("InputSpec::max_batch: must be at least 1, but got " + std::to_string(max_batch));
  }
  max_batch_ = max_batch;
  return *this;
}

std::string InputSpec::describe() const {
  std::ostringstream out;
  out << "float32 images " << channels_ << "x" << height_ << "x" << width_ << " (or a batch Nx" << channels_ << "x"
      << height_ << "x" << width_ << ", 1 <= N <= " << max_batch_ << ") with values in [" << min_value_ << ", "
      << max_value_ << "]";
  return out.str();
}

namespace {

// Lowest and highest value of a contiguous CPU float32 batch in one scan, and
// whether any value is NaN (NaN fails every comparison, so it must be looked
// for). For the small batches of serving this is several times cheaper than
// torch::aminmax and two scalar reads (docs/benchmarks.md); above this many
// values aminmax's vectorised, multi-threaded kernel wins.
constexpr int64_t kScanLimit = 1 << 16;

struct Bounds {
  float lo;
  float hi;
  bool nan;
};

Bounds bounds_of(const float* values, int64_t count) {
  Bounds b{values[0], values[0], false};
  for (int64_t i = 0; i < count; ++i) {
    const float v = values[i];
    b.lo = v < b.lo ? v : b.lo;
    b.hi = v > b.hi ? v : b.hi;
    b.nan |= v != v;
  }
  return b;
}

}  // namespace

torch::Tensor InputSpec::validate(const torch::Tensor& x) const {
  // Built only on the error paths: formatting it costs more than the checks.
  const auto expected = [this] { return "expected " + describe(); };
  if (!x.defined()) throw InputError("input is empty; " + expected());
  if (x.scalar_type() != torch::kFloat32) {
    throw InputError(std::string("input has the wrong data type (") + c10::toString(x.scalar_type()) + "); " +
                     expected());
  }
  // The Guard moves validated input to the model's device; other device types
  // (meta, XLA, ...) are not served.
  if (!x.device().is_cpu() && !x.device().is_cuda())
    throw InputError("input must be a CPU or CUDA tensor; " + expected());
  if (x.layout() != torch::kStrided) throw InputError("input must be a dense tensor; " + expected());
  torch::Tensor batch;
  if (x.dim() == 3) {
    batch = x.unsqueeze(0);
  } else if (x.dim() == 4) {
    batch = x;
  } else {
    throw InputError("input has rank " + std::to_string(x.dim()) + "; " + expected());
  }
  const int64_t n = batch.size(0);
  if (n == 0) throw InputError("input batch is empty; " + expected());
  if (n > max_batch_) {
    throw InputError("input batch of " + std::to_string(n) + " images exceeds the limit of " +
                     std::to_string(max_batch_));
  }
  if (batch.size(1) != channels_ || batch.size(2) != height_ || batch.size(3) != width_) {
    std::ostringstream got;
    got << batch.size(1) << "x" << batch.size(2) << "x" << batch.size(3);
    throw InputError("input images have shape " + got.str() + "; " + expected());
  }
  double lo = 0;
  double hi = 0;
  bool nan = false;
  if (batch.device().is_cpu() && batch.is_contiguous() && batch.numel() <= kScanLimit) {
    const Bounds b = bounds_of(batch.data_ptr<float>(), batch.numel());
    lo = b.lo;
    hi = b.hi;
    nan = b.nan;
  } else {
    // One pass for both bounds; NaN propagates through min/max and fails both
    // comparisons below.
    torch::NoGradGuard no_grad;
    const auto [lo_t, hi_t] = torch::aminmax(batch);
    lo = lo_t.item<double>();
    hi = hi_t.item<double>();
  }
  if (nan || !(lo >= min_value_ && hi <= max_value_)) {
    if (nan || !torch::isfinite(batch).all().item<bool>()) {
      throw InputError("input contains NaN or infinite values; " + expected());
    }
    throw InputError("input values lie outside [" + format_number(min_value_) + ", " + format_number(max_value_) + "]");
  }
  return batch;
}

}  // namespace parry
