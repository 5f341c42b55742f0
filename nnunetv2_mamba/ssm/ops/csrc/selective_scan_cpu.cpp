// Fused selective scan for CPUs: one loop over time, vectorised across channels.
//
// The pure-PyTorch scan spends most of its time in one tiny op per time step and in passes over chunk buffers. Here
// softplus(delta + bias), exp(delta A), the state update, C h and the D skip are one loop over time. A task scans W
// channels of one group side by side (one 512-bit register of lanes): every state update, exp and y += C h is a
// lane-wise op with no horizontal reduction, the N states are N independent dependency chains, and input-dependent
// B_t / C_t (shared by a group's channels) are broadcast scalars.
//
// Layouts, prepared by selective_scan_cpu.py: u, delta, y and their gradients (batch, L, dim) with any batch and time
// strides and unit channel stride (SS2D's time-major rows need no copy); A (N, dim); constant
// B / C (N, dim) or input-dependent (batch, groups, L, N); D, delta_bias (dim) or empty; channel d is in group
// d / (dim / groups). The forward keeps the state every kChunk steps; the backward recomputes one chunk at a time
// from those, then runs the adjoint recurrence backwards over it.
#include <torch/extension.h>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kChunk = 64;

template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);  // 16 floats, 8 doubles

// 2^x for float32 as straight-line arithmetic the compiler vectorises and interleaves with the recurrence (no call
// per vector): x = k + r, |r| <= 1/2, 2^r by its degree-6 Taylor polynomial, times 2^k built from the exponent bits.
// Relative error <= 2.2e-7 (float32 rounding is 6e-8), measured against exp2 in double. exp(dt A) is taken as
// 2^(dt A log2(e)), like the pure-PyTorch scan. Double keeps std::exp2.
inline float exp2_lanes(float x) {
  x = std::min(std::max(x, -126.0f), 127.0f);
  const float k = std::nearbyint(x);
  const float r = x - k;
  float p = 1.5403530393381606e-4f;          // ln(2)^6 / 6!
  p = std::fma(p, r, 1.3333558146428443e-3f);  // ln(2)^5 / 5!
  p = std::fma(p, r, 9.6181291076284772e-3f);  // ln(2)^4 / 4!
  p = std::fma(p, r, 5.5504108664821580e-2f);  // ln(2)^3 / 3!
  p = std::fma(p, r, 0.24022650695910071f);    // ln(2)^2 / 2!
  p = std::fma(p, r, 0.69314718055994531f);
  p = std::fma(p, r, 1.0f);
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
inline double exp2_lanes(double x) { return std::exp2(x); }

constexpr double kLog2e = 1.4426950408889634;

// A (batch, L, dim) sequence with unit channel stride: the W lanes of step t start at at(b, t) + d0.
template <typename T>
struct Seq {
  T* p;
  int64_t batch_stride, time_stride;

  explicit Seq(const at::Tensor& x) : p(x.data_ptr<T>()), batch_stride(x.stride(0)), time_stride(x.stride(1)) {
    TORCH_CHECK(x.dim() == 3 && (x.size(2) == 1 || x.stride(2) == 1), "selective_scan_cpu: channel stride must be 1");
  }
  T* at(int64_t b, int64_t t) const { return p + b * batch_stride + t * time_stride; }
};

// One scan's tensors and sizes.
template <typename T>
struct Scan {
  Seq<T> u, delta;
  const T *A, *B, *C, *D, *bias;
  int64_t batch, length, dim, N, groups, K;
  bool softplus;

  Scan(const at::Tensor& u_, const at::Tensor& delta_, const at::Tensor& A_, const at::Tensor& B_,
       const at::Tensor& C_, const at::Tensor& D_, const at::Tensor& bias_, bool softplus_)
      : u(u_), delta(delta_), A(A_.data_ptr<T>()), B(B_.data_ptr<T>()),
        C(C_.data_ptr<T>()), D(D_.numel() ? D_.data_ptr<T>() : nullptr),
        bias(bias_.numel() ? bias_.data_ptr<T>() : nullptr), batch(u_.size(0)), length(u_.size(1)),
        dim(u_.size(2)), N(A_.size(0)), softplus(softplus_) {
    groups = B_.dim() == 4 ? B_.size(1) : (C_.dim() == 4 ? C_.size(1) : 1);
    K = dim / groups;
  }
  int64_t blocks_per_group() const { return (K + kLanes<T> - 1) / kLanes<T>; }
  int64_t chunks() const { return (length + kChunk - 1) / kChunk; }
};

// W lanes from channels [d0, d0 + n); missing lanes read as zero.
template <typename T>
inline void load(T* __restrict__ dst, const T* __restrict__ src, int64_t n) {
  if (n == kLanes<T>) {
    std::memcpy(dst, src, sizeof(T) * kLanes<T>);
  } else {
    std::fill(dst, dst + kLanes<T>, T(0));
    std::copy(src, src + n, dst);
  }
}

template <typename T>
inline void store(T* __restrict__ dst, const T* __restrict__ src, int64_t n) {
  if (n == kLanes<T>) {
    std::memcpy(dst, src, sizeof(T) * kLanes<T>);
  } else {
    std::copy(src, src + n, dst);
  }
}

// The channels of one task: W channels of one group (fewer in a group's last block), their parameters as lanes.
// BV / CV: B / C input-dependent (a broadcast scalar per state and step) rather than constant per channel.
template <typename T, bool BV, bool CV>
struct Block {
  static constexpr int64_t W = kLanes<T>;
  const Scan<T>& s;
  int64_t b, g, d0, n;
  std::vector<T> A, A2, Bc, Cc, D, bias;  // A2 = A log2(e)

  Block(const Scan<T>& s_, int64_t b_, int64_t g_, int64_t blk)
      : s(s_), b(b_), g(g_), d0(g_ * s_.K + blk * W), n(std::min(W, s_.K - blk * W)),
        A(rows(s_.A)), A2(A), Bc(BV ? std::vector<T>() : rows(s_.B)), Cc(CV ? std::vector<T>() : rows(s_.C)),
        D(W, T(0)), bias(W, T(0)) {
    for (T& a : A2) a *= T(kLog2e);
    if (s.D) load(D.data(), s.D + d0, n);
    if (s.bias) load(bias.data(), s.bias + d0, n);
  }

  std::vector<T> rows(const T* M) const {  // (N, dim) -> N x W lanes
    std::vector<T> out(s.N * W);
    for (int64_t k = 0; k < s.N; ++k) load(out.data() + k * W, M + k * s.dim + d0, n);
    return out;
  }
  T* at(const Seq<T>& x, int64_t t) const { return x.at(b, t) + d0; }
  const T* var_row(const T* M, int64_t t) const { return M + ((b * s.groups + g) * s.length + t) * s.N; }

  // x = delta + bias and dt = softplus(x) (threshold 20, as torch) or x, for step t.
  inline void step_dt(int64_t t, T* __restrict__ u, T* __restrict__ x, T* __restrict__ dt) const {
    load(u, at(s.u, t), n);
    load(x, at(s.delta, t), n);
    const T* __restrict__ bi = bias.data();
#pragma omp simd
    for (int64_t w = 0; w < W; ++w) {
      x[w] += bi[w];
      dt[w] = s.softplus ? (x[w] > T(20) ? x[w] : std::log1p(std::exp(std::min(x[w], T(20))))) : x[w];
    }
  }

  // One step: h <- exp(dt A) h + dt u B, then either y = C h + D u (the forward) or, with RECOMPUTE (the
  // backward, which needs the states and decays but not y), the decays exp(dt A) into dA.
  template <bool RECOMPUTE>
  inline void step(int64_t t, T* __restrict__ h, T* __restrict__ y, T* __restrict__ dA) const {
    alignas(64) T u[W], x[W], dt[W], du[W];
    step_dt(t, u, x, dt);
    const T* __restrict__ dd = D.data();
#pragma omp simd
    for (int64_t w = 0; w < W; ++w) {
      du[w] = dt[w] * u[w];
      if (!RECOMPUTE) y[w] = dd[w] * u[w];
    }
    const T* bt = BV ? var_row(s.B, t) : nullptr;
    const T* ct = CV ? var_row(s.C, t) : nullptr;
    for (int64_t k = 0; k < s.N; ++k) {
      const T* __restrict__ a2 = A2.data() + k * W;
      const T* __restrict__ bk = BV ? nullptr : Bc.data() + k * W;
      const T* __restrict__ ck = CV ? nullptr : Cc.data() + k * W;
      const T bs = BV ? bt[k] : T(0), cs = CV ? ct[k] : T(0);
      T* __restrict__ hk = h + k * W;
      T* __restrict__ dAk = RECOMPUTE ? dA + k * W : nullptr;
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) {
        const T decay = exp2_lanes(dt[w] * a2[w]);
        hk[w] = decay * hk[w] + du[w] * (BV ? bs : bk[w]);
        if (RECOMPUTE) {
          dAk[w] = decay;
        } else {
          y[w] += (CV ? cs : ck[w]) * hk[w];
        }
      }
    }
  }
};

