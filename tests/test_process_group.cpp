// train::ProcessGroup and the data-parallel fit loops: ranks are threads of
// this process, each with its own ProcessGroup over loopback, rendezvous
// through a RendezvousStore on a port the system picks.
#include "parry/train/process_group.hpp"

#include <future>
#include <mutex>
#include <thread>

#include "parry/data/idx.hpp"
#include "parry/models/reference_cnn.hpp"
#include "parry/train/adversarial_trainer.hpp"
#include "parry/train/classifier_trainer.hpp"
#include "test_support.hpp"

using namespace parry;
using train::ProcessGroup;
using train::ProcessGroupOptions;

namespace {

class ProcessGroupTest : public parry::testing::SeededTest {};

ProcessGroupOptions rank_options(const train::RendezvousStore& store, int64_t rank, int64_t world) {
  return ProcessGroupOptions()
      .world_size(world)
      .rank(rank)
      .master_port(store.port())
      .host_store(false)
      .timeout_seconds(60)
      .join_timeout_seconds(60);
}

/// Runs `body(rank, group)` on `world` threads, one rank each; returns each
/// rank's result.
template <typename T>
std::vector<T> run_ranks(int64_t world, const std::function<T(int64_t, std::shared_ptr<ProcessGroup>)>& body) {
  train::RendezvousStore store("127.0.0.1", 0, 60);
  std::vector<std::future<T>> futures;
  for (int64_t r = 0; r < world; ++r) {
    futures.push_back(std::async(std::launch::async,
                                 [&, r] { return body(r, ProcessGroup::connect(rank_options(store, r, world))); }));
  }
  std::vector<T> out;
  for (auto& f : futures) out.push_back(f.get());
  return out;
}

/// Ranks are threads of one process and share LibTorch's default generator,
/// which the trainers seed (for dropout masks): every rank's model is built
/// before the ranks start, because a rank that seeded it while another drew
/// its initial weights made rank 0 broadcast weights that differed from the
/// one-process run's (seen under AddressSanitizer in CI).

/// A model without BatchNorm or dropout, so that a data-parallel step is the
/// same function of the batch as a one-process step.
Model plain_net(uint64_t seed) {
  torch::manual_seed(seed);
  return Model(torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3).stride(2)), torch::nn::ReLU(),
                                     torch::nn::Flatten(), torch::nn::Linear(4 * 13 * 13, 10)));
}

using parry::testing::state_of;

void expect_identical(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "tensor " << i;
}

void expect_close(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::allclose(a[i], b[i], 1e-4, 1e-5))
        << "tensor " << i << ": largest difference " << (a[i] - b[i]).abs().max().item<double>();
  }
}

}  // namespace

TEST(ShardOfBatch, SplitsContiguouslyWithTheLargerShardsFirst) {
  using Rows = std::pair<int64_t, int64_t>;
  EXPECT_EQ(train::shard_of_batch(10, 0, 3), Rows(0, 4));
  EXPECT_EQ(train::shard_of_batch(10, 1, 3), Rows(4, 7));
  EXPECT_EQ(train::shard_of_batch(10, 2, 3), Rows(7, 10));
  EXPECT_EQ(train::shard_of_batch(1, 1, 2), Rows(1, 1));  // an empty shard
  EXPECT_EQ(train::shard_of_batch(7, 0, 1), Rows(0, 7));
  EXPECT_THROW(train::shard_of_batch(4, 2, 2), OptionError);
  EXPECT_THROW(train::shard_of_batch(-1, 0, 1), OptionError);
}

