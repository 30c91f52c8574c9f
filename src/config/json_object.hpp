// Strict reading of one JSON object for the defense configuration: every
// accessor checks type and range, unknown keys are rejected, and every error
// names the path of the bad key. Internal: not installed.
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <functional>
#include <set>
#include <string>

#include "parry/core/errors.hpp"
#include "parry/core/preprocessor.hpp"

namespace parry::config::detail {

using json = nlohmann::json;

[[noreturn]] inline void fail(const std::string& path, const std::string& problem) {
  throw OptionError("config: " + path + ": " + problem);
}

inline const char* type_name(const json& v) {
  return v.type_name();
}

// Reads one JSON object, remembering which keys were used so that unknown
// keys can be rejected; every accessor checks type and range.
class Object {
 public:
  Object(const json& value, std::string path) : value_(value), path_(std::move(path)) {
    if (!value_.is_object())
      fail(path_.empty() ? "(top level)" : path_, std::string("must be an object, but is ") + type_name(value_));
  }

  bool has(const std::string& key) const { return value_.contains(key); }
  std::string child(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

  const json& get(const std::string& key) {
    used_.insert(key);
    return value_.at(key);
  }

  double number(const std::string& key, double fallback, const std::function<bool(double)>& ok, const char* rule) {
    if (!has(key)) return fallback;
    const json& v = get(key);
    if (!v.is_number()) fail(child(key), std::string("must be a number, but is ") + type_name(v));
    const double d = v.get<double>();
    if (!ok(d)) {
      std::ostringstream out;
      out << rule << ", but got " << d;
      fail(child(key), out.str());
    }
    return d;
  }

  int64_t integer(const std::string& key, int64_t fallback, int64_t lo, int64_t hi) {
    if (!has(key)) return fallback;
    const json& v = get(key);
    if (!v.is_number_integer()) fail(child(key), std::string("must be an integer, but is ") + type_name(v));
    const auto i = v.get<int64_t>();
    if (i < lo || i > hi) {
      fail(child(key),
           "must be in " + std::to_string(lo) + ".." + std::to_string(hi) + ", but got " + std::to_string(i));
    }
    return i;
  }

  bool boolean(const std::string& key, bool fallback) {
    if (!has(key)) return fallback;
    const json& v = get(key);
    if (!v.is_boolean()) fail(child(key), std::string("must be true or false, but is ") + type_name(v));
    return v.get<bool>();
  }

  std::string text(const std::string& key, const std::string& fallback, const std::vector<std::string>& allowed = {}) {
    if (!has(key)) {
      if (fallback.empty() && !allowed.empty()) fail(child(key), "is required");
      return fallback;
    }
    const json& v = get(key);
    if (!v.is_string()) fail(child(key), std::string("must be a string, but is ") + type_name(v));
    const auto s = v.get<std::string>();
    if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), s) == allowed.end()) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      fail(child(key), "must be one of " + list + ", but got \"" + s + "\"");
    }
    return s;
  }

  const json& array(const std::string& key) {
    static const json empty = json::array();
    if (!has(key)) return empty;
    const json& v = get(key);
    if (!v.is_array()) fail(child(key), std::string("must be an array, but is ") + type_name(v));
    return v;
  }

  std::vector<double> numbers(const std::string& key, const std::vector<double>& fallback) {
    if (!has(key)) return fallback;
    const json& v = array(key);
    std::vector<double> out;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_number()) fail(child(key) + "[" + std::to_string(i) + "]", "must be a number");
      out.push_back(v[i].get<double>());
    }
    return out;
  }

  // Rejects keys nobody read.
  void finish() const {
    for (const auto& item : value_.items()) {
      if (!used_.count(item.key())) fail(child(item.key()), "unknown key");
    }
  }

 private:
  const json& value_;
  std::string path_;
  std::set<std::string> used_;
};

inline const auto positive = [](double v) { return std::isfinite(v) && v > 0; };

// Runs a component's own validation and re-throws its message under the path.
template <typename F>
auto at_path(const std::string& path, F&& make) {
  try {
    return make();
  } catch (const OptionError& e) {
    fail(path, e.what());
  }
}

}  // namespace parry::config::detail
