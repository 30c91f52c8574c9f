// libFuzzer: saved state read back from disk: a detector's state
// (Detector::load), a model's parameters (Model::load) and an adversarial
// training checkpoint (the resume path of AdversarialTrainer::fit), for a
// small linear model. The first byte picks the reader, the rest is the file.
// With PARRY_FUZZ_WRITE_SEEDS=DIR it writes one valid file of each kind to
// DIR (the committed seed corpus) and exits.
#include <cstdlib>
#include <iterator>

#include "fuzz_support.hpp"
#include "parry/train/adversarial_trainer.hpp"
#include "saved_state_readers.hpp"

using namespace parry;

namespace {

// `kind` then the bytes of `file`, as a seed.
void write_seed(const std::string& dir, uint8_t kind, const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream out(dir + "/seed-" + std::to_string(kind), std::ios::binary);
  out.put(static_cast<char>(kind));
  out << bytes;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* dir = std::getenv("PARRY_FUZZ_WRITE_SEEDS");
  if (dir == nullptr) return 0;
  const std::string tmp = std::string(dir) + "/tmp.state";
  detect::SoftmaxConfidence softmax;
  softmax.set_threshold(0.25);
  softmax.save(tmp);
  write_seed(dir, 0, tmp);
  detect::KernelDensity density(detect::KernelDensityOptions().bandwidth(0.5));
  density.fit_features(torch::rand({6, 3}), torch::tensor({0, 0, 1, 1, 2, 2}, torch::kInt64));
  density.set_threshold(1.0);
  density.save(tmp);
  write_seed(dir, 1, tmp);
  Model model = fuzz::linear_model();
  model.save(tmp);
  write_seed(dir, 2, tmp);
  std::unique_ptr<torch::optim::Optimizer> optimizer = fuzz::make_adam()(model.parameters());
  train::EpochReport report;
  report.epoch = 1;
  train::detail::save_checkpoint(tmp, fuzz::checkpoint_signature(), 1, 1.0, model, *optimizer,
                                 at::detail::createCPUGenerator(0), {report});
  write_seed(dir, 3, tmp);
  std::remove(tmp.c_str());
  std::exit(0);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string& path = fuzz::as_file(data + 1, size - 1, ".state");
  fuzz::expect_clean([&] { fuzz::read_saved_state(data[0], path); });
  return 0;
}
