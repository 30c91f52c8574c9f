// Checkpoints of adversarial training (src/train/checkpoint.hpp).
#include "train/checkpoint.hpp"

#include <cmath>
#include <mutex>
#include <sstream>

#include "detail/torch_archive.hpp"
#include "parry/detail/files.hpp"
#include "parry/detail/model_state.hpp"

namespace parry::train::detail {

using parry::detail::load_model_state_tensor;
using parry::detail::model_state_tensor;

namespace {

constexpr const char* kCheckpointFormat = "parry-adversarial-checkpoint-v1";
constexpr int64_t kHistoryColumns = 6;

torch::Tensor history_tensor(const std::vector<EpochReport>& history) {
  torch::Tensor t = torch::zeros({static_cast<int64_t>(history.size()), kHistoryColumns}, torch::kFloat64);
  auto a = t.accessor<double, 2>();
  for (size_t i = 0; i < history.size(); ++i) {
    const auto& r = history[i];
    const auto row = static_cast<int64_t>(i);
    a[row][0] = static_cast<double>(r.epoch);
    a[row][1] = r.train_loss;
    a[row][2] = r.clean_accuracy;
    a[row][3] = r.adversarial_accuracy;
    a[row][4] = r.learning_rate;
    a[row][5] = r.seconds;
  }
  return t;
}

// The rows save_checkpoint wrote: row i is epoch i + 1, every value finite
// (a corrupt epoch column must not reach a float-to-integer conversion, whose
// overflow is undefined; found by fuzz_saved_state).
std::vector<EpochReport> history_from_tensor(const torch::Tensor& t, const std::string& corrupt,
                                             const std::string& where) {
  std::vector<EpochReport> history;
  auto a = t.accessor<double, 2>();
  for (int64_t i = 0; i < t.size(0); ++i) {
    for (int64_t c = 0; c < t.size(1); ++c) {
      if (!std::isfinite(a[i][c])) throw IoError(corrupt, where + ": history holds a value that is not finite");
    }
    if (a[i][0] != static_cast<double>(i + 1)) {
      throw IoError(corrupt, where + ": history row " + std::to_string(i) + " is not epoch " + std::to_string(i + 1));
    }
    EpochReport r;
    r.epoch = i + 1;
    r.train_loss = a[i][1];
    r.clean_accuracy = a[i][2];
    r.adversarial_accuracy = a[i][3];
    r.learning_rate = a[i][4];
    r.seconds = a[i][5];
    history.push_back(r);
  }
  return history;
}

torch::Tensor default_generator_state() {
  auto gen = at::detail::getDefaultCPUGenerator();  // a handle sharing the default generator
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_default_generator_state(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

}  // namespace

/// Everything that must match for a checkpoint to be continued.
std::string training_signature(const AdversarialTrainerOptions& o, const data::LabeledImages& train) {
  std::ostringstream out;
  out.precision(17);
  out << "method=" << to_string(o.method()) << " eps=" << o.epsilon() << " steps=" << o.steps()
      << " alpha=" << o.step_size() << " fraction=" << o.adversarial_fraction() << " beta=" << o.trades_beta()
      << " range=" << o.clip_min() << ".." << o.clip_max() << " epochs=" << o.epochs() << " batch=" << o.batch_size()
      << " optimizer=" << static_cast<int>(o.optimizer()) << " lr=" << o.learning_rate() << " momentum=" << o.momentum()
      << " wd=" << o.weight_decay() << " schedule=" << static_cast<int>(o.schedule())
      << " final=" << o.final_lr_fraction() << " gamma=" << o.step_gamma() << " milestones=";
  for (const int64_t m : o.step_epochs()) out << m << ",";
  out << " seed=" << o.seed() << " eval=" << o.eval_samples() << "/" << o.eval_steps();
  torch::NoGradGuard no_grad;
  // Sums weighted by position, so reordered data is a different data set.
  const int64_t n = train.images.size(0);
  const torch::Tensor position = torch::arange(1, n + 1, torch::kFloat64);
  const torch::Tensor row_sums = train.images.reshape({n, -1}).sum(1, /*keepdim=*/false, torch::kFloat64);
  out << " n=" << n << " shape=" << c10::str(train.images.sizes())
      << " pixels=" << (row_sums * position).sum().item<double>()
      << " labels=" << (train.labels.to(torch::kFloat64) * position).sum().item<double>();
  return out.str();
}

void save_checkpoint(const std::string& path, const std::string& signature, int64_t epoch, double seconds,
                     const Model& model, const torch::optim::Optimizer& optimizer, const torch::Generator& generator,
                     const std::vector<EpochReport>& history) {
  parry::detail::atomic_write(path, [&](const std::string& tmp) {
    torch::serialize::OutputArchive archive;
    archive.write("parry_format", c10::IValue(std::string(kCheckpointFormat)));
    archive.write("signature", c10::IValue(signature));
    archive.write("epoch", c10::IValue(epoch));
    archive.write("seconds", c10::IValue(seconds));
    archive.write("model", model_state_tensor(model));
    torch::serialize::OutputArchive optimizer_archive;
    optimizer.save(optimizer_archive);
    archive.write("optimizer", optimizer_archive);
    archive.write("generator", generator.get_state());
    archive.write("default_generator", default_generator_state());
    archive.write("history", history_tensor(history));
    archive.save_to(tmp);
  });
}

CheckpointContents restore_checkpoint(const std::string& path, const std::string& signature, int64_t max_epoch,
                                      Model& model, const OptimizerFactory& make_optimizer,
                                      std::unique_ptr<torch::optim::Optimizer>& optimizer,
                                      torch::Generator& generator) {
  const std::string corrupt = "training checkpoint is corrupt";
  const std::string where = "checkpoint '" + path + "'";
  torch::serialize::InputArchive archive;
  parry::detail::load_output_archive(path, "training checkpoint", archive);
  c10::IValue format, stored_signature, epoch, seconds;
  if (!archive.try_read("parry_format", format) || !format.isString() || format.toStringRef() != kCheckpointFormat) {
    throw IoError("training checkpoint has an unknown format",
                  where + " is not a parry adversarial-training checkpoint");
  }
  if (!archive.try_read("signature", stored_signature) || !stored_signature.isString()) {
    throw IoError(corrupt, where + ": no signature");
  }
  if (stored_signature.toStringRef() != signature) {
    throw OptionError("the training checkpoint was written with different options or data",
                      where + " holds '" + stored_signature.toStringRef() + "', this run is '" + signature +
                          "'; remove it or use another checkpoint_dir");
  }
  torch::Tensor model_state, generator_state, default_state, history;
  if (!archive.try_read("epoch", epoch) || !epoch.isInt() || epoch.toInt() < 1 || epoch.toInt() > max_epoch ||
      !archive.try_read("seconds", seconds) || !seconds.isDouble() || !archive.try_read("model", model_state) ||
      !archive.try_read("generator", generator_state) || !archive.try_read("default_generator", default_state) ||
      !archive.try_read("history", history) || history.dim() != 2 || history.scalar_type() != torch::kFloat64 ||
      history.size(0) != epoch.toInt() || history.size(1) != kHistoryColumns) {
    throw IoError(corrupt, where + ": missing or malformed epoch, seconds, model, generator or history");
  }
  const std::vector<EpochReport> restored_history = history_from_tensor(history.contiguous(), corrupt, where);
  // Validate the generator states on a scratch generator first.
  try {
    torch::Generator scratch = at::detail::createCPUGenerator(0);
    scratch.set_state(generator_state);
    scratch.set_state(default_state);
  } catch (const c10::Error& e) {
    throw IoError(corrupt, where + ": bad generator state: " + e.what_without_backtrace());
  }
  torch::serialize::InputArchive optimizer_archive;
  auto load_optimizer = [&](torch::optim::Optimizer& target) {
    try {
      target.load(optimizer_archive);
    } catch (const c10::Error& e) {
      throw IoError(corrupt, where + ": bad optimizer state: " + e.what_without_backtrace());
    } catch (const std::exception& e) {  // torch::jit::ObjectAttributeError for a declared, missing field
      throw IoError(corrupt, where + ": bad optimizer state: " + e.what());
    }
  };
  try {
    archive.read("optimizer", optimizer_archive);
  } catch (const c10::Error& e) {
    throw IoError(corrupt, where + ": no optimizer state: " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw IoError(corrupt, where + ": no optimizer state: " + e.what());
  }
  {
    // Validate the optimizer state on scratch copies of the parameters first.
    std::vector<torch::Tensor> scratch;
    for (const auto& p : model.parameters()) scratch.push_back(p.detach().clone().requires_grad_(true));
    load_optimizer(*make_optimizer(scratch));
  }
  load_model_state_tensor(model, model_state, corrupt, where);
  optimizer = make_optimizer(model.parameters());
  load_optimizer(*optimizer);
  generator.set_state(generator_state);
  set_default_generator_state(default_state);
  CheckpointContents contents;
  contents.epoch = epoch.toInt();
  contents.seconds = seconds.toDouble();
  contents.history = restored_history;
  return contents;
}

}  // namespace parry::train::detail
