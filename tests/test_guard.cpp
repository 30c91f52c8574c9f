#include "parry/core/guard.hpp"
#include "parry/core/log.hpp"

#include <atomic>
#include <mutex>
#include <thread>

#include "parry/conceal/output_policies.hpp"
#include "parry/conceal/throttle.hpp"
#include "parry/detect/softmax_confidence.hpp"
#include "parry/models/reference_cnn.hpp"
#include "parry/preprocess.hpp"
#include "test_support.hpp"

using namespace parry;

namespace {

class GuardTest : public parry::testing::SeededTest {};

// A journal shared by the recording stages below, to check the order of the pipeline.
struct Journal {
  std::mutex mutex;
  std::vector<std::string> events;
  void add(const std::string& e) {
    std::lock_guard<std::mutex> lock(mutex);
    events.push_back(e);
  }
};

class RecordingGate : public Gate {
 public:
  RecordingGate(Journal& j, std::string name, GateDecision decision = GateDecision::admit())
      : journal_(j), name_(std::move(name)), decision_(std::move(decision)) {}
  GateDecision admit(const RequestContext& ctx, const torch::Tensor&) override {
    journal_.add(name_ + ":" + ctx.client_id);
    return decision_;
  }
  std::string describe() const override { return name_; }

 private:
  Journal& journal_;
  std::string name_;
  GateDecision decision_;
};

// Adds a constant; records the value of its input's first pixel.
class RecordingShift : public Preprocessor {
 public:
  RecordingShift(Journal& j, std::string name, float shift, GradientPolicy policy = GradientPolicy::Exact)
      : Preprocessor(policy), journal_(j), name_(std::move(name)), shift_(shift) {}
  torch::Tensor apply(const torch::Tensor& x) const override {
    journal_.add(name_ + ":" + std::to_string(x.flatten()[0].item<float>()));
    return x + shift_;
  }
  bool is_differentiable() const override { return true; }
  std::string describe() const override { return name_; }

 private:
  Journal& journal_;
  std::string name_;
  float shift_;
};

class RecordingDetector : public Detector {
 public:
  RecordingDetector(Journal& j, float score) : journal_(j), score_(score) { set_threshold(0.5); }
  std::string name() const override { return "recording"; }
  std::string describe() const override { return "recording"; }
  torch::Tensor score(const DetectorInput& in) const override {
    journal_.add("detector:" + std::to_string(in.batch.flatten()[0].item<float>()));
    return torch::full({in.batch.size(0)}, score_);
  }
  using Detector::score;

 private:
  Journal& journal_;
  float score_;
};

Model identity_model(Journal* journal = nullptr) {
  // Logits: mean pixel of each image times [1, -1, 0]: class 0 for bright images.
  return Model::from_callable([journal](const torch::Tensor& x) {
    if (journal) journal->add("model:" + std::to_string(x.flatten()[0].item<float>()));
    auto m = x.flatten(1).mean(1, true);
    return torch::cat({m, -m, torch::zeros_like(m)}, 1);
  });
}

models::ReferenceCnn reference() {
  models::ReferenceCnn net;
  net->eval();
  return net;
}

}  // namespace

TEST_F(GuardTest, StagesRunInDesignOrder) {
  Journal j;
  Guard guard(identity_model(&j), InputSpec(1, 2, 2));
  guard.add_gate(std::make_shared<RecordingGate>(j, "gate1"))
      .add_gate(std::make_shared<RecordingGate>(j, "gate2"))
      .add_preprocessor(std::make_shared<RecordingShift>(j, "pre1", 0.25f))
      .add_preprocessor(std::make_shared<RecordingShift>(j, "pre2", 0.5f))
      .add_detector(std::make_shared<RecordingDetector>(j, 0.0f));
  auto r = guard.predict(torch::zeros({1, 1, 2, 2}), RequestContext{"alice"});
  const std::vector<std::string> expected = {"gate1:alice",   "gate2:alice",    "pre1:0.000000",
                                             "pre2:0.250000", "model:0.750000", "detector:0.750000"};
  EXPECT_EQ(j.events, expected);
  EXPECT_EQ(r.verdict, Verdict::Accepted);
  EXPECT_EQ(r.reason, "ok");
  EXPECT_EQ(r.labels, std::vector<int64_t>{0});
  EXPECT_FALSE(r.scores.defined()) << "default policy must be label-only";
}

