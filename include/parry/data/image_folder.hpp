// parry::data::open_image_folder: a directory in torchvision's ImageFolder layout.
//
//   root/<class>/**/<image>.png|.jpg|.jpeg
//
// Classes are root's subfolders, sorted by byte order (Python's sorted() on
// str, as torchvision.datasets.ImageFolder); label = index in that order.
// Samples are listed class by class; inside a class folder the walk is
// torchvision's: folders (links followed) in the order of their paths, the
// files of each folder sorted by name. So labels and sample order agree with
// `ImageFolder(root)` in Python for any folder both accept.
//
// Differences from torchvision, on purpose:
//   - entries whose name starts with '.' are skipped (.DS_Store, .ipynb_checkpoints);
//   - only .png, .jpg and .jpeg (any case) are images, and any other file in
//     a class folder is an error rather than silently skipped, so that a
//     half-converted data set is noticed;
//   - regular files directly in root are ignored (torchvision ignores them too).
//
// Streaming: open reads only each file's header (the first 4 KiB, or the
// whole file when its JPEG frame header lies further in); read() decodes
// just the images asked for, in parallel over at::get_num_threads() threads.
#pragma once

#include <memory>
#include <string>

#include "parry/data/data_splits.hpp"
#include "parry/data/image_source.hpp"

namespace parry::data {

/// Opens the image folder `root`. Images are decoded to options.channels()
/// and, when options asks a resize, resized to it (decode_image_for);
/// otherwise every image must have the size of the first one.
/// @throws parry::IoError naming the path: root missing or without class
///   folders, an empty class folder, a file that is not a PNG or JPEG image
///   (by name or by header), an image over options.limits(), images of
///   different sizes without a resize, a symbolic-link loop. read() throws
///   parry::IoError naming the file of an image that cannot be decoded.
std::shared_ptr<const ImageSource> open_image_folder(const std::string& root, const DecodeOptions& options = {});

}  // namespace parry::data