TEST_F(ProcessGroupTest, CollectivesSumBroadcastAndWeightGradients) {
  const auto results = run_ranks<std::vector<double>>(2, [](int64_t rank, std::shared_ptr<ProcessGroup> group) {
    torch::Tensor sum = torch::full({3}, static_cast<double>(rank + 1), torch::kFloat64);
    group->all_reduce_sum(sum);
    std::vector<torch::Tensor> from_one{torch::full({2}, static_cast<float>(10 * rank)),
                                        torch::full({1}, rank, torch::kInt64)};
    group->broadcast(from_one, 1);
    // Two parameters split over buckets of 3 floats: [4] alone, then [2].
    torch::Tensor p1 = torch::zeros({4}, torch::requires_grad());
    torch::Tensor p2 = torch::zeros({2}, torch::requires_grad());
    p1.mutable_grad() = torch::full({4}, static_cast<float>(rank + 1));  // p2 has no gradient on either rank
    std::vector<double> extras{static_cast<double>(rank), 1.0};
    group->sum_gradients({p1, p2}, 0.5, extras, 3 * sizeof(float));
    group->barrier();
    return std::vector<double>{sum[0].item<double>(),
                               from_one[0][1].item<double>(),
                               static_cast<double>(from_one[1][0].item<int64_t>()),
                               p1.grad()[3].item<double>(),
                               p2.grad().abs().sum().item<double>(),
                               extras[0],
                               extras[1],
                               static_cast<double>(group->collectives())};
  });
  for (const auto& r : results) {
    EXPECT_EQ(r[0], 3.0);   // 1 + 2
    EXPECT_EQ(r[1], 10.0);  // rank 1's values
    EXPECT_EQ(r[2], 1.0);
    EXPECT_EQ(r[3], 1.5);  // 0.5·1 + 0.5·2
    EXPECT_EQ(r[4], 0.0);  // a missing gradient counts as zeros
    EXPECT_EQ(r[5], 1.0);  // 0 + 1
    EXPECT_EQ(r[6], 2.0);
  }
  EXPECT_EQ(results[0][7], results[1][7]);
}

TEST_F(ProcessGroupTest, TwoRanksEqualOneProcessWithTheSameGlobalBatch) {
  const auto data = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, 200);
  // 200 rows in batches of 64: the last batch has 8 rows; augmentation on,
  // so its draws must be made for the whole global batch on each rank.
  const auto options =
      train::ClassifierTrainerOptions().epochs(2).batch_size(64).seed(3).random_flip(true).random_shift(2);
  Model single = plain_net(1);
  train::fit_classifier(single, data.images, data.labels, options);

  // Rank 1 starts from other weights: the fit must broadcast rank 0's.
  std::vector<Model> rank_models{plain_net(1), plain_net(99)};
  const auto states = run_ranks<std::vector<torch::Tensor>>(2, [&](int64_t rank, std::shared_ptr<ProcessGroup> group) {
    Model& model = rank_models[static_cast<size_t>(rank)];
    train::fit_classifier(model, data.images, data.labels,
                          train::ClassifierTrainerOptions(options).process_group(group));
    return state_of(model);
  });
  expect_identical(states[0], states[1]);
  expect_close(states[0], state_of(single));
}

TEST_F(ProcessGroupTest, AdversarialTrainingOnTwoRanksEqualsOneProcessAndRank0Checkpoints) {
  const auto all = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, 161);
  const data::LabeledImages train_set{all.images.slice(0, 0, 129), all.labels.slice(0, 0, 129)};
  const data::LabeledImages held_out{all.images.slice(0, 129), all.labels.slice(0, 129)};
  // 129 rows in batches of 64: the last batch has one row, so rank 1's shard
  // of it is empty; half of each batch is adversarial (the mixing draws).
  auto options = train::AdversarialTrainerOptions()
                     .steps(2)
                     .epochs(2)
                     .batch_size(64)
                     .adversarial_fraction(0.5)
                     .eval_samples(32)
                     .eval_steps(2)
                     .seed(5);
  Model single = plain_net(2);
  const auto expected = train::AdversarialTrainer(options).fit(single, train_set, held_out);

  parry::testing::TempDir dir;
  std::vector<Model> rank_models{plain_net(2), plain_net(2)};
  const auto states = run_ranks<std::vector<torch::Tensor>>(2, [&](int64_t rank, std::shared_ptr<ProcessGroup> group) {
    Model& model = rank_models[static_cast<size_t>(rank)];
    auto o = train::AdversarialTrainerOptions(options).process_group(group);
    // Only rank 0 is given a place to write to: the others must not write.
    if (rank == 0) o.checkpoint_dir(dir.path().string());
    const auto summary = train::AdversarialTrainer(o).fit(model, train_set, held_out);
    EXPECT_NEAR(summary.epochs.back().train_loss, expected.epochs.back().train_loss, 1e-4);
    EXPECT_NEAR(summary.epochs.back().clean_accuracy, expected.epochs.back().clean_accuracy, 1.0 / 32 + 1e-9);
    return state_of(model);
  });
  expect_identical(states[0], states[1]);
  expect_close(states[0], state_of(single));
  EXPECT_TRUE(std::filesystem::exists(train::AdversarialTrainer::checkpoint_path(dir.path().string())));
}

