// train::ProcessGroup: c10d's Gloo process group over a TCPStore, with
// failures that name the rank that stopped.
#include "parry/train/process_group.hpp"

// Debian's LibTorch is built with Gloo (its symbols are in libtorch_cpu.so);
// the header declares ProcessGroupGloo only under USE_C10D_GLOO, which
// LibTorch's CMake package defines for every target that links it.
#ifndef USE_C10D_GLOO
#error "LibTorch without Gloo: Parry's distributed training needs USE_C10D_GLOO"
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <sstream>
#include <thread>

namespace parry::train {

namespace {

using std::chrono::milliseconds;

milliseconds to_ms(double seconds) {
  return milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

std::vector<uint8_t> to_bytes(int64_t v) {
  const std::string s = std::to_string(v);
  return {s.begin(), s.end()};
}

int64_t from_bytes(const std::vector<uint8_t>& b) {
  try {
    return std::stoll(std::string(b.begin(), b.end()));
  } catch (const std::exception&) {
    return -1;
  }
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

std::string join_ranks(const std::vector<int64_t>& ranks) {
  std::ostringstream out;
  for (size_t i = 0; i < ranks.size(); ++i) out << (i == 0 ? "" : (i + 1 == ranks.size() ? " and " : ", ")) << ranks[i];
  return out.str();
}

std::string progress_key(int64_t rank) {
  return "parry/progress/" + std::to_string(rank);
}
std::string heartbeat_key(int64_t rank) {
  return "parry/heartbeat/" + std::to_string(rank);
}
std::string joined_key(int64_t rank) {
  return "parry/joined/" + std::to_string(rank);
}

constexpr milliseconds kHeartbeatPeriod{500};

c10::intrusive_ptr<c10d::TCPStore> make_store(const std::string& host, int64_t port, bool server, double timeout) {
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(port);
  o.isServer = server;
  o.waitWorkers = false;
  o.timeout = to_ms(timeout);
  o.multiTenant = false;
  return c10::make_intrusive<c10d::TCPStore>(host, o);
}

}  // namespace

// The c10d objects, and a thread that writes this rank's heartbeat so that
// the survivors of a failure can tell a dead rank from a slow one.
struct ProcessGroup::Connection {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::TCPStore> heartbeat_store;  // its own connection, used by the heartbeat thread only
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  std::thread heartbeat;
  std::mutex mutex;
  std::condition_variable stop_signal;
  bool stopping = false;

  void start_heartbeat(int64_t rank) {
    heartbeat = std::thread([this, rank] {
      int64_t beat = 0;
      std::unique_lock<std::mutex> lock(mutex);
      while (!stopping) {
        lock.unlock();
        try {
          heartbeat_store->set(heartbeat_key(rank), to_bytes(++beat));
        } catch (const std::exception&) {
          // The store is gone; the next collective reports it.
        }
        lock.lock();
        stop_signal.wait_for(lock, kHeartbeatPeriod, [this] { return stopping; });
      }
    });
  }

  ~Connection() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stopping = true;
    }
    stop_signal.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
  }
};

std::shared_ptr<ProcessGroup> ProcessGroup::connect(const ProcessGroupOptions& options) {
  if (options.rank() >= options.world_size()) {
    throw OptionError("ProcessGroupOptions::rank: must lie in [0, world_size = " +
                      std::to_string(options.world_size()) + "), but got " + std::to_string(options.rank()));
  }
  std::shared_ptr<ProcessGroup> self(new ProcessGroup());
  self->rank_ = options.rank();
  self->world_size_ = options.world_size();
  self->timeout_seconds_ = options.timeout_seconds();
  self->master_ = options.master_host() + ":" + std::to_string(options.master_port());
  auto connection = std::make_unique<Connection>();
  const bool server = options.rank() == 0 && options.host_store();
  try {
    connection->store =
        make_store(options.master_host(), options.master_port(), server, options.join_timeout_seconds());
    connection->heartbeat_store =
        make_store(options.master_host(), options.master_port(), false, options.join_timeout_seconds());
  } catch (const std::exception& e) {
    throw DistributedError(
        "rank " + std::to_string(options.rank()) + " could not reach the rendezvous store at " + self->master_,
        e.what());
  }
  std::string address = options.local_address();
  if (address.empty()) address = is_loopback(options.master_host()) ? "127.0.0.1" : "";
  try {
    // Gloo's timeout bounds every collective and also its part of the
    // rendezvous (LibTorch 1.13 ignores the per-call timeouts below and
    // uses this one; they are set for later versions).
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(to_ms(options.timeout_seconds()));
    gloo_options->devices.push_back(address.empty() ? c10d::ProcessGroupGloo::createDefaultDevice()
                                                    : c10d::ProcessGroupGloo::createDeviceForHostname(address));
    gloo_options->threads = 2;
    connection->store->set(joined_key(options.rank()), to_bytes(1));
    // The constructor is the rendezvous: it waits (the store's timeout) for
    // every rank's address and connects to each.
    connection->group = c10::make_intrusive<c10d::ProcessGroupGloo>(
        connection->store, static_cast<int>(options.rank()), static_cast<int>(options.world_size()), gloo_options);
  } catch (const std::exception& e) {
    std::vector<int64_t> missing;
    try {
      for (int64_t r = 0; r < options.world_size(); ++r) {
        if (!connection->store->check({joined_key(r)})) missing.push_back(r);
      }
    } catch (const std::exception&) {
    }
    std::string message =
        "rank " + std::to_string(options.rank()) + " could not join the process group at " + self->master_;
    if (!missing.empty()) {
      message += ": rank(s) " + join_ranks(missing) + " did not join within " +
                 std::to_string(static_cast<int64_t>(options.join_timeout_seconds())) + " s";
    }
    throw DistributedError(message, message + ": " + e.what());
  }
  connection->start_heartbeat(options.rank());
  self->connection_ = std::move(connection);
  return self;
}

ProcessGroup::~ProcessGroup() = default;

template <typename F>
void ProcessGroup::run(const char* what, F&& collective) {
  const auto start = std::chrono::steady_clock::now();
  struct AddTime {
    double& total;
    std::chrono::steady_clock::time_point start;
    ~AddTime() { total += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); }
  } add_time{communication_seconds_, start};
  ++collectives_;
  try {
    connection_->store->set(progress_key(rank_), to_bytes(collectives_));
  } catch (const std::exception& e) {
    fail(what, e.what());
  }
  try {
    c10::intrusive_ptr<c10d::Work> work = collective(*connection_->group);
    work->wait();
  } catch (const std::exception& e) {
    fail(what, e.what());
  }
}

