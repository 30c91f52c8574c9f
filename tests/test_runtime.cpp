#include "parry/core/runtime.hpp"

#include <atomic>
#include <thread>
#include <vector>

#include "test_support.hpp"

using parry::detail::idle_cores_between;

TEST(Runtime, IdleCoresAreTheCoresThatNoProcessKeptBusy) {
  // 4 cores, 400 ticks between the snapshots: busy = user + nice + system +
  // irq + softirq + steal, idle = idle + iowait.
  const std::string before = "cpu  1000 0 500 8000 100 0 0 0 0 0";
  EXPECT_EQ(idle_cores_between(before, "cpu  1000 0 500 8400 100 0 0 0 0 0", 4), 4);   // nothing ran
  EXPECT_EQ(idle_cores_between(before, "cpu  1100 0 500 8300 100 0 0 0 0 0", 4), 3);   // one core busy
  EXPECT_EQ(idle_cores_between(before, "cpu  1150 10 540 8200 100 0 0 0 0 0", 4), 2);  // two, from several columns
  EXPECT_EQ(idle_cores_between(before, "cpu  1100 0 500 8000 400 0 0 0 0 0", 4), 3);   // I/O wait counts as idle
  EXPECT_EQ(idle_cores_between(before, "cpu  1030 0 500 8300 100 0 0 70 0 0", 4), 3);  // stolen time is busy
  EXPECT_EQ(idle_cores_between(before, "cpu  1400 0 500 8000 100 0 0 0 0 0", 4), 1);   // all busy: still one thread
  EXPECT_EQ(idle_cores_between(before, "cpu  1160 0 500 8240 100 0 0 0 0 0\ncpu0 1 2 3 4", 4), 2);  // 1.6 -> 2 busy
  // Unreadable or stale snapshots: every core counts as idle.
  EXPECT_EQ(idle_cores_between("", before, 4), 4);
  EXPECT_EQ(idle_cores_between(before, "intr 1 2 3", 4), 4);
  EXPECT_EQ(idle_cores_between(before, before, 4), 4);
  EXPECT_EQ(idle_cores_between(before, "cpu  900 0 500 8500 100 0 0 0 0 0", 4), 4);  // went backwards
  EXPECT_EQ(idle_cores_between(before, before, 0), 1);
}

TEST(Runtime, IdleCoresSeeThisMachinesBusyThreads) {
  const int cores = static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
  const int idle = parry::idle_cores(std::chrono::milliseconds(50));
  EXPECT_GE(idle, 1);
  EXPECT_LE(idle, cores);
  // Every core spinning: at most one core is left, whatever else runs.
  std::atomic<bool> stop{false};
  std::vector<std::thread> spinners;
  for (int i = 0; i < cores; ++i) {
    spinners.emplace_back([&stop] {
      volatile unsigned long long n = 0;
      while (!stop.load(std::memory_order_relaxed)) n = n + 1;
    });
  }
  const int idle_while_busy = parry::idle_cores(std::chrono::milliseconds(300));
  stop = true;
  for (auto& t : spinners) t.join();
  EXPECT_EQ(idle_while_busy, 1);
}

TEST(Runtime, IdleCoresRefuseWindowsOutsideTenMillisecondsToTenSeconds) {
  for (const auto window : {std::chrono::milliseconds(5), std::chrono::milliseconds(11000)}) {
    try {
      parry::idle_cores(window);
      FAIL() << "accepted a window of " << window.count() << " ms";
    } catch (const parry::OptionError& e) {
      EXPECT_NE(std::string(e.what()).find("between 10 ms and 10 s"), std::string::npos) << e.what();
    }
  }
}
