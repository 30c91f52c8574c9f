// preprocess::Jpeg: JPEG encode/decode round trip with OpenCV, in parallel over the batch.
#include "parry/preprocess/jpeg.hpp"

#include <ATen/Parallel.h>
#include <atomic>
#include <cstring>
#include <opencv2/imgcodecs.hpp>

#include "detail/opencv_bytes.hpp"

namespace parry::preprocess {

using detail::from_opencv_bytes;
using detail::opencv_type;
using detail::to_opencv_bytes;

torch::Tensor Jpeg::apply(const torch::Tensor& x) const {
  if (x.dim() != 4 || (x.size(1) != 1 && x.size(1) != 3)) {
    throw InputError("JPEG compression needs 1 or 3 channels, but the input has shape " + c10::str(x.sizes()));
  }
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const torch::Tensor in = to_opencv_bytes(x);
  torch::Tensor out = torch::empty_like(in);
  const std::vector<int> params = {cv::IMWRITE_JPEG_QUALITY, options_.quality()};
  const int read_flag = c == 1 ? cv::IMREAD_GRAYSCALE : cv::IMREAD_COLOR;
  const int64_t image_bytes = h * w * c;
  std::atomic<bool> failed{false};
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<uchar> encoded;
    for (int64_t i = begin; i < end; ++i) {
      const cv::Mat image(static_cast<int>(h), static_cast<int>(w), opencv_type(c),
                          in.data_ptr<uint8_t>() + i * image_bytes);
      cv::Mat decoded;
      if (cv::imencode(".jpg", image, encoded, params)) decoded = cv::imdecode(encoded, read_flag);
      if (decoded.empty() || decoded.rows != h || decoded.cols != w || !decoded.isContinuous()) {
        failed = true;
        continue;
      }
      std::memcpy(out.data_ptr<uint8_t>() + i * image_bytes, decoded.data, static_cast<size_t>(image_bytes));
    }
  });
  if (failed) throw InternalError("JPEG encode/decode failed inside the Jpeg preprocessor");
  return from_opencv_bytes(out).to(x.dtype());
}

}  // namespace parry::preprocess
