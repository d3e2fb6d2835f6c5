// The batching kernels: see batching.h for the contract.
//
// The output is cut into tasks of at most kChunk samples of one row that threads take from an
// atomic counter, so long rows are split across threads as well as short batches. With
// normalisation a first parallel pass computes each row's statistics.
//
// Exactness: the NumPy fallback must produce the same bits, so nothing here may be
// reassociated. Built with -ffp-contract=off (no fused multiply-add) and without
// -ffast-math; the double sums run as 8 independent sequential lanes, which vectorise
// without changing the order of any addition.
#include "batching.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define CPC_FAST_STREAM 1
#else
#define CPC_FAST_STREAM 0
#endif

// The wheel targets baseline x86-64 (SSE2); where the loader can pick a variant at run time
// (glibc ifunc), the hot loops are also compiled for AVX2, which copies cached data 1.6x
// faster. AVX2 here brings no FMA, so the arithmetic and the results stay the same.
// -DCPC_FAST_NO_MULTIVERSION builds the baseline only (ThreadSanitizer cannot run ifuncs).
#if defined(__x86_64__) && defined(__GLIBC__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(CPC_FAST_NO_MULTIVERSION)
#define CPC_FAST_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define CPC_FAST_MULTIVERSION
#endif

namespace cpc_fast {
namespace {

constexpr int64_t kChunk = 16384;  // samples per task: 64 KiB of output
// Less output than this per thread and starting the thread costs more than it saves.
constexpr int64_t kBytesPerThread = int64_t{1} << 20;
// Outputs at least this large (more than fits in a typical cache) bypass the cache.
constexpr int64_t kStreamBytes = int64_t{8} << 20;
constexpr int kLanes = 8;

struct Norm {
  double mean = 0.0;
  double inv_std = 1.0;
};

template <typename T, bool kContig>
inline float load(const char* data, int64_t stride, int64_t i) {
  T v;
  const int64_t step = kContig ? static_cast<int64_t>(sizeof(T)) : stride;
  std::memcpy(&v, data + i * step, sizeof(T));  // memcpy: numpy buffers may be unaligned
  if constexpr (std::is_same_v<T, int16_t>) {
    return static_cast<float>(v) * kInt16Scale;
  } else {
    return v;
  }
}

// Bit 31 is set when x is NaN or infinite: an all-ones exponent field carries into the sign
// bit when one is added to it. Branch-free so that the copy loops stay vectorised.
inline uint32_t non_finite_bit(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return ((bits & 0x7f800000u) + 0x00800000u) & 0x80000000u;
}

// dst[k] = wave[i0 + k] for k < count; non-zero when a float32 sample is not finite.
template <typename T, bool C>
CPC_FAST_MULTIVERSION uint32_t copy_samples(const RowSpec& r, int64_t i0, int64_t count,
                                            float* __restrict dst) {
  uint32_t bad = 0;
  for (int64_t k = 0; k < count; ++k) {
    const float v = load<T, C>(r.data, r.stride, i0 + k);
    dst[k] = v;
    if constexpr (std::is_same_v<T, float>) bad |= non_finite_bit(v);
  }
  return bad;
}

// dst[k] = (wave[i0 + k] - mean) * inv_std, in double, rounded once to float32.
template <typename T, bool C>
CPC_FAST_MULTIVERSION void normalize_samples(const RowSpec& r, int64_t i0, int64_t count,
                                             float* __restrict dst, const Norm& nm) {
  for (int64_t k = 0; k < count; ++k) {
    const double x = load<T, C>(r.data, r.stride, i0 + k);
    dst[k] = static_cast<float>((x - nm.mean) * nm.inv_std);
  }
}

#if CPC_FAST_STREAM
// The copy loops above with streaming stores, for outputs larger than the cache: they write
// whole cache lines without first reading them (no read-for-ownership) and without evicting
// the cache, which saves about a third of the memory traffic. dst must be 16-byte aligned.
uint32_t stream_float32(const char* src, int64_t count, float* dst) {
  const __m128i exponent = _mm_set1_epi32(0x7f800000);
  const __m128i one = _mm_set1_epi32(0x00800000);
  __m128i bad = _mm_setzero_si128();
  for (int64_t k = 0; k < count; k += 4) {
    const __m128 v = _mm_loadu_ps(reinterpret_cast<const float*>(src) + k);
    bad = _mm_or_si128(bad, _mm_add_epi32(_mm_and_si128(_mm_castps_si128(v), exponent), one));
    _mm_stream_ps(dst + k, v);
  }
  return static_cast<uint32_t>(_mm_movemask_ps(_mm_castsi128_ps(bad)));  // the bits 31
}

uint32_t stream_int16(const char* src, int64_t count, float* dst) {
  const __m128 scale = _mm_set1_ps(kInt16Scale);
  for (int64_t k = 0; k < count; k += 8) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * k));
    // Sign-extend 16 -> 32 bits: put each sample in the high half, shift it back down.
    const __m128i lo = _mm_srai_epi32(_mm_unpacklo_epi16(x, x), 16);
    const __m128i hi = _mm_srai_epi32(_mm_unpackhi_epi16(x, x), 16);
    _mm_stream_ps(dst + k, _mm_mul_ps(_mm_cvtepi32_ps(lo), scale));
    _mm_stream_ps(dst + k + 4, _mm_mul_ps(_mm_cvtepi32_ps(hi), scale));
  }
  return 0;
}

