// Target concealment: what a caller sees from a Guard with a per-client
// throttle and a label-only policy, what a throttled client and a bad input
// get, and what a Full policy would have revealed.
//   parry_example_concealment <reference_model.pt> [fashion-mnist dir]
#include <parry/parry.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  using namespace parry;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <reference_model.pt> [fashion-mnist dir]\n", argv[0]);
    return 2;
  }
  try {
    configure_runtime(RuntimeOptions().threads(2));
    const auto test = data::load_fashion_mnist(argc > 2 ? argv[2] : data::kDebianFashionMnistDir, false, 16);
    const Model model(models::load_reference_cnn(argv[1]));

    Guard guard = GuardBuilder(model, InputSpec(1, 28, 28).max_batch(8))
                      .add_gate(std::make_shared<conceal::Throttle>(conceal::ThrottleOptions().rate(2).burst(8)))
                      .set_output_policy(std::make_shared<conceal::LabelOnly>())
                      .build();
    std::printf("%s\n", guard.describe().c_str());

    const Response first = guard.predict(test.images.slice(0, 0, 8), RequestContext{"alice"});
    std::printf("alice, 8 images: verdict %s, labels", to_string(first.verdict));
    for (auto label : first.labels) std::printf(" %s", data::fashion_mnist_classes()[label]);
    std::printf("; scores %s\n", first.scores.defined() ? "returned" : "withheld");

    const Response again = guard.predict(test.images.slice(0, 8, 16), RequestContext{"alice"});
    std::printf("alice again at once: verdict %s, reason \"%s\", retry after %.1f s\n", to_string(again.verdict),
                again.reason.c_str(), again.retry_after_seconds);
    const Response bob = guard.predict(test.images.slice(0, 8, 9), RequestContext{"bob"});
    std::printf("bob, 1 image: verdict %s (each client has its own bucket)\n", to_string(bob.verdict));

    try {
      guard.predict(torch::full({1, 1, 28, 28}, 7.0f), RequestContext{"carol"});
    } catch (const InputError& e) {
      std::printf("carol sends pixels of 7.0: \"%s\" (reason %s); the detail goes only to the log\n",
                  e.public_message(), e.reason_code());
    }

    Guard internal =
        GuardBuilder(model, InputSpec(1, 28, 28)).set_output_policy(std::make_shared<conceal::Full>()).build();
    const Response full = internal.predict(test.images.slice(0, 0, 1));
    std::printf("a Full policy (internal use only) would reveal all %lld class scores, e.g. top %.4f\n",
                static_cast<long long>(full.scores.size(1)), full.scores.max().item<double>());
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "%s (%s)\n", e.public_message(), e.detail().c_str());
    return 1;
  }
}
