// A thread pool for the native kernels: work split dynamically, idle threads asleep.
//
// A call's tasks are cut into chunks that the calling thread and the pool's workers take from
// one shared counter until none are left, so a thread the OS has descheduled holds up at most
// the chunk it already took: the others do the rest. Workers spin only briefly for the next
// call, then sleep on a futex, so they do not compete for a core with the thread that has work.
#pragma once

#include <cstdint>

namespace qthink {

using ChunkFn = void (*)(const void* context, int64_t begin, int64_t end);

// Runs fn(context, begin, end) over [0, tasks) in chunks of at most `grain` tasks, on the
// calling thread and pool_threads() - 1 workers; returns when every chunk is done.
void run_chunks(int64_t tasks, int64_t grain, ChunkFn fn, const void* context);

// The kernels' thread count: set_pool_threads(n) for n > 0, else torch's (at::get_num_threads()).
// Separate from torch's, so torch's own ops can run on one thread while the kernels use all.
void set_pool_threads(int64_t threads);
int64_t pool_threads();

// f(begin, end) over [0, tasks) in chunks of at most `grain`, as run_chunks.
template <typename F>
void parallel_for(int64_t tasks, int64_t grain, const F& f) {
  run_chunks(
      tasks, grain, [](const void* c, int64_t begin, int64_t end) { (*static_cast<const F*>(c))(begin, end); }, &f);
}

}  // namespace qthink
