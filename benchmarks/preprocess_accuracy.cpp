// Clean accuracy of the reference model behind each preprocessing defense,
// on the 10,000 Fashion-MNIST test images (the table in docs/preprocessing.md).
//   build/benchmarks/parry_preprocess_accuracy [model.pt] [fashion-mnist dir]
#include <cstdio>

#include "parry/parry.hpp"

int main(int argc, char** argv) {
  using namespace parry;
  using namespace parry::preprocess;
  configure_runtime(RuntimeOptions().threads(2));
  const std::string model_path = argc > 1 ? argv[1] : PARRY_REFERENCE_MODEL;
  const std::string data_dir = argc > 2 ? argv[2] : data::kDebianFashionMnistDir;
  try {
    Model model(models::load_reference_cnn(model_path));
    const auto test = data::load_fashion_mnist(data_dir, false);
    const std::vector<std::shared_ptr<Preprocessor>> settings = {
        nullptr,
        std::make_shared<BitDepth>(BitDepthOptions(1)),
        std::make_shared<BitDepth>(BitDepthOptions(2)),
        std::make_shared<BitDepth>(BitDepthOptions(4)),
        std::make_shared<MedianSmoothing>(MedianSmoothingOptions(2)),
        std::make_shared<MedianSmoothing>(MedianSmoothingOptions(3)),
        std::make_shared<GaussianBlur>(GaussianBlurOptions(3, 0.5)),
        std::make_shared<GaussianBlur>(GaussianBlurOptions(5, 1.0)),
        std::make_shared<Jpeg>(JpegOptions(75)),
        std::make_shared<Jpeg>(JpegOptions(25)),
        std::make_shared<Resize>(ResizeOptions(20, 20)),
        std::make_shared<Resize>(ResizeOptions(14, 14)),
    };
    std::printf("| preprocessing | clean accuracy |\n| --- | ---: |\n");
    for (const auto& p : settings) {
      const Model defended =
          p ? Model::from_callable([&](const torch::Tensor& x) { return model.logits(p->apply(x)); }) : model;
      std::printf("| %s | %.2f%% |\n", p ? p->describe().c_str() : "none",
                  100 * train::accuracy(defended, test.images, test.labels));
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "%s (%s)\n", e.public_message(), e.detail().c_str());
    return 1;
  }
  return 0;
}
