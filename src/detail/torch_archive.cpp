// Checks of LibTorch's zip archives (zip structure, pickles, module source) before LibTorch reads them.
#include "detail/torch_archive.hpp"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "parry/core/errors.hpp"
#include "parry/detail/files.hpp"

namespace parry::detail {

namespace {

// Little-endian unsigned integer of `n` bytes at `at` (the caller checks the bounds).
uint64_t le(const std::vector<char>& b, uint64_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(b[at + static_cast<uint64_t>(i)]);
  return v;
}

bool ends_with(const std::string& s, std::string_view tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// A value on the simulated unpickler's stack, as far as the storage check
// below needs it: strings, integers, globals and tuples; anything else is
// kind 0.
struct Shadow {
  char kind = 0;          // 's' string, 'i' integer, 'g' global, 't' tuple, 0 anything else
  std::string_view text;  // a string's bytes; a global's "module\nname"
  int64_t number = 0;
  std::shared_ptr<const std::vector<Shadow>> items;  // a tuple's
};

// Bytes per element of the storage class torch.save names `global`
// ("torch\nFloatStorage"), or 0 if it is not one. LibTorch's unpickler maps
// "<ScalarType>Storage" of module torch to that scalar type.
uint64_t storage_element_bytes(std::string_view global) {
  constexpr std::string_view module = "torch\n";
  if (global.substr(0, module.size()) != module) return 0;
  const std::string_view name = global.substr(module.size());
  for (int t = 0; t < static_cast<int>(c10::ScalarType::NumOptions); ++t) {
    const auto type = static_cast<c10::ScalarType>(t);
    if (name == std::string(c10::toString(type)) + "Storage") return c10::elementSize(type);
  }
  return 0;
}

// What is wrong with the persistent id `id` of a pickle whose storages lie
// in records `tensor_dir` + key, or "". LibTorch's unpickler makes a storage
// of the byte size the id declares (numel × element size) around whatever
// record the key names, without comparing the two (found by
// fuzz_saved_state: a checkpoint declaring 2,197 bytes for a 48-byte record,
// a heap-buffer-overflow when the tensor was read). torch.save and
// torch::save write ('storage', torch.<Type>Storage, key, location, numel).
std::string persistent_id_problem(const Shadow& id, const std::string& tensor_dir,
                                  const std::unordered_map<std::string, uint64_t>& record_sizes) {
  const std::vector<Shadow>* items = id.kind == 't' ? id.items.get() : nullptr;
  if (items == nullptr || items->size() != 5 || (*items)[0].kind != 's' || (*items)[0].text != "storage" ||
      (*items)[1].kind != 'g' || (*items)[2].kind != 's' || (*items)[3].kind != 's' || (*items)[4].kind != 'i') {
    return "a persistent id other than ('storage', type, key, location, numel)";
  }
  const uint64_t element_bytes = storage_element_bytes((*items)[1].text);
  if (element_bytes == 0) return "a storage of an unknown type";
  const int64_t numel = (*items)[4].number;
  uint64_t bytes = 0;
  if (numel < 0 || __builtin_mul_overflow(static_cast<uint64_t>(numel), element_bytes, &bytes)) {
    return "a storage of " + std::to_string(numel) + " elements";
  }
  if (bytes == 0) return "";  // LibTorch reads no record for an empty storage
  const std::string key(tensor_dir + std::string((*items)[2].text));
  const auto record = record_sizes.find(key);
  if (record == record_sizes.end()) return "a storage whose record " + key + " is missing";
  if (record->second < bytes) {
    return "a storage of " + std::to_string(bytes) + " bytes in record " + key + " of " +
           std::to_string(record->second) + " bytes";
  }
  return "";
}

// What is wrong with the pickle b[begin, begin + n) before LibTorch reads
// it, or "": an opcode whose argument runs past the end, a memo index past
// the memo's end, an opcode that takes more from the stack than it holds,
// or a storage larger than its record (see below). Walks the opcodes with
// the argument sizes of the pickle format, as LibTorch reads them, up to
// STOP or an opcode LibTorch does not know either (it stops there with its
// own error). A storage's key names record `tensor_dir` + key;
// `record_sizes` holds every record of the archive.
std::string pickle_problem(const std::vector<char>& b, uint64_t begin, uint64_t n, const std::string& tensor_dir,
                           const std::unordered_map<std::string, uint64_t>& record_sizes) {
  uint64_t i = 0;
  // The unpickler's stack and memo, simulated, and where each MARK was set.
  // LibTorch's Unpickler takes values with stack_.back() and iterators from
  // its marks without checking either (found by fuzz_saved_state: a mutated
  // checkpoint whose opcode popped an empty stack, a SEGV). Every opcode
  // must find the values it takes above the last mark, as in Python's pickle.
  std::vector<Shadow> stack;
  std::vector<Shadow> memo;
  std::vector<uint64_t> marks;
  auto above_mark = [&] { return stack.size() - (marks.empty() ? 0 : marks.back()); };
  auto at = [&](uint64_t k) {
    char op[8];
    std::snprintf(op, sizeof op, "0x%02x", static_cast<unsigned>(static_cast<uint8_t>(b[begin + k])));
    return std::string("opcode ") + op + " at byte " + std::to_string(k);
  };
  while (i < n) {
    const uint64_t start = i;
    const uint8_t op = static_cast<uint8_t>(b[begin + i++]);
    // The argument of each opcode LibTorch reads, by the pickle format.
    auto in = [op](std::string_view ops) { return ops.find(static_cast<char>(op)) != std::string_view::npos; };
    int fixed = 0;   // a fixed-size argument
    int prefix = 0;  // a length of this many bytes, then that many bytes
    int lines = 0;   // newline-terminated arguments
    if (in(".(012Nt)]}aeldsubRQo\x81\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x93\x94")) {
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
    const uint64_t argument = begin + i;  // where the argument starts in `b`
    // A memo index: LibTorch's Unpickler::setInput grows its memo table to
    // the index (16 bytes per entry) before it stores anything (found by
    // fuzz_saved_state: a 4 KB checkpoint whose LONG_BINPUT asked for 30 GB).
    // Picklers number the memo from 0 without gaps.
    const uint64_t memo_index = in("qrhj") ? le(b, argument, fixed) : 0;
    if ((op == 'q' || op == 'r') && memo_index > memo.size()) {
      return at(start) + " stores memo entry " + std::to_string(memo_index) + " after " + std::to_string(memo.size()) +
             " entries";
    }
    if ((op == 'h' || op == 'j') && memo_index >= memo.size()) {
      return at(start) + " reads memo entry " + std::to_string(memo_index) + " of " + std::to_string(memo.size());
    }
    // The argument's length and the end of its lines.
    uint64_t length = 0;
    if (prefix > 0) {
      length = le(b, argument, prefix);
      if (length > n - i - static_cast<uint64_t>(prefix)) {
        return at(start) + " declares " + std::to_string(length) + " bytes, but " +
               std::to_string(n - i - static_cast<uint64_t>(prefix)) + " remain";
      }
    }
    uint64_t end = i + static_cast<uint64_t>(fixed + prefix) + length;
    for (int line = 0; line < lines; ++line) {
      while (end < n && b[begin + end] != '\n') ++end;
      if (end == n) return at(start) + " is cut short";
      ++end;
    }
    // The stack effect: values taken (above the last mark) and the value left.
    if (in("(")) {
      marks.push_back(stack.size());
    } else if (in("tdl1eu\x90\x91o")) {  // take everything down to the last mark
      if (marks.empty()) return at(start) + " has no mark to pop to";
      const uint64_t items = stack.size() - marks.back();
      Shadow made;  // the tuple, dict, list, frozenset or object
      if (op == 't') {
        made.kind = 't';
        made.items = std::make_shared<const std::vector<Shadow>>(stack.begin() + static_cast<int64_t>(marks.back()),
                                                                 stack.end());
      }
      stack.resize(marks.back());
      marks.pop_back();
      if ((op == 'd' || op == 'u') && items % 2 != 0) return at(start) + " has an odd number of keys and values";
      if (in("eu\x90") && above_mark() < 1) return at(start) + " has no container to add to";
      if (op == 'o' && items < 1) return at(start) + " has no class to build";
      if (!in("1eu\x90")) stack.push_back(std::move(made));
    } else {
      uint64_t takes = 0;  // most opcodes push one value and take none
      bool leaves = true;
      if (op == '.' || in("qrp\x94Q\x85")) {  // STOP, memo stores, BINPERSID, TUPLE1
        takes = 1;
        leaves = op != '.';
      } else if (op == '0') {  // POP
        takes = 1;
        leaves = false;
      } else if (in("aRb\x81\x86\x93")) {  // APPEND, REDUCE, BUILD, NEWOBJ, TUPLE2, STACK_GLOBAL
        takes = 2;
      } else if (in("s\x87\x92")) {  // SETITEM, TUPLE3, NEWOBJ_EX
        takes = 3;
      } else if (in("\x80\x95")) {  // PROTO, FRAME
        leaves = false;
      } else if (op == '2') {  // DUP
        takes = 1;
      }
      if (above_mark() < takes) {
        return at(start) + " takes " + std::to_string(takes) + " values from a stack holding " +
               std::to_string(above_mark());
      }
      if (op == '.') return "";  // STOP
      std::vector<Shadow> taken(stack.end() - static_cast<int64_t>(takes), stack.end());
      stack.resize(stack.size() - takes);
      Shadow left_behind;
      if (in("qrp\x94")) {  // memo stores leave the value where it was
        left_behind = taken[0];
        if (op == 'p') {  // PUT's decimal index: LibTorch does not read it, nor do Parry's checks
        } else if (op == 0x94 || memo_index == memo.size()) {
          memo.push_back(taken[0]);
        } else {
          memo[memo_index] = taken[0];
        }
      } else if (op == 'Q') {
        const std::string why = persistent_id_problem(taken[0], tensor_dir, record_sizes);
        if (!why.empty()) return at(start) + " loads " + why;
      } else if (in(")\x85\x86\x87")) {  // EMPTY_TUPLE, TUPLE1..3
        left_behind.kind = 't';
        left_behind.items = std::make_shared<const std::vector<Shadow>>(std::move(taken));
      } else if (op == '2') {
        left_behind = taken[0];
        stack.push_back(taken[0]);
      } else if (op == 'h' || op == 'j') {
        left_behind = memo[memo_index];
      } else if (in("KMJ")) {
        const uint64_t raw = le(b, argument, fixed);
        left_behind.kind = 'i';
        left_behind.number = op == 'J' ? static_cast<int32_t>(static_cast<uint32_t>(raw)) : static_cast<int64_t>(raw);
      } else if (op == 0x8a && length <= 8) {  // LONG1: little-endian two's complement
        left_behind.kind = 'i';
        uint64_t raw = length == 0 ? 0 : le(b, argument + 1, static_cast<int>(length));
        if (length > 0 && length < 8 && (raw >> (8 * length - 1)) != 0) raw |= ~uint64_t{0} << (8 * length);
        left_behind.number = static_cast<int64_t>(raw);
      } else if (in("X\x8c\x8d")) {  // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
        left_behind.kind = 's';
        left_behind.text = std::string_view(b.data() + argument + prefix, length);
      } else if (op == 'c') {  // GLOBAL "module\nname\n"
        left_behind.kind = 'g';
        left_behind.text = std::string_view(b.data() + argument, end - i - 1);
      }
      if (leaves) stack.push_back(std::move(left_behind));
    }
    i = end;
  }
  return "";
}

// One record of the archive: its name and where its bytes lie.
struct Record {
  std::string name;
  uint64_t data = 0;
  uint64_t size = 0;          // bytes in the file
  uint64_t uncompressed = 0;  // bytes once inflated (= size when stored)
  bool deflated = false;
};

// torch::save's writer (PyTorchStreamWriter) deflates module source; a
// record of source larger than this is refused before it is inflated.
constexpr uint64_t kMaxSourceBytes = uint64_t{1} << 24;

// The records of the zip archive `b`, read from the central directory as
// miniz (LibTorch's zip reader) reads it: the last end-of-central-directory
// record, the zip64 one when its locator precedes it, every entry with its
// zip64 sizes. Only records of module source (*.py) may be deflated, and
// only when `deflated_source` (torch::save writes them so; torch.save in
// Python writes none). Sets `problem` and returns what it read so far on the
// first malformed entry.
std::vector<Record> records(const std::vector<char>& b, bool deflated_source, std::string& problem) {
  std::vector<Record> out;
  const uint64_t size = b.size();
  auto sig = [&](uint64_t at, uint32_t value) { return at + 4 <= size && le(b, at, 4) == value; };
  auto fail = [&](std::string why) {
    problem = std::move(why);
    return out;
  };
  if (size < 22) return fail("too short for a zip archive");
  uint64_t eocd = size - 22;
  const uint64_t lowest = size > 22 + 0xFFFF ? size - 22 - 0xFFFF : 0;
  while (!sig(eocd, 0x06054b50)) {
    if (eocd == lowest) return fail("no end of central directory");
    --eocd;
  }
  uint64_t entries = le(b, eocd + 10, 2);
  uint64_t directory = le(b, eocd + 16, 4);
  if (eocd >= 20 + 56 && sig(eocd - 20, 0x07064b50)) {
    const uint64_t record = le(b, eocd - 20 + 8, 8);
    if (record > size - 56) return fail("the zip64 end of central directory lies outside the file");
    if (sig(record, 0x06064b50)) {
      entries = le(b, record + 32, 8);
      directory = le(b, record + 48, 8);
    }
  }
  uint64_t at = directory;
  for (uint64_t e = 0; e < entries; ++e) {
    if (at > size || size - at < 46 || !sig(at, 0x02014b50)) {
      return fail("a central directory entry lies outside the file");
    }
    const uint64_t method = le(b, at + 10, 2);
    uint64_t compressed = le(b, at + 20, 4), uncompressed = le(b, at + 24, 4), local = le(b, at + 42, 4);
    const uint64_t name_length = le(b, at + 28, 2), extra_length = le(b, at + 30, 2),
                   comment_length = le(b, at + 32, 2);
    if (size - at - 46 < name_length + extra_length + comment_length) {
      return fail("a central directory entry is cut short");
    }
    const std::string name(b.data() + at + 46, name_length);
    // zip64 sizes and offset, in this order, for the fields that hold 0xFFFFFFFF.
    for (uint64_t x = at + 46 + name_length; x + 4 <= at + 46 + name_length + extra_length;) {
      const uint64_t id = le(b, x, 2), length = le(b, x + 2, 2);
      if (x + 4 + length > at + 46 + name_length + extra_length) break;
      if (id == 1) {
        uint64_t field = x + 4;
        for (uint64_t* value : {&uncompressed, &compressed, &local}) {
          if (*value != 0xFFFFFFFF) continue;
          if (field + 8 > x + 4 + length) return fail("record " + name + " has a cut-short zip64 field");
          *value = le(b, field, 8);
          field += 8;
        }
      }
      x += 4 + length;
    }
    const bool deflated = method == 8 && deflated_source && ends_with(name, ".py");
    if (method != 0 && !deflated) {
      return fail("record " + name + " is compressed (torch.save stores " +
                  (deflated_source ? "only module source" : "no record") + " compressed)");
    }
    if (!deflated && compressed != uncompressed) return fail("record " + name + " declares two different sizes");
    if (deflated && uncompressed > kMaxSourceBytes) {
      return fail("record " + name + " declares " + std::to_string(uncompressed) + " bytes of source, over " +
                  std::to_string(kMaxSourceBytes));
    }
    if (local > size || size - local < 30 || !sig(local, 0x04034b50)) {
      return fail("record " + name + " lies outside the file");
    }
    const uint64_t data = local + 30 + le(b, local + 26, 2) + le(b, local + 28, 2);
    if (data > size || compressed > size - data) {
      return fail("record " + name + " declares " + std::to_string(compressed) + " bytes, more than the file holds");
    }
    out.push_back({name, data, compressed, uncompressed, deflated});
    at += 46 + name_length + extra_length + comment_length;
  }
  return out;
}

std::string lowercase(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string structure_problem(const std::vector<char>& b, bool deflated_source, std::vector<Record>& out) {
  std::string problem;
  out = records(b, deflated_source, problem);
  if (!problem.empty()) return problem;
  std::unordered_map<std::string, uint64_t> record_sizes;
  for (const Record& r : out) record_sizes.emplace(r.name, r.size);
  for (const Record& r : out) {
    if (!r.deflated && ends_with(lowercase(r.name), "pkl")) {  // data.pkl, constants.pkl, *.debug_pkl
      // "<archive>/data.pkl" keeps its storages in "<archive>/data/<key>".
      const std::string tensor_dir = r.name.substr(0, r.name.rfind('.')) + "/";
      const std::string why = pickle_problem(b, r.data, r.size, tensor_dir, record_sizes);
      if (!why.empty()) return "record " + r.name + ": " + why;
    }
  }
  return "";
}

// A strict reader of the module source that OutputArchive writes (see the header).
class ModuleSource {
 public:
  explicit ModuleSource(std::string_view text) : text_(text) {}

  // "" if the text is a module type declaration, else what is wrong.
  std::string problem() {
    if (!take("class Module(Module):\n")) return at("does not start with 'class Module(Module):'");
    while (pos_ < text_.size()) {
      if (!take("  ")) return at("has a line that is not an indented attribute");
      if (take("__parameters__ = [") || take("__buffers__ = [")) {
        while (!take("]")) {
          if (!quoted() || !take(", ")) return at("has a malformed name list");
        }
      } else if (take("__annotations__")) {
        if (take(" = []")) {
        } else if (!take("[") || !quoted() || !take("] = ") || !type(0)) {
          return at("has a malformed __annotations__ entry");
        }
      } else if (!identifier() || !take(" : ") || !type(0)) {
        return at("has a line other than 'name : Type' (only attribute declarations are accepted)");
      }
      if (!take("\n")) return at("has more than one declaration on a line");
    }
    return "";
  }

 private:
  bool take(std::string_view s) {
    if (text_.substr(pos_, s.size()) != s) return false;
    pos_ += s.size();
    return true;
  }
  bool identifier() {
    const size_t start = pos_;
    while (pos_ < text_.size() && (std::isalnum(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '_')) {
      ++pos_;
    }
    return pos_ > start && !std::isdigit(static_cast<unsigned char>(text_[start]));
  }
  // A double-quoted name without quotes, backslashes or control characters.
  bool quoted() {
    if (!take("\"")) return false;
    while (pos_ < text_.size() && text_[pos_] != '"') {
      const auto c = static_cast<unsigned char>(text_[pos_]);
      if (c < 0x20 || c == '\\' || c == 0x7f) return false;
      ++pos_;
    }
    return take("\"");
  }
  bool type(int depth) {
    if (depth > 8) return false;
    for (const char* name : {"Tensor", "str", "int", "float", "bool", "NoneType"}) {
      if (take(name) && !word_continues()) return true;
    }
    if (take("__torch__.")) {
      if (take("___torch_mangle_")) {
        const size_t start = pos_;
        while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) ++pos_;
        if (pos_ == start || !take(".")) return false;
      }
      return take("Module") && !word_continues();
    }
    for (const char* generic : {"Tuple[", "List[", "Dict[", "Optional["}) {
      if (!take(generic)) continue;
      if (!type(depth + 1)) return false;
      while (take(", ")) {
        if (!type(depth + 1)) return false;
      }
      return take("]");
    }
    return false;
  }
  bool word_continues() const {
    return pos_ < text_.size() && (std::isalnum(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '_');
  }
  std::string at(const std::string& what) const { return what + " (byte " + std::to_string(pos_) + ")"; }

  std::string_view text_;
  size_t pos_ = 0;
};

// The bytes of record `r`, inflated if it is deflated; sets `problem` if
// they do not inflate to exactly the declared size.
std::string record_bytes(const std::vector<char>& b, const Record& r, std::string& problem) {
  if (!r.deflated) return std::string(b.data() + r.data, static_cast<size_t>(r.size));
  std::string out(static_cast<size_t>(r.uncompressed), '\0');
  z_stream stream{};
  if (inflateInit2(&stream, -MAX_WBITS) != Z_OK) {  // raw deflate, as in zip
    problem = "cannot be inflated";
    return "";
  }
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(b.data() + r.data));
  stream.avail_in = static_cast<uInt>(r.size);
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  const int status = inflate(&stream, Z_FINISH);
  const uint64_t produced = stream.total_out;
  inflateEnd(&stream);
  if (status != Z_STREAM_END || produced != r.uncompressed) {
    problem = "does not inflate to its declared " + std::to_string(r.uncompressed) + " bytes";
    return "";
  }
  return out;
}

}  // namespace

std::string torch_archive_problem(const std::vector<char>& bytes) {
  std::vector<Record> unused;
  return structure_problem(bytes, /*deflated_source=*/false, unused);
}

std::string output_archive_problem(const std::vector<char>& bytes) {
  std::vector<Record> all;
  const std::string problem = structure_problem(bytes, /*deflated_source=*/true, all);
  if (!problem.empty()) return problem;
  for (const Record& r : all) {
    if (!ends_with(r.name, ".py")) continue;  // "<archive name>/code/...py": the module types' source
    std::string why;
    const std::string source = record_bytes(bytes, r, why);
    if (why.empty()) why = ModuleSource(source).problem();
    if (!why.empty()) return "record " + r.name + " " + why;
  }
  return "";
}

namespace {

std::string extent_problem(const at::Tensor& t) {
  if (!t.defined() || !t.has_storage()) return "";
  if (t.storage_offset() < 0) return "a tensor has a negative storage offset";
  if (t.numel() == 0) return "";
  int64_t last = t.storage_offset();  // the element with the highest index read
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.stride(d) < 0) return "a tensor has a negative stride";
    int64_t reach = 0;
    if (__builtin_mul_overflow(t.size(d) - 1, t.stride(d), &reach) || __builtin_add_overflow(last, reach, &last)) {
      return "a tensor's sizes and strides overflow";
    }
  }
  const auto elements = static_cast<uint64_t>(t.storage().nbytes()) / static_cast<uint64_t>(t.element_size());
  if (static_cast<uint64_t>(last) >= elements) {
    return "a tensor of sizes " + c10::str(t.sizes()) + " at offset " + std::to_string(t.storage_offset()) +
           " reads past its storage of " + std::to_string(elements) + " elements";
  }
  return "";
}

// Depth-first over containers and objects; each shared container is visited
// once (a pickle's memo can share one container many times, or make a list
// hold itself).
std::string storage_problem(const c10::IValue& v, std::unordered_set<const void*>& seen, int depth) {
  if (depth > 256) return "values are nested too deeply";
  if (v.isTensor()) return extent_problem(v.toTensor());
  if (!v.isPtrType() || !seen.insert(v.internalToPointer()).second) return "";
  const auto each = [&](const auto& values) -> std::string {
    for (const c10::IValue& e : values) {
      std::string why = storage_problem(e, seen, depth + 1);
      if (!why.empty()) return why;
    }
    return "";
  };
  if (v.isTensorList()) {
    for (const at::Tensor& t : v.toTensorVector()) {
      std::string why = extent_problem(t);
      if (!why.empty()) return why;
    }
    return "";
  }
  if (v.isList()) return each(v.toListRef());
  if (v.isTuple()) return each(v.toTupleRef().elements());
  if (v.isObject()) return each(v.toObjectRef().slots());
  if (v.isGenericDict()) {
    for (const auto& entry : v.toGenericDict()) {
      std::string why = storage_problem(entry.key(), seen, depth + 1);
      if (why.empty()) why = storage_problem(entry.value(), seen, depth + 1);
      if (!why.empty()) return why;
    }
  }
  return "";
}

}  // namespace

std::string tensor_storage_problem(const c10::IValue& value) {
  std::unordered_set<const void*> seen;
  return storage_problem(value, seen, 0);
}

void load_output_archive(const std::string& path, const std::string& what, torch::serialize::InputArchive& archive,
                         int64_t max_bytes) {
  if (!file_exists(path)) throw IoError(what + " not found", "no such " + describe_path(path));
  const std::string corrupt = what + " is corrupt";
  std::error_code error;
  const auto size = std::filesystem::file_size(path, error);
  if (error) throw IoError(corrupt, describe_path(path) + ": " + error.message());
  if (size > static_cast<uintmax_t>(max_bytes)) {
    throw IoError(what + " is too large",
                  describe_path(path) + " has " + std::to_string(size) + " bytes, over " + std::to_string(max_bytes));
  }
  std::vector<char> bytes(static_cast<size_t>(size));
  {
    std::ifstream in(path, std::ios::binary);
    if (!in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()))) {
      throw IoError(corrupt, describe_path(path) + ": cannot be read");
    }
  }
  const std::string problem = output_archive_problem(bytes);
  if (!problem.empty()) throw IoError(corrupt, describe_path(path) + ": " + problem);
  try {
    archive.load_from(bytes.data(), bytes.size());
  } catch (const c10::Error& e) {
    throw IoError(corrupt, describe_path(path) + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {  // torch::jit's parser of the archive's type names throws std::runtime_error
    throw IoError(corrupt, describe_path(path) + ": " + e.what());
  }
  for (const std::string& key : archive.keys()) {
    c10::IValue value;
    if (!archive.try_read(key, value)) continue;
    const std::string why = tensor_storage_problem(value);
    if (!why.empty()) throw IoError(corrupt, describe_path(path) + ": " + key + ": " + why);
  }
}

}  // namespace parry::detail
