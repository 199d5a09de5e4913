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
#include <vector>

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// One mask as rows: row(t, b) is its H values for batch row b at step t. An absent mask reads a row of
// its neutral value (1 for dropout masks, 0 for zoneout), so the inner loops have no branches and
// vectorise; ``on`` says whether it is present (to skip whole passes where that pays).
template <typename T>
struct Mask {
  const T* p;
  int64_t t_stride = 0, b_stride = 0;
  bool on = false;
  std::vector<T> neutral;
  Mask(const OptTensor& m, int64_t B, int64_t H, T fill) {
    if (m.has_value() && m->defined()) {
      p = m->data_ptr<T>();
      t_stride = m->dim() == 2 ? 0 : B * H;
      b_stride = H;
      on = true;
    } else {
      neutral.assign(H, fill);
      p = neutral.data();
    }
  }
  const T* row(int64_t t, int64_t b) const { return p + t * t_stride + b * b_stride; }
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

// torch.lerp's formula, exact at both ends (a zoneout mask of ones keeps the old state bit for bit).
template <typename T>
inline T lerp(T start, T end, T w) {
  return std::abs(w) < T(0.5) ? start + w * (end - start) : end - (end - start) * (T(1) - w);
}

// The per-row bodies of the fused loops, as functions of plain restrict pointers and H by value: inside the
// lambdas H would be read through a captured reference that the stores might alias, which stops the
// compiler from vectorising the loop.
template <typename T>
inline void scale_row(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ m, const int64_t H) {
  for (int64_t j = 0; j < H; ++j) out[j] = x[j] * m[j];
}

// Pre-activations of one row, the g block doubled so that one sigmoid activates all four gates
// (tanh(x) = 2 sigmoid(2x) - 1).
template <typename T>
inline void pre_row(T* __restrict__ zr, const T* __restrict__ yr, const T* __restrict__ bias, const int64_t H) {
  for (int64_t k = 0; k < 2 * H; ++k) zr[k] += yr[k] + bias[k];
  for (int64_t k = 2 * H; k < 3 * H; ++k) zr[k] = T(2) * (zr[k] + yr[k] + bias[k]);
  for (int64_t k = 3 * H; k < 4 * H; ++k) zr[k] += yr[k] + bias[k];
}

template <typename T>
inline void fw_cell_row(T* __restrict__ zr, const T* __restrict__ cu_r, const T* __restrict__ cell_r,
                        const T* __restrict__ c_old, T* __restrict__ c_new, const int64_t H) {
  T* __restrict__ zi = zr;
  T* __restrict__ zf = zr + H;
  T* __restrict__ zg = zr + 2 * H;
  for (int64_t j = 0; j < H; ++j) {
    const T g = zg[j] * T(2) - T(1);
    zg[j] = g;
    c_new[j] = (zf[j] * c_old[j] + zi[j] * (g * cu_r[j])) * cell_r[j];
  }
}

template <typename T>
inline void fw_out_row(const T* __restrict__ o, const T* __restrict__ zc_r, const T* __restrict__ zh_r,
                       const T* __restrict__ c_old, const T* __restrict__ h_old, const T* __restrict__ tcr,
                       T* __restrict__ c_new, T* __restrict__ h_new, const int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    c_new[j] = lerp(c_new[j], c_old[j], zc_r[j]);
    h_new[j] = lerp(o[j] * tcr[j], h_old[j], zh_r[j]);
  }
}

template <typename T>
inline void bw_row(const T* __restrict__ zr, const T* __restrict__ tcr, const T* __restrict__ c_old,
                   const T* __restrict__ dhr, const T* __restrict__ zh_r, const T* __restrict__ zc_r,
                   const T* __restrict__ cell_r, const T* __restrict__ cu_r, T* __restrict__ dr,
                   T* __restrict__ dcr, const int64_t H) {
  const T* __restrict__ zi = zr;
  const T* __restrict__ zf = zr + H;
  const T* __restrict__ zg = zr + 2 * H;
  const T* __restrict__ zo = zr + 3 * H;
  T* __restrict__ di = dr;
  T* __restrict__ df = dr + H;
  T* __restrict__ dg = dr + 2 * H;
  T* __restrict__ do_ = dr + 3 * H;
  for (int64_t j = 0; j < H; ++j) {
    const T i = zi[j], f = zf[j], g = zg[j], o = zo[j], tk = tcr[j];
    const T keep_h = T(1) - zh_r[j], cellm = cell_r[j], cum = cu_r[j];
    const T dhk = dhr[j];
    const T dcn = dhk * (o * (T(1) - tk * tk) * keep_h * cellm) + (T(1) - zc_r[j]) * cellm * dcr[j];
    do_[j] = dhk * (tk * o * (T(1) - o) * keep_h);
    di[j] = dcn * (g * cum) * (i * (T(1) - i));
    df[j] = dcn * c_old[j] * (f * (T(1) - f));
    dg[j] = dcn * (i * (T(1) - g * g)) * cum;
    dcr[j] = dcn * f + zc_r[j] * dcr[j];
  }
}

