// conceal::RedisOptions: the redis:// URL and the checks of its parts.
#include "parry/conceal/state.hpp"

#include <cctype>

namespace parry::conceal {

const char* to_string(FailurePolicy policy) {
  return policy == FailurePolicy::FailOpen ? "fail_open" : "fail_closed";
}

bool RedisOptions::valid_host(const std::string& host) {
  if (host.empty() || host.size() > 253 || host.front() == '.' || host.front() == '-') return false;
  for (const char c : host) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-')) return false;
  }
  return true;
}

bool RedisOptions::valid_prefix(const std::string& prefix) {
  if (prefix.empty() || prefix.size() > 128) return false;
  for (const char c : prefix) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-' || c == ':')) return false;
  }
  return true;
}

namespace {

[[noreturn]] void bad_url(const std::string& url, const std::string& what) {
  // The URL is the operator's own input: echo a bounded, printable copy,
  // without any credentials it carries (logs are read by more people).
  std::string text = url;
  const size_t scheme = text.find("://");
  const size_t at = text.find('@');
  if (at != std::string::npos)
    text = text.substr(0, scheme == std::string::npos ? 0 : scheme + 3) + "***" + text.substr(at);
  std::string shown;
  for (const char c : text.substr(0, 200)) shown += (c >= 0x20 && c < 0x7f) ? c : '?';
  throw OptionError("Redis URL: " + what + ", but got '" + shown + "' (expected redis://HOST[:PORT][/DATABASE])");
}

// Digits only, value in [lo, hi].
int parse_number(const std::string& url, const std::string& text, const char* what, int lo, int hi) {
  if (text.empty() || text.size() > 6)
    bad_url(url, std::string(what) + " must be a number in " + std::to_string(lo) + ".." + std::to_string(hi));
  int value = 0;
  for (const char c : text) {
    if (!std::isdigit(static_cast<unsigned char>(c))) {
      bad_url(url, std::string(what) + " must be a number in " + std::to_string(lo) + ".." + std::to_string(hi));
    }
    value = value * 10 + (c - '0');
  }
  if (value < lo || value > hi) {
    bad_url(url, std::string(what) + " must be a number in " + std::to_string(lo) + ".." + std::to_string(hi));
  }
  return value;
}

}  // namespace

RedisOptions RedisOptions::from_url(const std::string& url) {
  const std::string scheme = "redis://";
  if (url.compare(0, scheme.size(), scheme) != 0) {
    bad_url(url, url.rfind("rediss://", 0) == 0 ? "TLS (rediss://) is not supported" : "the scheme must be redis://");
  }
  std::string rest = url.substr(scheme.size());
  if (rest.find('@') != std::string::npos) {
    bad_url(url, "credentials in the URL are not supported (protect Redis by its network binding)");
  }
  if (rest.find_first_of("?#") != std::string::npos) bad_url(url, "a query string or fragment is not supported");
  if (!rest.empty() && rest.front() == '[') bad_url(url, "IPv6 addresses are not supported");
  std::string database;
  const size_t slash = rest.find('/');
  const bool has_database = slash != std::string::npos;
  if (has_database) {
    database = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
  }
  std::string host = rest;
  std::string port;
  const size_t colon = rest.find(':');
  const bool has_port = colon != std::string::npos;
  if (has_port) {
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (!valid_host(host)) bad_url(url, "the host must be a host name or IPv4 address");
  RedisOptions options;
  options.host(host);
  if (has_port) options.port(parse_number(url, port, "the port", 1, 65535));
  if (has_database && !database.empty()) options.database(parse_number(url, database, "the database", 0, 65535));
  return options;
}

std::string RedisOptions::url() const {
  return "redis://" + host() + ":" + std::to_string(port()) + "/" + std::to_string(database());
}

}  // namespace parry::conceal
