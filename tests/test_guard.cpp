#include "parry/core/guard.hpp"
#include "parry/core/log.hpp"

#include <atomic>
#include <mutex>
#include <thread>

#include "parry/conceal/output_policies.hpp"
#include "parry/conceal/query_monitor.hpp"
#include "parry/conceal/throttle.hpp"
#include "parry/detect/feature_squeezing.hpp"
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
  Guard guard = GuardBuilder(identity_model(&j), InputSpec(1, 2, 2))
                    .add_gate(std::make_shared<RecordingGate>(j, "gate1"))
                    .add_gate(std::make_shared<RecordingGate>(j, "gate2"))
                    .add_preprocessor(std::make_shared<RecordingShift>(j, "pre1", 0.25f))
                    .add_preprocessor(std::make_shared<RecordingShift>(j, "pre2", 0.5f))
                    .add_detector(std::make_shared<RecordingDetector>(j, 0.0f))
                    .build();
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
  Guard guard = GuardBuilder(identity_model(&j), InputSpec(1, 2, 2))
                    .add_gate(std::make_shared<RecordingGate>(j, "throttle", GateDecision::reject("rate_limited", 2.5)))
                    .add_gate(std::make_shared<RecordingGate>(j, "never"))
                    .build();
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
  Guard guard = GuardBuilder(identity_model(), InputSpec(1, 2, 2)).add_gate(throttle).build();
  EXPECT_THROW(guard.predict(torch::full({1, 1, 2, 2}, 7.0f)), InputError);
  EXPECT_THROW(guard.predict(torch::full({1, 1, 2, 2}, 7.0f)), InputError);
  EXPECT_EQ(guard.predict(torch::zeros({1, 1, 2, 2})).verdict, Verdict::Rejected);
}

TEST_F(GuardTest, DetectorsAndGatesFlag) {
  Journal j;
  Guard flagged_by_detector = GuardBuilder(identity_model(), InputSpec(1, 2, 2))
                                  .add_detector(std::make_shared<RecordingDetector>(j, 0.9f))
                                  .build();
  auto r = flagged_by_detector.predict(torch::zeros({3, 1, 2, 2}));
  EXPECT_EQ(r.verdict, Verdict::Flagged);
  EXPECT_EQ(r.reason, "flagged");
  EXPECT_EQ(r.flagged, (std::vector<uint8_t>{1, 1, 1}));
  EXPECT_EQ(r.labels.size(), 3u);

  Guard flagged_by_gate = GuardBuilder(identity_model(), InputSpec(1, 2, 2))
                              .add_gate(std::make_shared<RecordingGate>(j, "monitor", GateDecision::flag("flagged")))
                              .build();
  r = flagged_by_gate.predict(torch::zeros({1, 1, 2, 2}));
  EXPECT_EQ(r.verdict, Verdict::Flagged);
  EXPECT_EQ(r.flagged, std::vector<uint8_t>{0});
}

TEST_F(GuardTest, ReferenceModelPredictionsMatchTheModel) {
  auto net = reference();
  Guard guard =
      GuardBuilder(Model(net), InputSpec(1, 28, 28)).set_output_policy(std::make_shared<conceal::Full>()).build();
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
  Guard uncalibrated = GuardBuilder(identity_model(), InputSpec(1, 2, 2))
                           .add_detector(std::make_shared<detect::SoftmaxConfidence>())
                           .build();
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
  GuardBuilder builder(identity_model(), InputSpec(1, 2, 2));
  EXPECT_THROW(builder.add_gate(nullptr), OptionError);
  EXPECT_THROW(builder.add_preprocessor(nullptr), OptionError);
  EXPECT_THROW(builder.add_detector(nullptr), OptionError);
  EXPECT_THROW(builder.set_output_policy(nullptr), OptionError);
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
    Guard guard = GuardBuilder(model, InputSpec(1, 2, 2).value_range(-10, 10))
                      .add_preprocessor(std::make_shared<Triple>(p))
                      .build();
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
  Guard guard = GuardBuilder(model, InputSpec(1, 1, 3))
                    .add_preprocessor(std::make_shared<Square>(GradientPolicy::Exact))
                    .add_preprocessor(std::make_shared<PlusOne>())
                    .add_preprocessor(std::make_shared<Square>(GradientPolicy::Exact))
                    .build();
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
  EXPECT_THROW(Rounding{GradientPolicy::Exact}, OptionError);
  EXPECT_NO_THROW(Rounding{GradientPolicy::StraightThrough});
}

