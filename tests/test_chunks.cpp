#include "parry/detail/chunks.hpp"

#include "test_support.hpp"

using parry::OptionError;
using parry::detail::for_each_chunk;
using parry::detail::map_chunks;

namespace {

class ChunksTest : public parry::testing::SeededTest {};

std::vector<std::pair<int64_t, int64_t>> ranges(int64_t n, int64_t chunk) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for_each_chunk(n, chunk, [&](int64_t begin, int64_t end) { out.emplace_back(begin, end); });
  return out;
}

using Ranges = std::vector<std::pair<int64_t, int64_t>>;

}  // namespace

TEST_F(ChunksTest, RangesCoverTheRowsInOrderWithTheRemainderLast) {
  EXPECT_EQ(ranges(10, 4), (Ranges{{0, 4}, {4, 8}, {8, 10}}));
  EXPECT_EQ(ranges(8, 4), (Ranges{{0, 4}, {4, 8}}));
  EXPECT_EQ(ranges(3, 500), (Ranges{{0, 3}}));  // n < chunk: one short chunk
  EXPECT_EQ(ranges(3, 1), (Ranges{{0, 1}, {1, 2}, {2, 3}}));
  EXPECT_TRUE(ranges(0, 7).empty());
}

TEST_F(ChunksTest, ABoolResultFalseStopsAfterThatChunk) {
  Ranges seen;
  const bool finished = for_each_chunk(10, 3, [&](int64_t begin, int64_t end) {
    seen.emplace_back(begin, end);
    return begin < 3;  // stop after the second chunk
  });
  EXPECT_FALSE(finished);
  EXPECT_EQ(seen, (Ranges{{0, 3}, {3, 6}}));
  EXPECT_TRUE(for_each_chunk(10, 3, [](int64_t, int64_t) { return true; }));
}

TEST_F(ChunksTest, MapChunksEqualsTheWholeBatchForEverySplit) {
  const auto x = torch::randn({7, 1, 2, 3});
  auto row_sums = [](const torch::Tensor& part) { return part.flatten(1).sum(1); };
  const auto whole = row_sums(x);
  for (int64_t chunk : {1, 2, 3, 7, 100}) {
    int64_t calls = 0;
    const auto chunked = map_chunks(x, chunk, [&](const torch::Tensor& part) {
      ++calls;
      EXPECT_LE(part.size(0), chunk);
      return row_sums(part);
    });
    EXPECT_TRUE(torch::equal(chunked, whole)) << chunk;
    EXPECT_EQ(calls, (7 + chunk - 1) / chunk) << chunk;
  }
}

TEST_F(ChunksTest, TwoTensorsAreSlicedTogether) {
  const auto x = torch::arange(10).view({10, 1}).to(torch::kFloat32);
  const auto y = torch::arange(10, 20);
  const auto out = map_chunks(x, y, 4, [](const torch::Tensor& xs, const torch::Tensor& ys) {
    EXPECT_EQ(xs.size(0), ys.size(0));
    return xs.flatten() + ys.to(torch::kFloat32);  // row i: i + (10 + i)
  });
  EXPECT_TRUE(torch::equal(out, (torch::arange(10) * 2 + 10).to(torch::kFloat32)));
}

TEST_F(ChunksTest, BadArgumentsAreOptionErrorsNamingTheValue) {
  auto message_of = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const OptionError& e) {
      return e.what();
    }
    return "no exception";
  };
  const auto x = torch::zeros({4, 2});
  auto identity = [](const torch::Tensor& t) { return t; };
  EXPECT_NE(message_of([] { for_each_chunk(4, 0, [](int64_t, int64_t) {}); }).find("at least 1, but got 0"),
            std::string::npos);
  EXPECT_NE(message_of([&] { map_chunks(x, -3, identity); }).find("but got -3"), std::string::npos);
  EXPECT_NE(message_of([] { for_each_chunk(-1, 2, [](int64_t, int64_t) {}); }).find("but got -1"), std::string::npos);
  EXPECT_NE(message_of([&] {
              map_chunks(torch::zeros({0, 2}), 2, identity);
            }).find("at least one row"),
            std::string::npos);
  EXPECT_NE(message_of([&] {
              map_chunks(x, torch::zeros({3}), 2, [](const torch::Tensor& a, const torch::Tensor&) { return a; });
            }).find("but got 3"),
            std::string::npos);
}
