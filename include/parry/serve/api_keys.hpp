// serve::ApiKeys: the API keys a served model accepts, stored as SHA-256
// digests (OpenSSL EVP), never in clear.
//
// Key file format (UTF-8 text, one entry a line):
//   # a comment: from '#' to the end of a line that starts with it
//   sha256:<64 lower- or upper-case hex digits> <client-name>
// Blank lines are ignored. <client-name> is 1..64 characters of
// [A-Za-z0-9._-]; it is the client id for throttling, query monitoring and
// logs (the key itself never is). Digests and client names are unique.
// `parry keys --client NAME` prints the line for a key read from stdin.
//
// Threat model: whoever reads the key file learns digests, not keys: with
// random keys of at least 128 bits (e.g. `openssl rand -hex 32`), a digest
// cannot be turned back into a key. A presented key is hashed and compared
// with every stored digest in constant time (CRYPTO_memcmp, no early exit),
// so response timing does not reveal how much of a digest matched. Keys are
// bearer secrets: without TLS (terminate it in a reverse proxy) anyone on
// the path can read them.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace parry::serve {

/// SHA-256 of `bytes` as 64 lower-case hex digits.
/// @throws parry::InternalError if OpenSSL fails.
std::string sha256_hex(std::string_view bytes);

/// The key-file line for `key` and `client`: "sha256:<hex> <client>".
/// @throws parry::OptionError if `key` is not a valid key (is_valid_key) or
///   `client` not a valid client name (1..64 of [A-Za-z0-9._-]).
std::string key_file_line(std::string_view key, std::string_view client);

/// True if `key` may be presented at all: 1..256 printable ASCII characters
/// without spaces (0x21..0x7e). Other keys are rejected before hashing.
bool is_valid_key(std::string_view key);

class ApiKeys {
 public:
  /// No keys: authenticate() rejects everything.
  ApiKeys() = default;

  /// Parses key-file text (format above). `source` names it in messages.
  /// @throws parry::OptionError naming the line ("api keys line 3: …") for a
  ///   malformed line, a duplicate digest or client name.
  static ApiKeys parse(const std::string& text, const std::string& source = "api keys");
  /// Reads and parses a key file.
  /// @throws parry::IoError if it cannot be read (the path is only in detail());
  ///   parry::OptionError as parse().
  static ApiKeys load(const std::string& path);

  /// The client name of `key`, or nothing for a missing, malformed or unknown
  /// key. Hashes the key and compares with every stored digest in constant time.
  std::optional<std::string> authenticate(std::string_view key) const;

  /// Number of keys.
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::array<unsigned char, 32> digest;
    std::string client;
  };
  std::vector<Entry> entries_;
};

}  // namespace parry::serve
