// open_tensor_file: a torch.save dict {"images", "labels", "classes"} checked and held in memory.
#include "parry/data/tensor_file.hpp"

#include <torch/serialize.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <utility>
#include <vector>

#include "data/tensor_source.hpp"
#include "detail/torch_archive.hpp"

namespace parry::data {

namespace {

std::string kind(const c10::IValue& v) {
  return v.isNone() ? "None" : v.tagKind();
}

}  // namespace

std::shared_ptr<const ImageSource> open_tensor_file(const std::string& path, int64_t max_bytes) {
  auto fail = [&](const std::string& what) { return IoError("tensor file " + path + ": " + what); };
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) throw IoError("tensor file not found: " + path);
  const auto size = std::filesystem::file_size(path, error);
  if (error) throw fail("cannot read it: " + error.message());
  if (size > static_cast<uintmax_t>(max_bytes)) {
    throw fail("has " + std::to_string(size) + " bytes, over the limit of " + std::to_string(max_bytes));
  }
  std::vector<char> bytes(static_cast<size_t>(size));
  {
    std::ifstream in(path, std::ios::binary);
    if (!in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()))) throw fail("cannot read it");
  }
  if (bytes.size() < 4 || bytes[0] != 'P' || bytes[1] != 'K' || bytes[2] != 3 || bytes[3] != 4) {
    throw fail(
        "not in torch.save's zip format (files saved with _use_new_zipfile_serialization=False or by "
        "something else are not read; save it again with torch.save(obj, path))");
  }
  const std::string malformed = parry::detail::torch_archive_problem(bytes);
  if (!malformed.empty()) throw fail("is not a well-formed torch.save archive: " + malformed);
  c10::IValue root;
  try {
    root = torch::pickle_load(bytes);
  } catch (const std::exception& e) {
    // LibTorch's unpickler lacks the opcodes Python uses for a dict of one
    // key (SETITEM, 0x73) and a list of one element (APPEND, 0x61).
    const std::string why = e.what();
    if (why.find("Unknown opcode for unpickling at 0x73") != std::string::npos ||
        why.find("Unknown opcode for unpickling at 0x61") != std::string::npos) {
      throw IoError("tensor file " + path +
                        ": holds a dict of one key or a list of one element, which the C++ reader cannot read "
                        "(give both \"images\" and \"labels\"; a single class name as a tuple (\"name\",))",
                    "tensor file " + path + ": " + why);
    }
    throw IoError("tensor file " + path + ": cannot be read as a torch.save file", "tensor file " + path + ": " + why);
  }
  bytes = {};
  const std::string outside = parry::detail::tensor_storage_problem(root);
  if (!outside.empty()) throw fail("is not a well-formed torch.save archive: " + outside);
  if (!root.isGenericDict()) {
    throw fail("must hold a dict {\"images\": ..., \"labels\": ..., \"classes\": [...]}, but holds a " + kind(root));
  }
  torch::Tensor images, labels;
  std::vector<std::string> classes;
  for (const auto& item : root.toGenericDict()) {
    if (!item.key().isString()) throw fail("dict keys must be strings, but one is a " + kind(item.key()));
    const std::string& key = item.key().toStringRef();
    const c10::IValue& value = item.value();
    if (key == "images" || key == "labels") {
      if (!value.isTensor()) throw fail("\"" + key + "\" must be a tensor, but is a " + kind(value));
      (key == "images" ? images : labels) = value.toTensor();
    } else if (key == "classes") {
      if (!value.isList() && !value.isTuple()) {
        throw fail("\"classes\" must be a list of str, but is a " + kind(value));
      }
      const c10::ArrayRef<c10::IValue> names =
          value.isList() ? value.toListRef() : c10::ArrayRef<c10::IValue>(value.toTupleRef().elements());
      for (const c10::IValue& name : names) {
        if (!name.isString()) throw fail("\"classes\" must be a list of str, but holds a " + kind(name));
        classes.push_back(name.toStringRef());
      }
      if (classes.empty()) throw fail("\"classes\" is empty");
    } else {
      throw fail("unknown key \"" + key + "\" (expected \"images\", \"labels\" and optionally \"classes\")");
    }
  }
  if (!images.defined()) throw fail("no \"images\" key");
  if (!labels.defined()) throw fail("no \"labels\" key");
  const std::string problem = parry::detail::check_tensors(images, labels, classes, /*image_channels_only=*/true);
  if (!problem.empty()) throw fail(problem);
  const ImageShape shape{images.size(1), images.size(2), images.size(3)};
  std::string description = parry::detail::describe_source("tensor file", path, images.size(0), shape, classes.size());
  return parry::detail::tensor_source(std::move(images), std::move(labels), std::move(classes),
                                      parry::detail::last_component(path), std::move(description));
}

}  // namespace parry::data