// copy_samples with streaming stores: plain stores up to a 16-byte boundary of dst, then
// whole vectors, then a plain tail.
template <typename T>
uint32_t stream_samples(const RowSpec& r, int64_t i0, int64_t count, float* dst) {
  constexpr int64_t kVector = std::is_same_v<T, float> ? 4 : 8;
  const auto misaligned = static_cast<int64_t>(reinterpret_cast<uintptr_t>(dst) % 16) / 4;
  const int64_t head = std::min(count, misaligned == 0 ? 0 : 4 - misaligned);
  const int64_t body = (count - head) / kVector * kVector;
  uint32_t bad = copy_samples<T, true>(r, i0, head, dst);
  const char* src = r.data + (i0 + head) * static_cast<int64_t>(sizeof(T));
  if constexpr (std::is_same_v<T, float>) {
    bad |= stream_float32(src, body, dst + head) != 0 ? 0x80000000u : 0u;
  } else {
    stream_int16(src, body, dst + head);
  }
  return bad | copy_samples<T, true>(r, i0 + head + body, count - head - body, dst + head + body);
}
#endif

// wave[i0 : i0 + count] into dst: converted, normalised when nm is given, streamed when asked
// (and possible). Non-zero when an unnormalised float32 sample is not finite.
template <typename T, bool C>
uint32_t emit(const RowSpec& r, int64_t i0, int64_t count, float* dst, const Norm* nm,
              bool stream) {
  if (nm != nullptr) {
    normalize_samples<T, C>(r, i0, count, dst, *nm);
    return 0;
  }
#if CPC_FAST_STREAM
  if (C && stream) return stream_samples<T>(r, i0, count, dst);
#else
  (void)stream;
#endif
  return copy_samples<T, C>(r, i0, count, dst);
}

// Output samples [j0, j1) of row r into dst (which points at out[row][j0]). The periodic part
// is written as whole periods: the first one converted from the source, the rest doubled by
// memcpy from what this task already wrote, so a 1-sample wave costs log2(chunk) copies.
template <typename T, bool C>
uint32_t write_span(const RowSpec& r, int64_t j0, int64_t j1, float* dst, const Norm* nm,
                    bool stream) {
  uint32_t bad = 0;
  const int64_t end = std::min(j1, r.valid);
  int64_t j = j0;
  float* d = dst;
  if (j < end) {  // up to the end of the period that j0 falls in
    const int64_t pos = j % r.period;
    const int64_t count = std::min(r.period - pos, end - j);
    bad |= emit<T, C>(r, r.offset + pos, count, d, nm, stream);
    j += count;
    d += count;
  }
  if (j < end) {  // j is at phase 0 from here on
    float* block = d;
    const int64_t count = std::min(r.period, end - j);
    bad |= emit<T, C>(r, r.offset, count, d, nm, stream);
    j += count;
    d += count;
    while (j < end) {  // [block, d) holds whole periods: copy it forward
      const int64_t n = std::min<int64_t>(d - block, end - j);
      std::memcpy(d, block, static_cast<size_t>(n) * sizeof(float));
      j += n;
      d += n;
    }
  }
  if (j < j1) std::memset(d, 0, static_cast<size_t>(j1 - j) * sizeof(float));
  return bad;
}