TEST_F(ProcessGroupTest, BatchNormStatisticsStayIdenticalOnEveryRank) {
  const auto data = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, 96);
  std::vector<Model> rank_models;
  for (uint64_t rank = 0; rank < 2; ++rank) {
    torch::manual_seed(rank);  // different initial weights on each rank
    rank_models.emplace_back(models::ReferenceCnn{});
  }
  const auto states = run_ranks<std::vector<torch::Tensor>>(2, [&](int64_t rank, std::shared_ptr<ProcessGroup> group) {
    Model& model = rank_models[static_cast<size_t>(rank)];
    train::fit_classifier(model, data.images, data.labels,
                          train::ClassifierTrainerOptions().epochs(1).batch_size(32).process_group(group));
    return state_of(model);
  });
  expect_identical(states[0], states[1]);  // running means and variances included
}

TEST_F(ProcessGroupTest, ARankThatLeavesIsNamedByTheOthers) {
  train::RendezvousStore store("127.0.0.1", 0, 60);
  std::promise<void> joined;
  std::thread leaver([&] {
    auto group = ProcessGroup::connect(rank_options(store, 1, 2));
    joined.set_value();
    // Rank 1 ends (its connections close, its heartbeat stops) without
    // making the collective rank 0 is about to make.
  });
  auto group = ProcessGroup::connect(rank_options(store, 0, 2).timeout_seconds(20));
  joined.get_future().wait();
  leaver.join();
  torch::Tensor t = torch::ones({4});
  try {
    group->all_reduce_sum(t);
    FAIL() << "the collective should fail";
  } catch (const train::DistributedError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 stopped"), std::string::npos) << e.what();
  }
}

TEST_F(ProcessGroupTest, ARankThatHangsIsNamedAfterTheTimeout) {
  train::RendezvousStore store("127.0.0.1", 0, 60);
  std::promise<void> done;
  std::shared_future<void> finished = done.get_future().share();
  std::thread hanging([&] {
    auto group = ProcessGroup::connect(rank_options(store, 1, 2));
    finished.wait();  // alive (heartbeat running) but never reaching the collective
  });
  auto group = ProcessGroup::connect(rank_options(store, 0, 2).timeout_seconds(2));
  torch::Tensor t = torch::ones({4});
  std::string message;
  try {
    group->all_reduce_sum(t);
  } catch (const train::DistributedError& e) {
    message = e.what();
  }
  done.set_value();
  hanging.join();
  EXPECT_NE(message.find("rank 1 did not reach this collective within 2 s"), std::string::npos) << message;
}

TEST_F(ProcessGroupTest, BadRanksAndUnreachableStoresAreClearErrors) {
  EXPECT_THROW(ProcessGroupOptions().world_size(0), OptionError);
  EXPECT_THROW(ProcessGroupOptions().master_port(70000), OptionError);
  EXPECT_THROW(ProcessGroupOptions().timeout_seconds(0), OptionError);
  EXPECT_THROW(ProcessGroup::connect(ProcessGroupOptions().world_size(2).rank(2)), OptionError);
  // No store listens on this port (a store was there and is gone).
  int64_t free_port = 0;
  { free_port = train::RendezvousStore("127.0.0.1", 0, 5).port(); }
  try {
    ProcessGroup::connect(
        ProcessGroupOptions().world_size(2).rank(1).master_port(free_port).host_store(false).join_timeout_seconds(1));
    FAIL() << "connecting should fail";
  } catch (const train::DistributedError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 could not"), std::string::npos) << e.what();
  }
  // A rank that never joins is named after the join timeout.
  train::RendezvousStore store("127.0.0.1", 0, 60);
  try {
    ProcessGroup::connect(rank_options(store, 0, 2).join_timeout_seconds(1).timeout_seconds(1));
    FAIL() << "joining should time out";
  } catch (const train::DistributedError& e) {
    EXPECT_NE(std::string(e.what()).find("rank(s) 1 did not join"), std::string::npos) << e.what();
  }
}
