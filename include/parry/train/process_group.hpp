// train::ProcessGroup: the ranks of a data-parallel training run, over
// PyTorch's c10d (LibTorch 1.13's ProcessGroupGloo, CPU collectives through
// Gloo's TCP transport, and a TCPStore for the rendezvous).
//
// Every rank runs the same program on its own copy of the data. The fit
// loops of train:: (fit_classifier, Distillation::fit, DetectorTrainer::fit,
// AdversarialTrainer::fit) take an optional process group: each global batch
// (the same rows on every rank: one shuffle from the shared seed) is split
// into world_size contiguous shards, each rank computes its shard's
// gradients, and one bucketed all-reduce sums them, weighted by shard size,
// into the gradient of the whole batch; every rank then takes the same
// optimizer step, so parameters stay identical on every rank.
//
// Failures. A rank that dies closes its connections, and the others' next
// collective fails at once; a rank that hangs makes the others' next
// collective time out after timeout_seconds. Either way the surviving ranks
// throw parry::DistributedError naming the rank(s) that stopped: before each
// collective a rank records its collective count in the store, and on a
// failure the ranks behind are named (or the store itself, when the process
// hosting it is gone). Checkpoints written by rank 0 before the failure stay
// valid (they are written atomically).
//
// Threat model: none. The store and Gloo's connections are unauthenticated
// and unencrypted, like PyTorch's own; run them on a trusted network
// (loopback, or a private cluster network), never on an address reachable by
// untrusted hosts.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parry/core/errors.hpp"
#include "parry/detail/arg.hpp"

namespace parry::train {

struct ProcessGroupOptions {
  PARRY_OPTIONS(ProcessGroupOptions);
  /// Number of ranks, >= 1.
  PARRY_CHECKED_ARG(int64_t, world_size, 1, v >= 1 && v <= 4096, "must lie in [1, 4096] ranks");
  /// This process's rank in [0, world_size); checked when connecting.
  PARRY_CHECKED_ARG(int64_t, rank, 0, v >= 0, "must be at least 0");
  /// Host name or address of the rendezvous store (default loopback).
  PARRY_CHECKED_ARG(std::string, master_host, "127.0.0.1", !v.empty(), "must not be empty");
  /// TCP port of the store, in [1, 65535]; rank 0 listens on it unless
  /// host_store(false).
  PARRY_CHECKED_ARG(int64_t, master_port, 29500, v >= 1 && v <= 65535, "must lie in [1, 65535]");
  /// Whether rank 0 hosts the store (default true). False when another
  /// process hosts it, as `parry train --nproc` does (RendezvousStore).
  PARRY_ARG(bool, host_store) = true;
  /// Address this rank's Gloo transport binds to. Default empty: 127.0.0.1
  /// when the master is a loopback address, else the address this machine's
  /// host name resolves to.
  PARRY_ARG(std::string, local_address);
  /// Seconds a collective may wait for the other ranks before the run fails
  /// (default 300: longer than any step of a training run on a slow machine).
  PARRY_CHECKED_ARG(double, timeout_seconds, 300.0, v > 0 && v <= 86400 && std::isfinite(v),
                    "must lie in (0, 86400] seconds");
  /// Seconds to reach the store and wait for every rank's address (default
  /// 300). Gloo's part of the rendezvous is bounded by timeout_seconds, so a
  /// rank that never joins is reported after the longer of the two.
  PARRY_CHECKED_ARG(double, join_timeout_seconds, 300.0, v > 0 && v <= 86400 && std::isfinite(v),
                    "must lie in (0, 86400] seconds");
};

/// Thrown when another rank died or hung, or the rendezvous failed. Its
/// message names the rank(s) concerned.
class DistributedError : public Error {
 public:
  using Error::Error;
};

/// A connected group of ranks. Every rank must make the same collective
/// calls in the same order with tensors of the same shapes and dtypes. Not
/// thread-safe: one thread per rank drives it.
class ProcessGroup {
 public:
  /// Joins the group: connects to the store (rank 0 creates it when
  /// host_store()), then waits for every rank.
  /// @throws parry::OptionError for a rank outside [0, world_size);
  ///         parry::DistributedError when the store is unreachable or a rank
  ///         does not join within join_timeout_seconds.
  static std::shared_ptr<ProcessGroup> connect(const ProcessGroupOptions& options);

  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }

  /// Replaces each tensor's values by those of rank `root` (in place; CPU,
  /// contiguous).
  void broadcast(std::vector<torch::Tensor>& tensors, int64_t root = 0);
  /// Broadcasts rank 0's parameters and buffers into every rank's copy, so
  /// that all ranks start from the same model.
  void broadcast_module_state(const std::vector<torch::Tensor>& parameters, const std::vector<torch::Tensor>& buffers);
  /// Element-wise sum over ranks, in place (CPU, contiguous float or double).
  void all_reduce_sum(torch::Tensor& tensor);
  /// Multiplies every parameter's gradient by `weight`, sums them over ranks
  /// in buckets of at most bucket_bytes (one all-reduce per bucket), and
  /// writes the sums back. A parameter without a gradient contributes zeros.
  /// `extras` (for example a loss sum and a sample count) travel in the
  /// first bucket and are summed too.
  void sum_gradients(const std::vector<torch::Tensor>& parameters, double weight, std::vector<double>& extras,
                     int64_t bucket_bytes = 25 << 20);
  /// Replaces every floating-point buffer (BatchNorm running statistics) by
  /// its mean over ranks; integer buffers are left alone.
  void average_buffers(const std::vector<torch::Tensor>& buffers);
  /// Returns once every rank has called it.
  void barrier();

  /// Collectives made so far by this rank.
  int64_t collectives() const { return collectives_; }
  /// Wall seconds this rank has spent inside collectives (communication plus
  /// waiting for slower ranks), for the communication share of a step.
  double communication_seconds() const { return communication_seconds_; }

 private:
  ProcessGroup() = default;
  // Runs one collective, recording progress first and turning a failure into
  // a DistributedError that names the ranks behind.
  template <typename F>
  void run(const char* what, F&& collective);
  [[noreturn]] void fail(const char* what, const std::string& cause);

  int64_t rank_ = 0;
  int64_t world_size_ = 1;
  int64_t collectives_ = 0;
  double communication_seconds_ = 0;
  double timeout_seconds_ = 300;
  std::string master_;
  struct Connection;
  std::unique_ptr<Connection> connection_;
};

/// A rendezvous store hosted by a process that is not a rank (the launcher
/// of `parry train --nproc`), so the store outlives any rank's failure and
/// can name it. Ranks connect with ProcessGroupOptions::host_store(false).
class RendezvousStore {
 public:
  /// Listens on `host`:`port` (port 0: a free port chosen by the system).
  /// @throws parry::DistributedError if the port cannot be bound.
  RendezvousStore(const std::string& host, int64_t port, double timeout_seconds);
  ~RendezvousStore();
  RendezvousStore(const RendezvousStore&) = delete;
  RendezvousStore& operator=(const RendezvousStore&) = delete;
  /// The port it listens on.
  int64_t port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Rows [begin, end) of a global batch of `batch_rows` that rank `rank` of
/// `world_size` trains on: contiguous shards whose sizes differ by at most
/// one, the larger ones first; a shard may be empty when batch_rows <
/// world_size.
std::pair<int64_t, int64_t> shard_of_batch(int64_t batch_rows, int64_t rank, int64_t world_size);

}  // namespace parry::train
