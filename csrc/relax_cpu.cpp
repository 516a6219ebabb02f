// CPU row kernels: parallel over rows (at::parallel_for), vectorised within a row.
//
// Forward, per row: pass 1 the max, pass 2 one exp per element (two when the entropy temperature
// differs) giving the sum, the entropy moments and the unnormalised probabilities; the 1/sum
// scale is applied by the host to the (rows, D) GEMM output instead of the (rows, V) buffer. Backward, per row: one exp
// per element (p parked in a cache-resident row buffer), then the softmax-backward reduction,
// in place over gz when the GEMM could write it straight into the gradient.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "relax.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// AVX-512, AVX2/FMA and baseline clones of the float32 row loops, picked at load time.
#define ENTRGI_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ENTRGI_CLONES
#endif

namespace entrgi {
namespace {

// exp(x) for x <= 0 in float32 (Cephes polynomial, ~1 ulp), written so that it vectorises.
// Returns exactly 0 below -87 (and for -inf), where float32 exp underflows anyway, and NaN for NaN
// (the clamp is a select, false for NaN, so the integer conversion below never sees one; std::fmax
// would do the same but compiles to a call to fmaxf, which keeps the loops that inline this scalar).
__attribute__((always_inline)) inline float exp_nonpos(float x) {
  const float xc = x > -87.0f ? x : -87.0f;
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.0f ? 0.0f : (x == x ? y * scale : x);
}
inline double exp_nonpos(double x) { return std::exp(x); }

// Per-row statistics kept for backward: (m, log s) with m = max_v x_v and
// s = sum_v exp((x_v - m) / tau), so that p_v = exp((x_v - m) / tau - log s) is recomputed
// without cancellation even for huge logits. A row of all -inf, or with NaN / +inf, gives NaN
// statistics and so NaN outputs, as on CUDA: nothing throws here.
template <typename acc_t>
inline void store_stats(acc_t m, acc_t s, acc_t* stats) {
  stats[0] = m;
  stats[1] = std::log(s);
}

// Entropy gate from the moments of a = (x - m) / tau_h: H = log s - t / s, w = H / log V in [0, 1].
template <typename acc_t>
inline void store_weight(acc_t s, acc_t t, acc_t inv_log_v, float* weight) {
  const acc_t h = std::log(s) - t / s;
  *weight = static_cast<float>(std::min<acc_t>(std::max<acc_t>(h * inv_log_v, 0), 1));
}

// Sum s = sum_v exp(a_v) and t = sum_v exp(a_v) * a_v with a_v = (x_v - m) * inv; a_v = -inf adds 0.
template <typename acc_t>
__attribute__((always_inline)) inline void exp_moments(const acc_t* x, int64_t V, acc_t m, acc_t inv, acc_t& s, acc_t& t) {
  acc_t s_ = 0, t_ = 0;
#pragma omp simd reduction(+ : s_, t_)
  for (int64_t v = 0; v < V; ++v) {
    const acc_t a = (x[v] - m) * inv;
    const acc_t e = exp_nonpos(a);
    s_ += e;
    t_ += e > 0 ? e * a : acc_t(0);
  }
  s = s_;
  t = t_;
}

// Moments of one exp pass. Mode 0: s only. Mode 1: s and t at tau. Mode 2: s at tau, and the
// entropy moments (sh, th) at a second temperature tau_h in the same pass.
template <int kMode>
__attribute__((always_inline)) inline void row_pass_f32(const float* x, float* p, int64_t V, float m, float inv_tau,
                                                        float inv_tau_h, float& s, float& t, float& sh, float& th) {
  float s_ = 0, t_ = 0, sh_ = 0, th_ = 0;
#pragma omp simd reduction(+ : s_, t_, sh_, th_)
  for (int64_t v = 0; v < V; ++v) {
    const float d = x[v] - m;
    const float a = d * inv_tau;
    const float e = exp_nonpos(a);
    p[v] = e;
    s_ += e;
    if constexpr (kMode == 1) t_ += e > 0 ? e * a : 0.0f;
    if constexpr (kMode == 2) {
      const float ah = d * inv_tau_h;
      const float eh = exp_nonpos(ah);
      sh_ += eh;
      th_ += eh > 0 ? eh * ah : 0.0f;
    }
  }
  s = s_, t = t_, sh = sh_, th = th_;
}

// The float32 fast path: logits, probabilities and accumulation all float32. Writes the
// unnormalised p = exp(z - max z) and scale = 1/sum; the host scales the (rows, D) GEMM output.
ENTRGI_CLONES
void row_forward_f32(const float* x, float* p, int64_t V, float inv_tau, float inv_tau_h, bool want_entropy,
                     float inv_log_v, float* stats, float* scale, float* weight) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t v = 0; v < V; ++v) m = std::max(m, x[v]);
  float s, t, sh, th;
  if (!want_entropy) {
    row_pass_f32<0>(x, p, V, m, inv_tau, inv_tau_h, s, t, sh, th);
  } else if (inv_tau_h == inv_tau) {
    row_pass_f32<1>(x, p, V, m, inv_tau, inv_tau_h, s, t, sh, th);
    sh = s, th = t;
  } else {
    row_pass_f32<2>(x, p, V, m, inv_tau, inv_tau_h, s, t, sh, th);
  }
  store_stats<float>(m, s, stats);
  *scale = 1.0f / s;
  if (want_entropy) store_weight<float>(sh, th, inv_log_v, weight);
}

