// libFuzzer: the bytes a client sends on one connection to serve::Server
// (request line, headers, body, content types, Content-Length, chunked and
// gzip/brotli bodies, keep-alive requests one after another), fed in memory
// through serve::detail::process_connection: cpp-httplib's request parser,
// then the server's routes, authentication, body decoding and error bodies,
// in this thread, with no socket and no timeout. One API key is accepted
// ("fuzz-key-0123456789abcdef", in the seeds and the dictionary), so both
// the 401 path and the Guard are reached.
//
// Beyond "no crash, no leak": the answer is an HTTP/1.1 response or nothing;
// no answer is a 500 (bad input is a 4xx; a 500 means an exception the
// server did not expect) or carries httplib's EXCEPTION_WHAT header; and a
// well-formed request still gets 200 afterwards.
//
// Not fuzzed here: the socket layer (accept, read/write timeouts, half-closed
// connections); cli.serve_load sends hostile traffic over real sockets.
// cpp-httplib is Debian's compiled library, not instrumented: its parser runs
// on every input (and ASan sees what it hands Parry), but only Parry's code
// guides the fuzzer.
#include <cstdlib>

#include "fuzz_support.hpp"
#include "parry/conceal/output_policies.hpp"
#include "parry/conceal/throttle.hpp"
#include "parry/core/guard.hpp"
#include "parry/serve/api_keys.hpp"
#include "parry/serve/server.hpp"

using namespace parry;

namespace {

serve::Server& server() {
  static serve::Server* instance = [] {
    auto guard = std::make_shared<const Guard>(
        GuardBuilder(fuzz::tiny_model(), InputSpec(1, 28, 28).max_batch(4))
            .add_gate(std::make_shared<conceal::Throttle>(conceal::ThrottleOptions().rate(1e6).burst(1e6)))
            .set_output_policy(std::make_shared<conceal::LabelOnly>())
            .build());
    std::vector<std::string> classes;
    for (int i = 0; i < 10; ++i) classes.push_back("class" + std::to_string(i));
    auto keys = std::make_shared<const serve::ApiKeys>(
        serve::ApiKeys::parse(serve::key_file_line("fuzz-key-0123456789abcdef", "fuzz")));
    return new serve::Server(guard, classes, serve::ServerOptions().max_body_bytes(64 << 10), keys);
  }();
  return *instance;
}

[[noreturn]] void finding(const char* what, const std::string& answer) {
  std::fprintf(stderr, "fuzz_http: %s; answer: '%s'\n", what, answer.substr(0, 400).c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string answer =
      serve::detail::process_connection(server(), std::string(reinterpret_cast<const char*>(data), size));
  if (!answer.empty() && answer.rfind("HTTP/1.1 ", 0) != 0) finding("not an HTTP response", answer);
  if (answer.find("HTTP/1.1 500") != std::string::npos) finding("a 500 answer", answer);
  if (answer.find("EXCEPTION_WHAT") != std::string::npos) finding("an exception text in a header", answer);
  static int count = 0;
  if (++count % 1000 == 1) {  // still serving (from the first input on)
    const std::string health = serve::detail::process_connection(server(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    if (health.rfind("HTTP/1.1 200", 0) != 0) finding("/healthz does not answer 200", health);
  }
  return 0;
}