void ProcessGroup::fail(const char* what, const std::string& cause) {
  const std::string head =
      "rank " + std::to_string(rank_) + ": " + what + " (collective " + std::to_string(collectives_) + ") failed";
  std::vector<int64_t> dead;
  std::vector<int64_t> behind;
  try {
    c10d::TCPStore& store = *connection_->store;
    auto read = [&store](const std::string& key) { return store.check({key}) ? from_bytes(store.get(key)) : -1; };
    // A live rank's heartbeat advances every kHeartbeatPeriod; wait for a few.
    std::vector<int64_t> before(static_cast<size_t>(world_size_));
    for (int64_t r = 0; r < world_size_; ++r) before[r] = r == rank_ ? 0 : read(heartbeat_key(r));
    std::this_thread::sleep_for(kHeartbeatPeriod * 5);
    for (int64_t r = 0; r < world_size_; ++r) {
      if (r == rank_) continue;
      if (read(heartbeat_key(r)) == before[r]) {
        dead.push_back(r);
      } else if (read(progress_key(r)) < collectives_) {
        behind.push_back(r);
      }
    }
  } catch (const std::exception&) {
    const std::string message = head + ": the rendezvous store at " + master_ +
                                " is unreachable, so the process hosting it (rank 0 unless a launcher hosts it) "
                                "has stopped";
    throw DistributedError(message, message + "; cause: " + cause);
  }
  std::string message = head;
  if (!dead.empty()) {
    message += ": rank " + join_ranks(dead) + " stopped (no heartbeat)";
  } else if (!behind.empty()) {
    message += ": rank " + join_ranks(behind) + " did not reach this collective within " +
               std::to_string(static_cast<int64_t>(timeout_seconds_)) + " s (hung or too slow)";
  } else {
    message += ": every rank is alive and at the same collective";
  }
  throw DistributedError(message, message + "; cause: " + cause);
}

