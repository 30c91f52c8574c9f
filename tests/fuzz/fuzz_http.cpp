// libFuzzer: raw bytes on a connection to serve::Server (request line,
// headers, body, content types, chunked encoding), as a network client sends
// them. The server runs in this process (its handlers are instrumented); each
// input is written to a fresh loopback connection and the whole answer is
// read (until the server closes it, or 3 s). Beyond "no crash, no leak": the answer
// must be an HTTP response or nothing, and the server must still answer a
// well-formed request afterwards.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cstdlib>

#include "fuzz_support.hpp"
#include "parry/conceal/output_policies.hpp"
#include "parry/conceal/throttle.hpp"
#include "parry/core/guard.hpp"
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
    auto* s = new serve::Server(guard, classes, serve::ServerOptions().port(0).workers(2).timeout_seconds(1));
    s->start();
    return s;
  }();
  return *instance;
}

std::string exchange(const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) std::abort();
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(server().port()));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{3, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) std::abort();
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may close early on a bad request
    sent += static_cast<size_t>(n);
  }
  // No shutdown(SHUT_WR): cpp-httplib drops the answer to a client that has
  // half-closed its side (checked by hand: /healthz then answers nothing).
  // An incomplete request is answered or closed after the server's 1 s read
  // timeout instead, which costs executions, not coverage.
  std::string answer;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) break;
    answer.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return answer;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string answer = exchange(std::string(reinterpret_cast<const char*>(data), size));
  if (!answer.empty() && answer.rfind("HTTP/1.", 0) != 0) std::abort();  // not an HTTP response
  static int count = 0;
  if (++count % 1000 == 1) {  // still serving (from the first input on)
    const std::string health = exchange("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if (health.rfind("HTTP/1.1 200", 0) != 0) {
      std::fprintf(stderr, "fuzz_http: /healthz answered '%s'\n", health.substr(0, 200).c_str());
      std::abort();
    }
  }
  return 0;
}