TEST_F(GuardTest, GateRejectionStopsThePipeline) {
  Journal j;
  Guard guard(identity_model(&j), InputSpec(1, 2, 2));
  guard.add_gate(std::make_shared<RecordingGate>(j, "throttle", GateDecision::reject("rate_limited", 2.5)))
      .add_gate(std::make_shared<RecordingGate>(j, "never"));
  auto r = guard.predict(torch::zeros({1, 1, 2, 2}));
  EXPECT_EQ(r.verdict, Verdict::Rejected);
  EXPECT_EQ(r.reason, "rate_limited");
  EXPECT_DOUBLE_EQ(r.retry_after_seconds, 2.5);
  EXPECT_TRUE(r.labels.empty());
  EXPECT_EQ(j.events, std::vector<std::string>{"throttle:anonymous"});
}

TEST_F(GuardTest, GatesRunBeforeValidation) {
  // Bad requests still cost the client throttle tokens.
  auto throttle =
      std::make_shared<conceal::Throttle>(conceal::ThrottleOptions().rate(1).burst(2).clock([] { return 0.0; }));
  Guard guard(identity_model(), InputSpec(1, 2, 2));
  guard.add_gate(throttle);
  EXPECT_THROW(guard.predict(torch::full({1, 1, 2, 2}, 7.0f)), InputError);
  EXPECT_THROW(guard.predict(torch::full({1, 1, 2, 2}, 7.0f)), InputError);
  EXPECT_EQ(guard.predict(torch::zeros({1, 1, 2, 2})).verdict, Verdict::Rejected);
}

TEST_F(GuardTest, DetectorsAndGatesFlag) {
  Journal j;
  Guard flagged_by_detector(identity_model(), InputSpec(1, 2, 2));
  flagged_by_detector.add_detector(std::make_shared<RecordingDetector>(j, 0.9f));
  auto r = flagged_by_detector.predict(torch::zeros({3, 1, 2, 2}));
  EXPECT_EQ(r.verdict, Verdict::Flagged);
  EXPECT_EQ(r.reason, "flagged");
  EXPECT_EQ(r.flagged, (std::vector<uint8_t>{1, 1, 1}));
  EXPECT_EQ(r.labels.size(), 3u);

  Guard flagged_by_gate(identity_model(), InputSpec(1, 2, 2));
  flagged_by_gate.add_gate(std::make_shared<RecordingGate>(j, "monitor", GateDecision::flag("flagged")));
  r = flagged_by_gate.predict(torch::zeros({1, 1, 2, 2}));
  EXPECT_EQ(r.verdict, Verdict::Flagged);
  EXPECT_EQ(r.flagged, std::vector<uint8_t>{0});
}

TEST_F(GuardTest, ReferenceModelPredictionsMatchTheModel) {
  auto net = reference();
  Guard guard(Model(net), InputSpec(1, 28, 28));
  guard.set_output_policy(std::make_shared<conceal::Full>());
  auto x = torch::rand({6, 1, 28, 28});
  auto r = guard.predict(x);
  auto logits = net->forward(x);
  auto labels = logits.argmax(1);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(r.labels[static_cast<size_t>(i)], labels[i].item<int64_t>());
  EXPECT_TRUE(torch::allclose(r.scores, torch::softmax(logits, 1), 1e-5, 1e-6));
}

TEST_F(GuardTest, TrainingModeModelIsRefused) {
  models::ReferenceCnn net;  // LibTorch modules start in training mode
  EXPECT_THROW(Guard(Model(net), InputSpec(1, 28, 28)), StateError);
}

TEST_F(GuardTest, ModelFailureIsAGenericInternalError) {
  auto failing = Model::from_callable([](const torch::Tensor& x) {
    return x.flatten(1).mm(torch::ones({3, 3}));  // wrong inner size: c10::Error
  });
  std::vector<std::string> logged;
  set_log_sink([&](LogLevel, const std::string& m) { logged.push_back(m); });
  Guard guard(failing, InputSpec(1, 2, 2));
  try {
    guard.predict(torch::zeros({1, 1, 2, 2}));
    FAIL() << "no error";
  } catch (const InternalError& e) {
    EXPECT_STREQ(e.public_message(), "internal error while processing the request");
    EXPECT_STREQ(e.reason_code(), "internal_error");
    EXPECT_FALSE(e.detail().empty());
  }
  ASSERT_EQ(logged.size(), 1u);
  EXPECT_NE(logged[0].find("mat"), std::string::npos) << "the log should carry the detail: " << logged[0];

  // Wrong logits shape.
  Guard bad_shape(Model::from_callable([](const torch::Tensor& x) { return x; }), InputSpec(1, 2, 2));
  EXPECT_THROW(bad_shape.predict(torch::zeros({1, 1, 2, 2})), InternalError);
  // An uncalibrated detector is a configuration fault: generic error too.
  Guard uncalibrated(identity_model(), InputSpec(1, 2, 2));
  uncalibrated.add_detector(std::make_shared<detect::SoftmaxConfidence>());
  EXPECT_THROW(uncalibrated.predict(torch::zeros({1, 1, 2, 2})), InternalError);
  set_log_sink({});
}

