// Internal: how registry factories read a component's JSON object. A Binder
// ties JSON keys to the setters of an options struct; reading a key converts
// the raw JSON value to the setter's parameter type and calls the setter, and
// a rejected value is re-thrown under the key's JSON path with the setter's
// own rule. The same binding yields the OptionDescriptor (key, type, default,
// rule) shown by the docs and the CLI, so each option is declared once: in
// its Options struct. Not installed.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <optional>

#include "config/json_object.hpp"
#include "parry/conceal/state.hpp"
#include "parry/config/registry.hpp"
#include "parry/detail/arg.hpp"

namespace parry::config::detail {

/// One component's JSON object being read: its keys, its path and the context.
class Reader {
 public:
  /// @param value the JSON object; @param path its JSON path (for messages).
  Reader(const json& value, std::string path, const BuildContext& context)
      : object_(value, path), path_(std::move(path)), context_(context) {}
  /// The strict accessor of the object's keys.
  Object& object() { return object_; }
  /// JSON path of the object.
  const std::string& path() const { return path_; }
  /// What the factory needs besides the JSON (model, input spec).
  const BuildContext& context() const { return context_; }

 private:
  Object object_;
  std::string path_;
  const BuildContext& context_;
};

/// Builds the component `descriptor` from its JSON object at `path`: reads
/// every key, rejects unknown ones. @throws parry::OptionError naming the path.
Component build_component(const ComponentDescriptor& descriptor, const json& value, const std::string& path,
                          const BuildContext& context);

/// Builds a component of `kind` whose type the object's type key names.
/// @throws parry::OptionError listing the registered types for an unknown one.
Component build_any(ComponentKind kind, const json& value, const std::string& path, const BuildContext& context);

/// A gate's "state" (or the config's top-level one): "memory" (in-process,
/// nullopt), a URL "redis://HOST[:PORT][/DATABASE]", or an object {"url",
/// "prefix", "timeout_ms", "reconnect_ms", "failure": "fail_closed" |
/// "fail_open"} read with RedisOptions' own checks.
/// @throws parry::OptionError naming the path of a bad value.
std::optional<conceal::RedisOptions> read_state(const json& value, const std::string& path);

/// `value` converted to the integer type T. @throws parry::OptionError
/// "<where>: must be an integer in <min>..<max> (the setter's type), but got <value>" if T cannot hold it.
template <typename T>
T narrow_integer(int64_t value, const std::string& where) {
  static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>);
  const bool fits = std::is_signed_v<T>
                        ? (value >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
                           static_cast<uint64_t>(value) <= static_cast<uint64_t>(std::numeric_limits<T>::max()))
                        : value >= 0;
  if (!fits) {
    throw OptionError(where + ": must be an integer in " + std::to_string(std::numeric_limits<T>::min()) + ".." +
                      std::to_string(std::numeric_limits<T>::max()) + ", but got " + std::to_string(value));
  }
  return static_cast<T>(value);
}

/// The raw JSON `value` at `path` as the setter parameter type T (bool, an
/// integer type or a floating-point type); a value of another JSON type is an
/// OptionError ("must be an integer, but is string").
template <typename T>
T json_value_as(const json& value, const std::string& path) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!value.is_boolean()) fail(path, std::string("must be true or false, but is ") + type_name(value));
    return value.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!value.is_number_integer()) fail(path, std::string("must be an integer, but is ") + type_name(value));
    if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      fail(path, "must be an integer below 2^63, but got " + value.dump());
    }
    try {
      return narrow_integer<T>(value.get<int64_t>(), path);
    } catch (const OptionError& e) {
      throw OptionError("config: " + std::string(e.what()));  // e names the path already
    }
  } else {
    static_assert(std::is_floating_point_v<T>);
    if (!value.is_number()) fail(path, std::string("must be a number, but is ") + type_name(value));
    return static_cast<T>(value.get<double>());
  }
}

/// Runs `set` (one setter call) and re-throws its OptionError under
/// `key_path`, without the "<Options>::<key>: " prefix the path replaces.
template <typename F>
void at_key(const std::string& key_path, const std::string& prefix, F&& set) {
  try {
    set();
  } catch (const OptionError& e) {
    std::string message = e.what();
    if (message.rfind(prefix, 0) == 0) message = message.substr(prefix.size());
    fail(key_path, message);
  }
}

/// The JSON keys of an options struct O, each bound to its setter.
template <typename O>
class Binder {
 public:
  /// @param defaults the options a component starts from (their getters give the documented defaults).
  explicit Binder(O defaults = O()) : defaults_(std::move(defaults)) {}