void ProcessGroup::broadcast(std::vector<torch::Tensor>& tensors, int64_t root) {
  if (root < 0 || root >= world_size_) {
    throw OptionError("ProcessGroup::broadcast: root must lie in [0, " + std::to_string(world_size_) + "), but got " +
                      std::to_string(root));
  }
  for (torch::Tensor& t : tensors) {
    if (!t.device().is_cpu() || !t.is_contiguous()) {
      throw OptionError("ProcessGroup::broadcast: tensors must be contiguous CPU tensors");
    }
  }
  if (tensors.empty() || world_size_ == 1) return;
  // One broadcast of each dtype's concatenation rather than one per tensor.
  std::vector<torch::ScalarType> dtypes;
  for (const torch::Tensor& t : tensors) {
    if (std::find(dtypes.begin(), dtypes.end(), t.scalar_type()) == dtypes.end()) dtypes.push_back(t.scalar_type());
  }
  for (const torch::ScalarType dtype : dtypes) {
    std::vector<torch::Tensor> parts;
    for (const torch::Tensor& t : tensors) {
      if (t.scalar_type() == dtype) parts.push_back(t.reshape({-1}));
    }
    std::vector<torch::Tensor> flat{torch::cat(parts)};
    run("broadcast", [&](c10d::ProcessGroupGloo& g) {
      c10d::BroadcastOptions o;
      o.rootRank = root;
      o.timeout = to_ms(timeout_seconds_);
      return g.broadcast(flat, o);
    });
    int64_t offset = 0;
    for (torch::Tensor& t : tensors) {
      if (t.scalar_type() != dtype) continue;
      t.view({-1}).copy_(flat[0].slice(0, offset, offset + t.numel()));
      offset += t.numel();
    }
  }
}

void ProcessGroup::broadcast_module_state(const std::vector<torch::Tensor>& parameters,
                                          const std::vector<torch::Tensor>& buffers) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> all;
  for (const torch::Tensor& t : parameters) all.push_back(t.detach());
  for (const torch::Tensor& t : buffers) all.push_back(t.detach());
  broadcast(all, 0);
}

void ProcessGroup::all_reduce_sum(torch::Tensor& tensor) {
  if (!tensor.defined() || !tensor.device().is_cpu() || !tensor.is_contiguous() ||
      (tensor.scalar_type() != torch::kFloat32 && tensor.scalar_type() != torch::kFloat64)) {
    throw OptionError("ProcessGroup::all_reduce_sum: the tensor must be a contiguous float32 or float64 CPU tensor");
  }
  if (world_size_ == 1) return;
  std::vector<torch::Tensor> one{tensor};
  run("all_reduce", [&](c10d::ProcessGroupGloo& g) {
    c10d::AllreduceOptions o;
    o.timeout = to_ms(timeout_seconds_);
    return g.allreduce(one, o);
  });
}

