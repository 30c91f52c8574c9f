// Decoding untrusted image bytes (PNG, JPEG) into model input tensors.
//
// Threat model: image bytes come from callers. Sizes are checked from the
// file header before any pixel is decoded (a small file can declare a huge
// image: a decompression bomb), and every failure is a parry::InputError with
// a generic public message.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "parry/core/errors.hpp"
#include "parry/core/input_spec.hpp"

namespace parry::data {

struct ImageLimits {
  /// Largest accepted encoded size in bytes (default 10 MiB).
  ImageLimits& max_bytes(int64_t v);
  /// Largest accepted width × height in pixels (default 16 Mpx).
  ImageLimits& max_pixels(int64_t v);
  /// Largest accepted width or height in pixels (default 8192).
  ImageLimits& max_side(int64_t v);
  int64_t max_bytes() const { return max_bytes_; }
  int64_t max_pixels() const { return max_pixels_; }
  int64_t max_side() const { return max_side_; }

 private:
  int64_t max_bytes_ = 10 << 20;
  int64_t max_pixels_ = 16 << 20;
  int64_t max_side_ = 8192;
};

/// Width and height declared by a PNG or JPEG header.
struct ImageSize {
  int64_t width = 0;
  int64_t height = 0;
};

/// Reads the declared size from PNG or JPEG bytes without decoding pixels.
/// @throws parry::InputError if the bytes are not a PNG or JPEG header.
ImageSize peek_image_size(const std::string& bytes);

/// Decodes PNG or JPEG bytes to a float32 tensor C×H×W in [0, 1] at the
/// image's own size. channels = 1 gives grayscale, 3 gives RGB.
/// @throws parry::InputError for empty, oversized, truncated, corrupt or
///   unsupported bytes; parry::OptionError for channels other than 1 or 3.
torch::Tensor decode_image(const std::string& bytes, int64_t channels, const ImageLimits& limits = {});

/// Decodes and resizes (OpenCV INTER_AREA when shrinking, bilinear when
/// enlarging) to the spec's C×H×W, ready for Guard::predict. Pixel values
/// [0, 1] are mapped linearly onto the spec's value range. EXIF orientation is
/// applied.
torch::Tensor decode_image_for(const std::string& bytes, const InputSpec& spec, const ImageLimits& limits = {});

/// Encodes a C×H×W float tensor in [0, 1] (C = 1 or 3, RGB) as PNG bytes.
std::string encode_png(const torch::Tensor& image);

/// Encodes a C×H×W float tensor in [0, 1] (C = 1 or 3, RGB) as JPEG bytes.
std::string encode_jpeg(const torch::Tensor& image, int quality = 90);

}  // namespace parry::data
