// Decoding untrusted PNG/JPEG bytes (header checks first) and encoding tensors as images.
#include "parry/data/image.hpp"

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "detail/opencv_bytes.hpp"
#include "parry/detail/require.hpp"

namespace parry::data {

using detail::from_opencv_bytes;
using detail::opencv_type;
using detail::to_opencv_bytes;

namespace {

uint32_t be32(const std::string& b, size_t at) {
  return (uint32_t(uint8_t(b[at])) << 24) | (uint32_t(uint8_t(b[at + 1])) << 16) | (uint32_t(uint8_t(b[at + 2])) << 8) |
         uint32_t(uint8_t(b[at + 3]));
}
uint32_t be16(const std::string& b, size_t at) {
  return (uint32_t(uint8_t(b[at])) << 8) | uint32_t(uint8_t(b[at + 1]));
}

bool is_png(const std::string& b) {
  return b.size() >= 8 && b.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0;
}
bool is_jpeg(const std::string& b) {
  return b.size() >= 3 && uint8_t(b[0]) == 0xFF && uint8_t(b[1]) == 0xD8;
}

const char* kUnsupported = "image could not be decoded (PNG or JPEG expected)";

// A truncated JPEG still decodes (libjpeg fills the rest with grey), so the
// end-of-image marker is required; a PNG must end with its IEND chunk.
bool is_complete(const std::string& b) {
  if (is_png(b)) return b.size() >= 12 && b.compare(b.size() - 8, 4, "IEND") == 0;
  size_t end = b.size();
  while (end > 2 && b[end - 1] == '\0') --end;  // some encoders pad with zeros
  return end >= 4 && uint8_t(b[end - 2]) == 0xFF && uint8_t(b[end - 1]) == 0xD9;
}

}  // namespace

ImageLimits& ImageLimits::max_bytes(int64_t v) {
  parry::detail::require(v > 0, "ImageLimits::max_bytes", "must be positive", v);
  max_bytes_ = v;
  return *this;
}
ImageLimits& ImageLimits::max_pixels(int64_t v) {
  parry::detail::require(v > 0, "ImageLimits::max_pixels", "must be positive", v);
  max_pixels_ = v;
  return *this;
}
ImageLimits& ImageLimits::max_side(int64_t v) {
  parry::detail::require(v > 0, "ImageLimits::max_side", "must be positive", v);
  max_side_ = v;
  return *this;
}

ImageSize peek_image_size(const std::string& b) {
  if (is_png(b)) {
    if (b.size() < 24 || b.compare(12, 4, "IHDR") != 0) throw InputError(kUnsupported, "PNG without IHDR");
    return {static_cast<int64_t>(be32(b, 16)), static_cast<int64_t>(be32(b, 20))};
  }
  if (is_jpeg(b)) {
    // Scan markers the way libjpeg's next_marker() does, so that this parser
    // and the decoder agree on which frame header is read: bytes other than
    // 0xFF are skipped, 0xFF fill bytes are skipped, and 0xFF 0x00 is stuffed
    // data, not a marker. A second SOI or SOF before the scan is refused.
    size_t pos = 2;
    bool have_frame = false;
    ImageSize frame;
    while (pos < b.size()) {
      if (uint8_t(b[pos]) != 0xFF) {
        ++pos;
        continue;
      }
      while (pos < b.size() && uint8_t(b[pos]) == 0xFF) ++pos;
      if (pos >= b.size()) break;
      const uint8_t marker = uint8_t(b[pos]);
      const size_t segment = pos + 1;  // first byte after the marker code
      if (marker == 0x00) {            // stuffed byte
        pos = segment;
        continue;
      }
      if (marker == 0xD8) throw InputError(kUnsupported, "JPEG with a second start-of-image marker");
      if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // no payload
        pos = segment;
        continue;
      }
      if (marker == 0xDA || marker == 0xD9) break;  // start of scan / end of image
      if (segment + 2 > b.size()) break;
      const size_t length = be16(b, segment);
      if (length < 2) throw InputError(kUnsupported, "JPEG segment with a bad length");
      const bool start_of_frame =
          marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
      if (start_of_frame) {
        if (have_frame) throw InputError(kUnsupported, "JPEG with two frame headers");
        if (segment + 7 > b.size()) break;
        frame = {static_cast<int64_t>(be16(b, segment + 5)), static_cast<int64_t>(be16(b, segment + 3))};
        have_frame = true;
      }
      pos = segment + length;
    }
    if (have_frame) return frame;
    throw InputError(kUnsupported, "JPEG without a frame header");
  }
  throw InputError(kUnsupported, "neither PNG nor JPEG signature");
}

