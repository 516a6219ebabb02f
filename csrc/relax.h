// Entropy-gated embedding relaxation: shared declarations.
//
// Notation (per row r of N, vocabulary V, embedding width D):
//   z = logits[r] / tau,  p = softmax(z)
//   soft = p @ table,  hard = table[hard_ids[r]]
//   w = H(softmax(logits[r] / tau_h)) / log V   (gate "entropy"), 1 ("ste"), 0 ("soft")
//   embeds = soft + w * stopgrad(hard - soft)
// Backward, with g = dL/dembeds[r] and gz = g @ table^T (length V):
//   dL/dlogits[r] = (1/tau) * p * (gz - <p, gz>)
// Nothing of size N x V is kept between forward and backward: p is recomputed from the logits
// and two statistics per row.
#pragma once

#include <torch/types.h>

namespace entrgi {

// Row kernels. All tensors contiguous; x and grad are [R, V] in the logits dtype,
// p and gz are [R, V] in the GEMM dtype; stats is [R, 2] = (max_v x_v, log sum_v exp((x_v - max)/tau))
// and scale is [R], both in the accumulation dtype (float64 for float64 logits, float32 otherwise);
// weight is [R] float32.
// The forward writes the unnormalised p = exp(z - max z) and scale = 1 / sum(p): the host
// multiplies the (R, D) GEMM output by scale rather than the (R, V) buffer. The backward may be
// called with gz and grad the same tensor (in place).
void softmax_rows_forward_cpu(const at::Tensor& x, at::Tensor& p, at::Tensor& stats, at::Tensor& scale, at::Tensor& weight,
                              double inv_tau, double inv_tau_h, bool want_entropy);
void softmax_rows_backward_cpu(const at::Tensor& x, const at::Tensor& gz, const at::Tensor& stats,
                               at::Tensor& grad, double inv_tau);

#ifdef ENTRGI_WITH_CUDA
void softmax_rows_forward_cuda(const at::Tensor& x, at::Tensor& p, at::Tensor& stats, at::Tensor& scale, at::Tensor& weight,
                               double inv_tau, double inv_tau_h, bool want_entropy);
void softmax_rows_backward_cuda(const at::Tensor& x, const at::Tensor& gz, const at::Tensor& stats,
                                at::Tensor& grad, double inv_tau);
#endif

}  // namespace entrgi
