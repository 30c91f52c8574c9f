// Builds a Guard around a small module and checks one defended prediction.
#include <parry/parry.hpp>

#include <cstdio>

struct TinyImpl : torch::nn::Cloneable<TinyImpl> {
  TinyImpl() { reset(); }
  void reset() override { fc = register_module("fc", torch::nn::Linear(16, 3)); }
  torch::Tensor forward(const torch::Tensor& x) { return fc->forward(x.flatten(1)); }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(Tiny);

int main() {
  Tiny net;
  net->eval();
  parry::Guard guard(parry::Model(net), parry::InputSpec(1, 4, 4));
  auto response = guard.predict(torch::rand({2, 1, 4, 4}));
  const bool ok =
      response.verdict == parry::Verdict::Accepted && response.labels.size() == 2 && !response.scores.defined();
  bool refused = false;
  try {
    guard.predict(torch::rand({2, 3, 4, 4}));
  } catch (const parry::InputError&) {
    refused = true;
  }
  std::printf("consumer: labels %zu, refused bad input: %s\n", response.labels.size(), refused ? "yes" : "no");
  return ok && refused ? 0 : 1;
}
