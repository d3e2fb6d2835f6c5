// cpc_fast._C: Python bindings of the batching kernels (pybind11 over NumPy buffers).
//
// Every argument is validated here, with the GIL held and before any sample is read or
// written; errors are ValueError/TypeError whose message names the offending item
// ("waves[3]: ..."). The messages and their order are the contract that the NumPy fallback
// (cpc_fast/data/_batching_numpy.py) repeats word for word. Only cpc_fast.data.batching
// imports this module.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "batching.h"

namespace py = pybind11;
using cpc_fast::RowSpec;
using cpc_fast::SampleType;

namespace {

// Bumped whenever the Python-visible contract changes, so a stale build is detected.
constexpr int kApiVersion = 1;

std::string type_name(py::handle h) { return py::str(py::type::of(h).attr("__name__")); }

std::string shape_of(const py::array& a) { return py::str(a.attr("shape")); }

std::string dtype_of(const py::array& a) { return py::str(a.dtype()); }

std::string item(size_t i) { return "waves[" + std::to_string(i) + "]: "; }

std::string pair(int64_t a, int64_t b) {
  return "(" + std::to_string(a) + ", " + std::to_string(b) + ")";
}

// The checked waves, kept alive (and their buffers pinned) while the GIL is released.
struct Waves {
  std::vector<py::array> arrays;
  std::vector<RowSpec> rows;
};

RowSpec check_wave(py::handle obj, size_t i, std::vector<py::array>* keep) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(item(i) + "expected a 1-D numpy array (float32 or int16), got " +
                         type_name(obj));
  }
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (a.ndim() != 1)
    throw py::value_error(item(i) + "expected a 1-D array, got shape " + shape_of(a));
  SampleType type;
  if (py::isinstance<py::array_t<float>>(a)) {
    type = SampleType::kFloat32;
  } else if (py::isinstance<py::array_t<int16_t>>(a)) {
    type = SampleType::kInt16;
  } else {
    throw py::type_error(item(i) + "dtype " + dtype_of(a) +
                         " is not supported (use float32 or int16)");
  }
  const int64_t n = a.shape(0);
  if (n == 0) throw py::value_error(item(i) + "empty waveform (0 samples)");
  const int64_t stride = a.strides(0);
  if (stride % a.itemsize() != 0) {
    throw py::value_error(item(i) + "stride of " + std::to_string(stride) +
                          " bytes is not a multiple of the sample size");
  }
  keep->push_back(a);
  return RowSpec{static_cast<const char*>(a.data()), stride, n, type, 0, n, n};
}

// The batch as a sequence: a list or tuple with at least one item.
py::sequence check_batch(const py::handle& waves) {
  if (!PyList_Check(waves.ptr()) && !PyTuple_Check(waves.ptr())) {
    throw py::type_error("waves must be a list or tuple of 1-D numpy arrays, got " +
                         type_name(waves));
  }
  auto seq = py::reinterpret_borrow<py::sequence>(waves);
  if (seq.size() == 0) throw py::value_error("waves is empty: need at least one waveform");
  return seq;
}

// Type, rank, dtype, emptiness and layout of every wave, in index order.
Waves check_waves(const py::sequence& seq) {
  const size_t count = seq.size();
  Waves out;
  out.arrays.reserve(count);
  out.rows.reserve(count);
  for (size_t i = 0; i < count; ++i) out.rows.push_back(check_wave(seq[i], i, &out.arrays));
  return out;
}

int64_t offset_at(const py::array& offsets, size_t i) {
  int64_t value;
  const auto* base = static_cast<const char*>(offsets.data());
  std::memcpy(&value, base + static_cast<int64_t>(i) * offsets.strides(0), sizeof(value));
  return value;
}

void check_offsets(const py::handle& offsets, size_t count) {
  if (!py::isinstance<py::array_t<int64_t>>(offsets)) {
    const std::string got = py::isinstance<py::array>(offsets)
                                ? "dtype " + dtype_of(py::reinterpret_borrow<py::array>(offsets))
                                : type_name(offsets);
    throw py::type_error("offsets must be an int64 numpy array, got " + got);
  }
  auto a = py::reinterpret_borrow<py::array>(offsets);
  if (a.ndim() != 1) throw py::value_error("offsets must be 1-D, got shape " + shape_of(a));
  if (static_cast<size_t>(a.shape(0)) != count) {
    throw py::value_error("offsets has " + std::to_string(a.shape(0)) + " entries for " +
                          std::to_string(count) + " waveforms");
  }
}