void ProcessGroup::sum_gradients(const std::vector<torch::Tensor>& parameters, double weight,
                                 std::vector<double>& extras, int64_t bucket_bytes) {
  if (bucket_bytes < 1) throw OptionError("ProcessGroup::sum_gradients: bucket_bytes must be at least 1");
  torch::NoGradGuard no_grad;
  // Buckets of consecutive float32 gradients, the extras (as float64, exact
  // for counts) in a bucket of their own; every rank builds the same layout
  // from the same parameter list.
  std::vector<torch::Tensor> grads;
  for (const torch::Tensor& p : parameters) {
    if (!p.requires_grad()) continue;
    torch::Tensor& g = const_cast<torch::Tensor&>(p).mutable_grad();
    if (!g.defined()) g = torch::zeros_like(p);
    if (g.scalar_type() != torch::kFloat32 || !g.device().is_cpu()) {
      throw OptionError("ProcessGroup::sum_gradients: gradients must be float32 CPU tensors");
    }
    grads.push_back(g);
  }
  if (!extras.empty()) {
    torch::Tensor e = torch::tensor(extras, torch::kFloat64);
    all_reduce_sum(e);
    const double* v = e.data_ptr<double>();
    std::copy(v, v + extras.size(), extras.begin());
  }
  const int64_t cap = std::max<int64_t>(1, bucket_bytes / static_cast<int64_t>(sizeof(float)));
  size_t first = 0;
  while (first < grads.size()) {
    size_t last = first;
    int64_t elements = 0;
    while (last < grads.size() && (last == first || elements + grads[last].numel() <= cap)) {
      elements += grads[last].numel();
      ++last;
    }
    std::vector<torch::Tensor> parts;
    for (size_t i = first; i < last; ++i) parts.push_back(grads[i].reshape({-1}));
    torch::Tensor flat = torch::cat(parts);
    if (weight != 1.0) flat.mul_(weight);
    all_reduce_sum(flat);
    int64_t offset = 0;
    for (size_t i = first; i < last; ++i) {
      grads[i].view({-1}).copy_(flat.slice(0, offset, offset + grads[i].numel()));
      offset += grads[i].numel();
    }
    first = last;
  }
}

void ProcessGroup::average_buffers(const std::vector<torch::Tensor>& buffers) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> floating;
  for (const torch::Tensor& b : buffers) {
    if (b.is_floating_point()) floating.push_back(b);
  }
  if (floating.empty() || world_size_ == 1) return;
  std::vector<torch::Tensor> parts;
  for (const torch::Tensor& b : floating) parts.push_back(b.reshape({-1}).to(torch::kFloat64));
  torch::Tensor flat = torch::cat(parts);
  all_reduce_sum(flat);
  flat.div_(static_cast<double>(world_size_));
  int64_t offset = 0;
  for (torch::Tensor& b : floating) {
    b.view({-1}).copy_(flat.slice(0, offset, offset + b.numel()));
    offset += b.numel();
  }
}

void ProcessGroup::barrier() {
  if (world_size_ == 1) return;
  run("barrier", [&](c10d::ProcessGroupGloo& g) {
    c10d::BarrierOptions o;
    o.timeout = to_ms(timeout_seconds_);
    return g.barrier(o);
  });
}

std::pair<int64_t, int64_t> shard_of_batch(int64_t batch_rows, int64_t rank, int64_t world_size) {
  if (batch_rows < 0 || world_size < 1 || rank < 0 || rank >= world_size) {
    throw OptionError("shard_of_batch: needs batch_rows >= 0 and 0 <= rank < world_size, but got batch_rows = " +
                      std::to_string(batch_rows) + ", rank = " + std::to_string(rank) +
                      ", world_size = " + std::to_string(world_size));
  }
  const int64_t base = batch_rows / world_size;
  const int64_t extra = batch_rows % world_size;
  const int64_t begin = rank * base + std::min(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

struct RendezvousStore::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;
};

RendezvousStore::RendezvousStore(const std::string& host, int64_t port, double timeout_seconds)
    : impl_(std::make_unique<Impl>()) {
  if (port < 0 || port > 65535) throw OptionError("RendezvousStore: port must lie in [0, 65535]");
  try {
    impl_->store = make_store(host, port, true, timeout_seconds);
  } catch (const std::exception& e) {
    throw DistributedError("could not host the rendezvous store on " + host + ":" + std::to_string(port), e.what());
  }
}

RendezvousStore::~RendezvousStore() = default;

int64_t RendezvousStore::port() const {
  return impl_->store->getPort();
}

}  // namespace parry::train