// grad holds gz = g @ table^T on entry (the GEMM wrote it there) and the logits gradient on exit;
// p is parked in `buf` (one row, cache-resident) so each element costs one exp.
ENTRGI_CLONES
void row_backward_f32(const float* x, float m, float log_s, float* grad, float* buf, int64_t V, float inv_tau) {
  float dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t v = 0; v < V; ++v) {
    const float pv = exp_nonpos((x[v] - m) * inv_tau - log_s);
    buf[v] = pv;
    dot += pv * grad[v];
  }
#pragma omp simd
  for (int64_t v = 0; v < V; ++v) grad[v] = buf[v] * (grad[v] - dot) * inv_tau;
}

// Generic path (float64, half and bfloat16 inputs or outputs): rows are first widened to acc_t.
template <typename scalar_t, typename p_t, typename acc_t>
void rows_forward_generic(const at::Tensor& x, at::Tensor& p, at::Tensor& stats, at::Tensor& scale, at::Tensor& weight,
                          acc_t inv_tau, acc_t inv_tau_h, bool want_entropy) {
  const int64_t R = x.size(0), V = x.size(1);
  const scalar_t* xd = x.data_ptr<scalar_t>();
  p_t* pd = p.data_ptr<p_t>();
  acc_t* st = stats.data_ptr<acc_t>();
  acc_t* sd = scale.data_ptr<acc_t>();
  float* wd = weight.data_ptr<float>();
  const acc_t inv_log_v = acc_t(1) / std::log(static_cast<acc_t>(V));
  at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xa(V);
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xr = xd + r * V;
      for (int64_t v = 0; v < V; ++v) xa[v] = static_cast<acc_t>(xr[v]);
      acc_t m = -std::numeric_limits<acc_t>::infinity();
      for (int64_t v = 0; v < V; ++v) m = std::max(m, xa[v]);
      acc_t s, t;
      exp_moments<acc_t>(xa.data(), V, m, inv_tau, s, t);
      store_stats<acc_t>(m, s, st + 2 * r);
      sd[r] = acc_t(1) / s;
      p_t* pr = pd + r * V;
      for (int64_t v = 0; v < V; ++v) pr[v] = static_cast<p_t>(exp_nonpos((xa[v] - m) * inv_tau));
      if (!want_entropy) continue;
      if (inv_tau_h != inv_tau) exp_moments<acc_t>(xa.data(), V, m, inv_tau_h, s, t);
      store_weight<acc_t>(s, t, inv_log_v, wd + r);
    }
  });
}

