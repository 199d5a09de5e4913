// The serial part of the masked LSTM recurrence on the CPU, forward and backward, as two ops
// (torch.ops.dropout_probe.lstm_fw / lstm_bw). The same function as kernels/reference.py's
// _forward_loop and _backward_loop (docs/recurrence.md), without Python between the steps:
// per step one product (oneDNN's packed linear when the caller packed the weight, else at::mm),
// the transcendental functions as ATen's vectorised kernels over the whole step, and every
// other elementwise operation fused into raw loops over the step's (B, H) elements.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// One mask: a pointer and its time stride (0 for a sequence mask (B, H), B*H for a step mask (T, B, H)).
template <typename T>
struct Mask {
  const T* p = nullptr;
  int64_t stride = 0;
  Mask(const OptTensor& m, int64_t BH) {
    if (m.has_value() && m->defined()) {
      p = m->data_ptr<T>();
      stride = m->dim() == 2 ? 0 : BH;
    }
  }
  bool on() const { return p != nullptr; }
  const T* at(int64_t t) const { return p + t * stride; }
};

// x @ w.T for x (M, K): oneDNN's linear on a weight packed by mkldnn::_reorder_linear_weight, else at::mm.
Tensor product(const Tensor& x, const Tensor& w_t, const OptTensor& packed) {
  if (packed.has_value() && packed->defined()) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                         .typed<Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                       c10::string_view, c10::List<std::optional<at::Scalar>>,
                                       std::optional<c10::string_view>)>();
    return op.call(x, *packed, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
  }
  return at::mm(x, w_t);
}

// Run f(b) for every batch row b; rows are split across threads only when a step is large enough
// for that to pay (splitting a few thousand multiply-adds costs more than it saves).
template <typename F>
void rows(int64_t B, int64_t row_work, F f) {
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(row_work, 1));
  at::parallel_for(0, B, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) f(b);
  });
}

// torch.lerp's formula, exact at both ends (a zoneout mask of ones keeps the old state bit for bit).
template <typename T>
inline T lerp(T start, T end, T w) {
  return std::abs(w) < T(0.5) ? start + w * (end - start) : end - (end - start) * (T(1) - w);
}

