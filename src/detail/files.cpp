// Atomic file writes (temporary file, then rename) shared by everything that saves state.
#include "parry/detail/files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
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
  // The data reaches the disk before the rename makes it the file, so that
  // after a power loss too the path names the old or the new content.
  if (const int fd = ::open(tmp.c_str(), O_RDONLY); fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  // Fault injection for the crash tests (tests/cli/test_crash_safety.py):
  // PARRY_FAULT_KILL_BEFORE_RENAME=TEXT[#N] dies as kill -9 would at the Nth
  // (default first) write of a path containing TEXT, with the new content
  // written but not yet renamed.
  if (const char* fault = std::getenv("PARRY_FAULT_KILL_BEFORE_RENAME"); fault != nullptr && *fault != '\0') {
    static std::atomic<int> matching_writes{0};
    const std::string spec = fault;
    const auto hash = spec.rfind('#');
    const std::string text = hash == std::string::npos ? spec : spec.substr(0, hash);
    const int nth = hash == std::string::npos ? 1 : std::atoi(spec.c_str() + hash + 1);
    if (!text.empty() && path.find(text) != std::string::npos && ++matching_writes == nth) std::raise(SIGKILL);
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