// repeat_pad's output arrays are recycled. A fresh 40 MB array costs more than filling it:
// the kernel maps and zeroes every page on first touch. Training asks for the same shape at
// every step, so the arrays it made are kept here and handed out again once nothing else
// refers to them (reference count 1: no array, view, tensor or buffer export can reach them).
constexpr size_t kMaxRecycled = 4;
constexpr int64_t kMinRecycledBytes = int64_t{1} << 20;
constexpr int64_t kMaxRecycledBytes = int64_t{256} << 20;
py::list* recycled = nullptr;  // created at import, deliberately never destroyed

bool is_free(py::handle a) { return Py_REFCNT(a.ptr()) == 1; }

py::array new_output(int64_t rows, int64_t cols, bool recycle) {
  if (cols > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(sizeof(float)) / rows) {
    throw py::value_error("an output of shape " + pair(rows, cols) + " is too large");
  }
  const int64_t bytes = rows * cols * static_cast<int64_t>(sizeof(float));
  if (!recycle || bytes < kMinRecycledBytes || bytes > kMaxRecycledBytes) {
    return py::array_t<float>({rows, cols});
  }
  for (py::handle item : *recycled) {
    if (!is_free(item)) continue;
    auto a = py::reinterpret_borrow<py::array>(item);
    if (a.shape(0) == rows && a.shape(1) == cols && a.writeable()) return a;
  }
  py::array_t<float> fresh({rows, cols});
  if (recycled->size() >= kMaxRecycled) {  // make room by dropping an unused array
    for (size_t i = 0; i < recycled->size(); ++i) {
      if (is_free((*recycled)[i])) {
        PyList_SetSlice(recycled->ptr(), static_cast<Py_ssize_t>(i), static_cast<Py_ssize_t>(i + 1),
                        nullptr);
        break;
      }
    }
  }
  if (recycled->size() < kMaxRecycled) recycled->append(fresh);
  return fresh;
}

// The caller's out buffer after checking it, or a (rows, cols) float32 array of our own.
py::array check_out(const py::handle& out, int64_t rows, int64_t cols, bool recycle) {
  if (out.is_none()) return new_output(rows, cols, recycle);
  if (!py::isinstance<py::array>(out)) {
    throw py::type_error("out must be a float32 numpy array (or a CPU torch tensor), got " +
                         type_name(out));
  }
  auto a = py::reinterpret_borrow<py::array>(out);
  if (!py::isinstance<py::array_t<float>>(a)) {
    throw py::type_error("out must have dtype float32, got " + dtype_of(a));
  }
  if (a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != cols) {
    throw py::value_error("out has shape " + shape_of(a) + ", expected " + pair(rows, cols));
  }
  if ((a.flags() & py::array::c_style) == 0) throw py::value_error("out must be C-contiguous");
  if (reinterpret_cast<uintptr_t>(a.data()) % alignof(float) != 0) {
    throw py::value_error("out must be aligned to 4 bytes");
  }
  if (!a.writeable()) throw py::value_error("out is read-only");
  return a;
}

// Same rule as numpy.may_share_memory: do the byte ranges that the arrays span intersect?
void check_no_overlap(const Waves& waves, const py::array& out) {
  const auto out_lo = reinterpret_cast<uintptr_t>(out.data());
  const auto out_hi = out_lo + static_cast<uintptr_t>(out.nbytes());
  for (size_t i = 0; i < waves.rows.size(); ++i) {
    const RowSpec& r = waves.rows[i];
    const auto first = reinterpret_cast<uintptr_t>(r.data);
    const auto last = reinterpret_cast<uintptr_t>(r.data + (r.n - 1) * r.stride);
    const auto lo = std::min(first, last);
    const auto hi = std::max(first, last) + static_cast<uintptr_t>(waves.arrays[i].itemsize());
    if (lo < out_hi && out_lo < hi) throw py::value_error(item(i) + "shares memory with out");
  }
}

void check_threads(int num_threads) {
  if (num_threads < 0) {
    throw py::value_error("num_threads must be >= 0, got " + std::to_string(num_threads));
  }
}

std::string describe(float v) {
  if (std::isnan(v)) return "nan";
  return v > 0 ? "inf" : "-inf";
}

// Runs the kernels without the GIL; raises for the first row holding a NaN or infinity.
void fill(const Waves& waves, py::array& out, int64_t row_len, bool normalize, int num_threads) {
  auto* dst = static_cast<float*>(out.mutable_data());
  int64_t bad;
  {
    py::gil_scoped_release release;
    bad = cpc_fast::fill_rows(waves.rows, dst, row_len, normalize, num_threads);
  }
  if (bad < 0) return;
  const RowSpec& r = waves.rows[static_cast<size_t>(bad)];
  const int64_t at = cpc_fast::first_non_finite(r);
  throw py::value_error(item(static_cast<size_t>(bad)) + "sample " + std::to_string(at) + " is " +
                        describe(cpc_fast::sample_at(r, at)) + " (waveforms must be finite)");
}

