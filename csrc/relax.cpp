// Host side of the gated relaxation: the op schema, the CPU registration, shape checks, row
// chunking, GEMMs through ATen (cuBLAS on CUDA) and the final gate mix. Row kernels live in
// relax_cpu.cpp and cuda/relax_cuda.cu (which registers the CUDA versions of the ops).
#include <Python.h>
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "relax.h"

namespace entrgi {
namespace {

int64_t resolve_chunk_rows(int64_t chunk_rows, int64_t chunk_elements, int64_t n, int64_t v) {
  int64_t rows = chunk_rows > 0 ? chunk_rows : std::max<int64_t>(1, chunk_elements / v);
  return std::max<int64_t>(1, std::min(rows, std::max<int64_t>(n, 1)));
}

at::ScalarType acc_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// GEMM dtype: the table's. A float64 table (gradcheck) gives float64 GEMMs; low-precision tables
// give low-precision GEMMs with the library's float32 accumulation, as plain PyTorch would.
at::ScalarType gemm_dtype(const at::Tensor& table) { return table.scalar_type(); }

void check_floating(const at::Tensor& t, const char* name) {
  auto s = t.scalar_type();
  TORCH_CHECK_VALUE(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16,
                    "entrgi.relax: ", name, " must be float32, float64, float16 or bfloat16, got ", s);
}

void check_common(const at::Tensor& logits, const at::Tensor& table, double temperature) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "entrgi.relax: logits must be [N, V], got shape ", logits.sizes());
  TORCH_CHECK_VALUE(table.dim() == 2, "entrgi.relax: table must be [V, D], got shape ", table.sizes());
  TORCH_CHECK_VALUE(logits.size(1) == table.size(0), "entrgi.relax: logits have V=", logits.size(1),
                    " columns but the table has ", table.size(0), " rows");
  TORCH_CHECK_VALUE(logits.size(1) >= 2, "entrgi.relax: the vocabulary needs V >= 2, got V=", logits.size(1));
  TORCH_CHECK_VALUE(logits.device() == table.device(), "entrgi.relax: logits on ", logits.device(),
                    " but table on ", table.device());
  check_floating(logits, "logits");
  check_floating(table, "table");
  TORCH_CHECK_VALUE(temperature > 0 && std::isfinite(temperature),
                    "entrgi.relax: temperature must be > 0, got ", temperature);
}

// Every argument of the forward, before any compute.
void check_forward(const at::Tensor& logits, const at::Tensor& table, const at::Tensor& hard_ids,
                   const std::optional<at::Tensor>& gate_weight, double temperature, double entropy_temperature) {
  check_common(logits, table, temperature);
  const int64_t n = logits.size(0);
  TORCH_CHECK_VALUE(hard_ids.dim() == 1 && hard_ids.size(0) == n, "entrgi.relax: hard_ids must be [N] with N=", n,
                    ", got shape ", hard_ids.sizes());
  TORCH_CHECK_VALUE(hard_ids.scalar_type() == at::kLong, "entrgi.relax: hard_ids must be int64, got ",
                    hard_ids.scalar_type());
  TORCH_CHECK_VALUE(hard_ids.device() == logits.device(), "entrgi.relax: hard_ids on ", hard_ids.device(),
                    " but logits on ", logits.device());
  if (gate_weight.has_value()) {
    const at::Tensor& gw = *gate_weight;
    TORCH_CHECK_VALUE(gw.dim() == 1 && gw.size(0) == n, "entrgi.relax: gate_weight must be [N] with N=", n,
                      ", got shape ", gw.sizes());
    TORCH_CHECK_VALUE(gw.device() == logits.device(), "entrgi.relax: gate_weight on ", gw.device(),
                      " but logits on ", logits.device());
    check_floating(gw, "gate_weight");
  } else {
    TORCH_CHECK_VALUE(entropy_temperature > 0 && std::isfinite(entropy_temperature),
                      "entrgi.relax: entropy_temperature must be > 0, got ", entropy_temperature);
  }
}

}  // namespace

// Returns (embeds [N, D] in table dtype, weight [N] float32, stats [N, 2] accumulation dtype).
// gate_weight [N] (any float dtype) is w itself; without it w is the normalised entropy.
std::tuple<at::Tensor, at::Tensor, at::Tensor> relax_fwd_host(RowsForward rows_forward, int64_t chunk_elements,
                                                              const at::Tensor& logits_in, const at::Tensor& table_in,
                                                              const at::Tensor& hard_ids,
                                                              const std::optional<at::Tensor>& gate_weight,
                                                              double temperature, double entropy_temperature,
                                                              int64_t chunk_rows) {
  check_forward(logits_in, table_in, hard_ids, gate_weight, temperature, entropy_temperature);
  const bool want_entropy = !gate_weight.has_value();
  c10::DeviceGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor table = table_in.contiguous();
  const int64_t n = logits.size(0), v = logits.size(1), d = table.size(1);
  const auto opts = logits.options();

  at::Tensor soft = at::empty({n, d}, opts.dtype(gemm_dtype(table)));
  at::Tensor stats = at::empty({n, 2}, opts.dtype(acc_dtype(logits)));  // (row max, log sum) for backward
  at::Tensor weight = at::empty({n}, opts.dtype(at::kFloat));          // w: the row kernels' entropy, or given
  if (!want_entropy) weight.copy_(*gate_weight);
  at::Tensor scale = at::empty({n}, opts.dtype(acc_dtype(logits)));    // 1 / sum_v exp(z - max z)
  if (n > 0) {
    const int64_t rows = resolve_chunk_rows(chunk_rows, chunk_elements, n, v);
    at::Tensor p_buf = at::empty({rows, v}, opts.dtype(gemm_dtype(table)));
    for (int64_t r0 = 0; r0 < n; r0 += rows) {
      const int64_t r = std::min(rows, n - r0);
      at::Tensor p = p_buf.narrow(0, 0, r);
      at::Tensor stats_c = stats.narrow(0, r0, r);
      at::Tensor scale_c = scale.narrow(0, r0, r);
      at::Tensor w_c = weight.narrow(0, r0, r);                         // written only for the entropy gate
      rows_forward(logits.narrow(0, r0, r), p, stats_c, scale_c, w_c, 1.0 / temperature,
                   want_entropy ? 1.0 / entropy_temperature : 0.0, want_entropy);
      at::Tensor soft_c = soft.narrow(0, r0, r);
      at::mm_out(soft_c, p, table);  // (r, V) @ (V, D) -> (r, D), unnormalised
    }
  }
  // soft = scale * (unnormalised GEMM); embeds = soft + w * (hard - soft), mixed in float32/64.
  const auto mix = table.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor soft_m = soft.to(mix).mul_(scale.to(mix).unsqueeze(1));
  at::Tensor hard = table.index_select(0, hard_ids).to(mix);               // (N, D)
  at::Tensor embeds = soft_m.add_(hard.sub_(soft_m).mul_(weight.to(mix).unsqueeze(1)));
  return {embeds.to(table.scalar_type()), weight, stats};
}

