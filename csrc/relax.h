// Entropy-gated embedding relaxation: shared declarations.
//
// Notation (per row r of N, vocabulary V, embedding width D):
//   z = logits[r] / tau,  p = softmax(z)
//   soft = p @ table,  hard = table[hard_ids[r]]
//   w = H(softmax(logits[r] / tau_h)) / log V   (no gate weight given: EntRGi), else gate_weight[r]
//   embeds = soft + w * stopgrad(hard - soft)
// Backward, with g = dL/dembeds[r] and gz = g @ table^T (length V):
//   dL/dlogits[r] = (1/tau) * p * (gz - <p, gz>)
// Nothing of size N x V is kept between forward and backward: p is recomputed from the logits
// and two statistics per row. Non-finite logits give non-finite outputs on every device (NaN
// propagates; nothing is raised here): the Python layer checks values where it may synchronise.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <optional>
#include <tuple>

namespace entrgi {

// Row kernels. All tensors contiguous; x and grad are [R, V] in the logits dtype,
// p and gz are [R, V] in the GEMM dtype; stats is [R, 2] = (max_v x_v, log sum_v exp((x_v - max)/tau))
// and scale is [R], both in the accumulation dtype (float64 for float64 logits, float32 otherwise);
// weight is [R] float32.
// The forward writes the unnormalised p = exp(z - max z) and scale = 1 / sum(p): the host
// multiplies the (R, D) GEMM output by scale rather than the (R, V) buffer. The backward may be
// called with gz and grad the same tensor (in place).
using RowsForward = void (*)(const at::Tensor& x, at::Tensor& p, at::Tensor& stats, at::Tensor& scale,
                             at::Tensor& weight, double inv_tau, double inv_tau_h, bool want_entropy);
using RowsBackward = void (*)(const at::Tensor& x, const at::Tensor& gz, const at::Tensor& stats, at::Tensor& grad,
                              double inv_tau);

void softmax_rows_forward_cpu(const at::Tensor& x, at::Tensor& p, at::Tensor& stats, at::Tensor& scale,
                              at::Tensor& weight, double inv_tau, double inv_tau_h, bool want_entropy);
void softmax_rows_backward_cpu(const at::Tensor& x, const at::Tensor& gz, const at::Tensor& stats,
                               at::Tensor& grad, double inv_tau);

// Transient (rows, V) buffer per chunk when the caller passes chunk_rows <= 0: 2^23 elements on
// CPU (32 MiB in float32; GEMMs are already efficient there), 2^26 on GPU (large enough for
// cuBLAS to run at full rate), whatever V is.
constexpr int64_t kCpuChunkElements = int64_t(1) << 23;
constexpr int64_t kCudaChunkElements = int64_t(1) << 26;

// The host side both devices share (relax.cpp): shape checks, row chunking, the two GEMMs through
// ATen (cuBLAS on CUDA) and the gate mix, around the device's row kernels.
std::tuple<at::Tensor, at::Tensor, at::Tensor> relax_fwd_host(RowsForward rows_forward, int64_t chunk_elements,
                                                              const at::Tensor& logits, const at::Tensor& table,
                                                              const at::Tensor& hard_ids,
                                                              const std::optional<at::Tensor>& gate_weight,
                                                              double temperature, double entropy_temperature,
                                                              int64_t chunk_rows);
at::Tensor relax_bwd_host(RowsBackward rows_backward, int64_t chunk_elements, const at::Tensor& grad_embeds,
                          const at::Tensor& logits, const at::Tensor& table, const at::Tensor& stats,
                          double temperature, int64_t chunk_rows);

// The op on one device: the shared host body around that device's row kernels (registered for CPU in
// relax.cpp, for CUDA in cuda/relax_cuda.cu).
template <RowsForward rows_forward, int64_t chunk_elements>
std::tuple<at::Tensor, at::Tensor, at::Tensor> relax_fwd_on(const at::Tensor& logits, const at::Tensor& table,
                                                            const at::Tensor& hard_ids,
                                                            const std::optional<at::Tensor>& gate_weight,
                                                            double temperature, double entropy_temperature,
                                                            int64_t chunk_rows) {
  return relax_fwd_host(rows_forward, chunk_elements, logits, table, hard_ids, gate_weight, temperature,
                        entropy_temperature, chunk_rows);
}

template <RowsBackward rows_backward, int64_t chunk_elements>
at::Tensor relax_bwd_on(const at::Tensor& grad_embeds, const at::Tensor& logits, const at::Tensor& table,
                        const at::Tensor& stats, double temperature, int64_t chunk_rows) {
  return relax_bwd_host(rows_backward, chunk_elements, grad_embeds, logits, table, stats, temperature, chunk_rows);
}

// fn(x_tag, y_tag) with x_tag / y_tag value-initialised scalars of dtypes a and b (float, double,
// half or bfloat16): one place for the two-dtype dispatch of every row kernel.
template <typename F>
void dispatch_two(at::ScalarType a, at::ScalarType b, F&& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a, "entrgi_relax", [&] {
    using x_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b, "entrgi_relax", [&] { fn(x_t{}, scalar_t{}); });
  });
}

}  // namespace entrgi
