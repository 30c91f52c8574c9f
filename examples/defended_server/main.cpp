// defended_server: the reference Fashion-MNIST classifier served over HTTP by
// parry::serve::Server behind a throttle, the query monitor and label-only
// answers; `parry serve` is the full command (API key file, any config). API:
// docs/serving.md. Any well-formed X-Api-Key is accepted (its digest names the
// client): a real service passes serve::ApiKeys. Prints "listening on
// HOST:PORT"; SIGTERM or SIGINT stops it gracefully (in-flight requests finish).
#include <pthread.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <parry/parry.hpp>
#include <thread>

int main(int argc, char** argv) {
  std::string model, host = "127.0.0.1", action = "flag";
  int port = 8080, threads = 4, torch_threads = 1;
  double rate = 5, burst = 20, global_rate = 200;
  int64_t max_body = 1 << 20;
  CLI::App app{"Serves the Parry reference model over HTTP behind throttling, query monitoring and label-only answers"};
  app.add_option("--model", model, "reference model saved with parry::Model::save")->required();
  app.add_option("--host", host, "address to bind");
  app.add_option("--port", port, "TCP port; 0 picks a free one")->check(CLI::Range(0, 65535));
  app.add_option("--threads", threads, "HTTP worker threads")->check(CLI::Range(1, 256));
  app.add_option("--torch-threads", torch_threads, "LibTorch intra-op threads")->check(CLI::Range(1, 64));
  app.add_option("--rate", rate, "images per second per API key")->check(CLI::PositiveNumber);
  app.add_option("--burst", burst, "images at once per API key")->check(CLI::Range(1.0, 1e9));
  app.add_option("--global-rate", global_rate, "images per second over all keys")->check(CLI::PositiveNumber);
  app.add_option("--monitor-action", action, "query monitor on a detection")
      ->check(CLI::IsMember({"flag", "reject", "silent"}));
  app.add_option("--max-body", max_body, "largest request body in bytes (larger: 413)");
  CLI11_PARSE(app, argc, argv);

  // SIGTERM/SIGINT are blocked in every thread (before any starts) and taken by sigwait().
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  parry::configure_runtime(parry::RuntimeOptions().threads(torch_threads));
  using namespace parry;
  try {
    const InputSpec spec = InputSpec(1, 28, 28).max_batch(1);
    const auto monitor_action = action == "reject"   ? conceal::MonitorAction::Reject
                                : action == "silent" ? conceal::MonitorAction::Silent
                                                     : conceal::MonitorAction::Flag;
    auto guard = GuardBuilder(Model(models::load_reference_cnn(model)), spec)
                     .add_gate(std::make_shared<conceal::Throttle>(conceal::ThrottleOptions()
                                                                       .rate(rate)
                                                                       .burst(burst)
                                                                       .global_rate(global_rate)
                                                                       .global_burst(2 * global_rate)))
                     .add_gate(std::make_shared<conceal::QueryMonitor>(
                         conceal::QueryMonitorOptions().match_spec(spec).action(monitor_action)))
                     .build_shared();
    const auto& names = data::fashion_mnist_classes();
    serve::Server server(guard, serve::class_names(*guard, {names.begin(), names.end()}),
                         serve::ServerOptions().host(host).port(port).workers(threads).max_body_bytes(max_body));
    const int bound = server.start();
    std::printf("listening on %s:%d\n", host.c_str(), bound);
    std::fflush(stdout);
    std::thread stopper([&] {
      int number = 0;
      sigwait(&stop_signals, &number);
      log(LogLevel::Warning, number == SIGINT ? "stopping on SIGINT" : "stopping on SIGTERM");
      server.stop();
    });
    const bool ok = server.wait();
    if (!ok) pthread_kill(stopper.native_handle(), SIGTERM);  // the socket failed: wake the stopper
    stopper.join();
    std::printf("stopped\n");
    return ok ? 0 : 1;
  } catch (const Error& e) {
    std::fprintf(stderr, "defended_server: cannot start: %s\n", e.detail().c_str());
    return 1;
  }
}
