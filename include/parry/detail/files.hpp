// File helpers shared by everything that saves state.
#pragma once

#include <functional>
#include <string>

namespace parry::detail {

/// "file 'PATH'": how error messages name a file.
std::string describe_path(const std::string& path);

/// Writes a file atomically: `write_to` fills a temporary file in the same
/// directory, which is then renamed over `path`. A crash or exception midway
/// leaves any previous file at `path` intact and removes the temporary.
/// @throws parry::IoError if the temporary cannot be written or renamed.
void atomic_write(const std::string& path, const std::function<void(const std::string& tmp_path)>& write_to);

/// Writes `bytes` to `path` atomically.
void atomic_write_bytes(const std::string& path, const std::string& bytes);

/// True if a regular file exists at `path`.
bool file_exists(const std::string& path);

}  // namespace parry::detail
