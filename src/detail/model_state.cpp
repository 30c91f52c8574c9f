// A Model's parameters and buffers as bytes in a tensor, for state nested in other archives.
#include "parry/detail/model_state.hpp"

#include <unistd.h>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace parry::detail {

namespace {

/// A temporary file path that is removed when the object goes away.
class TempFile {
 public:
  TempFile() {
    std::string pattern = (std::filesystem::temp_directory_path() / "parry-state-XXXXXX").string();
    const int fd = ::mkstemp(pattern.data());
    if (fd < 0) throw IoError("could not create a temporary file", "mkstemp failed for " + pattern);
    ::close(fd);
    path_ = pattern;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace

/// The bytes Model::save writes (parameters and buffers), as a uint8 tensor.
torch::Tensor model_state_tensor(const Model& model) {
  TempFile tmp;
  model.save(tmp.path());
  std::ifstream in(tmp.path(), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) throw IoError("could not read back the model state", "reading " + tmp.path());
  torch::Tensor out = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  std::memcpy(out.data_ptr<uint8_t>(), bytes.data(), bytes.size());
  return out;
}

/// Loads what model_state_tensor() produced into `model` (unchanged on error).
void load_model_state_tensor(Model& model, const torch::Tensor& state, const std::string& public_message,
                             const std::string& where) {
  if (!state.defined() || state.dim() != 1 || state.scalar_type() != torch::kUInt8 || state.numel() == 0) {
    throw IoError(public_message, where + ": the model state is missing or malformed");
  }
  TempFile tmp;
  {
    const torch::Tensor bytes = state.contiguous();
    std::ofstream out(tmp.path(), std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), static_cast<std::streamsize>(bytes.numel()));
    if (!out) throw IoError("could not write a temporary file", "writing " + tmp.path());
  }
  try {
    model.load(tmp.path());
  } catch (const Error& e) {
    throw IoError(public_message, where + ": " + e.detail());
  }
}

}  // namespace parry::detail