TEST_F(GuardTest, ConcurrentPredictionsMatchSequential) {
  auto net = reference();
  auto detector = std::make_shared<detect::SoftmaxConfidence>();
  detector->set_threshold(0.5);
  const Model normalising = Model(net).with_input_transform(
      std::make_shared<preprocess::Normalize>(preprocess::NormalizeOptions({0.0}, {1.0})));
  Guard guard = GuardBuilder(normalising, InputSpec(1, 28, 28))
                    .add_gate(std::make_shared<conceal::Throttle>(conceal::ThrottleOptions().rate(1e6).burst(1e6)))
                    .set_output_policy(std::make_shared<conceal::Full>())
                    .add_detector(detector)
                    .build();
  constexpr int kThreads = 8;
  constexpr int kRequests = 12;
  std::vector<torch::Tensor> inputs;
  std::vector<Response> sequential;
  for (int i = 0; i < kThreads * kRequests; ++i) {
    inputs.push_back(torch::rand({1 + i % 5, 1, 28, 28}));
    sequential.push_back(guard.predict(inputs.back()));
  }
  std::vector<Response> concurrent(inputs.size());
  torch::set_num_threads(parry::testing::intra_op_threads(2));
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

// Issue 17: 16 threads, 10,000 requests, one Guard with a query monitor and a
// throttle. The stream is built so that the right counts do not depend on the
// interleaving: 5,000 random images, each sent twice (the second copy is a
// detection whichever thread sends it, unrelated noise images never match),
// from 4 clients whose buckets (1,000 images, a clock that never advances)
// admit exactly 1,000 each.
TEST_F(GuardTest, SixteenThreadsKeepExactThrottleAndMonitorAccounting) {
  constexpr int kThreads = 16;
  constexpr int kRequests = 10000;
  constexpr int kClients = 4;
  constexpr int kBurst = 1000;
  auto monitor = std::make_shared<conceal::QueryMonitor>(
      conceal::QueryMonitorOptions().max_stored_queries(kRequests).action(conceal::MonitorAction::Flag));
  auto throttle = std::make_shared<conceal::Throttle>(
      conceal::ThrottleOptions().rate(1e-9).burst(static_cast<double>(kBurst)).clock([] { return 0.0; }));
  const Model model = Model::from_callable([](const torch::Tensor& x) { return x.flatten(1).slice(1, 0, 10); });
  // The monitor first: it sees every image, whatever the throttle decides.
  Guard guard = GuardBuilder(model, InputSpec(1, 28, 28)).add_gate(monitor).add_gate(throttle).build();
  std::vector<torch::Tensor> images;
  for (int i = 0; i < kRequests / 2; ++i) images.push_back(torch::rand({1, 1, 28, 28}));
  std::vector<int> order(kRequests);
  for (int i = 0; i < kRequests; ++i) order[i] = i % (kRequests / 2);
  std::atomic<int> admitted[kClients] = {};
  std::atomic<int> limited{0}, flagged{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < kRequests; i += kThreads) {
        const int client = i % kClients;
        try {
          const Response r = guard.predict(images[order[i]], RequestContext{"client-" + std::to_string(client)});
          if (r.verdict == Verdict::Rejected) {
            EXPECT_EQ(r.reason, reason::kRateLimited);
            ++limited;
          } else {
            ++admitted[client];
            flagged += r.verdict == Verdict::Flagged;
          }
        } catch (...) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  for (int c = 0; c < kClients; ++c) EXPECT_EQ(admitted[c].load(), kBurst) << "client " << c;
  EXPECT_EQ(limited.load(), kRequests - kClients * kBurst);
  const auto stats = monitor->stats();
  EXPECT_EQ(stats.images, static_cast<uint64_t>(kRequests));
  EXPECT_EQ(stats.detections, static_cast<uint64_t>(kRequests / 2));
  EXPECT_EQ(stats.requests_detected, static_cast<uint64_t>(kRequests / 2));
  EXPECT_EQ(stats.evictions, 0u);
  // How many admitted requests were second copies (Flagged) depends on the
  // interleaving: every client's budget may be spent on first copies (seen
  // under ASan). A copy from a fresh client is admitted and flagged.
  EXPECT_LE(flagged.load(), kClients * kBurst);
  EXPECT_EQ(guard.predict(images[0], RequestContext{"fresh-client"}).verdict, Verdict::Flagged);
}

TEST_F(GuardTest, DescribeListsEveryStage) {
  const Model normalising =
      Model(reference())
          .with_input_transform(std::make_shared<preprocess::Normalize>(preprocess::NormalizeOptions({0.5}, {0.25})));
  Guard guard = GuardBuilder(normalising, InputSpec(1, 28, 28))
                    .add_preprocessor(std::make_shared<preprocess::BitDepth>(preprocess::BitDepthOptions(5)))
                    .add_gate(std::make_shared<conceal::Throttle>())
                    .build();
  const auto text = guard.describe();
  EXPECT_NE(text.find("model: module after Normalize(mean=[0.5], std=[0.25], grad=exact)"), std::string::npos) << text;
  EXPECT_NE(text.find("preprocess: BitDepth(bits=5"), std::string::npos) << text;
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
    GuardBuilder builder(Model(net), InputSpec(1, 28, 28));
    builder.set_output_policy(std::make_shared<conceal::Full>());
    torch::Tensor manual = x;
    for (const auto& p : order) {
      builder.add_preprocessor(p);
      manual = p->apply(manual);
    }
    const Guard guard = builder.build();
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

// ---------------------------------------------------------------- pixel space and model space

namespace {

// Records the smallest and largest value it is applied to (a pixel-space squeezer).
class RangeRecorder : public Preprocessor {
 public:
  RangeRecorder() : Preprocessor(GradientPolicy::Exact) {}
  torch::Tensor apply(const torch::Tensor& x) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    lo_ = std::min(lo_, x.min().item<double>());
    hi_ = std::max(hi_, x.max().item<double>());
    return x;
  }
  bool is_differentiable() const override { return true; }
  std::string describe() const override { return "RangeRecorder"; }
  double lo() const { return lo_; }
  double hi() const { return hi_; }

 private:
  mutable std::mutex mutex_;
  mutable double lo_ = 1e9, hi_ = -1e9;
};

const std::vector<double> kMean = {0.485, 0.456, 0.406};  // torchvision's ImageNet statistics
const std::vector<double> kStd = {0.229, 0.224, 0.225};

}  // namespace

TEST_F(GuardTest, DefensesSeePixelsWhetherTheModelNormalisesInsideOrByItsInputTransform) {
  const auto weights = torch::randn({3 * 4 * 4, 5});
  const auto mean = torch::tensor(kMean, torch::kFloat32).view({1, 3, 1, 1});
  const auto std = torch::tensor(kStd, torch::kFloat32).view({1, 3, 1, 1});
  // The same network twice: normalising inside its forward, and without, given
  // Normalize as its input transform (a torchvision model exported with its
  // Normalize left in Python's transforms).
  const Model inside =
      Model::from_callable([=](const torch::Tensor& x) { return ((x - mean) / std).flatten(1).mm(weights); });
  const Model bare = Model::from_callable([=](const torch::Tensor& x) { return x.flatten(1).mm(weights); });
  const Model transformed =
      bare.with_input_transform(std::make_shared<preprocess::Normalize>(preprocess::NormalizeOptions(kMean, kStd)));

  auto recorder = std::make_shared<RangeRecorder>();
  auto squeezing = std::make_shared<detect::FeatureSqueezing>(std::vector<std::shared_ptr<const Preprocessor>>{
      recorder, std::make_shared<preprocess::BitDepth>(preprocess::BitDepthOptions(2)),
      std::make_shared<preprocess::MedianSmoothing>(preprocess::MedianSmoothingOptions(2))});
  squeezing->set_threshold(0.3);
  auto build = [&](const Model& model) {
    return GuardBuilder(model, InputSpec(3, 4, 4))
        .add_preprocessor(std::make_shared<preprocess::BitDepth>(preprocess::BitDepthOptions(4)))
        .add_detector(squeezing)
        .set_output_policy(std::make_shared<conceal::Full>())
        .build();
  };
  const Guard a = build(inside), b = build(transformed);
  const auto x = torch::rand({16, 3, 4, 4});
  const Response ra = a.predict(x), rb = b.predict(x);
  EXPECT_TRUE(torch::allclose(ra.scores, rb.scores, 1e-5, 1e-6));
  EXPECT_EQ(ra.labels, rb.labels);
  EXPECT_EQ(ra.flagged, rb.flagged);
  const auto sa = squeezing->score(a.preprocess(x), a.model());
  const auto sb = squeezing->score(b.preprocess(x), b.model());
  EXPECT_TRUE(torch::allclose(sa, sb, 1e-5, 1e-6));
  // The squeezers saw pixels in [0, 1], never normalised values (which reach [-2.1, 2.6] here).
  EXPECT_GE(recorder->lo(), 0.0);
  EXPECT_LE(recorder->hi(), 1.0);

  // The attack path computes what the serving path serves, with the gradient
  // through BitDepth by BPDA and through Normalize exactly.
  auto xa = x.clone().requires_grad_(true), xb = x.clone().requires_grad_(true);
  const auto la = a.differentiable_logits(xa), lb = b.differentiable_logits(xb);
  EXPECT_TRUE(torch::allclose(torch::softmax(la, 1), ra.scores, 1e-5, 1e-6));
  la.sum().backward();
  lb.sum().backward();
  EXPECT_TRUE(torch::allclose(xa.grad(), xb.grad(), 1e-5, 1e-6));
  EXPECT_GT(xa.grad().abs().sum().item<double>(), 0.0);
}

TEST_F(GuardTest, AModelSpaceTransformIsRefusedAsAPreprocessor) {
  GuardBuilder builder(identity_model(), InputSpec(3, 4, 4));
  try {
    builder.add_preprocessor(std::make_shared<preprocess::Normalize>(preprocess::NormalizeOptions(kMean, kStd)));
    FAIL() << "Normalize was accepted as a pixel-space preprocessor";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("with_input_transform"), std::string::npos) << e.what();
  }
  // A resize to another size is the model's too; a resize that restores the size is a defense.
  EXPECT_THROW(
      builder.add_preprocessor(std::make_shared<preprocess::Resize>(preprocess::ResizeOptions(2, 2).restore(false))),
      OptionError);
  EXPECT_NO_THROW(builder.add_preprocessor(std::make_shared<preprocess::Resize>(preprocess::ResizeOptions(2, 2))));
}

// ---------------------------------------------------------------- life cycle

namespace {
template <typename T, typename = void>
struct has_add_gate : std::false_type {};
template <typename T>
struct has_add_gate<T, std::void_t<decltype(std::declval<T&>().add_gate(nullptr))>> : std::true_type {};
template <typename T, typename = void>
struct has_set_output_policy : std::false_type {};
template <typename T>
struct has_set_output_policy<T, std::void_t<decltype(std::declval<T&>().set_output_policy(nullptr))>> : std::true_type {
};
}  // namespace

TEST_F(GuardTest, AGuardHasNoMutatingMethod) {
  static_assert(!has_add_gate<Guard>::value, "Guard must not be mutable after build()");
  static_assert(!has_set_output_policy<Guard>::value, "Guard must not be mutable after build()");
  static_assert(has_add_gate<GuardBuilder>::value, "the builder adds stages");
  // A builder goes on building: earlier Guards keep the stages they were built with.
  Journal j;
  GuardBuilder builder(identity_model(), InputSpec(1, 2, 2));
  const Guard first = builder.build();
  builder.add_gate(std::make_shared<RecordingGate>(j, "later", GateDecision::reject("rate_limited")));
  EXPECT_EQ(first.predict(torch::zeros({1, 1, 2, 2})).verdict, Verdict::Accepted);
  EXPECT_EQ(builder.build().predict(torch::zeros({1, 1, 2, 2})).verdict, Verdict::Rejected);
}

TEST_F(GuardTest, AFailingGateGetsTheGenericPublicError) {
  class Broken : public Gate {
   public:
    GateDecision admit(const RequestContext&, const torch::Tensor&) override {
      throw std::runtime_error("redis at /var/run/secret.sock refused the connection");
    }
    std::string describe() const override { return "broken"; }
  };
  std::vector<std::string> logged;
  set_log_sink([&](LogLevel, const std::string& m) { logged.push_back(m); });
  const Guard guard = GuardBuilder(identity_model(), InputSpec(1, 2, 2)).add_gate(std::make_shared<Broken>()).build();
  try {
    guard.predict(torch::zeros({1, 1, 2, 2}));
    FAIL() << "no error";
  } catch (const InternalError& e) {
    EXPECT_STREQ(e.what(), "internal error while processing the request");
    EXPECT_EQ(std::string(e.what()).find("secret"), std::string::npos);
  }
  EXPECT_THROW(guard.predict_decoded([] { return torch::zeros({1, 1, 2, 2}); }), InternalError);
  set_log_sink({});
  ASSERT_FALSE(logged.empty());
  EXPECT_NE(logged[0].find("secret.sock"), std::string::npos) << "the operator log keeps the detail";
}

TEST_F(GuardTest, EightThreadsServeWhileACalibrationIsSwapped) {
  // Scores are the softmax confidence of the identity model: an image's flag
  // depends on the threshold only. Thresholds alternate between two values
  // that split the batch differently; every answer must match one of them
  // whole (never a torn or missing threshold).
  auto detector = std::make_shared<detect::SoftmaxConfidence>();
  constexpr double kLow = 0.45, kHigh = 0.55;
  detector->set_threshold(kLow);
  const Guard guard = GuardBuilder(identity_model(), InputSpec(1, 2, 2).max_batch(64)).add_detector(detector).build();
  const auto x = torch::rand({32, 1, 2, 2});
  const auto scores = detector->score(x, guard.model());
  auto flags_at = [&](double threshold) {
    const auto f = (scores > threshold).to(torch::kUInt8).contiguous();
    return std::vector<uint8_t>(f.data_ptr<uint8_t>(), f.data_ptr<uint8_t>() + f.numel());
  };
  const auto low = flags_at(kLow), high = flags_at(kHigh);
  ASSERT_NE(low, high) << "the two thresholds must flag differently for the test to mean anything";
  std::atomic<bool> stop{false};
  std::atomic<int> torn{0}, served{0};
  std::thread swapper([&] {
    for (int i = 0; i < 400 && !stop; ++i) {
      if (i % 2) {
        detector->set_threshold(i % 4 == 1 ? kHigh : kLow);
      } else {
        // calibrate() replaces the threshold whole too
        detector->calibrate_from_scores(scores, i % 4 == 0 ? 0.0 : 0.5);
      }
    }
  });
  const double calibrated_max = scores.max().item<double>();
  std::vector<std::thread> servers;
  for (int t = 0; t < 8; ++t) {
    servers.emplace_back([&] {
      for (int k = 0; k < 30; ++k) {
        const Response r = guard.predict(x);
        const bool known = r.flagged == low || r.flagged == high || r.flagged == flags_at(calibrated_max) ||
                           r.flagged == flags_at(std::get<0>(scores.sort())[15].item<double>());
        if (!known) ++torn;
        ++served;
      }
    });
  }
  for (auto& s : servers) s.join();
  stop = true;
  swapper.join();
  EXPECT_EQ(served.load(), 240);
  EXPECT_EQ(torn.load(), 0);
}

TEST_F(GuardTest, ServesAModelOnItsDevice) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto net = reference();
  const auto x = torch::rand({4, 1, 28, 28});
  const auto expected = net->forward(x);
  net->to(torch::kCUDA);
  auto detector = std::make_shared<detect::FeatureSqueezing>(detect::FeatureSqueezing::for_grayscale());
  detector->set_threshold(0.5);
  const Guard guard = GuardBuilder(Model(net), InputSpec(1, 28, 28))
                          .add_preprocessor(std::make_shared<preprocess::BitDepth>(preprocess::BitDepthOptions(8)))
                          .add_detector(detector)
                          .set_output_policy(std::make_shared<conceal::Full>())
                          .build();
  const Response r = guard.predict(x);  // CPU input, moved to the model's device
  EXPECT_TRUE(r.scores.device().is_cpu());
  EXPECT_TRUE(torch::allclose(r.scores, torch::softmax(expected, 1), 1e-4, 1e-5));
  EXPECT_TRUE(guard.differentiable_logits(x).device().is_cuda());
}