template <typename T>
inline void bw_dh_row(T* __restrict__ pr, const T* __restrict__ rec_r, const T* __restrict__ zh_r,
                      const T* __restrict__ dhr, const T* __restrict__ nr, const int64_t H) {
  if (nr) {
    for (int64_t j = 0; j < H; ++j) pr[j] = pr[j] * rec_r[j] + zh_r[j] * dhr[j] + nr[j];
  } else {
    for (int64_t j = 0; j < H; ++j) pr[j] = pr[j] * rec_r[j] + zh_r[j] * dhr[j];
  }
}

// Batch rows are independent through the whole recurrence, so from H = 200 each thread takes a block of rows
// through all T steps: one fork and join per sequence, and every ATen call inside runs on its thread alone
// (intra-op parallelism is off inside a parallel region). Below that, halving a step's product makes it
// less efficient than the fork saves, and the ATen calls share the threads themselves (measured at
// T=35, B=20 with 2 threads: docs/benchmarks.md).
constexpr int64_t kSplitRowsFromHidden = 200;

template <typename F>
void row_blocks(int64_t B, int64_t H, F f) {
  if (H < kSplitRowsFromHidden || at::get_num_threads() == 1) {
    f(0, B);
    return;
  }
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) { f(b0, b1 - b0); });
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor> forward_impl(Tensor gates, const Tensor& h0, const Tensor& c0, const Tensor& w,
                                                const OptTensor& packed, const OptTensor& bias, const OptTensor& rec,
                                                const OptTensor& cu, const OptTensor& cell, const OptTensor& zh,
                                                const OptTensor& zc) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H4 = gates.size(2), H = H4 / 4, BH = B * H;
  auto hs = at::empty({T_, B, H}, gates.options());
  auto cs = at::empty({T_ + 1, B, H}, gates.options());
  auto tcs = at::empty({T_, B, H}, gates.options());
  cs[0].copy_(c0);
  const Tensor w_t = w.t();
  const Tensor h_first = h0.contiguous();
  const Mask<T> m_rec(rec, B, H, T(1)), m_cu(cu, B, H, T(1)), m_cell(cell, B, H, T(1));
  const Mask<T> m_zh(zh, B, H, T(0)), m_zc(zc, B, H, T(0));
  // The input projection's bias, added here rather than broadcast over all T*B rows beforehand (a pass less).
  const Tensor b_all = bias.has_value() && bias->defined() ? bias->contiguous() : at::zeros({H4}, gates.options());
  const T* BIAS = b_all.data_ptr<T>();
  T* G = gates.data_ptr<T>();
  T* HS = hs.data_ptr<T>();
  T* CS = cs.data_ptr<T>();
  T* TC = tcs.data_ptr<T>();
  row_blocks(B, H, [&](int64_t b0, int64_t nb) {
    auto hr = at::empty({nb, H}, gates.options());
    for (int64_t t = 0; t < T_; ++t) {
      const Tensor h_rows = (t == 0 ? h_first : hs[t - 1]).narrow(0, b0, nb);
      const T* hp = h_rows.data_ptr<T>();
      Tensor h_in = h_rows;
      if (m_rec.on) {
        for (int64_t b = b0; b < b0 + nb; ++b) scale_row(hr.data_ptr<T>() + (b - b0) * H, hp + (b - b0) * H,
                                                         m_rec.row(t, b), H);
        h_in = hr;
      }
      const Tensor y = product(h_in, w_t, packed).contiguous();
      const T* Y = y.data_ptr<T>();
      T* z = G + t * B * H4;
      for (int64_t b = b0; b < b0 + nb; ++b) pre_row(z + b * H4, Y + (b - b0) * H4, BIAS, H);
      Tensor z_rows = gates[t].narrow(0, b0, nb);
      z_rows.sigmoid_();
      const T* cp = CS + t * BH;
      T* cn = CS + (t + 1) * BH;
      for (int64_t b = b0; b < b0 + nb; ++b)
        fw_cell_row(z + b * H4, m_cu.row(t, b), m_cell.row(t, b), cp + b * H, cn + b * H, H);
      Tensor tc_rows = tcs[t].narrow(0, b0, nb);
      at::tanh_out(tc_rows, cs[t + 1].narrow(0, b0, nb));
      const T* tc = TC + t * BH;
      T* hn = HS + t * BH;
      for (int64_t b = b0; b < b0 + nb; ++b)
        fw_out_row(z + b * H4 + 3 * H, m_zc.row(t, b), m_zh.row(t, b), cp + b * H, hp + (b - b0) * H, tc + b * H,
                   cn + b * H, hn + b * H, H);
    }
  });
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
  const Tensor dh_last = (d_hT + d_hs[T_ - 1]).contiguous();
  auto dh0 = at::empty({B, H}, gates.options());
  auto dc = d_cT.contiguous().clone();
  const Mask<T> m_rec(rec, B, H, T(1)), m_cu(cu, B, H, T(1)), m_cell(cell, B, H, T(1));
  const Mask<T> m_zh(zh, B, H, T(0)), m_zc(zc, B, H, T(0));
  const T* G = gates.data_ptr<T>();
  const T* CS = cs.data_ptr<T>();
  const T* TC = tcs.data_ptr<T>();
  const T* DHS = d_hs.data_ptr<T>();
  T* DZ = dZ.data_ptr<T>();
  T* DC = dc.data_ptr<T>();
  row_blocks(B, H, [&](int64_t b0, int64_t nb) {
    Tensor dh = dh_last.narrow(0, b0, nb);
    for (int64_t t = T_ - 1; t >= 0; --t) {
      const T* z = G + t * B * H4;
      T* dz = DZ + t * B * H4;
      const T* DH = dh.data_ptr<T>();
      for (int64_t b = b0; b < b0 + nb; ++b)
        bw_row(z + b * H4, TC + t * BH + b * H, CS + t * BH + b * H, DH + (b - b0) * H, m_zh.row(t, b),
               m_zc.row(t, b), m_cell.row(t, b), m_cu.row(t, b), dz + b * H4, DC + b * H, H);
      Tensor dh_prev = product(dZ[t].narrow(0, b0, nb), w, packed_t).contiguous();
      T* P = dh_prev.data_ptr<T>();
      const T* dnext = t > 0 ? DHS + (t - 1) * BH : nullptr;
      if (m_rec.on || m_zh.on || dnext) {
        for (int64_t b = b0; b < b0 + nb; ++b)
          bw_dh_row(P + (b - b0) * H, m_rec.row(t, b), m_zh.row(t, b), DH + (b - b0) * H,
                    dnext ? dnext + b * H : nullptr, H);
      }
      dh = dh_prev;
    }
    dh0.narrow(0, b0, nb).copy_(dh);
  });
  return {dZ, dh0, dc};
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
                                           const OptTensor& packed, const OptTensor& bias, const OptTensor& rec,
                                           const OptTensor& cu, const OptTensor& cell, const OptTensor& zh,
                                           const OptTensor& zc) {
  check(gates, "gates");
  check_masks({&rec, &cu, &cell, &zh, &zc}, gates.scalar_type());
  at::NoGradGuard no_grad;
  return AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_fw", [&] {
    return forward_impl<scalar_t>(gates, h0, c0, w, packed, bias, rec, cu, cell, zh, zc);
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
  m.def("lstm_fw(Tensor gates, Tensor h0, Tensor c0, Tensor w, Tensor? packed, Tensor? bias, Tensor? rec, "
        "Tensor? cu, Tensor? cell, Tensor? zh, Tensor? zc) -> (Tensor, Tensor, Tensor)",
        &lstm_fw);
  m.def("lstm_bw(Tensor d_hs, Tensor d_hT, Tensor d_cT, Tensor w, Tensor? packed_t, Tensor gates, Tensor cs, "
        "Tensor tcs, Tensor? rec, Tensor? cu, Tensor? cell, Tensor? zh, Tensor? zc) -> (Tensor, Tensor, Tensor)",
        &lstm_bw);
}