TEST_F(GuardTest, BadInputIsAnInputError) {
  Guard guard(identity_model(), InputSpec(1, 2, 2).max_batch(4));
  EXPECT_THROW(guard.predict(torch::zeros({5, 1, 2, 2})), InputError);
  EXPECT_THROW(guard.predict(torch::zeros({2, 2})), InputError);
  EXPECT_THROW(guard.differentiable_logits(torch::zeros({1, 3, 2, 2})), InputError);
}

TEST_F(GuardTest, NullStagesRejected) {
  Guard guard(identity_model(), InputSpec(1, 2, 2));
  EXPECT_THROW(guard.add_gate(nullptr), OptionError);
  EXPECT_THROW(guard.add_preprocessor(nullptr), OptionError);
  EXPECT_THROW(guard.add_detector(nullptr), OptionError);
  EXPECT_THROW(guard.set_output_policy(nullptr), OptionError);
}

TEST_F(GuardTest, GradientPoliciesOnTheAttackPath) {
  // Model: logits = [sum(w * x)] so d logit / dx = w, through one preprocessor
  // that multiplies by 3 in the forward pass.
  class Triple : public Preprocessor {
   public:
    explicit Triple(GradientPolicy p) : Preprocessor(p) {}
    torch::Tensor apply(const torch::Tensor& x) const override { return x * 3; }
    bool is_differentiable() const override { return true; }
    std::string describe() const override { return "Triple"; }
  };
  const auto w = torch::rand({1, 1, 2, 2}) + 0.1;
  auto model = Model::from_callable([w](const torch::Tensor& x) { return (x * w).sum({1, 2, 3}).unsqueeze(1); });
  auto gradient = [&](GradientPolicy p) {
    Guard guard(model, InputSpec(1, 2, 2).value_range(-10, 10));
    guard.add_preprocessor(std::make_shared<Triple>(p));
    auto x = torch::rand({1, 1, 2, 2}).requires_grad_(true);
    auto logits = guard.differentiable_logits(x);
    EXPECT_TRUE(torch::allclose(logits, (x * 3 * w).sum().view({1, 1}))) << "forward must be the transform";
    logits.sum().backward();
    return x.grad();
  };
  EXPECT_TRUE(torch::allclose(gradient(GradientPolicy::Exact), 3 * w));
  EXPECT_TRUE(torch::allclose(gradient(GradientPolicy::StraightThrough), w)) << "BPDA must pass the identity";
  EXPECT_TRUE(torch::equal(gradient(GradientPolicy::Blocked), torch::zeros_like(w)));
}

TEST_F(GuardTest, ChainGradientSeesEachStagesOwnInput) {
  // Two squaring stages: Exact then StraightThrough then Exact. With x -> x²
  // (exact), then BPDA(x -> x + 1), then y -> y² (exact), d/dx = 2(x²+1)·2x.
  class Square : public Preprocessor {
   public:
    explicit Square(GradientPolicy p) : Preprocessor(p) {}
    torch::Tensor apply(const torch::Tensor& x) const override { return x * x; }
    bool is_differentiable() const override { return true; }
    std::string describe() const override { return "Square"; }
  };
  class PlusOne : public Preprocessor {
   public:
    PlusOne() : Preprocessor(GradientPolicy::StraightThrough) {}
    torch::Tensor apply(const torch::Tensor& x) const override { return (x + 1).round(); }
    bool is_differentiable() const override { return false; }
    std::string describe() const override { return "PlusOneRounded"; }
  };
  auto model = Model::from_callable([](const torch::Tensor& x) { return x.sum({1, 2, 3}).unsqueeze(1); });
  Guard guard(model, InputSpec(1, 1, 3));
  guard.add_preprocessor(std::make_shared<Square>(GradientPolicy::Exact))
      .add_preprocessor(std::make_shared<PlusOne>())
      .add_preprocessor(std::make_shared<Square>(GradientPolicy::Exact));
  auto x = torch::tensor({0.2f, 0.5f, 0.9f}).view({1, 1, 1, 3}).requires_grad_(true);
  guard.differentiable_logits(x).sum().backward();
  auto xd = x.detach();
  auto after_first = xd * xd;
  auto after_second = (after_first + 1).round();
  auto expected = 2 * after_second * 2 * xd;  // outer square at its own input, BPDA identity, inner square
  EXPECT_TRUE(torch::allclose(x.grad(), expected)) << x.grad() << expected;
}

