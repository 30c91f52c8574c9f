// parry serve: a config's defense as an HTTP service (serve::Server), and
// parry keys: the key-file line for an API key read from stdin.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <thread>

#include "commands.hpp"

namespace parry::cli {

namespace {

struct ServeOptions {
  std::string model, config, defense, api_keys, input, state;
  bool no_auth = false;
  std::string host = "127.0.0.1";
  int port = 8080;
  int workers = 8;
  int64_t max_body = int64_t{1} << 20;
  int torch_threads = 0;
};

// SIGTERM/SIGINT write one byte to this pipe (async-signal-safe); a thread
// reads it and stops the server outside the handler. Works whichever thread
// the signal lands on.
int stop_pipe[2] = {-1, -1};
volatile sig_atomic_t stop_signal = 0;

extern "C" void on_stop_signal(int number) {
  stop_signal = number;
  const int saved = errno;
  const char byte = 1;
  [[maybe_unused]] const ssize_t written = write(stop_pipe[1], &byte, 1);
  errno = saved;
}

// Operator log on stderr: one line per message with a UTC timestamp.
void install_log() {
  static std::mutex mutex;
  set_log_sink([](LogLevel level, const std::string& message) {
    const std::time_t now = std::time(nullptr);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    static const char* const names[] = {"debug", "info", "warning", "error"};
    std::lock_guard<std::mutex> lock(mutex);
    std::cerr << stamp << ' ' << names[static_cast<int>(level)] << ' ' << message << std::endl;
  });
}

int run_serve(const CommonOptions& common, const ServeOptions& opts) {
  install_log();
  if (opts.torch_threads > 0) configure_runtime(RuntimeOptions().threads(opts.torch_threads));
  const int torch_threads = opts.torch_threads > 0 ? opts.torch_threads : common.threads;

  // The key file first: a malformed line fails before the model loads.
  std::shared_ptr<const serve::ApiKeys> keys;
  if (opts.no_auth) {
    log(LogLevel::Warning, "serve: --no-auth: any API key is accepted; per-key throttling can be evaded");
  } else {
    keys = std::make_shared<const serve::ApiKeys>(serve::ApiKeys::load(opts.api_keys));
    if (keys->size() == 0) log(LogLevel::Warning, "serve: the API key file holds no key: every request gets 401");
  }
  const Model model = load_model(opts.model);
  auto defended = open_defense(model, opts.config, opts.defense, opts.input, opts.state);
  const auto guard = defended.guard;
  // Gates with their state in Redis: their failures (503s under fail_closed,
  // unjudged answers under fail_open) are counted in /metrics.
  std::vector<std::shared_ptr<Gate>> shared_state_gates;
  for (const auto& gate : guard->gates()) {
    const auto* monitor = dynamic_cast<const conceal::QueryMonitor*>(gate.get());
    const auto* throttle = dynamic_cast<const conceal::Throttle*>(gate.get());
    if ((monitor && monitor->options().redis()) || (throttle && throttle->options().redis())) {
      shared_state_gates.push_back(gate);
    }
  }
  std::function<uint64_t()> state_failures;
  if (!shared_state_gates.empty()) {
    state_failures = [gates = shared_state_gates] {
      uint64_t total = 0;
      for (const auto& gate : gates) {
        if (const auto* m = dynamic_cast<const conceal::QueryMonitor*>(gate.get())) total += m->state_failures();
        if (const auto* t = dynamic_cast<const conceal::Throttle*>(gate.get())) total += t->state_failures();
      }
      return total;
    };
  } else if (!opts.state.empty() && opts.state != "memory") {
    log(LogLevel::Warning, "serve: --state is set but the defense has no throttle or query monitor to share");
  }
  if (!defended.has_gates) {
    log(LogLevel::Warning,
        "serve: the defense has no gates: no throttling or query monitoring (add a throttle "
        "to the config)");
  }
  serve::Server server(guard, std::move(defended.classes),
                       serve::ServerOptions()
                           .host(opts.host)
                           .port(opts.port)
                           .workers(opts.workers)
                           .max_body_bytes(opts.max_body)
                           .state_failures(state_failures),
                       keys);

  if (pipe2(stop_pipe, O_CLOEXEC) != 0) throw InternalError("pipe2 failed");
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);