// A mask's row b at step t, or nullptr.
template <typename T>
inline const T* row_of(const Mask<T>& m, int64_t t, int64_t b, int64_t H) {
  return m.on() ? m.at(t) + b * H : nullptr;
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor> forward_impl(Tensor gates, const Tensor& h0, const Tensor& c0, const Tensor& w,
                                                const OptTensor& packed, const OptTensor& rec, const OptTensor& cu,
                                                const OptTensor& cell, const OptTensor& zh, const OptTensor& zc) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H4 = gates.size(2), H = H4 / 4, BH = B * H;
  auto hs = at::empty({T_, B, H}, gates.options());
  auto cs = at::empty({T_ + 1, B, H}, gates.options());
  auto tcs = at::empty({T_, B, H}, gates.options());
  cs[0].copy_(c0);
  const Tensor w_t = w.t();
  Mask<T> m_rec(rec, BH), m_cu(cu, BH), m_cell(cell, BH), m_zh(zh, BH), m_zc(zc, BH);
  auto hr = at::empty({B, H}, gates.options());
  Tensor h = h0.contiguous();
  T* G = gates.data_ptr<T>();
  T* HS = hs.data_ptr<T>();
  T* CS = cs.data_ptr<T>();
  T* TC = tcs.data_ptr<T>();
  for (int64_t t = 0; t < T_; ++t) {
    const T* hp = h.data_ptr<T>();
    Tensor h_in = h;
    if (m_rec.on()) {
      T* out = hr.data_ptr<T>();
      rows(B, H, [&](int64_t b) {
        const T* r = row_of(m_rec, t, b, H);
        for (int64_t j = 0; j < H; ++j) out[b * H + j] = hp[b * H + j] * r[j];
      });
      h_in = hr;
    }
    const Tensor y = product(h_in, w_t, packed).contiguous();
    const T* Y = y.data_ptr<T>();
    T* z = G + t * B * H4;
    // Pre-activations, the g block doubled so that one sigmoid activates all four gates
    // (tanh(x) = 2 sigmoid(2x) - 1).
    rows(B, H4, [&](int64_t b) {
      T* zr = z + b * H4;
      const T* yr = Y + b * H4;
      for (int64_t k = 0; k < 2 * H; ++k) zr[k] += yr[k];
      for (int64_t k = 2 * H; k < 3 * H; ++k) zr[k] = T(2) * (zr[k] + yr[k]);
      for (int64_t k = 3 * H; k < H4; ++k) zr[k] += yr[k];
    });
    Tensor z_t = gates[t];
    z_t.sigmoid_();
    const T* cp = CS + t * BH;
    T* cn = CS + (t + 1) * BH;
    T* tc = TC + t * BH;
    rows(B, H, [&](int64_t b) {
      T* zr = z + b * H4;
      const T *cu_r = row_of(m_cu, t, b, H), *cell_r = row_of(m_cell, t, b, H);
      for (int64_t j = 0; j < H; ++j) {
        const T g = zr[2 * H + j] * T(2) - T(1);
        zr[2 * H + j] = g;
        const T gm = cu_r ? g * cu_r[j] : g;
        T c = zr[H + j] * cp[b * H + j] + zr[j] * gm;
        if (cell_r) c *= cell_r[j];
        cn[b * H + j] = c;
      }
    });
    Tensor tc_t = tcs[t];
    at::tanh_out(tc_t, cs[t + 1]);
    T* hn = HS + t * BH;
    rows(B, H, [&](int64_t b) {
      const T* zr = z + b * H4;
      const T *zc_r = row_of(m_zc, t, b, H), *zh_r = row_of(m_zh, t, b, H);
      for (int64_t j = 0; j < H; ++j) {
        const int64_t k = b * H + j;
        T hv = zr[3 * H + j] * tc[k];
        if (zc_r) cn[k] = lerp(cn[k], cp[k], zc_r[j]);
        if (zh_r) hv = lerp(hv, hp[k], zh_r[j]);
        hn[k] = hv;
      }
    });
    h = hs[t];
  }
  return {hs, cs, tcs};
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor> backward_impl(const Tensor& d_hs_in, const Tensor& d_hT, const Tensor& d_cT,
                                                 const Tensor& w, const OptTensor& packed_t, const Tensor& gates,
                                                 const Tensor& cs, const Tensor& tcs, const OptTensor& rec,
                                                 const OptTensor& cu, const OptTensor& cell, const OptTensor& zh,
                                                 const OptTensor& zc) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H4 = gates.size(2), H = H4 / 4, BH = B * H;
  const Tensor d_hs = d_hs_in.contiguous();
  auto dZ = at::empty_like(gates);
  Tensor dh = (d_hT + d_hs[T_ - 1]).contiguous();
  auto dc = d_cT.contiguous().clone();
  Mask<T> m_rec(rec, BH), m_cu(cu, BH), m_cell(cell, BH), m_zh(zh, BH), m_zc(zc, BH);
  const T* G = gates.data_ptr<T>();
  const T* CS = cs.data_ptr<T>();
  const T* TC = tcs.data_ptr<T>();
  const T* DHS = d_hs.data_ptr<T>();
  T* DZ = dZ.data_ptr<T>();
  T* DC = dc.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const T* z = G + t * B * H4;
    const T* tc = TC + t * BH;
    const T* cp = CS + t * BH;
    T* dz = DZ + t * B * H4;
    const T* DH = dh.data_ptr<T>();
    rows(B, H4, [&](int64_t b) {
      const T* zr = z + b * H4;
      T* dr = dz + b * H4;
      const T *zh_r = row_of(m_zh, t, b, H), *zc_r = row_of(m_zc, t, b, H);
      const T *cell_r = row_of(m_cell, t, b, H), *cu_r = row_of(m_cu, t, b, H);
      for (int64_t j = 0; j < H; ++j) {
        const int64_t k = b * H + j;
        const T i = zr[j], f = zr[H + j], g = zr[2 * H + j], o = zr[3 * H + j], tk = tc[k];
        const T keep_h = zh_r ? T(1) - zh_r[j] : T(1);
        const T cellm = cell_r ? cell_r[j] : T(1);
        const T cum = cu_r ? cu_r[j] : T(1);
        const T A = (zc_r ? T(1) - zc_r[j] : T(1)) * cellm;
        const T dhk = DH[k];
        const T dcn = dhk * (o * (T(1) - tk * tk) * keep_h * cellm) + A * DC[k];
        dr[3 * H + j] = dhk * (tk * o * (T(1) - o) * keep_h);
        dr[j] = dcn * (g * cum) * (i * (T(1) - i));
        dr[H + j] = dcn * cp[k] * (f * (T(1) - f));
        dr[2 * H + j] = dcn * (i * (T(1) - g * g)) * cum;
        DC[k] = zc_r ? dcn * f + zc_r[j] * DC[k] : dcn * f;
      }
    });
    Tensor dh_prev = product(dZ[t], w, packed_t).contiguous();
    T* P = dh_prev.data_ptr<T>();
    const T* dnext = t > 0 ? DHS + (t - 1) * BH : nullptr;
    if (m_rec.on() || m_zh.on() || dnext) {
      rows(B, H, [&](int64_t b) {
        const T *rec_r = row_of(m_rec, t, b, H), *zh_r = row_of(m_zh, t, b, H);
        for (int64_t j = 0; j < H; ++j) {
          const int64_t k = b * H + j;
          T v = P[k];
          if (rec_r) v *= rec_r[j];
          if (zh_r) v += zh_r[j] * DH[k];
          if (dnext) v += dnext[k];
          P[k] = v;
        }
      });
    }
    dh = dh_prev;
  }
  return {dZ, dh, dc};
}