template <typename T, bool BV, bool CV>
void forward_impl(const Scan<T>& s, const Seq<T>& y_out, T* last, T* ckpt) {
  constexpr int64_t W = kLanes<T>;
  const int64_t nb = s.blocks_per_group(), chunks = s.chunks();
  at::parallel_for(0, s.batch * s.groups * nb, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> h(s.N * W);
    alignas(64) T y[W];
    for (int64_t task = begin; task < end; ++task) {
      const Block<T, BV, CV> blk(s, task / (s.groups * nb), task / nb % s.groups, task % nb);
      std::fill(h.begin(), h.end(), T(0));
      for (int64_t t = 0; t < s.length; ++t) {
        if (ckpt && t % kChunk == 0) {
          for (int64_t k = 0; k < s.N; ++k)
            store(ckpt + ((blk.b * chunks + t / kChunk) * s.N + k) * s.dim + blk.d0, h.data() + k * W, blk.n);
        }
        blk.template step<false>(t, h.data(), y, nullptr);
        store(blk.at(y_out, t), y, blk.n);
      }
      for (int64_t w = 0; w < blk.n; ++w)
        for (int64_t k = 0; k < s.N; ++k) last[(blk.b * s.dim + blk.d0 + w) * s.N + k] = h[k * W + w];
    }
  });
}

