// Running work over a large batch in chunks of rows: bounded memory, a
// request limit (InputSpec::max_batch), or mini-batches of a training epoch.
// One helper instead of a hand-written `for (begin = 0; begin < n; begin +=
// chunk) { ... slice(0, begin, begin + chunk) ... }` in every component.
//
// Chunks are consecutive half-open row ranges [begin, end) in order, each of
// `chunk` rows except the last, which holds the remainder (1 .. chunk rows).
// The results are those of the hand-written loop: the same slices in the same
// order, so anything that consumes randomness per chunk stays reproducible.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "parry/detail/require.hpp"

namespace parry::detail {

/// Calls f(begin, end) for the chunks [0, chunk), [chunk, 2·chunk), …
/// covering rows [0, n); nothing for n = 0. If f returns bool, `false` stops
/// the iteration after that chunk (e.g. a Guard rejected a request).
/// @param n number of rows, >= 0
/// @param chunk rows per chunk, >= 1
/// @return true if every chunk was visited (always true for a void f).
/// @throws parry::OptionError on chunk < 1 or n < 0; whatever f throws.
template <class F>
bool for_each_chunk(int64_t n, int64_t chunk, F&& f) {
  if (chunk < 1 || n < 0) {  // checked first: no strings are built on the hot path
    require(chunk >= 1, "parry::detail::for_each_chunk", "the chunk size must be at least 1", chunk);
    require(n >= 0, "parry::detail::for_each_chunk", "the row count must be non-negative", n);
  }
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t end = std::min(n, begin + chunk);
    if constexpr (std::is_same_v<std::invoke_result_t<F&, int64_t, int64_t>, bool>) {
      if (!f(begin, end)) return false;
    } else {
      f(begin, end);
    }
  }
  return true;
}

/// f(x[begin:end]) for every chunk of x's rows (dim 0), concatenated along
/// dim 0: equal to f(x) for a row-wise f, computed `chunk` rows at a time.
/// @param x a tensor with at least one row
/// @param chunk rows per call of f, >= 1
/// @param f maps a slice of rows to a tensor with one row per input row (or
///          any tensors whose concatenation along dim 0 is wanted)
/// @throws parry::OptionError on chunk < 1 or an undefined/empty x; whatever f throws.
template <class F>
torch::Tensor map_chunks(const torch::Tensor& x, int64_t chunk, F&& f) {
  if (!x.defined() || x.dim() == 0 || x.size(0) == 0) {
    throw OptionError("parry::detail::map_chunks: x must have at least one row");
  }
  std::vector<torch::Tensor> parts;
  for_each_chunk(x.size(0), chunk, [&](int64_t begin, int64_t end) { parts.push_back(f(x.slice(0, begin, end))); });
  return torch::cat(parts, 0);
}

/// f(x[begin:end], y[begin:end]) for every chunk of the rows of x and y
/// (sliced together, e.g. images and labels), concatenated along dim 0.
/// @param x, y tensors with the same number of rows, at least one
/// @param chunk rows per call of f, >= 1
/// @throws parry::OptionError on chunk < 1, an empty x or mismatched row counts; whatever f throws.
template <class F>
torch::Tensor map_chunks(const torch::Tensor& x, const torch::Tensor& y, int64_t chunk, F&& f) {
  if (!x.defined() || x.dim() == 0 || x.size(0) == 0 || !y.defined() || y.dim() == 0) {
    throw OptionError("parry::detail::map_chunks: x and y must have at least one row");
  }
  if (y.size(0) != x.size(0)) {
    require(false, "parry::detail::map_chunks", "y must have as many rows as x (" + std::to_string(x.size(0)) + ")",
            y.size(0));
  }
  std::vector<torch::Tensor> parts;
  for_each_chunk(x.size(0), chunk, [&](int64_t begin, int64_t end) {
    parts.push_back(f(x.slice(0, begin, end), y.slice(0, begin, end)));
  });
  return torch::cat(parts, 0);
}

}  // namespace parry::detail