// grad_logits [N, V] in the logits dtype.
at::Tensor relax_bwd_host(RowsBackward rows_backward, int64_t chunk_elements, const at::Tensor& grad_embeds,
                          const at::Tensor& logits_in, const at::Tensor& table_in, const at::Tensor& stats,
                          double temperature, int64_t chunk_rows) {
  check_common(logits_in, table_in, temperature);
  const int64_t n = logits_in.size(0), v = logits_in.size(1), d = table_in.size(1);
  TORCH_CHECK_VALUE(grad_embeds.dim() == 2 && grad_embeds.size(0) == n && grad_embeds.size(1) == d,
                    "entrgi.relax: grad must be [N, D] = [", n, ", ", d, "], got ", grad_embeds.sizes());
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(0) == n && stats.size(1) == 2 &&
                        stats.scalar_type() == acc_dtype(logits_in),
                    "entrgi.relax: stats must be the [N, 2] statistics returned by relax_fwd");
  c10::DeviceGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor table = table_in.contiguous();
  const at::Tensor g = grad_embeds.to(gemm_dtype(table)).contiguous();
  const at::Tensor stats_c = stats.contiguous();
  at::Tensor grad = at::empty_like(logits);
  if (n == 0) return grad;
  // When the GEMM and the gradient share a dtype, the GEMM writes gz straight into the gradient
  // and the row kernel works in place: no (rows, V) buffer at all, so one chunk (one large GEMM)
  // unless the caller asked for chunks.
  const bool in_place = gemm_dtype(table) == logits.scalar_type();
  const int64_t rows = in_place && chunk_rows <= 0 ? n : resolve_chunk_rows(chunk_rows, chunk_elements, n, v);
  at::Tensor gz_buf = in_place ? at::Tensor() : at::empty({rows, v}, logits.options().dtype(gemm_dtype(table)));
  const at::Tensor table_t = table.t();
  for (int64_t r0 = 0; r0 < n; r0 += rows) {
    const int64_t r = std::min(rows, n - r0);
    at::Tensor grad_c = grad.narrow(0, r0, r);
    at::Tensor gz = in_place ? grad_c : gz_buf.narrow(0, 0, r);
    at::mm_out(gz, g.narrow(0, r0, r), table_t);  // (r, D) @ (D, V) -> (r, V)
    rows_backward(logits.narrow(0, r0, r), gz, stats_c.narrow(0, r0, r), grad_c, 1.0 / temperature);
  }
  return grad;
}

namespace {

#ifndef ENTRGI_VERSION
#define ENTRGI_VERSION "unknown"
#endif
#ifndef ENTRGI_CUDA_ARCHS
#define ENTRGI_CUDA_ARCHS ""
#endif

// Build facts for entrgi_core.ops.build_info(), as JSON.
std::string build_info() {
#ifdef ENTRGI_WITH_CUDA
  const char* cuda = "true";
#else
  const char* cuda = "false";
#endif
  return std::string("{\"version\": \"") + ENTRGI_VERSION + "\", \"cuda\": " + cuda + ", \"cuda_archs\": \"" +
         ENTRGI_CUDA_ARCHS + "\", \"torch\": \"" + TORCH_VERSION + "\"}";
}

}  // namespace
}  // namespace entrgi

TORCH_LIBRARY(entrgi, m) {
  m.def(
      "relax_fwd(Tensor logits, Tensor table, Tensor hard_ids, Tensor? gate_weight, float temperature, "
      "float entropy_temperature, int chunk_rows) -> (Tensor, Tensor, Tensor)");
  m.def(
      "relax_bwd(Tensor grad_embeds, Tensor logits, Tensor table, Tensor stats, float temperature, "
      "int chunk_rows) -> Tensor");
  m.def("build_info() -> str", &entrgi::build_info);
}

TORCH_LIBRARY_IMPL(entrgi, CPU, m) {
  m.impl("relax_fwd", &entrgi::relax_fwd_on<entrgi::softmax_rows_forward_cpu, entrgi::kCpuChunkElements>);
  m.impl("relax_bwd", &entrgi::relax_bwd_on<entrgi::softmax_rows_backward_cpu, entrgi::kCpuChunkElements>);
}

// An empty Python module: importing entrgi_core._C loads this library, whose static initialisers
// above register the ops with the dispatcher. No pybind11 is involved.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "entrgi's compiled ops (torch.ops.entrgi)", -1,
                                      nullptr};
  return PyModule_Create(&module);
}