// Gradients. A task is (batch, group, range of the group's channel blocks). Input-dependent B and C are shared by a
// group's channels, so each task adds its dB / dC into partial rows of its own (summed over ranges in Python); A,
// constant B / C, D and delta_bias get per-(batch, channel) rows, summed over the batch in Python.
template <typename T, bool BV, bool CV>
void backward_impl(const Scan<T>& s, const T* ckpt, const Seq<T>& grad_y, int64_t ranges, const Seq<T>& d_u,
                   const Seq<T>& d_delta, T* d_A, T* d_B, T* d_C, T* d_D, T* d_bias) {
  constexpr int64_t W = kLanes<T>;
  const int64_t nb = s.blocks_per_group(), chunks = s.chunks(), N = s.N, NW = s.N * W;
  at::parallel_for(0, s.batch * s.groups * ranges, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> hs((kChunk + 1) * NW), dAs(kChunk * NW), g(NW), gA(NW), gB(NW), gC(NW);
    alignas(64) T y[W], u[W], x[W], dt[W], gy[W], d_du[W], d_dt[W], gD[W], gbias[W];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (s.groups * ranges), grp = task / ranges % s.groups, range = task % ranges;
      T* part_B = BV ? d_B + task * s.length * N : nullptr;
      T* part_C = CV ? d_C + task * s.length * N : nullptr;
      for (int64_t bi = range * nb / ranges; bi < (range + 1) * nb / ranges; ++bi) {
        const Block<T, BV, CV> blk(s, b, grp, bi);
        for (auto* v : {&g, &gA, &gB, &gC}) std::fill(v->begin(), v->end(), T(0));
        std::fill(gD, gD + W, T(0));
        std::fill(gbias, gbias + W, T(0));
        for (int64_t c = chunks - 1; c >= 0; --c) {
          const int64_t t0 = c * kChunk, t1 = std::min(s.length, t0 + kChunk);
          // the chunk's states again: hs[i] before step t0 + i, hs[i + 1] after it
          for (int64_t k = 0; k < N; ++k) load(hs.data() + k * W, ckpt + ((b * chunks + c) * N + k) * s.dim + blk.d0, blk.n);
          for (int64_t t = t0; t < t1; ++t) {
            T* h = hs.data() + (t - t0 + 1) * NW;
            std::copy(h - NW, h, h);
            blk.template step<true>(t, h, nullptr, dAs.data() + (t - t0) * NW);
          }
          for (int64_t t = t1 - 1; t >= t0; --t) {
            blk.step_dt(t, u, x, dt);
            load(gy, blk.at(grad_y, t), blk.n);
            std::fill(d_du, d_du + W, T(0));
            std::fill(d_dt, d_dt + W, T(0));
            const T* bt = BV ? blk.var_row(s.B, t) : nullptr;
            const T* ct = CV ? blk.var_row(s.C, t) : nullptr;
            for (int64_t k = 0; k < N; ++k) {
              const int64_t o = k * W;
              const T* __restrict__ a = blk.A.data() + o;
              const T* __restrict__ bk = BV ? nullptr : blk.Bc.data() + o;
              const T* __restrict__ ck = CV ? nullptr : blk.Cc.data() + o;
              const T* __restrict__ hb = hs.data() + (t - t0) * NW + o;
              const T* __restrict__ ha = hb + NW;
              const T* __restrict__ dA = dAs.data() + (t - t0) * NW + o;
              T* __restrict__ gk = g.data() + o;
              T* __restrict__ gAk = gA.data() + o;
              T* __restrict__ gBk = gB.data() + o;
              T* __restrict__ gCk = gC.data() + o;
              const T bs = BV ? bt[k] : T(0), cs = CV ? ct[k] : T(0);
              T sum_b = 0, sum_c = 0;
#pragma omp simd reduction(+ : sum_b, sum_c)
              for (int64_t w = 0; w < W; ++w) {
                const T gn = gk[w] + (CV ? cs : ck[w]) * gy[w];  // dL/dh_t
                const T gc = gy[w] * ha[w], gb = gn * dt[w] * u[w];
                if (CV) sum_c += gc; else gCk[w] += gc;
                if (BV) sum_b += gb; else gBk[w] += gb;
                d_du[w] += gn * (BV ? bs : bk[w]);
                const T q = gn * hb[w] * dA[w];  // dL/d(dt A)
                d_dt[w] += q * a[w];
                gAk[w] += q * dt[w];
                gk[w] = gn * dA[w];  // carried to t - 1
              }
              if (BV) part_B[t * N + k] += sum_b;
              if (CV) part_C[t * N + k] += sum_c;
            }
            const T* __restrict__ dd = blk.D.data();
#pragma omp simd
            for (int64_t w = 0; w < W; ++w) {
              d_dt[w] += d_du[w] * u[w];
              y[w] = d_du[w] * dt[w] + gy[w] * dd[w];  // d_u
              gD[w] += gy[w] * u[w];
              if (s.softplus) d_dt[w] *= T(1) / (T(1) + std::exp(-x[w]));
              gbias[w] += d_dt[w];
            }
            store(blk.at(d_u, t), y, blk.n);
            store(blk.at(d_delta, t), d_dt, blk.n);
          }
        }
        for (int64_t k = 0; k < N; ++k) {
          const int64_t o = (b * N + k) * s.dim + blk.d0;
          store(d_A + o, gA.data() + k * W, blk.n);
          if (!BV) store(d_B + o, gB.data() + k * W, blk.n);
          if (!CV) store(d_C + o, gC.data() + k * W, blk.n);
        }
        store(d_D + b * s.dim + blk.d0, gD, blk.n);
        store(d_bias + b * s.dim + blk.d0, gbias, blk.n);
      }
    }
  });
}