torch::Tensor decode_image(const std::string& bytes, int64_t channels, const ImageLimits& limits) {
  if (channels != 1 && channels != 3) {
    throw OptionError("decode_image: channels must be 1 or 3, but got " + std::to_string(channels));
  }
  if (bytes.empty()) throw InputError("image is empty");
  if (static_cast<int64_t>(bytes.size()) > limits.max_bytes()) {
    throw InputError("image exceeds the size limit of " + std::to_string(limits.max_bytes()) + " bytes");
  }
  const ImageSize size = peek_image_size(bytes);
  if (size.width < 1 || size.height < 1) throw InputError(kUnsupported, "zero image dimension");
  if (size.width > limits.max_side() || size.height > limits.max_side() ||
      size.width > limits.max_pixels() / size.height) {
    throw InputError("image dimensions exceed the limit",
                     "declared " + std::to_string(size.width) + "x" + std::to_string(size.height));
  }
  if (!is_complete(bytes)) throw InputError(kUnsupported, "truncated image data");
  cv::Mat decoded;
  try {
    const cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<char*>(bytes.data()));
    decoded = cv::imdecode(raw, channels == 1 ? cv::IMREAD_GRAYSCALE : cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    throw InputError(kUnsupported, std::string("OpenCV: ") + e.what());
  } catch (const std::exception& e) {  // e.g. std::bad_alloc
    throw InputError(kUnsupported, std::string("decoding failed: ") + e.what());
  }
  // The decoder applies EXIF orientation, which may swap width and height.
  const bool as_declared = decoded.cols == size.width && decoded.rows == size.height;
  const bool rotated = decoded.cols == size.height && decoded.rows == size.width;
  if (decoded.empty() || decoded.depth() != CV_8U || decoded.channels() != channels || !(as_declared || rotated)) {
    throw InputError(kUnsupported, "decoder rejected the data");
  }
  if (!decoded.isContinuous()) decoded = decoded.clone();
  auto nhwc = torch::from_blob(decoded.data, {1, decoded.rows, decoded.cols, channels}, torch::kUInt8);
  return from_opencv_bytes(nhwc)[0];
}

torch::Tensor decode_image_for(const std::string& bytes, const InputSpec& spec, const ImageLimits& limits) {
  if (spec.channels() != 1 && spec.channels() != 3) {
    throw OptionError("decode_image_for: the input spec needs 1 or 3 channels, but has " +
                      std::to_string(spec.channels()));
  }
  torch::Tensor image = decode_image(bytes, spec.channels(), limits);
  // Pixel values map linearly from [0, 1] onto the spec's value range.
  auto to_range = [&](torch::Tensor t) {
    if (spec.min_value() == 0.0 && spec.max_value() == 1.0) return t;
    return t * (spec.max_value() - spec.min_value()) + spec.min_value();
  };
  const int64_t h = image.size(1), w = image.size(2);
  if (h == spec.height() && w == spec.width()) return to_range(image);
  // Resize in OpenCV on float32 H×W×C data.
  torch::Tensor hwc = image.permute({1, 2, 0}).contiguous();
  const cv::Mat src(static_cast<int>(h), static_cast<int>(w), CV_32FC(static_cast<int>(spec.channels())),
                    hwc.data_ptr<float>());
  cv::Mat dst;
  const bool shrinking = spec.height() <= h && spec.width() <= w;
  cv::resize(src, dst, cv::Size(static_cast<int>(spec.width()), static_cast<int>(spec.height())), 0, 0,
             shrinking ? cv::INTER_AREA : cv::INTER_LINEAR);
  auto out = torch::from_blob(dst.data, {spec.height(), spec.width(), spec.channels()}, torch::kFloat32);
  return to_range(out.permute({2, 0, 1}).clamp(0, 1).contiguous());
}

namespace {
std::string encode(const torch::Tensor& image, const std::string& ext, const std::vector<int>& params) {
  if (image.dim() != 3 || (image.size(0) != 1 && image.size(0) != 3)) {
    throw OptionError("encode: need a C×H×W tensor with C = 1 or 3, but got " + c10::str(image.sizes()));
  }
  const torch::Tensor hwc = to_opencv_bytes(image.unsqueeze(0))[0].contiguous();
  const cv::Mat mat(static_cast<int>(hwc.size(0)), static_cast<int>(hwc.size(1)), opencv_type(hwc.size(2)),
                    hwc.data_ptr<uint8_t>());
  std::vector<uchar> buffer;
  if (!cv::imencode(ext, mat, buffer, params)) throw InternalError("OpenCV could not encode " + ext);
  return std::string(buffer.begin(), buffer.end());
}
}  // namespace

std::string encode_png(const torch::Tensor& image) {
  return encode(image, ".png", {});
}

std::string encode_jpeg(const torch::Tensor& image, int quality) {
  if (quality < 1 || quality > 100) {
    throw OptionError("encode_jpeg: quality must be in 1..100, but got " + std::to_string(quality));
  }
  return encode(image, ".jpg", {cv::IMWRITE_JPEG_QUALITY, quality});
}

}  // namespace parry::data