// acc[j % 8] += term(seg[j]) for j in [begin, end), j increasing: every lane is a plain
// sequential double sum; term is x, or (x - mean)^2 when kSquares.
template <typename T, bool C, bool kSquares>
CPC_FAST_MULTIVERSION void add_lanes(const RowSpec& r, int64_t begin, int64_t end, double mean,
                                     double* acc) {
  auto term = [&](int64_t j) -> double {
    const double x = load<T, C>(r.data, r.stride, r.offset + j);
    if constexpr (kSquares) {
      const double dev = x - mean;
      return dev * dev;
    } else {
      return x;
    }
  };
  double a[kLanes];
  std::copy(acc, acc + kLanes, a);
  int64_t j = begin;
  for (; j < end && j % kLanes != 0; ++j) a[j % kLanes] += term(j);
  for (; j + kLanes <= end; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) a[k] += term(j + k);
  }
  for (; j < end; ++j) a[j % kLanes] += term(j);
  std::copy(a, a + kLanes, acc);
}

inline double combine(const double* a) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// sum over the valid part of f(y) = reps * sum(f(seg)) + sum(f(seg[:rest])), both sums
// computed lane-wise; the partial sum over seg[:rest] is a snapshot of the full one.
template <typename T, bool C, bool kSquares>
double row_sum(const RowSpec& r, double mean) {
  const int64_t reps = r.valid / r.period;
  const int64_t rest = r.valid % r.period;
  double head[kLanes];
  std::fill(head, head + kLanes, -0.0);  // -0.0 is the exact identity of addition
  add_lanes<T, C, kSquares>(r, 0, rest, mean, head);
  double full[kLanes];
  std::copy(head, head + kLanes, full);
  add_lanes<T, C, kSquares>(r, rest, r.period, mean, full);
  return static_cast<double>(reps) * combine(full) + combine(head);
}

// Mean and 1/std of the row's valid part; false when the segment is not finite (a finite
// float32 segment cannot overflow a double sum).
template <typename T, bool C>
bool row_stats(const RowSpec& r, Norm* nm) {
  const double sum = row_sum<T, C, false>(r, 0.0);
  if (!std::isfinite(sum)) return false;
  const double valid = static_cast<double>(r.valid);
  const double mean = sum / valid;
  const double var = row_sum<T, C, true>(r, mean) / valid;
  nm->mean = mean;
  nm->inv_std = 1.0 / std::sqrt(var + kNormEps);
  return true;
}

// Calls Op<SampleT, contiguous>::run(r, args...) for the row's sample type and layout.
template <template <typename, bool> class Op, typename... Args>
auto dispatch(const RowSpec& r, Args&&... args) {
  if (r.type == SampleType::kInt16) {
    return r.stride == 2 ? Op<int16_t, true>::run(r, args...) : Op<int16_t, false>::run(r, args...);
  }
  return r.stride == 4 ? Op<float, true>::run(r, args...) : Op<float, false>::run(r, args...);
}

template <typename T, bool C>
struct WriteOp {
  static uint32_t run(const RowSpec& r, int64_t j0, int64_t j1, float* dst, const Norm* nm,
                      bool stream) {
    return write_span<T, C>(r, j0, j1, dst, nm, stream);
  }
};

template <typename T, bool C>
struct StatsOp {
  static bool run(const RowSpec& r, Norm* nm) { return row_stats<T, C>(r, nm); }
};

template <typename T, bool C>
struct FirstBadOp {
  static int64_t run(const RowSpec& r) {
    if constexpr (std::is_same_v<T, float>) {
      for (int64_t i = r.offset; i < r.offset + r.period; ++i) {
        if (!std::isfinite(load<T, C>(r.data, r.stride, i))) return i;
      }
    }
    return -1;
  }
};

template <typename T, bool C>
struct SampleOp {
  static float run(const RowSpec& r, int64_t i) { return load<T, C>(r.data, r.stride, i); }
};

