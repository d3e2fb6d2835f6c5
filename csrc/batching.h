// Waveform batching kernels behind cpc_fast._C: repeat-padding, cropping and zero-padded
// collation of 1-D float32/int16 waveforms into one float32 (rows, row_len) buffer.
//
// Pure C++ (no Python): module.cpp validates the Python arguments, fills RowSpecs and calls
// fill_rows with the GIL released. The NumPy fallback in cpc_fast/data/_batching_numpy.py
// implements the same contract and must stay bit-identical to this file.
#pragma once

#include <cstdint>
#include <vector>

namespace cpc_fast {

enum class SampleType : int { kFloat32, kInt16 };

// int16 samples are scaled by 1/32768 (exact in float32: a power of two).
constexpr float kInt16Scale = 1.0f / 32768.0f;

// Added to the variance before the square root in the per-utterance normalisation.
constexpr double kNormEps = 1e-7;

// One output row of row_len samples:
//   out[j] = seg[j % period]  for j < valid,   out[j] = 0  for valid <= j < row_len,
// where seg = wave[offset : offset + period].
//   crop   (n >= length): offset = off, period = valid = length
//   repeat (n <  length): offset = 0,   period = n, valid = length
//   pad    (pad_collate): offset = 0,   period = valid = n
struct RowSpec {
  const char* data;  // sample 0 of the wave
  int64_t stride;    // bytes from one sample to the next (any sign, a multiple of the size)
  int64_t n;         // samples in the wave, >= 1
  SampleType type;
  int64_t offset;
  int64_t period;  // 1 <= period, offset + period <= n
  int64_t valid;   // period <= valid <= row_len
};

// Writes every row into out, a C-contiguous, 4-byte aligned (rows.size(), row_len) buffer, with
// num_threads threads (0: one per hardware thread; fewer when the work is small).
//
// Returns -1 on success, or the smallest row index whose segment (the float32 samples that
// are copied into the row) holds a NaN or an infinity. Without normalisation that check is
// fused into the copy, so on an error the rows may already be (partly) written; with
// normalisation it happens while computing the statistics, before anything is written.
//
// Normalisation maps each row's valid part y (the values written without it) to
//   (y - mean) / sqrt(var + kNormEps),  mean and var (population) over y[0:valid],
// accumulated in double in a fixed order (see batching.cpp) that the NumPy fallback repeats.
int64_t fill_rows(const std::vector<RowSpec>& rows, float* out, int64_t row_len, bool normalize,
                  int num_threads);

// Index (into the wave) of the first NaN/infinite sample of the row's segment, or -1.
int64_t first_non_finite(const RowSpec& row);

// The value of sample i of the wave after conversion to float32.
float sample_at(const RowSpec& row, int64_t i);

// Threads fill_rows would use for this much output: min(requested or hardware threads,
// one per MiB of output, number of tasks).
int effective_threads(int requested, int64_t out_elems, int64_t num_tasks);

}  // namespace cpc_fast
