// open_tensor_file: a torch.save dict {"images", "labels", "classes"} checked and held in memory.
#include "parry/data/tensor_file.hpp"

#include <torch/serialize.h>

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <utility>
#include <vector>

#include "data/tensor_source.hpp"

namespace parry::data {

namespace {

std::string kind(const c10::IValue& v) {
  return v.isNone() ? "None" : v.tagKind();
}

// Little-endian unsigned integer of `n` bytes at `at` (the caller checks the bounds).
uint64_t le(const std::vector<char>& b, uint64_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(b[at + static_cast<uint64_t>(i)]);
  return v;
}

// What is wrong with the pickle b[begin, begin + n) before LibTorch reads
// it: an opcode whose argument runs past the end. LibTorch 1.13's
// Unpickler::readBytes allocates and zero-fills the length a string opcode
// declares before it checks that the data holds it (found by
// fuzz_tensor_file: a 2 KB file declaring a 1.9 GB string, 11 s under ASan). Walks the
// opcodes with the argument sizes of the pickle format, as LibTorch reads
// them, up to STOP or an opcode LibTorch does not know either (it stops there
// with its own error).
std::string pickle_problem(const std::vector<char>& b, uint64_t begin, uint64_t n) {
  uint64_t i = 0;
  auto at = [&](uint64_t k) {
    char op[8];
    std::snprintf(op, sizeof op, "0x%02x", static_cast<unsigned>(static_cast<uint8_t>(b[begin + k])));
    return std::string("opcode ") + op + " at byte " + std::to_string(k);
  };
  while (i < n) {
    const uint64_t start = i;
    const uint8_t op = static_cast<uint8_t>(b[begin + i++]);
    if (op == '.') return "";  // STOP
    // The argument of each opcode LibTorch reads, by the pickle format.
    auto in = [op](std::string_view ops) { return ops.find(static_cast<char>(op)) != std::string_view::npos; };
    int fixed = 0;   // a fixed-size argument
    int prefix = 0;  // a length of this many bytes, then that many bytes
    int lines = 0;   // newline-terminated arguments
    if (in("(012Nt)]}aeldsubRQo\x81\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x93\x94")) {
    } else if (in("Kqh\x80\x82")) {
      fixed = 1;
    } else if (in("M\x83")) {
      fixed = 2;
    } else if (in("Jrj\x84")) {
      fixed = 4;
    } else if (in("G\x95")) {  // BINFLOAT; FRAME (its length, then opcodes)
      fixed = 8;
    } else if (in("UC\x8a\x8c")) {
      prefix = 1;
    } else if (in("TXB\x8b")) {
      prefix = 4;
    } else if (in("\x8d\x8e\x96")) {
      prefix = 8;
    } else if (in("ILFSVPgp")) {
      lines = 1;
    } else if (in("ci")) {
      lines = 2;
    } else {
      return "";
    }
    const uint64_t left = n - i;
    if (static_cast<uint64_t>(fixed + prefix) > left) return at(start) + " is cut short";
    if (prefix > 0) {
      const uint64_t length = le(b, begin + i, prefix);
      i += static_cast<uint64_t>(prefix);
      if (length > n - i) {
        return at(start) + " declares " + std::to_string(length) + " bytes, but " + std::to_string(n - i) + " remain";
      }
      i += length;
    }
    i += static_cast<uint64_t>(fixed);
    for (int line = 0; line < lines; ++line) {
      while (i < n && b[begin + i] != '\n') ++i;
      if (i == n) return at(start) + " is cut short";
      ++i;
    }
  }
  return "";
}

// What is wrong with a torch.save zip archive before LibTorch reads it, or
// "". LibTorch 1.13 trusts the sizes the archive declares:
// PyTorchStreamReader::getRecord allocates a record's declared uncompressed
// size, and the unpickler the lengths in data.pkl (pickle_problem). Checked
// here against the file itself, reading the central directory as miniz
// (LibTorch's zip reader) does: the last end-of-central-directory record,
// the zip64 one when its locator precedes it, every entry with its zip64
// sizes. Every record must be stored uncompressed (torch.save never
// compresses) and lie inside the file; every *.pkl record is walked.
std::string archive_problem(const std::vector<char>& b) {
  const uint64_t size = b.size();
  auto sig = [&](uint64_t at, uint32_t value) { return at + 4 <= size && le(b, at, 4) == value; };
  if (size < 22) return "too short for a zip archive";
  uint64_t eocd = size - 22;
  const uint64_t lowest = size > 22 + 0xFFFF ? size - 22 - 0xFFFF : 0;
  while (!sig(eocd, 0x06054b50)) {
    if (eocd == lowest) return "no end of central directory";
    --eocd;
  }
  uint64_t entries = le(b, eocd + 10, 2);
  uint64_t directory = le(b, eocd + 16, 4);
  if (eocd >= 20 + 56 && sig(eocd - 20, 0x07064b50)) {
    const uint64_t record = le(b, eocd - 20 + 8, 8);
    if (record > size - 56) return "the zip64 end of central directory lies outside the file";
    if (sig(record, 0x06064b50)) {
      entries = le(b, record + 32, 8);
      directory = le(b, record + 48, 8);
    }
  }
  uint64_t at = directory;
  for (uint64_t e = 0; e < entries; ++e) {
    if (at > size || size - at < 46 || !sig(at, 0x02014b50)) return "a central directory entry lies outside the file";
    const uint64_t method = le(b, at + 10, 2);
    uint64_t compressed = le(b, at + 20, 4), uncompressed = le(b, at + 24, 4), local = le(b, at + 42, 4);
    const uint64_t name_length = le(b, at + 28, 2), extra_length = le(b, at + 30, 2),
                   comment_length = le(b, at + 32, 2);
    if (size - at - 46 < name_length + extra_length + comment_length) return "a central directory entry is cut short";
    const std::string name(b.data() + at + 46, name_length);
    // zip64 sizes and offset, in this order, for the fields that hold 0xFFFFFFFF.
    for (uint64_t x = at + 46 + name_length; x + 4 <= at + 46 + name_length + extra_length;) {
      const uint64_t id = le(b, x, 2), length = le(b, x + 2, 2);
      if (x + 4 + length > at + 46 + name_length + extra_length) break;
      if (id == 1) {
        uint64_t field = x + 4;
        for (uint64_t* value : {&uncompressed, &compressed, &local}) {
          if (*value != 0xFFFFFFFF) continue;
          if (field + 8 > x + 4 + length) return "record " + name + " has a cut-short zip64 field";
          *value = le(b, field, 8);
          field += 8;
        }
      }
      x += 4 + length;
    }
    if (method != 0) return "record " + name + " is compressed (torch.save stores records uncompressed)";
    if (compressed != uncompressed) return "record " + name + " declares two different sizes";
    if (local > size || size - local < 30 || !sig(local, 0x04034b50))
      return "record " + name + " lies outside the file";
    const uint64_t data = local + 30 + le(b, local + 26, 2) + le(b, local + 28, 2);
    if (data > size || uncompressed > size - data) {
      return "record " + name + " declares " + std::to_string(uncompressed) + " bytes, more than the file holds";
    }
    if (name.size() >= 4) {
      std::string tail = name.substr(name.size() - 4);
      for (char& c : tail) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (tail == ".pkl") {
        const std::string problem = pickle_problem(b, data, uncompressed);
        if (!problem.empty()) return "record " + name + ": " + problem;
      }
    }
    at += 46 + name_length + extra_length + comment_length;
  }
  return "";
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
  const std::string malformed = archive_problem(bytes);
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
