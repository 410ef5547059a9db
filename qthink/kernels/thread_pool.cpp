// The kernels' thread pool (see thread_pool.h).
//
// A job lives in one of two slots, chosen by its generation's parity; the state word holds the
// generation and the next chunk. A worker takes chunk c of generation g by compare-and-swap of
// (g, c) to (g, c + 1): if the caller has moved on to another job the swap fails, so a late
// worker never runs a chunk of a job it did not read. The caller publishes a job only after the
// previous one is done, and the two slots mean a job's fields stay unchanged while its state
// can still be swapped.

#include "thread_pool.h"

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <torch/library.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

namespace qthink {
namespace {

// How long an idle thread spins before it sleeps: long enough to bridge the few small torch
// ops between two kernel calls of a decode step, short enough not to hold a core for long.
constexpr auto kSpin = std::chrono::microseconds(100);

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

// Spins until ready() or kSpin has passed; true if ready.
template <typename Ready>
bool spin_until(const Ready& ready) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  while (true) {
    for (int i = 0; i < 32; ++i) {
      if (ready()) return true;
      _mm_pause();
    }
    if (std::chrono::steady_clock::now() >= deadline) return ready();
  }
}

struct Job {
  std::atomic<ChunkFn> fn{nullptr};
  std::atomic<const void*> context{nullptr};
  std::atomic<int64_t> tasks{0};
  std::atomic<int64_t> grain{1};
  std::atomic<uint32_t> chunks{0};
};

class Pool {
 public:
  // A worker compares the epoch with the one before it was started: one that starts late, after
  // a job or after the pool began to stop, sees the change instead of waiting for the next one.
  explicit Pool(int threads) {
    const uint32_t start = epoch_.load();
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, start] { work_loop(start); });
  }

  ~Pool() {
    stop_.store(true);
    epoch_.fetch_add(1);
    futex_wake_all(&epoch_);
    for (auto& worker : workers_) worker.join();
  }

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int64_t tasks, int64_t grain, ChunkFn fn, const void* context) {
    const uint32_t generation = generation_ + 1;
    Job& job = jobs_[generation & 1];
    const int64_t chunks = (tasks + grain - 1) / grain;
    job.fn.store(fn);
    job.context.store(context);
    job.tasks.store(tasks);
    job.grain.store(grain);
    job.chunks.store(static_cast<uint32_t>(chunks));
    done_.store(0);
    generation_ = generation;
    state_.store(static_cast<uint64_t>(generation) << 32);
    epoch_.fetch_add(1);
    if (sleepers_.load() > 0) futex_wake_all(&epoch_);
    take_chunks(generation);
    wait_done(static_cast<uint32_t>(chunks));
  }

 private:
  // Takes and runs chunks of `generation` until none are left (or the pool has moved on).
  void take_chunks(uint32_t generation) {
    const Job& job = jobs_[generation & 1];
    uint64_t state = state_.load();
    while (static_cast<uint32_t>(state >> 32) == generation) {
      const uint32_t chunk = static_cast<uint32_t>(state);
      const ChunkFn fn = job.fn.load();
      const void* context = job.context.load();
      const int64_t tasks = job.tasks.load(), grain = job.grain.load();
      const uint32_t chunks = job.chunks.load();
      if (chunk >= chunks) return;
      if (!state_.compare_exchange_weak(state, state + 1)) continue;  // `state` now holds the current value
      const int64_t begin = chunk * grain;
      fn(context, begin, std::min(tasks, begin + grain));
      if (done_.fetch_add(1) + 1 == chunks && caller_waiting_.load()) futex_wake_all(&done_);
      state = state_.load();
    }
  }

  void wait_done(uint32_t chunks) {
    if (!spin_until([&] { return done_.load() == chunks; })) {
      caller_waiting_.store(true);
      for (uint32_t done = done_.load(); done != chunks; done = done_.load()) futex_wait(&done_, done);
      caller_waiting_.store(false);
    }
  }

  void work_loop(uint32_t seen) {
    while (true) {
      if (!spin_until([&] { return epoch_.load() != seen; })) {
        sleepers_.fetch_add(1);
        while (epoch_.load() == seen) futex_wait(&epoch_, seen);
        sleepers_.fetch_sub(1);
      }
      seen = epoch_.load();
      if (stop_.load()) return;
      take_chunks(static_cast<uint32_t>(state_.load() >> 32));
    }
  }

  std::vector<std::thread> workers_;
  Job jobs_[2];
  uint32_t generation_ = 0;  // written by the caller only
  std::atomic<uint64_t> state_{0};
  std::atomic<uint32_t> epoch_{0};
  std::atomic<uint32_t> done_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> caller_waiting_{false};
  std::atomic<bool> stop_{false};
};

std::mutex pool_mutex;
std::atomic<int64_t> configured_threads{0};
Pool* pool = nullptr;  // left to the OS at exit: joining threads during static destruction can hang

// A forked child has none of the parent's workers: it starts a pool of its own when it needs one.
const int forget_pool_in_child = pthread_atfork(nullptr, nullptr, [] {
  pool = nullptr;
  new (&pool_mutex) std::mutex();
});

}  // namespace

void set_pool_threads(int64_t threads) { configured_threads.store(std::max<int64_t>(0, threads)); }

int64_t pool_threads() {
  const int64_t configured = configured_threads.load();
  return configured > 0 ? configured : std::max(1, at::get_num_threads());
}

void run_chunks(int64_t tasks, int64_t grain, ChunkFn fn, const void* context) {
  if (tasks <= 0) return;
  grain = std::max<int64_t>(1, std::max(grain, (tasks + UINT32_MAX - 1) / UINT32_MAX));
  const int threads = static_cast<int>(pool_threads());
  // One job at a time; a call from another thread (or from inside a job) while the pool is busy,
  // or a call with one chunk or one thread, runs on the calling thread alone.
  std::unique_lock<std::mutex> lock(pool_mutex, std::try_to_lock);
  if (!lock.owns_lock() || threads == 1 || tasks <= grain) {
    fn(context, 0, tasks);
    return;
  }
  if (pool == nullptr || pool->threads() != threads) {
    delete pool;
    pool = new Pool(threads);
  }
  pool->run(tasks, grain, fn, context);
}

}  // namespace qthink

TORCH_LIBRARY_FRAGMENT(qthink_kernels, m) {
  m.def("set_num_threads(int threads) -> ()", &qthink::set_pool_threads);
  m.def("get_num_threads() -> int", &qthink::pool_threads);
}
