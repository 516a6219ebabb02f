// CUDA row kernels of the gated relaxation: one thread block per row.
//
// Forward: max, then sum / entropy moments (one exp per element), then the unnormalised
// p = exp(z - max z) written in the GEMM dtype with scale = 1 / sum (applied to the GEMM output).
// Backward: <p, gz>, then (1/tau) p (gz - <p, gz>) written in the logits dtype;
// gz and grad may be the same buffer (each element is read before it is written, by one thread).
// The two N x V x D products are cuBLAS GEMMs issued by the shared host code (relax.cpp); this file
// registers the CUDA versions of the ops. Non-finite logits propagate as NaN (as on the CPU).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <type_traits>

#include "../relax.h"

namespace entrgi {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }

struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

// Block-wide reduction; every thread gets the result. `shared` holds kWarps values.
template <typename T, typename Op>
__device__ T block_reduce(T val, Op op, T identity, T* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) val = op(val, __shfl_xor_sync(0xffffffffu, val, o));
  if (lane == 0) shared[warp] = val;
  __syncthreads();
  val = lane < kWarps ? shared[lane] : identity;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) val = op(val, __shfl_xor_sync(0xffffffffu, val, o));
  __syncthreads();  // shared may be reused by the next reduction
  return val;
}

template <typename x_t, typename p_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
rows_forward_kernel(const x_t* __restrict__ x, p_t* __restrict__ p, acc_t* __restrict__ stats,
                    acc_t* __restrict__ scale, float* __restrict__ weight, int64_t V, acc_t inv_tau, acc_t inv_tau_h,
                    bool want_entropy, acc_t inv_log_v) {
  __shared__ acc_t shared[kWarps];
  const int64_t row = blockIdx.x;
  const x_t* xr = x + row * V;
  p_t* pr = p + row * V;

  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t v = threadIdx.x; v < V; v += kThreads) m = max(m, static_cast<acc_t>(xr[v]));
  m = block_reduce(m, MaxOp(), -std::numeric_limits<acc_t>::infinity(), shared);

  const bool same = inv_tau_h == inv_tau;
  acc_t s = 0, t = 0, sh = 0, th = 0;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const acc_t d = static_cast<acc_t>(xr[v]) - m;
    const acc_t a = d * inv_tau;
    const acc_t e = dev_exp(a);
    s += e;
    if (want_entropy) {
      if (same) {
        t += e > 0 ? e * a : acc_t(0);
      } else {
        const acc_t ah = d * inv_tau_h;
        const acc_t eh = dev_exp(ah);
        sh += eh;
        th += eh > 0 ? eh * ah : acc_t(0);
      }
    }
  }
  s = block_reduce(s, SumOp(), acc_t(0), shared);
  if (want_entropy) {
    if (same) {
      t = block_reduce(t, SumOp(), acc_t(0), shared);
      sh = s;
      th = t;
    } else {
      sh = block_reduce(sh, SumOp(), acc_t(0), shared);
      th = block_reduce(th, SumOp(), acc_t(0), shared);
    }
  }
  for (int64_t v = threadIdx.x; v < V; v += kThreads)
    pr[v] = static_cast<p_t>(dev_exp((static_cast<acc_t>(xr[v]) - m) * inv_tau));
  if (threadIdx.x == 0) {
    stats[2 * row] = m;
    stats[2 * row + 1] = dev_log(s);
    scale[row] = acc_t(1) / s;
    if (want_entropy) {
      const acc_t h = dev_log(sh) - th / sh;
      const acc_t w = h * inv_log_v;
      weight[row] = static_cast<float>(w < 0 ? acc_t(0) : (w > 1 ? acc_t(1) : w));
    }
  }
}

template <typename x_t, typename g_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
rows_backward_kernel(const x_t* __restrict__ x, const g_t* gz, const acc_t* __restrict__ stats,
                     x_t* grad, int64_t V, acc_t inv_tau) {
  __shared__ acc_t shared[kWarps];
  const int64_t row = blockIdx.x;
  const x_t* xr = x + row * V;
  const g_t* gr = gz + row * V;
  x_t* orow = grad + row * V;
  const acc_t m = stats[2 * row], log_s = stats[2 * row + 1];
  acc_t dot = 0;
  for (int64_t v = threadIdx.x; v < V; v += kThreads)
    dot += dev_exp((static_cast<acc_t>(xr[v]) - m) * inv_tau - log_s) * static_cast<acc_t>(gr[v]);
  dot = block_reduce(dot, SumOp(), acc_t(0), shared);
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const acc_t pv = dev_exp((static_cast<acc_t>(xr[v]) - m) * inv_tau - log_s);
    orow[v] = static_cast<x_t>(pv * (static_cast<acc_t>(gr[v]) - dot) * inv_tau);
  }
}

// Launches launch(x_tag, y_tag, rows, V, stream) on x's device and current stream, dispatched on the
// dtypes of x and y: the common frame of every row kernel's launch.
template <typename F>
void on_rows(const at::Tensor& x, const at::Tensor& y, F&& launch) {
  if (x.size(0) == 0) return;
  const at::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_two(x.scalar_type(), y.scalar_type(), [&](auto x_tag, auto y_tag) {
    launch(x_tag, y_tag, x.size(0), x.size(1), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename x_t>
using acc_of = std::conditional_t<std::is_same_v<x_t, double>, double, float>;

void softmax_rows_forward_cuda(const at::Tensor& x, at::Tensor& p, at::Tensor& stats, at::Tensor& scale,
                               at::Tensor& weight, double inv_tau, double inv_tau_h, bool want_entropy) {
  on_rows(x, p, [&](auto x_tag, auto p_tag, int64_t R, int64_t V, cudaStream_t stream) {
    using x_t = decltype(x_tag);
    using p_t = decltype(p_tag);
    using acc_t = acc_of<x_t>;
    rows_forward_kernel<x_t, p_t, acc_t><<<R, kThreads, 0, stream>>>(
        x.data_ptr<x_t>(), p.data_ptr<p_t>(), stats.data_ptr<acc_t>(), scale.data_ptr<acc_t>(),
        weight.data_ptr<float>(), V, static_cast<acc_t>(inv_tau), static_cast<acc_t>(inv_tau_h), want_entropy,
        acc_t(1) / static_cast<acc_t>(std::log(static_cast<double>(V))));
  });
}

void softmax_rows_backward_cuda(const at::Tensor& x, const at::Tensor& gz, const at::Tensor& stats, at::Tensor& grad,
                                double inv_tau) {
  on_rows(x, gz, [&](auto x_tag, auto g_tag, int64_t R, int64_t V, cudaStream_t stream) {
    using x_t = decltype(x_tag);
    using acc_t = acc_of<x_t>;
    rows_backward_kernel<x_t, decltype(g_tag), acc_t><<<R, kThreads, 0, stream>>>(
        x.data_ptr<x_t>(), gz.data_ptr<decltype(g_tag)>(), stats.data_ptr<acc_t>(), grad.data_ptr<x_t>(), V,
        static_cast<acc_t>(inv_tau));
  });
}

}  // namespace
}  // namespace entrgi

TORCH_LIBRARY_IMPL(entrgi, CUDA, m) {
  m.impl("relax_fwd", &entrgi::relax_fwd_on<entrgi::softmax_rows_forward_cuda, entrgi::kCudaChunkElements>);
  m.impl("relax_bwd", &entrgi::relax_bwd_on<entrgi::softmax_rows_backward_cuda, entrgi::kCudaChunkElements>);
}
