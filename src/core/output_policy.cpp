// parry::OutputPolicy helpers.
#include "parry/core/output_policy.hpp"

namespace parry::detail {

void fill_labels(const torch::Tensor& logits, Response& response) {
  if (logits.device().is_cpu() && logits.scalar_type() == torch::kFloat32 && logits.is_contiguous()) {
    // A scan of each row: for the batches of serving, cheaper than the
    // argmax kernel and its output tensor.
    const int64_t rows = logits.size(0);
    const int64_t classes = logits.size(1);
    const float* values = logits.data_ptr<float>();
    response.labels.resize(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = values + r * classes;
      int64_t best = 0;
      for (int64_t c = 0; c < classes; ++c) {
        if (row[c] != row[c]) {  // NaN: torch::argmax takes the first one
          best = c;
          break;
        }
        if (row[c] > row[best]) best = c;
      }
      response.labels[static_cast<size_t>(r)] = best;
    }
    return;
  }
  const torch::Tensor labels = logits.argmax(1).to(torch::kCPU, torch::kInt64).contiguous();
  response.labels.assign(labels.data_ptr<int64_t>(), labels.data_ptr<int64_t>() + labels.numel());
}

}  // namespace parry::detail