TEST_F(GuardTest, ExactPolicyNeedsADifferentiableTransform) {
  class Rounding : public Preprocessor {
   public:
    explicit Rounding(GradientPolicy p) : Preprocessor(p) { check_policy("Rounding"); }
    torch::Tensor apply(const torch::Tensor& x) const override { return x.round(); }
    bool is_differentiable() const override { return false; }
    std::string describe() const override { return "Rounding"; }
  };
  EXPECT_THROW(Rounding(GradientPolicy::Exact), OptionError);
  EXPECT_NO_THROW(Rounding(GradientPolicy::StraightThrough));
}

TEST_F(GuardTest, ConcurrentPredictionsMatchSequential) {
  auto net = reference();
  Guard guard(Model(net), InputSpec(1, 28, 28));
  guard.add_preprocessor(std::make_shared<preprocess::Normalize>(preprocess::NormalizeOptions({0.0}, {1.0})))
      .add_gate(std::make_shared<conceal::Throttle>(conceal::ThrottleOptions().rate(1e6).burst(1e6)))
      .set_output_policy(std::make_shared<conceal::Full>());
  auto detector = std::make_shared<detect::SoftmaxConfidence>();
  detector->set_threshold(0.5);
  guard.add_detector(detector);
  constexpr int kThreads = 8;
  constexpr int kRequests = 12;
  std::vector<torch::Tensor> inputs;
  std::vector<Response> sequential;
  for (int i = 0; i < kThreads * kRequests; ++i) {
    inputs.push_back(torch::rand({1 + i % 5, 1, 28, 28}));
    sequential.push_back(guard.predict(inputs.back()));
  }
  std::vector<Response> concurrent(inputs.size());
  torch::set_num_threads(2);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kRequests; ++k) {
        const size_t i = static_cast<size_t>(t * kRequests + k);
        try {
          concurrent[i] = guard.predict(inputs[i], RequestContext{"client-" + std::to_string(t)});
        } catch (...) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  for (size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_EQ(concurrent[i].labels, sequential[i].labels) << i;
    EXPECT_EQ(concurrent[i].flagged, sequential[i].flagged) << i;
    EXPECT_TRUE(torch::allclose(concurrent[i].scores, sequential[i].scores, 1e-5, 1e-6)) << i;
  }
  EXPECT_FALSE(net->is_training());
}

TEST_F(GuardTest, DescribeListsEveryStage) {
  Guard guard(Model(reference()), InputSpec(1, 28, 28));
  guard.add_preprocessor(std::make_shared<preprocess::Normalize>(preprocess::NormalizeOptions({0.5}, {0.25})))
      .add_gate(std::make_shared<conceal::Throttle>());
  const auto text = guard.describe();
  EXPECT_NE(text.find("Normalize(mean=[0.5], std=[0.25], grad=exact)"), std::string::npos) << text;
  EXPECT_NE(text.find("Throttle(rate=10/s"), std::string::npos) << text;
  EXPECT_NE(text.find("LabelOnly"), std::string::npos) << text;
}

TEST_F(GuardTest, RealTransformsComposeInAnyOrder) {
  auto net = reference();
  auto bits = std::make_shared<preprocess::BitDepth>(preprocess::BitDepthOptions(3));
  auto median = std::make_shared<preprocess::MedianSmoothing>(preprocess::MedianSmoothingOptions(2));
  auto blur = std::make_shared<preprocess::GaussianBlur>(preprocess::GaussianBlurOptions(3, 0.7));
  auto jpeg = std::make_shared<preprocess::Jpeg>(preprocess::JpegOptions(80));
  auto x = torch::rand({3, 1, 28, 28});
  const std::vector<std::vector<std::shared_ptr<const Preprocessor>>> orders = {
      {bits, median, blur, jpeg}, {jpeg, blur, median, bits}, {median, jpeg, bits}};
  std::vector<torch::Tensor> outputs;
  for (const auto& order : orders) {
    Guard guard(Model(net), InputSpec(1, 28, 28));
    guard.set_output_policy(std::make_shared<conceal::Full>());
    torch::Tensor manual = x;
    for (const auto& p : order) {
      guard.add_preprocessor(p);
      manual = p->apply(manual);
    }
    EXPECT_TRUE(torch::allclose(guard.preprocess(x), manual));
    auto r = guard.predict(x);
    EXPECT_TRUE(torch::allclose(r.scores, torch::softmax(net->forward(manual), 1), 1e-5, 1e-6));
    outputs.push_back(manual);
    // The attack path has the same forward value, and BPDA/exact gradients reach the input.
    auto xg = x.clone().requires_grad_(true);
    auto logits = guard.differentiable_logits(xg);
    EXPECT_TRUE(torch::allclose(logits, net->forward(manual), 1e-4, 1e-5));
    logits.sum().backward();
    EXPECT_GT(xg.grad().abs().sum().item<float>(), 0.f);
  }
  EXPECT_FALSE(torch::allclose(outputs[0], outputs[1])) << "order should matter";
}