// Runs fn(0) ... fn(num_tasks - 1) on the calling thread and threads - 1 helpers, which take
// tasks from a shared counter. The helpers are detached and the caller waits only for tasks
// that have been taken, not for helpers to start: on a busy machine a helper may not be
// scheduled before the caller has done everything, and then it just finds nothing left.
template <typename F>
void parallel_for(int64_t num_tasks, int threads, const F& fn) {
  struct Job {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    int64_t num_tasks = 0;
    const F* fn = nullptr;  // only dereferenced for a task taken before done == num_tasks
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto job = std::make_shared<Job>();
  job->num_tasks = num_tasks;
  job->fn = &fn;
  auto work = [](const std::shared_ptr<Job>& j) {
    for (int64_t t = j->next.fetch_add(1); t < j->num_tasks; t = j->next.fetch_add(1)) {
      (*j->fn)(t);
      if (j->done.fetch_add(1) + 1 == j->num_tasks) {
        const std::lock_guard<std::mutex> lock(j->mutex);
        j->finished.notify_all();
      }
    }
  };
  for (int i = 1; i < threads; ++i) {
    try {
      std::thread(work, job).detach();
    } catch (...) {
      break;  // out of threads: fewer helpers (or none) share the work
    }
  }
  work(job);
  std::unique_lock<std::mutex> lock(job->mutex);
  job->finished.wait(lock, [&] { return job->done.load() == num_tasks; });
}

int64_t first_flagged(const std::vector<std::atomic<uint8_t>>& flags) {
  for (size_t i = 0; i < flags.size(); ++i) {
    if (flags[i].load(std::memory_order_relaxed) != 0) return static_cast<int64_t>(i);
  }
  return -1;
}

}  // namespace

int effective_threads(int requested, int64_t out_elems, int64_t num_tasks) {
  int64_t threads = requested > 0 ? requested : std::max(1u, std::thread::hardware_concurrency());
  threads = std::min(threads, std::max<int64_t>(1, out_elems * 4 / kBytesPerThread));
  threads = std::min(threads, std::max<int64_t>(1, num_tasks));
  return static_cast<int>(threads);
}

int64_t fill_rows(const std::vector<RowSpec>& rows, float* out, int64_t row_len, bool normalize,
                  int num_threads) {
  const auto num_rows = static_cast<int64_t>(rows.size());
  const int64_t out_elems = num_rows * row_len;
  std::vector<std::atomic<uint8_t>> bad(rows.size());

  std::vector<Norm> norms;
  if (normalize) {  // statistics first: a non-finite segment stops us before any write
    norms.resize(rows.size());
    parallel_for(num_rows, effective_threads(num_threads, out_elems, num_rows), [&](int64_t i) {
      const auto row = static_cast<size_t>(i);
      if (!dispatch<StatsOp>(rows[row], &norms[row])) bad[row].store(1, std::memory_order_relaxed);
    });
    const int64_t first = first_flagged(bad);
    if (first >= 0) return first;
  }

  const bool stream = CPC_FAST_STREAM && out_elems * 4 >= kStreamBytes;
  const int64_t chunks_per_row = (row_len + kChunk - 1) / kChunk;
  const int64_t num_tasks = num_rows * chunks_per_row;
  parallel_for(num_tasks, effective_threads(num_threads, out_elems, num_tasks), [&](int64_t t) {
    const int64_t i = t / chunks_per_row;
    const int64_t begin = (t % chunks_per_row) * kChunk;
    const int64_t end = std::min(row_len, begin + kChunk);
    const auto row = static_cast<size_t>(i);
    const Norm* nm = normalize ? &norms[row] : nullptr;
    if (dispatch<WriteOp>(rows[row], begin, end, out + i * row_len + begin, nm, stream) != 0) {
      bad[row].store(1, std::memory_order_relaxed);
    }
#if CPC_FAST_STREAM
    if (stream) _mm_sfence();  // streamed stores are weakly ordered: publish them
#endif
  });
  return first_flagged(bad);
}

int64_t first_non_finite(const RowSpec& row) { return dispatch<FirstBadOp>(row); }

float sample_at(const RowSpec& row, int64_t i) { return dispatch<SampleOp>(row, i); }

}  // namespace cpc_fast