  /// Binds JSON key `key` to `setter` (its getter gives the default). `rule`
  /// is the setter's rule (`O::name_rule()`), empty for unchecked options.
  template <typename T>
  Binder& arg(const char* key, O& (O::*setter)(const T&), const T& (O::*getter)() const noexcept,
              const char* rule = "") {
    OptionDescriptor d;
    d.key = key;
    d.rule = rule;
    const O defaults = defaults_;
    const std::string prefix = std::string(O::options_name()) + "::" + key + ": ";
    if constexpr (std::is_same_v<T, bool>) {
      d.type = OptionType::Boolean;
      d.default_value = (defaults_.*getter)() ? "true" : "false";
    } else if constexpr (std::is_integral_v<T>) {
      d.type = OptionType::Integer;
      d.default_value = std::to_string((defaults_.*getter)());
      const std::string where = std::string(O::options_name()) + "::" + key;
      d.check_integer = [defaults, setter, where](int64_t v) {
        O options = defaults;
        (options.*setter)(narrow_integer<T>(v, where));
      };
    } else {
      static_assert(std::is_floating_point_v<T>, "bind enums with choice()");
      d.type = OptionType::Number;
      d.default_value = parry::detail::format_number((defaults_.*getter)());
      d.check_number = [defaults, setter](double v) {
        O options = defaults;
        (options.*setter)(static_cast<T>(v));
      };
    }
    const std::string name = key;
    bindings_.push_back({std::move(d), [name, setter, prefix](Reader& r, O& options) {
                           Object& o = r.object();
                           if (!o.has(name)) return;
                           const T value = json_value_as<T>(o.get(name), o.child(name));
                           at_key(o.child(name), prefix, [&] { (options.*setter)(value); });
                         }});
    return *this;
  }

  /// Binds a string key whose accepted `names` map to values of the setter's
  /// (enum) type; the first name whose value equals the default is shown as default.
  template <typename T>
  Binder& choice(const char* key, O& (O::*setter)(const T&), const T& (O::*getter)() const noexcept,
                 std::vector<std::pair<std::string, T>> names) {
    OptionDescriptor d;
    d.key = key;
    d.type = OptionType::Choice;
    for (const auto& [text, value] : names) {
      d.choices.push_back(text);
      if (d.default_value.empty() && value == (defaults_.*getter)()) d.default_value = text;
    }
    const std::string name = key, prefix = std::string(O::options_name()) + "::" + key + ": ";
    const auto choices = d.choices;
    bindings_.push_back({std::move(d), [name, setter, prefix, names, choices](Reader& r, O& options) {
                           Object& o = r.object();
                           if (!o.has(name)) return;
                           const std::string text = o.text(name, "", choices);
                           for (const auto& entry : names) {  // not a structured binding: the lambda captures it
                             if (entry.first == text) {
                               at_key(o.child(name), prefix, [&] { (options.*setter)(entry.second); });
                             }
                           }
                         }});
    return *this;
  }

  /// Documents a key that the factory reads itself (arrays, required values).
  Binder& manual(OptionDescriptor descriptor) {
    bindings_.push_back({std::move(descriptor), nullptr});
    return *this;
  }

  /// Replaces the default shown for `key` (when it is derived, e.g. "global_rate").
  Binder& shown_default(const std::string& key, std::string text) {
    for (auto& b : bindings_) {
      if (b.descriptor.key == key) b.descriptor.default_value = std::move(text);
    }
    return *this;
  }

  /// The descriptors of every bound key, in binding order.
  std::vector<OptionDescriptor> options() const {
    std::vector<OptionDescriptor> out;
    for (const auto& b : bindings_) out.push_back(b.descriptor);
    return out;
  }

  /// The defaults with every key present in the reader's object applied
  /// through its setter. @throws parry::OptionError under the key's path.
  O read(Reader& r) const {
    O options = defaults_;
    apply(r, options);
    return options;
  }

  /// Applies every key present in the reader's object to `options` through its setter.
  void apply(Reader& r, O& options) const {
    for (const auto& b : bindings_) {
      if (b.apply) b.apply(r, options);
    }
  }

 private:
  struct Binding {
    OptionDescriptor descriptor;
    std::function<void(Reader&, O&)> apply;  // null for manual keys
  };
  O defaults_;
  std::vector<Binding> bindings_;
};

}  // namespace parry::config::detail

/// Binds the option `name` of options struct `O` under the JSON key "name",
/// with the rule its PARRY_CHECKED_ARG declared.
#define PARRY_BIND_CHECKED(O, name) #name, &O::name, &O::name, O::name##_rule()
/// Binds the unchecked option (PARRY_ARG) `name` of `O` under the JSON key "name".
#define PARRY_BIND(O, name) #name, &O::name, &O::name