template <typename scalar_t, typename g_t, typename acc_t>
void rows_backward_generic(const at::Tensor& x, const at::Tensor& gz, const at::Tensor& stats, at::Tensor& grad,
                           acc_t inv_tau) {
  const int64_t R = x.size(0), V = x.size(1);
  const scalar_t* xd = x.data_ptr<scalar_t>();
  const g_t* gd = gz.data_ptr<g_t>();
  const acc_t* st = stats.data_ptr<acc_t>();
  scalar_t* od = grad.data_ptr<scalar_t>();
  at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> pa(V);
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xr = xd + r * V;
      const g_t* gr = gd + r * V;
      const acc_t m = st[2 * r], log_s = st[2 * r + 1];
      acc_t dot = 0;
      for (int64_t v = 0; v < V; ++v) {
        pa[v] = exp_nonpos((static_cast<acc_t>(xr[v]) - m) * inv_tau - log_s);
        dot += pa[v] * static_cast<acc_t>(gr[v]);
      }
      scalar_t* orow = od + r * V;
      for (int64_t v = 0; v < V; ++v)
        orow[v] = static_cast<scalar_t>(pa[v] * (static_cast<acc_t>(gr[v]) - dot) * inv_tau);
    }
  });
}

}  // namespace

void softmax_rows_forward_cpu(const at::Tensor& x, at::Tensor& p, at::Tensor& stats, at::Tensor& scale,
                              at::Tensor& weight, double inv_tau, double inv_tau_h, bool want_entropy) {
  const int64_t R = x.size(0), V = x.size(1);
  if (x.scalar_type() == at::kFloat && p.scalar_type() == at::kFloat) {
    const float* xd = x.data_ptr<float>();
    float* pd = p.data_ptr<float>();
    float* st = stats.data_ptr<float>();
    float* sd = scale.data_ptr<float>();
    float* wd = weight.data_ptr<float>();
    const float inv_log_v = 1.0f / std::log(static_cast<float>(V));
    at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        row_forward_f32(xd + r * V, pd + r * V, V, static_cast<float>(inv_tau), static_cast<float>(inv_tau_h),
                        want_entropy, inv_log_v, st + 2 * r, sd + r, wd + r);
    });
    return;
  }
  dispatch_two(x.scalar_type(), p.scalar_type(), [&](auto x_tag, auto p_tag) {
    using x_t = decltype(x_tag);
    using acc_t = std::conditional_t<std::is_same_v<x_t, double>, double, float>;
    rows_forward_generic<x_t, decltype(p_tag), acc_t>(x, p, stats, scale, weight, static_cast<acc_t>(inv_tau),
                                                      static_cast<acc_t>(inv_tau_h), want_entropy);
  });
}

void softmax_rows_backward_cpu(const at::Tensor& x, const at::Tensor& gz, const at::Tensor& stats, at::Tensor& grad,
                               double inv_tau) {
  const int64_t R = x.size(0), V = x.size(1);
  if (x.scalar_type() == at::kFloat && gz.scalar_type() == at::kFloat) {
    if (!gz.is_same(grad)) grad.copy_(gz);
    const float* xd = x.data_ptr<float>();
    const float* st = stats.data_ptr<float>();
    float* od = grad.data_ptr<float>();
    at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> buf(V);
      for (int64_t r = begin; r < end; ++r)
        row_backward_f32(xd + r * V, st[2 * r], st[2 * r + 1], od + r * V, buf.data(), V,
                         static_cast<float>(inv_tau));
    });
    return;
  }
  dispatch_two(x.scalar_type(), gz.scalar_type(), [&](auto x_tag, auto g_tag) {
    using x_t = decltype(x_tag);
    using acc_t = std::conditional_t<std::is_same_v<x_t, double>, double, float>;
    rows_backward_generic<x_t, decltype(g_tag), acc_t>(x, gz, stats, grad, static_cast<acc_t>(inv_tau));
  });
}

}  // namespace entrgi
