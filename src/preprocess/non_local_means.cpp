// preprocess::NonLocalMeans: OpenCV's fast non-local means denoising, in parallel over the batch.
#include "parry/preprocess/non_local_means.hpp"

#include <ATen/Parallel.h>
#include <cstring>
#include <opencv2/photo.hpp>

#include "detail/opencv_bytes.hpp"
#include "parry/detail/format.hpp"

namespace parry::preprocess {

using detail::from_opencv_bytes;
using detail::opencv_type;
using detail::to_opencv_bytes;

NonLocalMeans::NonLocalMeans(NonLocalMeansOptions options)
    : Preprocessor(options.gradient_policy()), options_(options) {
  if (options_.patch_size() > options_.search_window()) {
    throw OptionError("NonLocalMeansOptions::patch_size: must be at most search_window (" +
                      std::to_string(options_.search_window()) + "), but got " + std::to_string(options_.patch_size()));
  }
  check_policy("NonLocalMeans");
}

torch::Tensor NonLocalMeans::apply(const torch::Tensor& x) const {
  if (x.dim() != 4 || (x.size(1) != 1 && x.size(1) != 3)) {
    throw InputError("non-local means needs N×C×H×W images with 1 or 3 channels, but the input has shape " +
                     c10::str(x.sizes()));
  }
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const torch::Tensor in = to_opencv_bytes(x);
  torch::Tensor out = torch::empty_like(in);
  const auto strength = static_cast<float>(options_.strength());
  const int patch = options_.patch_size();
  const int search = options_.search_window();
  const int64_t image_bytes = h * w * c;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const cv::Mat image(static_cast<int>(h), static_cast<int>(w), opencv_type(c),
                          in.data_ptr<uint8_t>() + i * image_bytes);
      cv::Mat denoised;
      if (c == 3) {
        cv::fastNlMeansDenoisingColored(image, denoised, strength, strength, patch, search);
      } else {
        cv::fastNlMeansDenoising(image, denoised, strength, patch, search);
      }
      const cv::Mat packed = denoised.isContinuous() ? denoised : denoised.clone();
      std::memcpy(out.data_ptr<uint8_t>() + i * image_bytes, packed.data, static_cast<size_t>(image_bytes));
    }
  });
  return from_opencv_bytes(out).to(x.dtype());
}

std::string NonLocalMeans::describe() const {
  return "NonLocalMeans(search_window=" + std::to_string(options_.search_window()) +
         ", patch_size=" + std::to_string(options_.patch_size()) +
         ", strength=" + parry::detail::format_number(options_.strength()) + ", grad=" + to_string(gradient_policy()) +
         ")";
}

}  // namespace parry::preprocess
