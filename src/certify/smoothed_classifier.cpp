// certify::SmoothedClassifier: PREDICT and CERTIFY of randomized smoothing (Cohen, Rosenfeld, Kolter, ICML 2019).
#include "parry/certify/smoothed_classifier.hpp"

#include <algorithm>
#include <random>
#include <sstream>

#include "parry/certify/statistics.hpp"
#include "parry/detail/format.hpp"
#include "parry/detail/generator.hpp"

namespace parry::certify {

namespace {

// SplitMix64's finaliser: distinct, well-mixed seeds for consecutive streams.
uint64_t mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

uint64_t random_key() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

// The two most frequent classes of a count vector (ties: the lower index,
// like argmax); the second count is 0 for a single class.
std::pair<int64_t, int64_t> top_two_counts(const torch::Tensor& counts, int64_t& top_class) {
  const auto* c = counts.data_ptr<int64_t>();
  const int64_t classes = counts.numel();
  top_class = 0;
  for (int64_t k = 1; k < classes; ++k) {
    if (c[k] > c[top_class]) top_class = k;
  }
  int64_t second = 0;
  for (int64_t k = 0; k < classes; ++k) {
    if (k != top_class) second = std::max(second, c[k]);
  }
  return {c[top_class], second};
}

}  // namespace

SmoothedClassifier::SmoothedClassifier(Model base, SmoothingOptions options)
    : base_(std::move(base)), options_(std::move(options)), key_(options_.seed() ? *options_.seed() : random_key()) {
  if (base_.is_training()) {
    throw StateError("the base model of a smoothed classifier must be in eval mode",
                     "SmoothedClassifier: the base model is in training mode; call eval() first");
  }
}

torch::Tensor SmoothedClassifier::batch_of_images(const torch::Tensor& x, const char* where) const {
  if (!x.defined() || (x.dim() != 3 && x.dim() != 4) || x.numel() == 0 || !x.is_floating_point()) {
    throw InputError(std::string(where) + ": expected a non-empty floating-point image C×H×W or batch N×C×H×W",
                     std::string(where) + ": got " + (x.defined() ? x.toString() + " of " + std::to_string(x.dim()) +
                                                                        " dimensions"
                                                                  : std::string("an undefined tensor")));
  }
  return (x.dim() == 3 ? x.unsqueeze(0) : x).to(base_.device(), torch::kFloat32);
}

torch::Tensor SmoothedClassifier::counts_from_stream(const torch::Tensor& image, int64_t n, uint64_t stream) const {
  torch::NoGradGuard no_grad;
  torch::Generator generator = detail::make_generator(mix(key_ ^ mix(stream)), image.device());
  const int64_t batch = std::min(options_.batch_size(), n);
  std::vector<int64_t> shape{batch};
  shape.insert(shape.end(), image.sizes().begin(), image.sizes().end());
  torch::Tensor noisy = torch::empty(shape, image.options());
  torch::Tensor counts;
  for (int64_t done = 0; done < n;) {
    const int64_t rows = std::min(batch, n - done);
    torch::Tensor chunk = noisy.narrow(0, 0, rows);
    chunk.normal_(0.0, options_.sigma(), generator);
    chunk.add_(image);
    const torch::Tensor logits = base_.logits(chunk);
    if (!counts.defined()) counts = torch::zeros({logits.size(1)}, torch::kInt64);
    counts += torch::bincount(logits.argmax(1).to(torch::kCPU), {}, counts.size(0));
    done += rows;
  }
  return counts;
}

torch::Tensor SmoothedClassifier::vote_counts(const torch::Tensor& image, int64_t n) const {
  detail::require(n >= 1, "SmoothedClassifier::vote_counts", "n must be at least 1", n);
  if (!image.defined() || image.dim() != 3) {
    throw InputError("SmoothedClassifier::vote_counts: expected one image C×H×W");
  }
  const torch::Tensor batch = batch_of_images(image, "SmoothedClassifier::vote_counts");
  return counts_from_stream(batch[0], n, next_stream());
}

std::vector<int64_t> SmoothedClassifier::predict(const torch::Tensor& x, const SmoothedPredictOptions& options,
                                                 torch::Tensor* votes) const {
  const torch::Tensor batch = batch_of_images(x, "SmoothedClassifier::predict");
  std::vector<int64_t> labels;
  std::vector<torch::Tensor> all_counts;
  labels.reserve(static_cast<size_t>(batch.size(0)));
  for (int64_t i = 0; i < batch.size(0); ++i) {
    const torch::Tensor counts = counts_from_stream(batch[i], options.n(), next_stream());
    int64_t top_class = 0;
    const auto [top, second] = top_two_counts(counts, top_class);
    labels.push_back(binomial_test_p_value(top, top + second) <= options.alpha() ? top_class : kAbstain);
    if (votes) all_counts.push_back(counts);
  }
  if (votes) *votes = torch::stack(all_counts);
  return labels;
}

std::vector<Certificate> SmoothedClassifier::certify(const torch::Tensor& x, const CertifyOptions& options) const {
  detail::require(options.n0() <= options.n(), "SmoothedClassifier::certify",
                  "n0 must not exceed n = " + std::to_string(options.n()), options.n0());
  const torch::Tensor batch = batch_of_images(x, "SmoothedClassifier::certify");
  std::vector<Certificate> certificates;
  certificates.reserve(static_cast<size_t>(batch.size(0)));
  for (int64_t i = 0; i < batch.size(0); ++i) {
    const torch::Tensor image = batch[i];
    // Selection and estimation use independent samples (two streams), as
    // the confidence bound requires.
    int64_t selected = 0;
    top_two_counts(counts_from_stream(image, options.n0(), next_stream()), selected);
    const torch::Tensor counts = counts_from_stream(image, options.n(), next_stream());
    Certificate certificate;
    certificate.votes = counts;
    certificate.top_count = counts[selected].item<int64_t>();
    certificate.p_lower = clopper_pearson_lower(certificate.top_count, options.n(), options.alpha());
    if (certificate.p_lower > 0.5) {
      certificate.label = selected;
      certificate.radius = options_.sigma() * normal_quantile(certificate.p_lower);
    }
    certificates.push_back(certificate);
  }
  return certificates;
}

TensorFn SmoothedClassifier::attack_logits(int64_t samples, uint64_t seed) const {
  detail::require(samples >= 1, "SmoothedClassifier::attack_logits", "samples must be at least 1", samples);
  const Model base = base_;
  const double sigma = options_.sigma();
  auto generator = std::make_shared<torch::Generator>(detail::make_generator(seed, base.device()));
  return [base, sigma, samples, generator](const torch::Tensor& x) {
    const int64_t n = x.size(0);
    // Copies k·n … k·n + n − 1 are the k-th draw of every image, on the
    // model's device, where the generator draws.
    const torch::Tensor copies = x.to(base.device()).repeat({samples, 1, 1, 1});
    const torch::Tensor noise = torch::randn(copies.sizes(), *generator, copies.options().requires_grad(false));
    const torch::Tensor probabilities = torch::softmax(base.logits(copies + sigma * noise), 1);
    const torch::Tensor mean = probabilities.view({samples, n, -1}).mean(0);
    return torch::log(mean.clamp_min(1e-20));
  };
}

std::string SmoothedClassifier::describe() const {
  std::ostringstream out;
  out << "SmoothedClassifier(sigma=" << detail::format_number(options_.sigma()) << ", base=" << base_.describe()
      << ")";
  return out.str();
}

}  // namespace parry::certify