void check(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "dropout_probe lstm: ", name, " must be a contiguous CPU tensor");
}

void check_masks(std::initializer_list<const OptTensor*> masks, at::ScalarType dtype) {
  for (auto* m : masks) {
    if (m->has_value() && (*m)->defined()) {
      check(**m, "a mask");
      TORCH_CHECK((*m)->scalar_type() == dtype, "dropout_probe lstm: masks must have the gates' dtype");
    }
  }
}

std::tuple<Tensor, Tensor, Tensor> lstm_fw(Tensor gates, const Tensor& h0, const Tensor& c0, const Tensor& w,
                                           const OptTensor& packed, const OptTensor& rec, const OptTensor& cu,
                                           const OptTensor& cell, const OptTensor& zh, const OptTensor& zc) {
  check(gates, "gates");
  check_masks({&rec, &cu, &cell, &zh, &zc}, gates.scalar_type());
  at::NoGradGuard no_grad;
  return AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_fw", [&] {
    return forward_impl<scalar_t>(gates, h0, c0, w, packed, rec, cu, cell, zh, zc);
  });
}

std::tuple<Tensor, Tensor, Tensor> lstm_bw(const Tensor& d_hs, const Tensor& d_hT, const Tensor& d_cT,
                                           const Tensor& w, const OptTensor& packed_t, const Tensor& gates,
                                           const Tensor& cs, const Tensor& tcs, const OptTensor& rec,
                                           const OptTensor& cu, const OptTensor& cell, const OptTensor& zh,
                                           const OptTensor& zc) {
  check(gates, "gates");
  check(cs, "cs");
  check(tcs, "tcs");
  check_masks({&rec, &cu, &cell, &zh, &zc}, gates.scalar_type());
  at::NoGradGuard no_grad;
  return AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_bw", [&] {
    return backward_impl<scalar_t>(d_hs, d_hT, d_cT, w, packed_t, gates, cs, tcs, rec, cu, cell, zh, zc);
  });
}

}  // namespace

// Registered as catch-all kernels: the packed weight is an MkldnnCPU tensor, which would otherwise make the
// dispatcher look for an MkldnnCPU kernel. Autograd is the caller's (kernels/reference.py's Function).
TORCH_LIBRARY(dropout_probe, m) {
  m.def("lstm_fw(Tensor gates, Tensor h0, Tensor c0, Tensor w, Tensor? packed, Tensor? rec, Tensor? cu, "
        "Tensor? cell, Tensor? zh, Tensor? zc) -> (Tensor, Tensor, Tensor)",
        &lstm_fw);
  m.def("lstm_bw(Tensor d_hs, Tensor d_hT, Tensor d_cT, Tensor w, Tensor? packed_t, Tensor gates, Tensor cs, "
        "Tensor tcs, Tensor? rec, Tensor? cu, Tensor? cell, Tensor? zh, Tensor? zc) -> (Tensor, Tensor, Tensor)",
        &lstm_bw);
}