  const int port = server.start();
  log(LogLevel::Warning, "serve: " + std::to_string(torch_threads) + " LibTorch thread(s), " +
                             std::to_string(opts.workers) + " HTTP worker(s); serving:\n" + guard->describe());
  std::printf("listening on %s:%d\n", opts.host.c_str(), port);
  std::fflush(stdout);

  std::thread stopper([&server] {
    char byte = 0;
    while (read(stop_pipe[0], &byte, 1) < 0 && errno == EINTR) {
    }
    if (byte == 0) return;  // woken by main after a socket failure
    log(LogLevel::Warning, stop_signal == SIGINT ? "stopping on SIGINT" : "stopping on SIGTERM");
    server.stop();
  });
  const bool ok = server.wait();
  if (!ok) {  // the socket failed: wake the stopper with a zero byte
    const char zero = 0;
    [[maybe_unused]] const ssize_t written = write(stop_pipe[1], &zero, 1);
  }
  stopper.join();
  server.stop();
  std::printf("stopped\n");
  return ok ? 0 : 1;
}

int run_keys(const std::string& client) {
  std::string key;
  std::getline(std::cin, key);
  if (!key.empty() && key.back() == '\r') key.pop_back();
  std::printf("%s\n", serve::key_file_line(key, client).c_str());
  return 0;
}

}  // namespace

Command add_serve_command(CLI::App& app, const CommonOptions& common) {
  auto opts = std::make_shared<ServeOptions>();
  auto* cmd = app.add_subcommand("serve", "Serve a config's defense over HTTP (POST /v1/predict, /healthz, /metrics)");
  cmd->add_option("--model", opts->model, "Saved reference model or TorchScript file")->required();
  cmd->add_option("--config", opts->config, "Defense configuration (detectors calibrated with parry calibrate)")
      ->required();
  cmd->add_option("--defense", opts->defense, "Defense name in the config (default: the first)");
  cmd->add_option("--input", opts->input,
                  "Image shape CxHxW (default: the config's input, else the data parry calibrate saw)");
  cmd->add_option("--host", opts->host, "Address to bind (0.0.0.0: every interface)")->capture_default_str();
  cmd->add_option("--port", opts->port, "TCP port; 0 picks a free one")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  auto* keys = cmd->add_option("--api-keys", opts->api_keys,
                               "Key file: lines 'sha256:<64 hex> <client-name>' (parry keys prints them)");
  auto* no_auth = cmd->add_flag("--no-auth", opts->no_auth,
                                "Accept any API key (local trials only: anyone can invent keys and evade "
                                "per-key throttling)");
  keys->excludes(no_auth);
  cmd->add_option("--workers", opts->workers, "HTTP worker threads (a keep-alive connection holds one)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd->add_option("--max-body", opts->max_body, "Largest request body in bytes (larger: 413)")
      ->check(CLI::Range(int64_t{1024}, int64_t{256} << 20))
      ->capture_default_str();
  cmd->add_option("--torch-threads", opts->torch_threads, "LibTorch intra-op threads (default: --threads)")
      ->check(CLI::Range(1, 256));
  cmd->add_option("--state", opts->state,
                  "Where the throttle and query monitor keep their state: memory, or redis://HOST[:PORT][/DB] "
                  "shared by every replica (replaces the config's \"state\" url; docs/deployment.md)");
  cmd->footer(
      "Answers {\"label\", \"class\", \"verdict\"}; errors are {\"error\", \"reason\"} with generic texts "
      "(docs/serving.md). SIGTERM or SIGINT stops it gracefully (exit 0).");
  return {cmd, [&common, opts] {
            if (opts->api_keys.empty() && !opts->no_auth) {
              throw OptionError("parry serve needs --api-keys FILE (or --no-auth for a local trial)");
            }
            return run_serve(common, *opts);
          }};
}

Command add_keys_command(CLI::App& app) {
  auto client = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("keys", "Print the API key file line for a key read from stdin (stored hashed)");
  cmd->add_option("--client", *client, "Client name: 1..64 of A-Z a-z 0-9 . _ -")->required();
  cmd->footer("Example: openssl rand -hex 32 | tee alice.key | parry keys --client alice >> keys.txt");
  return {cmd, [client] { return run_keys(*client); }};
}

}  // namespace parry::cli