// Calls f(BV, CV) with the compile-time flags of B and C being input-dependent.
template <typename F>
void with_layouts(const at::Tensor& B, const at::Tensor& C, F&& f) {
  using Y = std::true_type;
  using N = std::false_type;
  if (B.dim() == 4) {
    if (C.dim() == 4) f(Y{}, Y{}); else f(Y{}, N{});
  } else {
    if (C.dim() == 4) f(N{}, Y{}); else f(N{}, N{});
  }
}

// Returns y (batch, L, dim; strided like u), the last state (batch, dim, N) and the chunk-start states for the backward
// (batch, chunks, N, dim; empty when keep_states is false).
std::vector<at::Tensor> forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                const at::Tensor& bias, bool softplus, bool keep_states) {
  const int64_t batch = u.size(0), L = u.size(1), dim = u.size(2), N = A.size(0);
  at::Tensor y = at::empty_like(u);
  at::Tensor last = at::empty({batch, dim, N}, u.options());
  at::Tensor ckpt = at::empty({keep_states ? batch : 0, (L + kChunk - 1) / kChunk, N, dim}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_forward", [&] {
    const Scan<scalar_t> s(u, delta, A, B, C, D, bias, softplus);
    with_layouts(B, C, [&](auto bv, auto cv) {
      forward_impl<scalar_t, decltype(bv)::value, decltype(cv)::value>(
          s, Seq<scalar_t>(y), last.data_ptr<scalar_t>(), keep_states ? ckpt.data_ptr<scalar_t>() : nullptr);
    });
  });
  return {y, last, ckpt};
}

