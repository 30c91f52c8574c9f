// Atomic file writes (temporary file, then rename) shared by everything that saves state.
#include "parry/detail/files.hpp"

#include <sys/stat.h>
#include <unistd.h>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "parry/core/errors.hpp"

namespace parry::detail {

std::string describe_path(const std::string& path) {
  return "file '" + path + "'";
}

void atomic_write(const std::string& path, const std::function<void(const std::string&)>& write_to) {
  const std::string tmp =
      path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(reinterpret_cast<std::uintptr_t>(&path));
  try {
    write_to(tmp);
  } catch (const Error&) {
    std::remove(tmp.c_str());
    throw;
  } catch (const std::exception& e) {
    std::remove(tmp.c_str());
    throw IoError("could not write file", "writing " + describe_path(tmp) + ": " + e.what());
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw IoError("could not write file", "renaming temporary file onto " + describe_path(path));
  }
}

void atomic_write_bytes(const std::string& path, const std::string& bytes) {
  atomic_write(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) throw IoError("could not write file", "short write to " + describe_path(tmp));
  });
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace parry::detail
