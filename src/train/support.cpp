// What the trainers share (src/train/support.hpp).
#include "train/support.hpp"

#include <algorithm>
#include <cmath>

#include "parry/detail/chunks.hpp"
#include "parry/detail/require.hpp"

namespace parry::train::detail {

using parry::detail::require;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void check_images(const std::string& where, const torch::Tensor& images) {
  if (!images.defined() || images.dim() != 4 || images.size(0) == 0 || !images.is_floating_point()) {
    throw OptionError(where + ": images must be a non-empty floating N×C×H×W tensor");
  }
}

void check_data(const std::string& where, const torch::Tensor& images, const torch::Tensor& labels) {
  check_images(where, images);
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != images.size(0) ||
      labels.scalar_type() != torch::kInt64) {
    throw OptionError(where + ": labels must be int64 of shape N = " + std::to_string(images.size(0)) +
                      " matching the images");
  }
  require(labels.min().item<int64_t>() >= 0, where, "labels must be non-negative", labels.min().item<int64_t>());
}

void check_trainable(const std::string& where, const Model& model) {
  if (model.parameters().empty()) {
    throw OptionError(where + ": the model has no trainable parameters (make it from a torch::nn module)");
  }
}

/// The model in eval mode without touching the caller's: itself when it is
/// already in eval mode (a shared handle), else a deep copy.
Model eval_view(const Model& model) {
  if (!model.is_training()) return model;
  Model copy = model.clone();
  copy.set_training(false);
  return copy;
}

/// Number of classes the model outputs, from one row in eval mode.
int64_t class_count(const Model& model, const torch::Tensor& images) {
  c10::InferenceMode inference;
  return eval_view(model).logits(images.slice(0, 0, 1)).size(1);
}

void check_labels_below(const std::string& where, const torch::Tensor& labels, int64_t classes) {
  require(labels.max().item<int64_t>() < classes, where,
          "labels must be below the model's class count " + std::to_string(classes), labels.max().item<int64_t>());
}

void check_pixel_range(const std::string& where, const torch::Tensor& x, double lo_allowed, double hi_allowed) {
  const auto [lo, hi] = torch::aminmax(x.detach());
  if (!(lo.item<double>() >= lo_allowed && hi.item<double>() <= hi_allowed)) {
    throw OptionError(where + ": images must lie in the pixel range [" + std::to_string(lo_allowed) + ", " +
                      std::to_string(hi_allowed) + "] and be finite, but got values in [" +
                      std::to_string(lo.item<double>()) + ", " + std::to_string(hi.item<double>()) + "]");
  }
}

double cosine(double lr, double final_fraction, int64_t step, int64_t total_steps) {
  const double progress = static_cast<double>(step) / static_cast<double>(std::max<int64_t>(total_steps, 1));
  return lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + std::cos(M_PI * progress)));
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

void DataParallel::synchronise(Model& model) const {
  if (group_) group_->broadcast_module_state(model.parameters(), model.buffers());
}

void DataParallel::begin_epoch(uint64_t seed, int64_t epoch) const {
  if (group_) torch::manual_seed(seed + 1000003ULL * static_cast<uint64_t>(epoch) + static_cast<uint64_t>(rank()));
}

BatchRows DataParallel::rows(const torch::Tensor& index, torch::Generator& generator) const {
  BatchRows out;
  out.index = index;
  out.generator = &generator;
  std::tie(out.begin, out.end) = shard_of_batch(index.size(0), rank(), world_size());
  return out;
}

double DataParallel::step(Model& model, torch::optim::Optimizer& optimizer, const BatchRows& rows,
                          const std::function<torch::Tensor(const BatchRows&)>& batch_loss) const {
  optimizer.zero_grad();
  double shard_loss = 0;
  const torch::Tensor loss = batch_loss(rows);  // also for an empty shard: it makes the batch's random draws
  if (rows.rows() > 0) {
    loss.backward();
    shard_loss = loss.item<double>();
  }
  std::vector<double> loss_sum{shard_loss * static_cast<double>(rows.rows())};
  if (group_) {
    // Each shard's gradient is of its mean loss: weighted by its share of
    // the batch, the sum over ranks is the gradient of the batch's mean.
    const double weight = static_cast<double>(rows.rows()) / static_cast<double>(rows.index.size(0));
    group_->sum_gradients(model.parameters(), weight, loss_sum);
  }
  optimizer.step();
  if (group_) group_->average_buffers(model.buffers());
  return loss_sum[0];
}

double DataParallel::sum(double value) const {
  if (!group_) return value;
  torch::Tensor t = torch::tensor({value}, torch::kFloat64);
  group_->all_reduce_sum(t);
  return t.item<double>();
}

torch::Tensor DataParallel::gather_rows(const torch::Tensor& local) const {
  if (!group_) return local;
  torch::Tensor counts = torch::zeros({world_size()}, torch::kFloat64);
  counts[rank()] = static_cast<double>(local.size(0));
  group_->all_reduce_sum(counts);
  std::vector<torch::Tensor> parts;
  for (int64_t r = 0; r < world_size(); ++r) {
    std::vector<int64_t> shape = local.sizes().vec();
    shape[0] = static_cast<int64_t>(counts[r].item<double>());
    std::vector<torch::Tensor> one{r == rank() ? local.contiguous().clone() : torch::empty(shape, local.options())};
    if (shape[0] > 0) group_->broadcast(one, r);
    parts.push_back(one[0]);
  }
  return torch::cat(parts);
}

double run_training(Model& model, int64_t n, const LoopSettings& s,
                    const std::function<torch::Tensor(const BatchRows&)>& batch_loss) {
  const auto start = std::chrono::steady_clock::now();
  const DataParallel parallel(s.group);
  torch::Generator generator = at::detail::createCPUGenerator(s.seed);
  torch::manual_seed(s.seed);  // dropout masks draw from the default generator
  parallel.synchronise(model);
  torch::optim::Adam optimizer(model.parameters(),
                               torch::optim::AdamOptions(s.learning_rate).weight_decay(s.weight_decay));
  const int64_t steps_per_epoch = (n + s.batch_size - 1) / s.batch_size;
  const int64_t total_steps = steps_per_epoch * s.epochs;
  int64_t step = 0;
  double last_loss = 0;
  EvalOnExit leave_in_eval_mode(model);
  model.set_training(true);
  for (int64_t epoch = 1; epoch <= s.epochs; ++epoch) {
    parallel.begin_epoch(s.seed, epoch);
    const torch::Tensor order = torch::randperm(n, generator, torch::kInt64);
    double loss_sum = 0;
    int64_t seen = 0;
    parry::detail::for_each_chunk(n, s.batch_size, [&](int64_t begin, int64_t end) {
      set_learning_rate(optimizer, cosine(s.learning_rate, s.final_lr_fraction, step, total_steps));
      const BatchRows rows = parallel.rows(order.slice(0, begin, end), generator);
      loss_sum += parallel.step(model, optimizer, rows, batch_loss);
      seen += end - begin;
      if (s.on_progress && *s.on_progress) {
        (*s.on_progress)(
            StepProgress{epoch, s.epochs, seen, n, loss_sum / static_cast<double>(seen), seconds_since(start)});
      }
      ++step;
    });
    last_loss = loss_sum / static_cast<double>(n);
  }
  model.set_training(false);
  return last_loss;
}

}  // namespace parry::train::detail