// Returns d_u, d_delta (batch, L, dim; strided like u), d_A (batch, N, dim), d_B and d_C (batch, N, dim) when constant or partials
// (batch, groups, ranges, L, N) when input-dependent, d_D and d_bias (batch, dim); Python reduces them.
std::vector<at::Tensor> backward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                 const at::Tensor& bias, bool softplus, const at::Tensor& ckpt,
                                 const at::Tensor& grad_y) {
  const int64_t batch = u.size(0), L = u.size(1), dim = u.size(2), N = A.size(0);
  const int64_t groups = B.dim() == 4 ? B.size(1) : (C.dim() == 4 ? C.size(1) : 1), K = dim / groups;
  // enough (batch, group, channel range) tasks for every thread, each adding its own dB / dC partial rows
  const int64_t ranges = std::max<int64_t>(
      1, std::min((K + 15) / 16, (4 * at::get_num_threads() + batch * groups - 1) / (batch * groups)));
  const auto rows_of = [&](const at::Tensor& M) {
    return M.dim() == 2 ? at::empty({batch, N, dim}, u.options())
                        : at::zeros({batch, M.size(1), ranges, L, N}, u.options());
  };
  at::Tensor d_u = at::empty_like(u), d_delta = at::empty_like(u), d_A = at::empty({batch, N, dim}, u.options());
  at::Tensor d_B = rows_of(B), d_C = rows_of(C);
  at::Tensor d_D = at::empty({batch, dim}, u.options()), d_bias = at::empty({batch, dim}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_backward", [&] {
    const Scan<scalar_t> s(u, delta, A, B, C, D, bias, softplus);
    with_layouts(B, C, [&](auto bv, auto cv) {
      backward_impl<scalar_t, decltype(bv)::value, decltype(cv)::value>(
          s, ckpt.data_ptr<scalar_t>(), Seq<scalar_t>(grad_y), ranges, Seq<scalar_t>(d_u), Seq<scalar_t>(d_delta),
          d_A.data_ptr<scalar_t>(), d_B.data_ptr<scalar_t>(),
          d_C.data_ptr<scalar_t>(), d_D.data_ptr<scalar_t>(), d_bias.data_ptr<scalar_t>());
    });
  });
  return {d_u, d_delta, d_A, d_B, d_C, d_D, d_bias};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused selective scan, forward");
  m.def("backward", &backward, "fused selective scan, backward");
}
