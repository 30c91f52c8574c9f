// parry::data::open_tensor_file: a data set saved from Python with torch.save.
//
//   torch.save({"images": images,    # N×C×H×W, uint8 in [0, 255] or float32 in [0, 1], C = 1 or 3
//               "labels": labels,    # N int64, >= 0
//               "classes": names},   # optional list (or tuple) of str, index = label
//              "test.pt")
//
// The file must be in torch.save's zip format (the default since PyTorch
// 1.6). It is read by LibTorch's unpickler (torch::pickle_load), which builds
// only tensors and plain containers: it never runs Python code, unlike
// Python's torch.load without weights_only.
//
// LibTorch 1.13's unpickler cannot read a one-element list (pickle's APPEND
// opcode): a single class name must be given as a tuple ("name",).
//
// Memory: the file is loaded whole at open (peak about twice its size while
// it is parsed); uint8 images stay uint8 in memory and are converted to
// float32 / 255 one read() batch at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "parry/data/image_source.hpp"

namespace parry::data {

/// Opens a tensor file written by torch.save (layout above).
/// @param max_bytes refuse files larger than this (default 16 GiB) before
///   reading any of it.
/// @throws parry::IoError naming the file: missing, too large, not in the zip
///   format, not a dict, a missing or unknown key, images not uint8/float32
///   or not of rank 4 or of 2 or more than 3 channels, float pixels outside
///   [0, 1] or not finite, labels not int64 of rank 1, images and labels of
///   different counts, a negative label, class names that are not strings or
///   fewer than the largest label + 1. Default class names are "0" … "K-1"
///   for the largest label K-1.
std::shared_ptr<const ImageSource> open_tensor_file(const std::string& path, int64_t max_bytes = int64_t{16} << 30);

}  // namespace parry::data
