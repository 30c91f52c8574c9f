// train::DetectorTrainer: label adversarial examples and train a detector network on them.
#include "parry/train/detector_trainer.hpp"

#include <cmath>

#include "parry/detail/chunks.hpp"
#include "parry/detail/require.hpp"
#include "train/support.hpp"

namespace parry::train {

using namespace detail;
using parry::detail::require;

TrainingAttack fgsm_attack(attack::FgsmOptions options) {
  return {"fgsm", [options](const attack::LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y) {
            return attack::fgsm(f, x, y, options);
          }};
}

TrainingAttack pgd_attack(attack::PgdOptions options) {
  return {options.norm() == attack::Norm::Linf ? "pgd" : "pgd_l2",
          [options](const attack::LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y) {
            return attack::pgd(f, x, y, options);
          }};
}

TrainingAttack carlini_wagner_attack(attack::CarliniWagnerOptions options) {
  return {"cw_l2", [options](const attack::LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y) {
            return attack::carlini_wagner_l2(f, x, y, options);
          }};
}

DetectorTrainerOptions& DetectorTrainerOptions::kind(DetectorKind k) {
  kind_ = k;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::add_attack(TrainingAttack a) {
  if (!a.run) throw OptionError("DetectorTrainerOptions::add_attack: the attack '" + a.name + "' has no function");
  require(!a.name.empty() && a.name.find('\n') == std::string::npos, "DetectorTrainerOptions::add_attack",
          "the attack needs a one-line name", "'" + a.name + "'");
  attacks_.push_back(std::move(a));
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::keep_failed(bool on) {
  keep_failed_ = on;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::epochs(int64_t v) {
  require(v >= 1, "DetectorTrainerOptions::epochs", "must be at least 1", v);
  epochs_ = v;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::batch_size(int64_t v) {
  require(v >= 1, "DetectorTrainerOptions::batch_size", "must be at least 1", v);
  batch_size_ = v;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::learning_rate(double v) {
  require(std::isfinite(v) && v > 0, "DetectorTrainerOptions::learning_rate", "must be positive", v);
  learning_rate_ = v;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::attack_batch_size(int64_t v) {
  require(v >= 1, "DetectorTrainerOptions::attack_batch_size", "must be at least 1", v);
  attack_batch_size_ = v;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::seed(uint64_t v) {
  seed_ = v;
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::on_progress(std::function<void(const StepProgress&)> f) {
  on_progress_ = std::move(f);
  return *this;
}
DetectorTrainerOptions& DetectorTrainerOptions::process_group(std::shared_ptr<ProcessGroup> group) {
  process_group_ = std::move(group);
  return *this;
}

DetectorTrainer::DetectorTrainer(DetectorTrainerOptions options) : options_(std::move(options)) {
  if (options_.attacks().empty()) {
    throw OptionError("DetectorTrainer: add at least one attack with DetectorTrainerOptions::add_attack");
  }
}

data::LabeledImages DetectorTrainer::make_training_set(const Model& target, const data::LabeledImages& clean) const {
  check_data("DetectorTrainer", clean.images, clean.labels);
  // The attacks see the deployed function: BatchNorm running statistics,
  // no dropout, and the caller's model is never written to.
  const Model attacked = eval_view(target);
  const int64_t classes = class_count(attacked, clean.images);
  check_labels_below("DetectorTrainer", clean.labels, classes);
  const int64_t adversarial_label = options_.kind() == DetectorKind::ExtraClass ? classes : 1;
  std::vector<torch::Tensor> images{clean.images};
  std::vector<torch::Tensor> labels{options_.kind() == DetectorKind::ExtraClass ? clean.labels
                                                                                : torch::zeros_like(clean.labels)};
  const auto f = attack::differentiable(attacked);
  for (const auto& a : options_.attacks()) {
    parry::detail::for_each_chunk(clean.images.size(0), options_.attack_batch_size(), [&](int64_t begin, int64_t end) {
      const torch::Tensor x = clean.images.slice(0, begin, end);
      const torch::Tensor y = clean.labels.slice(0, begin, end);
      const attack::AttackResult r = a.run(f, x, y);
      if (!r.adversarial.defined() || r.adversarial.sizes() != x.sizes() || !r.success.defined() ||
          r.success.dim() != 1 || r.success.size(0) != x.size(0)) {
        throw OptionError("DetectorTrainer: the attack '" + a.name + "' returned a batch of another shape");
      }
      const torch::Tensor keep =
          options_.keep_failed() ? torch::ones({x.size(0)}, torch::kBool) : r.success.to(torch::kBool);
      const torch::Tensor rows = keep.nonzero().flatten();
      if (rows.numel() == 0) return;
      images.push_back(r.adversarial.detach().index_select(0, rows));
      labels.push_back(torch::full({rows.numel()}, adversarial_label, torch::kInt64));
    });
  }
  data::LabeledImages out{torch::cat(images), torch::cat(labels)};
  if (out.images.size(0) == clean.images.size(0)) {
    throw OptionError("DetectorTrainer: no attack succeeded on the training images; nothing to learn from");
  }
  return out;
}

std::shared_ptr<LearnedDetector> DetectorTrainer::fit(const Model& target, Model& network,
                                                      const data::LabeledImages& clean) const {
  check_trainable("DetectorTrainer::fit", network);
  check_data("DetectorTrainer::fit", clean.images, clean.labels);
  // Checked before the (possibly long) attacks run.
  const int64_t expected = options_.kind() == DetectorKind::ExtraClass ? class_count(target, clean.images) + 1 : 2;
  const int64_t outputs = class_count(network, clean.images);
  if (outputs != expected) {
    throw OptionError(std::string("DetectorTrainer: a ") + to_string(options_.kind()) + " detector network needs " +
                      std::to_string(expected) + " outputs, but got " + std::to_string(outputs));
  }
  const data::LabeledImages set = make_training_set(target, clean);
  const LoopSettings settings{options_.epochs(), options_.batch_size(),   options_.learning_rate(), 0.05, 0.0,
                              options_.seed(),   &options_.on_progress(), options_.process_group()};
  run_training(network, set.images.size(0), settings, [&](const BatchRows& rows) {
    if (rows.rows() == 0) return torch::Tensor();  // an empty shard of a data-parallel run
    const torch::Tensor index = rows.shard();
    return torch::nn::functional::cross_entropy(network.logits(set.images.index_select(0, index)),
                                                set.labels.index_select(0, index));
  });
  std::vector<std::string> names;
  for (const auto& a : options_.attacks()) names.push_back(a.name);
  return std::make_shared<LearnedDetector>(network, options_.kind(), std::move(names));
}

}  // namespace parry::train
