// train::Distillation: defensive distillation (Papernot et al. 2016).
#include "parry/train/distillation.hpp"

#include <cmath>

#include "parry/detail/chunks.hpp"
#include "parry/detail/require.hpp"
#include "train/support.hpp"

namespace parry::train {

using namespace detail;
using parry::detail::require;

DistillationOptions& DistillationOptions::temperature(double t) {
  require(std::isfinite(t) && t > 0, "DistillationOptions::temperature", "must be positive and finite", t);
  temperature_ = t;
  return *this;
}
DistillationOptions& DistillationOptions::epochs(int64_t v) {
  require(v >= 1, "DistillationOptions::epochs", "must be at least 1", v);
  epochs_ = v;
  return *this;
}
DistillationOptions& DistillationOptions::batch_size(int64_t v) {
  require(v >= 1, "DistillationOptions::batch_size", "must be at least 1", v);
  batch_size_ = v;
  return *this;
}
DistillationOptions& DistillationOptions::learning_rate(double v) {
  require(std::isfinite(v) && v > 0, "DistillationOptions::learning_rate", "must be positive", v);
  learning_rate_ = v;
  return *this;
}
DistillationOptions& DistillationOptions::final_lr_fraction(double v) {
  require(v > 0 && v <= 1, "DistillationOptions::final_lr_fraction", "must be in (0, 1]", v);
  final_lr_fraction_ = v;
  return *this;
}
DistillationOptions& DistillationOptions::weight_decay(double v) {
  require(std::isfinite(v) && v >= 0, "DistillationOptions::weight_decay", "must be non-negative", v);
  weight_decay_ = v;
  return *this;
}
DistillationOptions& DistillationOptions::seed(uint64_t v) {
  seed_ = v;
  return *this;
}
DistillationOptions& DistillationOptions::on_progress(std::function<void(const StepProgress&)> f) {
  on_progress_ = std::move(f);
  return *this;
}
DistillationOptions& DistillationOptions::process_group(std::shared_ptr<ProcessGroup> group) {
  process_group_ = std::move(group);
  return *this;
}

torch::Tensor soft_labels(const Model& teacher, const torch::Tensor& images, double temperature, int64_t batch_size) {
  check_images("soft_labels", images);
  require(std::isfinite(temperature) && temperature > 0, "soft_labels", "temperature must be positive", temperature);
  require(batch_size >= 1, "soft_labels", "batch_size must be at least 1", batch_size);
  // A teacher in train mode is copied, not switched: it may be serving.
  const Model eval_teacher = eval_view(teacher);
  c10::InferenceMode inference;
  return parry::detail::map_chunks(
             images, batch_size,
             [&](const torch::Tensor& chunk) { return torch::softmax(eval_teacher.logits(chunk) / temperature, 1); })
      .to(torch::kFloat32);
}

torch::Tensor soft_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets, double temperature) {
  if (!logits.defined() || logits.dim() != 2 || !targets.defined() || targets.sizes() != logits.sizes()) {
    throw OptionError("soft_cross_entropy: logits and targets must both be N×K of the same shape");
  }
  return -(targets * torch::log_softmax(logits / temperature, 1)).sum(1).mean();
}

namespace {

bool share_parameters(const Model& a, const Model& b) {
  const auto pa = a.parameters();
  const auto pb = b.parameters();
  for (const auto& x : pa) {
    for (const auto& y : pb) {
      if (x.is_same(y)) return true;
    }
  }
  return false;
}

LoopSettings loop_settings(const DistillationOptions& o) {
  return LoopSettings{o.epochs(),       o.batch_size(), o.learning_rate(), o.final_lr_fraction(),
                      o.weight_decay(), o.seed(),       &o.on_progress(),  o.process_group()};
}

}  // namespace

double Distillation::train_student(const Model& teacher, Model& student, const torch::Tensor& images) const {
  check_images("Distillation::train_student", images);
  check_trainable("Distillation::train_student", student);
  if (share_parameters(teacher, student)) {
    throw OptionError("Distillation: teacher and student must be different modules");
  }
  const double t = options_.temperature();
  const torch::Tensor targets = soft_labels(teacher, images, t);
  return run_training(student, images.size(0), loop_settings(options_), [&](const BatchRows& rows) {
    if (rows.rows() == 0) return torch::Tensor();  // an empty shard of a data-parallel run
    const torch::Tensor index = rows.shard();
    return soft_cross_entropy(student.logits(images.index_select(0, index)), targets.index_select(0, index), t);
  });
}

DistillationSummary Distillation::fit(Model& teacher, Model& student, const torch::Tensor& images,
                                      const torch::Tensor& labels) const {
  check_data("Distillation::fit", images, labels);
  check_trainable("Distillation::fit (teacher)", teacher);
  check_trainable("Distillation::fit (student)", student);
  if (share_parameters(teacher, student)) {
    throw OptionError("Distillation: teacher and student must be different modules");
  }
  check_labels_below("Distillation::fit", labels, class_count(teacher, images));
  const auto start = std::chrono::steady_clock::now();
  const double t = options_.temperature();
  DistillationSummary summary;
  // Stage 1: the teacher learns the hard labels through softmax(F(x) / T).
  summary.teacher_loss = run_training(teacher, images.size(0), loop_settings(options_), [&](const BatchRows& rows) {
    if (rows.rows() == 0) return torch::Tensor();  // an empty shard of a data-parallel run
    const torch::Tensor index = rows.shard();
    return torch::nn::functional::cross_entropy(teacher.logits(images.index_select(0, index)) / t,
                                                labels.index_select(0, index));
  });
  // Stages 2 and 3: soft labels at T, the student learns them at T.
  summary.student_loss = train_student(teacher, student, images);
  {
    c10::InferenceMode inference;
    int64_t agree = 0;
    parry::detail::for_each_chunk(images.size(0), 512, [&](int64_t begin, int64_t end) {
      const torch::Tensor x = images.slice(0, begin, end);
      agree += teacher.logits(x).argmax(1).eq(student.logits(x).argmax(1)).sum().item<int64_t>();
    });
    summary.label_agreement = static_cast<double>(agree) / static_cast<double>(images.size(0));
  }
  summary.seconds = seconds_since(start);
  return summary;
}

}  // namespace parry::train
