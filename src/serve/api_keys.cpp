// serve::ApiKeys: key file parsing and constant-time key checks (OpenSSL EVP).
#include "parry/serve/api_keys.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <fstream>
#include <set>
#include <sstream>

#include "parry/core/errors.hpp"

namespace parry::serve {

namespace {

using Digest = std::array<unsigned char, 32>;

Digest sha256(std::string_view bytes) {
  Digest out{};
  unsigned int size = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), out.data(), &size, EVP_sha256(), nullptr) != 1 || size != out.size()) {
    throw InternalError("EVP_Digest(sha256) failed");
  }
  return out;
}

std::string hex(const Digest& digest) {
  static const char* const digits = "0123456789abcdef";
  std::string out;
  for (const unsigned char b : digest) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool is_valid_client(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (const char c : name) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

std::string sha256_hex(std::string_view bytes) {
  return hex(sha256(bytes));
}

bool is_valid_key(std::string_view key) {
  if (key.empty() || key.size() > 256) return false;
  for (const char c : key) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

std::string key_file_line(std::string_view key, std::string_view client) {
  if (!is_valid_key(key)) throw OptionError("an API key must be 1..256 printable ASCII characters without spaces");
  if (!is_valid_client(client)) {
    throw OptionError("a client name must be 1..64 characters of A-Z, a-z, 0-9, '.', '_' or '-', but got \"" +
                      std::string(client) + "\"");
  }
  return "sha256:" + sha256_hex(key) + " " + std::string(client);
}

ApiKeys ApiKeys::parse(const std::string& text, const std::string& source) {
  ApiKeys keys;
  std::set<std::string> digests, clients;
  std::istringstream in(text);
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto fail = [&](const std::string& problem) {
      throw OptionError(source + " line " + std::to_string(number) + ": " + problem);
    };
    std::istringstream words(line);
    std::string first, client, extra;
    if (!(words >> first) || first[0] == '#') continue;
    if (first.rfind("sha256:", 0) != 0) fail("expected 'sha256:<64 hex digits> <client-name>'");
    const std::string digits = first.substr(7);
    if (digits.size() != 64) fail("the digest must have 64 hex digits, but has " + std::to_string(digits.size()));
    Entry entry;
    for (size_t i = 0; i < 32; ++i) {
      const int hi = hex_value(digits[2 * i]), lo = hex_value(digits[2 * i + 1]);
      if (hi < 0 || lo < 0) fail("the digest must be hex digits (0-9, a-f)");
      entry.digest[i] = static_cast<unsigned char>(hi * 16 + lo);
    }
    if (!(words >> client)) fail("missing the client name after the digest");
    if (!is_valid_client(client)) fail("a client name must be 1..64 characters of A-Z, a-z, 0-9, '.', '_' or '-'");
    if (words >> extra) fail("unexpected text after the client name");
    if (!digests.insert(hex(entry.digest)).second) fail("duplicate key digest");
    if (!clients.insert(client).second) fail("duplicate client name \"" + client + "\"");
    entry.client = client;
    keys.entries_.push_back(std::move(entry));
  }
  return keys;
}

ApiKeys ApiKeys::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("API key file not found", "cannot read API key file '" + path + "'");
  std::stringstream text;
  text << in.rdbuf();
  return parse(text.str(), "api keys");
}

std::optional<std::string> ApiKeys::authenticate(std::string_view key) const {
  if (!is_valid_key(key)) return std::nullopt;
  const Digest digest = sha256(key);
  const Entry* found = nullptr;
  for (const Entry& entry : entries_) {  // every entry, no early exit
    const bool equal = CRYPTO_memcmp(entry.digest.data(), digest.data(), digest.size()) == 0;
    if (equal) found = &entry;
  }
  if (!found) return std::nullopt;
  return found->client;
}

}  // namespace parry::serve