py::array lengths(const py::handle& waves) {
  const Waves checked = check_waves(check_batch(waves));
  py::array_t<int64_t> result(static_cast<py::ssize_t>(checked.rows.size()));
  auto view = result.mutable_unchecked<1>();
  for (size_t i = 0; i < checked.rows.size(); ++i)
    view(static_cast<py::ssize_t>(i)) = checked.rows[i].n;
  return result;
}

py::array repeat_pad(const py::handle& waves, int64_t length, const py::handle& offsets,
                     bool normalize, const py::handle& out, int num_threads) {
  check_threads(num_threads);
  const py::sequence batch = check_batch(waves);
  const size_t count = batch.size();
  if (length <= 0) throw py::value_error("length must be positive, got " + std::to_string(length));
  check_offsets(offsets, count);
  Waves checked = check_waves(batch);
  const auto offs = py::reinterpret_borrow<py::array>(offsets);
  for (size_t i = 0; i < count; ++i) {
    RowSpec& r = checked.rows[i];
    const int64_t off = offset_at(offs, i);
    const int64_t hi = std::max<int64_t>(r.n - length, 0);
    if (off < 0 || off > hi) {
      throw py::value_error(item(i) + "offset " + std::to_string(off) + " is out of range [0, " +
                            std::to_string(hi) + "] for " + std::to_string(r.n) +
                            " samples and length " + std::to_string(length));
    }
    if (r.n >= length) {
      r.offset = off;
      r.period = length;
    }
    r.valid = length;
  }
  py::array result = check_out(out, static_cast<int64_t>(count), length, true);
  check_no_overlap(checked, result);
  fill(checked, result, length, normalize, num_threads);
  return result;
}

py::tuple pad_collate(const py::handle& waves, int64_t multiple_of, bool normalize,
                      const py::handle& out, int num_threads) {
  check_threads(num_threads);
  const py::sequence batch = check_batch(waves);
  if (multiple_of <= 0) {
    throw py::value_error("multiple_of must be positive, got " + std::to_string(multiple_of));
  }
  Waves checked = check_waves(batch);
  int64_t longest = 0;
  for (const RowSpec& r : checked.rows) longest = std::max(longest, r.n);
  // < longest + multiple_of: cannot overflow
  const int64_t row_len =
      (longest / multiple_of + (longest % multiple_of != 0 ? 1 : 0)) * multiple_of;
  const auto count = static_cast<int64_t>(checked.rows.size());
  py::array result = check_out(out, count, row_len, false);
  check_no_overlap(checked, result);
  py::array_t<int64_t> lens(count);
  auto view = lens.mutable_unchecked<1>();
  for (int64_t i = 0; i < count; ++i) view(i) = checked.rows[static_cast<size_t>(i)].n;
  fill(checked, result, row_len, normalize, num_threads);
  return py::make_tuple(result, lens);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Native waveform batching for cpc-fast (use cpc_fast.data.batching, not this module).";
  m.attr("API_VERSION") = kApiVersion;
  m.attr("NORM_EPS") = cpc_fast::kNormEps;
  recycled = new py::list();

  m.def("lengths", &lengths, py::arg("waves"),
        "(B,) int64 sample counts of a list of 1-D float32/int16 arrays, after validating them.");
  m.def("repeat_pad", &repeat_pad, py::arg("waves"), py::arg("length"), py::arg("offsets"),
        py::arg("normalize") = false, py::arg("out") = py::none(), py::arg("num_threads") = 0,
        "waves -> (B, length) float32: w[off:off+length] when n >= length, else w repeated "
        "from the start (out[j] = w[j % n]). offsets: (B,) int64. Returns out, or an array "
        "that may reuse the memory of an earlier result nothing refers to any more.");
  m.def(
      "release_buffers", []() { recycled->attr("clear")(); },
      "Forgets the recycled output arrays (freeing those that nothing else refers to).");
  m.def("pad_collate", &pad_collate, py::arg("waves"), py::arg("multiple_of"),
        py::arg("normalize") = false, py::arg("out") = py::none(), py::arg("num_threads") = 0,
        "waves -> (batch (B, T) float32 zero-padded, lengths (B,) int64); T is the longest "
        "length rounded up to multiple_of.");
}
