// A decode step in C++ (models/inference/native.py): one new token for each of B rows, the whole
// pass of a Llama-family or GPT serving net's `_logits` (models/families/*/serving.py) in one
// call, without Python, Dynamo or a dispatcher call per elementwise operation.
//
// The products are the kernels the eager step calls (aten's mm or oneDNN's packed fp32 product,
// bitsandbytes' NF4 GEMV through the address nf4.py binds, torch's `_weight_int8pack_mm` and
// `_weight_int4pack_mm_for_cpu` past 8 rows), or, up to 8 rows, our own (few_rows.cpp): int8, int4
// on torch's packed int4 weight, and fp32 over (outputs, inputs) weights (the "rows" layout), the
// fp32 and int4 ones where the CPU has AVX-512; the norms, rotary, the
// casts, the residual adds, the SwiGLU / GELU and attention for one query are the loops below,
// compiled for AVX-512, AVX2 and the baseline (`target_clones` and run-time dispatch: the loader
// picks one for the CPU it runs on, so a cached build moves between machines). Rotary rounds each
// product before the sum, as aten does; sums run in another order than aten's reductions and
// exp / tanh are libm's: equal to the eager step to float rounding
// (tests/models/inference/test_native_step.py).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_weight_int4pack_mm_for_cpu.h>
#include <ATen/ops/_weight_int8pack_mm.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/BFloat16.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <immintrin.h>

#include "attend.h"
#include "few_rows.h"

#include <cmath>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <limits>
#include <vector>

namespace stagecraft_native {

#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

using Nf4Kernel = void (*)(int64_t, int64_t, int64_t, const void*, const void*, const void*, void*, int64_t, int64_t,
                           int64_t);
constexpr int64_t kNf4Block = 64;  // nf4.BLOCK

enum Kind : int64_t { kPlain = 0, kInt8 = 1, kInt4 = 2, kNf4 = 3, kPacked = 4, kRows = 5 };  // native.py's kinds

inline float bf16_to_float(uint16_t u) {
  uint32_t bits = static_cast<uint32_t>(u) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline float round_bf16(float f) { return static_cast<float>(c10::BFloat16(f)); }

CLONES void widen_row(const uint16_t* src, const float* bias, float* dst, int64_t n) {
  if (bias) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bias[i] + bf16_to_float(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
  }
}

CLONES void round_row(const float* src, c10::BFloat16* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = c10::BFloat16(src[i]);  // round to nearest even, as `.to`
}

// x (B, n) fp32 in bf16.
at::Tensor to_bf16(const at::Tensor& x) {
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  round_row(x.const_data_ptr<float>(), out.mutable_data_ptr<c10::BFloat16>(), x.numel());
  return out;
}

CLONES float sum_of_squares(const float* x, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  return s;
}

CLONES void scale_row(const float* x, float inv, const float* weight, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * weight[i];
}

// RMSNorm of each row of x (B, C): x * rsqrt(mean(x²) + eps) * weight, as aten's rms_norm (which
// spent ~25 µs a call in a dozen operations of its own at one row; this, well under one).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor out = at::empty({rows, n}, x.options());
  const float* src = x.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float mean = sum_of_squares(src + r * n, n) / static_cast<float>(n);
    const float inv = 1.0f / std::sqrt(mean + static_cast<float>(eps));
    scale_row(src + r * n, inv, weight.const_data_ptr<float>(), dst + r * n, n);
  }
  return out;
}

CLONES void add_into(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = y[i] + x[i];
}

// A projection as the serving net holds it (models/layers/projection.py, quantized.py, nf4.py):
// `weight` is the plain layout's (inputs, outputs) transpose, or the quantized codes; `scales`
// their scales (int4: scales and zeros; nf4: absmax); `width` the product's columns before the
// padding is cut (int4, nf4), `group` int4's group size.
struct Projection {
  int64_t kind = kPlain, out = 0, width = 0, group = 0;
  at::Tensor weight, scales, bias;

  // x (B, inputs) fp32 -> (B, out) fp32, as the eager projection's __call__.
  at::Tensor operator()(const at::Tensor& x, Nf4Kernel nf4) const {
    if (kind == kPlain) return bias.defined() ? at::addmm(bias, x, weight) : at::mm(x, weight);
    if (kind == kPacked) return packed(x);
    if (kind == kRows) return rows_product(x);
    const at::Tensor a = to_bf16(x);  // the kernels' activations
    at::Tensor y;
    const bool few = a.size(0) <= kFewRows;
    if (kind == kInt8 && few) {
      y = int8_product(a);
    } else if (kind == kInt4 && few && few_rows_int4()) {
      y = int4_product(a);
    } else if (kind == kInt8 && weight.size(1) % 16 != 0) {  // torch's kernel crashed off its tiles of 16 inputs
      const int64_t pad = 16 - weight.size(1) % 16;              // (models/layers/quantized.py K_TILE)
      y = at::_weight_int8pack_mm(at::constant_pad_nd(a, {0, pad}), at::constant_pad_nd(weight, {0, pad}), scales);
    } else if (kind == kInt8) {
      y = at::_weight_int8pack_mm(a, weight, scales);
    } else if (kind == kInt4) {
      y = at::_weight_int4pack_mm_for_cpu(a, weight, group, scales);
    } else {
      TORCH_CHECK(nf4 != nullptr, "stagecraft::DecoderStep: no NF4 kernel bound");
      y = at::empty({a.size(0), width}, a.options());
      nf4(a.size(0), width, a.size(1), a.const_data_ptr(), weight.const_data_ptr(), scales.const_data_ptr(),
          y.mutable_data_ptr(), kNf4Block, a.size(1), width);
    }
    return widen(y);
  }

  // `_weight_int8pack_mm(a, weight, scales)` for a few rows: (a · w_n) * scale_n summed in fp32,
  // rounded to bf16, each weight row read once (torch's kernel read SmolLM2's 28 MB head at
  // ~13 GB/s at one row, this at the memory's pace; benchmarks/RESULTS.md, "Native decode steps").
  at::Tensor int8_product(const at::Tensor& a) const {
    const int64_t rows = a.size(0), in = a.size(1), n = weight.size(0);
    const auto* xb = reinterpret_cast<const uint16_t*>(a.const_data_ptr());
    const std::vector<float> x = floats(a);
    at::Tensor y = at::empty({rows, n}, a.options());
    const int8_t* w = weight.const_data_ptr<int8_t>();
    const auto* sc = reinterpret_cast<const uint16_t*>(scales.const_data_ptr());
    auto* out = y.mutable_data_ptr<c10::BFloat16>();
    at::parallel_for(0, (n + 3) / 4, 32, [&](int64_t begin, int64_t end) {
      const int64_t o0 = begin * 4, o1 = std::min(n, end * 4), width = o1 - o0;
      std::vector<float> sums(rows * width);
      few_rows_sums(rows, xb, x.data(), w, in, o0, o1, sums.data(), width);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t o = o0; o < o1; ++o) out[r * n + o] = c10::BFloat16(sums[r * width + o - o0] * bf16_to_float(sc[o]));
    });
    return y;
  }

  // `_weight_int4pack_mm_for_cpu(a, weight, group, scales)` for a few rows, reading torch's own
  // packed weight (few_rows.h int4_sums): torch's kernel took 8.0 ms of a SmolLM2 int4 step at one
  // row (benchmarks/RESULTS.md, "Few-rows products of our own"). Sums in fp32, rounded to bf16 as its.
  at::Tensor int4_product(const at::Tensor& a) const {
    const int64_t rows = a.size(0), in = a.size(1);
    const auto* xb = reinterpret_cast<const uint16_t*>(a.const_data_ptr());
    const std::vector<float> x = floats(a);
    std::vector<float> sums(rows * width);
    const uint8_t* w = weight.const_data_ptr<uint8_t>();
    const auto* sz = reinterpret_cast<const uint16_t*>(scales.const_data_ptr());
    at::parallel_for(0, int4_units(width), 1, [&](int64_t u0, int64_t u1) {
      int4_sums(rows, xb, x.data(), w, sz, in, width, group, u0, u1, sums.data());
    });
    at::Tensor y = at::empty({rows, width}, a.options());
    auto* out = y.mutable_data_ptr<c10::BFloat16>();
    for (int64_t i = 0; i < rows * width; ++i) out[i] = c10::BFloat16(sums[i]);
    return y;
  }

  // bf16 activations (B, inputs) as fp32 values.
  static std::vector<float> floats(const at::Tensor& a) {
    std::vector<float> x(a.numel());
    const auto* ab = reinterpret_cast<const uint16_t*>(a.const_data_ptr());
    for (size_t i = 0; i < x.size(); ++i) x[i] = bf16_to_float(ab[i]);
    return x;
  }

  // x (R, inputs) @ weight.T (+ bias), the weight (outputs, inputs) fp32: `sums_avx512` for up to 8
  // rows where the CPU has AVX-512 (native.py keeps this layout only there), else aten's mm.
  at::Tensor rows_product(const at::Tensor& x) const {
    const int64_t R = x.size(0), K = x.size(1), N = weight.size(0);
    if (R > kFewRows || !few_rows_avx512()) return bias.defined() ? at::addmm(bias, x, weight.t()) : at::mm(x, weight.t());
    at::Tensor y = at::empty({R, N}, x.options());
    const float* xp = x.const_data_ptr<float>();
    const float* wp = weight.const_data_ptr<float>();
    float* yp = y.mutable_data_ptr<float>();
    at::parallel_for(0, (N + 3) / 4, 32, [&](int64_t begin, int64_t end) {
      const int64_t o0 = begin * 4, o1 = std::min(N, end * 4);
      few_rows_sums(R, xp, wp, K, o0, o1, yp + o0, N);
      if (bias.defined()) {
        const float* b = bias.const_data_ptr<float>();
        for (int64_t r = 0; r < R; ++r) add_into(yp + r * N + o0, b + o0, o1 - o0);
      }
    });
    return y;
  }

  // oneDNN's product with its packed weight (torch.ops.mkldnn._linear_pointwise, no post-op).
  at::Tensor packed(const at::Tensor& x) const {
    static const c10::OperatorHandle op =
        c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
    std::vector<c10::IValue> stack{x, weight, bias.defined() ? c10::IValue(bias) : c10::IValue(),
                                   c10::IValue(std::string("none")), c10::IValue(c10::List<std::optional<at::Scalar>>()),
                                   c10::IValue(std::string(""))};
    op.callBoxed(&stack);
    return stack.at(0).toTensor();
  }

  // The bf16 product (B, width) cut to `out` columns in fp32, plus the bias: `y.to(fp32)` or
  // `torch.add(bias, y)` as the eager projection does.
  at::Tensor widen(const at::Tensor& y) const {
    const int64_t rows = y.size(0), stride = y.size(1);
    at::Tensor out_t = at::empty({rows, out}, y.options().dtype(at::kFloat));
    const auto* src = reinterpret_cast<const uint16_t*>(y.const_data_ptr());
    float* dst = out_t.mutable_data_ptr<float>();
    const float* b = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
    for (int64_t r = 0; r < rows; ++r) widen_row(src + r * stride, b, dst + r * out, out);
    return out_t;
  }

};

struct Layer {
  at::Tensor ln1, ln2, q_norm, k_norm;  // q_norm, k_norm undefined where the family has none
  at::Tensor ln1_bias, ln2_bias;        // GPT's LayerNorms' (undefined for Llama's RMSNorms)
  Projection qkv, o, gate_up, down;     // GPT: c_attn, c_proj, c_fc (GELU after it), the MLP's c_proj
};

// x * cos + roll(x, D/2) * sin, in place, for one head of D values (models.families.llama.model.rotary);
// each product rounded before the sum, as aten's (no fused multiply-add).
__attribute__((optimize("fp-contract=off"))) CLONES void rotate(float* x, const float* cos, const float* sin, int64_t D, float* tmp) {
  const int64_t half = D / 2;
  for (int64_t d = 0; d < D; ++d) tmp[d] = x[d];
  for (int64_t d = 0; d < half; ++d) x[d] = tmp[d] * cos[d] + tmp[d + half] * sin[d];
  for (int64_t d = half; d < D; ++d) x[d] = tmp[d] * cos[d] + tmp[d - half] * sin[d];
}

// `weight * (h * rsqrt(mean(h²) + eps))` over one head (the model's rms_norm for q_norm / k_norm).
void head_norm(float* x, const float* weight, int64_t D, double eps) {
  float sq = 0;
  for (int64_t d = 0; d < D; ++d) sq += x[d] * x[d];
  const float inv = 1.0f / std::sqrt(sq / static_cast<float>(D) + static_cast<float>(eps));
  for (int64_t d = 0; d < D; ++d) x[d] = weight[d] * (x[d] * inv);
}

// (x - mean) / sqrt(var + eps) * weight + bias over each row of x (B, C): GPT's LayerNorm.
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor out = at::empty({rows, n}, x.options());
  const float* w = weight.const_data_ptr<float>();
  const float* b = bias.const_data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = x.const_data_ptr<float>() + r * n;
    float* dst = out.mutable_data_ptr<float>() + r * n;
    float mean = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) mean += src[i];
    mean /= static_cast<float>(n);
    for (int64_t i = 0; i < n; ++i) var += (src[i] - mean) * (src[i] - mean);
    const float inv = 1.0f / std::sqrt(var / static_cast<float>(n) + static_cast<float>(eps));
    for (int64_t i = 0; i < n; ++i) dst[i] = (src[i] - mean) * inv * w[i] + b[i];
  }
  return out;
}

// GELU with tanh's approximation, in place (GPT's MLP; aten's formula).
CLONES void gelu_tanh(float* x, int64_t n) {
  const float beta = 0.7978845608028654f, kappa = 0.044715f;  // sqrt(2 / pi)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    x[i] = 0.5f * v * (1.0f + std::tanh(beta * (v + kappa * v * v * v)));
  }
}

// silu(gate) * up, each of the B rows' (gate | up) halves of width I.
CLONES void swiglu(const float* gu, float* out, int64_t I) {
  for (int64_t i = 0; i < I; ++i) {
    const float g = gu[i];
    out[i] = g / (1.0f + std::exp(-g)) * gu[I + i];
  }
}

CLONES float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

CLONES float dot_bf16(const float* a, const uint16_t* b, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * bf16_to_float(b[i]);
  return s;
}

CLONES void axpy(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

CLONES void axpy_bf16(float* y, float a, const uint16_t* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * bf16_to_float(x[i]);
}

template <typename T>
void store(T* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);  // bf16: round to nearest even, as copy_
}

// A decode step of one family's serving net: Llama's (RMSNorm, rotary, optional q / k norms,
// SwiGLU, grouped-query attention) or GPT's (LayerNorm, learned positions, GELU MLP).
struct DecoderStep : torch::CustomClassHolder {
  int64_t C, H, KV, D, I;
  bool gpt;
  double eps;
  Nf4Kernel nf4 = nullptr;
  at::Tensor embed, embed_scales, norm, norm_bias, cos, sin, wpe;  // embed_scales defined for int8 rows
  std::vector<Layer> layers;
  Projection head;

  // shape: n_embd, n_head, n_kv_head, head_dim, the MLP's width (Llama: intermediate_size, GPT:
  // 4 n_embd), family (0 Llama, 1 GPT); globals: the embedding (fp32 rows, or int8 rows), its bf16
  // scales, the final norm and its bias, the rotary tables (Llama), the position embedding (GPT);
  // what a family has not is empty.
  DecoderStep(std::vector<int64_t> shape, double eps, int64_t nf4_kernel, std::vector<at::Tensor> globals)
      : C(shape.at(0)), H(shape.at(1)), KV(shape.at(2)), D(shape.at(3)), I(shape.at(4)), gpt(shape.at(5) == 1),
        eps(eps) {
    nf4 = reinterpret_cast<Nf4Kernel>(nf4_kernel);
    TORCH_CHECK(globals.size() == 7, "DecoderStep: embed, embed scales, norm, norm bias, cos, sin, wpe");
    embed = globals[0], norm = globals[2];
    if (globals[1].numel() > 0) embed_scales = globals[1];
    if (gpt) {
      norm_bias = globals[3], wpe = globals[6].contiguous();
    } else {
      cos = globals[4].contiguous(), sin = globals[5].contiguous();
    }
  }

  at::Tensor norm_rows(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) const {
    return gpt ? layer_norm(x, weight, bias, eps) : rms_norm(x, weight, eps);
  }

  static Projection projection(const std::vector<at::Tensor>& t, const std::vector<int64_t>& meta, size_t i) {
    Projection p;
    p.kind = meta.at(4 * i), p.out = meta.at(4 * i + 1), p.width = meta.at(4 * i + 2), p.group = meta.at(4 * i + 3);
    p.weight = t.at(3 * i), p.scales = t.at(3 * i + 1);
    if (t.at(3 * i + 2).numel() > 0) p.bias = t.at(3 * i + 2);
    TORCH_CHECK(p.kind >= kPlain && p.kind <= kRows, "DecoderStep: unknown projection kind ", p.kind);
    // What our products read through raw pointers: contiguous fp32 / int8 / int4 weights, bf16 scales.
    const std::vector<at::ScalarType> weights = {at::kFloat, at::kChar, at::kByte};
    const int64_t ours = p.kind == kRows ? 0 : p.kind == kInt8 ? 1 : p.kind == kInt4 ? 2 : -1;
    TORCH_CHECK(ours < 0 || (p.weight.is_contiguous() && p.weight.scalar_type() == weights[ours]),
                "DecoderStep: a rows, int8 or int4 weight must be contiguous fp32 / int8 / uint8");
    TORCH_CHECK(ours < 1 || (p.scales.is_contiguous() && p.scales.scalar_type() == at::kBFloat16),
                "DecoderStep: int8 and int4 scales must be contiguous bf16");
    return p;
  }

  // norms: ln1, ln2, q_norm, k_norm, ln1's bias, ln2's bias (empty: none); projections: (weight,
  // scales, bias) for qkv, o, gate_up, down; meta: (kind, out, width, group) for each.
  void add_layer(std::vector<at::Tensor> norms, std::vector<at::Tensor> projections, std::vector<int64_t> meta) {
    Layer l;
    l.ln1 = norms.at(0), l.ln2 = norms.at(1);
    if (norms.at(2).numel() > 0) l.q_norm = norms[2].contiguous(), l.k_norm = norms.at(3).contiguous();
    if (gpt) l.ln1_bias = norms.at(4), l.ln2_bias = norms.at(5);
    l.qkv = projection(projections, meta, 0), l.o = projection(projections, meta, 1);
    l.gate_up = projection(projections, meta, 2), l.down = projection(projections, meta, 3);
    layers.push_back(std::move(l));
  }

  void set_head(std::vector<at::Tensor> projection_, std::vector<int64_t> meta) {
    head = projection(projection_, meta, 0);
  }

  at::Tensor embed_rows(const at::Tensor& idx) const {
    const int64_t B = idx.size(0);
    at::Tensor x = at::empty({B, C}, at::TensorOptions().dtype(at::kFloat));
    const int64_t* ids = idx.const_data_ptr<int64_t>();
    float* dst = x.mutable_data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(ids[b] >= 0 && ids[b] < embed.size(0), "DecoderStep: token id ", ids[b], " out of the vocabulary");
      if (embed_scales.defined()) {  // int8 rows: q.float() * scale.float()
        const int8_t* q = embed.const_data_ptr<int8_t>() + ids[b] * C;
        const float s = static_cast<float>(embed_scales.const_data_ptr<c10::BFloat16>()[ids[b]]);
        for (int64_t c = 0; c < C; ++c) dst[b * C + c] = static_cast<float>(q[c]) * s;
      } else {
        std::memcpy(dst + b * C, embed.const_data_ptr<float>() + ids[b] * C, C * sizeof(float));
      }
    }
    return x;
  }

  // One query per row over its cached keys and values: softmax(q·k / sqrt(D), masked) · v, the
  // query heads of each KV head together (attend.h's kernels on a bf16 cache where they run).
  // A bf16 cache's queries and weights are rounded to bf16 as torch's flash kernel rounds them.
  template <typename T>
  void attend(const float* qkv, const std::vector<at::Tensor>& ks, const std::vector<at::Tensor>& vs, size_t layer,
              int64_t B, int64_t L, const bool* mask, int64_t mask_stride, float* out) const {
    const at::Tensor& kc = ks[layer];
    const at::Tensor& vc = vs[layer];
    const T* kbase = kc.const_data_ptr<T>();
    const T* vbase = vc.const_data_ptr<T>();
    const int64_t sb = kc.stride(0), sh = kc.stride(1), sp = kc.stride(2);
    const int64_t G = H / KV, width = (H + 2 * KV) * D;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    constexpr bool bf16 = std::is_same<T, c10::BFloat16>::value;
    const bool fast = bf16 && attend_bf16_runs(G, D);
    const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, G * L * D));  // serial for short work
    at::parallel_for(0, B * KV, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> p(G * L), q(G * D), y(G * D), total(G);
      std::vector<uint16_t> qb(G * D);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / KV, kvh = task % KV, h0 = kvh * G;  // heads h0 .. h0 + G - 1
        const bool* m = mask ? mask + b * mask_stride : nullptr;
        const float* qrow = qkv + b * width + h0 * D;
        for (int64_t i = 0; i < G * D; ++i) q[i] = bf16 ? round_bf16(qrow[i]) : qrow[i];
        const T* kr = kbase + b * sb + kvh * sh;
        const T* vr = vbase + b * sb + kvh * sh;
        if (fast) {
          for (int64_t i = 0; i < G * D; ++i) qb[i] = c10::BFloat16(q[i]).x;  // exact: q is rounded
          scores_bf16(qb.data(), reinterpret_cast<const uint16_t*>(kr), sp, L, m, G, D, scale, p.data());
        } else {
          for (int64_t g = 0; g < G; ++g)
            for (int64_t j = 0; j < L; ++j)
              p[g * L + j] = m && !m[j] ? -std::numeric_limits<float>::infinity()
                                        : (bf16 ? dot_bf16(q.data() + g * D, reinterpret_cast<const uint16_t*>(kr + j * sp), D)
                                                : dot(q.data() + g * D, reinterpret_cast<const float*>(kr + j * sp), D)) *
                                              scale;
        }
        for (int64_t g = 0; g < G; ++g) {
          float* pg = p.data() + g * L;
          const float top = *std::max_element(pg, pg + L);
          total[g] = 0;
          for (int64_t j = 0; j < L; ++j) {
            pg[j] = std::exp(pg[j] - top);  // exp(-inf) = 0: masked
            total[g] += pg[j];
            if (bf16) pg[j] = round_bf16(pg[j]);
          }
        }
        if (fast) {
          values_bf16(p.data(), reinterpret_cast<const uint16_t*>(vr), sp, L, m, G, D, y.data());
        } else {
          std::fill(y.begin(), y.end(), 0.0f);
          for (int64_t g = 0; g < G; ++g)
            for (int64_t j = 0; j < L; ++j) {
              const float w = p[g * L + j];
              if (w == 0.0f) continue;
              if (bf16) {
                axpy_bf16(y.data() + g * D, w, reinterpret_cast<const uint16_t*>(vr + j * sp), D);
              } else {
                axpy(y.data() + g * D, w, reinterpret_cast<const float*>(vr + j * sp), D);
              }
            }
        }
        for (int64_t g = 0; g < G; ++g) {
          float* o = out + b * H * D + (h0 + g) * D;
          for (int64_t d = 0; d < D; ++d) o[d] = bf16 ? round_bf16(y[g * D + d] / total[g]) : y[g * D + d] / total[g];
        }
      }
    });
  }

  // idx, positions: (B,) int64; ks, vs: each layer's cache (B, KV, positions, D), fp32 or bf16,
  // written at column `col`; mask: (B, 1, 1, col + 1) bool, true where a key counts, or None.
  // Returns the logits (B, vocab) in fp32.
  at::Tensor step(at::Tensor idx, at::Tensor positions, std::vector<at::Tensor> ks, std::vector<at::Tensor> vs,
                  int64_t col, std::optional<at::Tensor> mask) {
    c10::InferenceMode guard;
    TORCH_CHECK(ks.size() == layers.size() && vs.size() == layers.size(), "DecoderStep: a cache per layer");
    idx = idx.reshape({-1}).contiguous();
    positions = positions.reshape({-1}).contiguous();
    const int64_t B = idx.size(0), L = col + 1, width = (H + 2 * KV) * D;
    TORCH_CHECK(positions.size(0) == B, "DecoderStep: a position per row");
    const bool* m = nullptr;
    int64_t mask_stride = 0;
    if (mask.has_value()) {
      TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 4 && mask->size(3) == L && mask->stride(3) == 1,
                  "DecoderStep: the key mask must be (B, 1, 1, col + 1) bool");
      m = mask->const_data_ptr<bool>();
      mask_stride = mask->stride(0);
    }
    const int64_t* pos = positions.const_data_ptr<int64_t>();
    at::Tensor x = embed_rows(idx);
    if (gpt) {  // token embedding + position embedding
      float* xs = x.mutable_data_ptr<float>();
      for (int64_t b = 0; b < B; ++b) add_into(xs + b * C, wpe.const_data_ptr<float>() + pos[b] * C, C);
    }
    at::Tensor att = at::empty({B, H * D}, x.options());
    at::Tensor act = gpt ? at::Tensor() : at::empty({B, I}, x.options());
    std::vector<float> tmp(D);
    for (size_t l = 0; l < layers.size(); ++l) {
      const Layer& w = layers[l];
      at::Tensor qkv = w.qkv(norm_rows(x, w.ln1, w.ln1_bias), nf4).contiguous();
      float* qkv_p = qkv.mutable_data_ptr<float>();
      const at::Tensor& kc = ks[l];
      const at::Tensor& vc = vs[l];
      const bool bf16 = kc.scalar_type() == at::kBFloat16;
      TORCH_CHECK(bf16 || kc.scalar_type() == at::kFloat, "DecoderStep: an fp32 or bf16 cache");
      TORCH_CHECK(kc.stride(3) == 1 && vc.strides() == kc.strides() && kc.size(0) >= B && col < kc.size(2),
                  "DecoderStep: the cache's layout");
      for (int64_t b = 0; b < B; ++b) {
        float* row = qkv_p + b * width;
        for (int64_t h = 0; !gpt && h < H + KV; ++h) {  // Llama: q and k normed (Qwen3) and rotated
          if (w.q_norm.defined()) head_norm(row + h * D, (h < H ? w.q_norm : w.k_norm).const_data_ptr<float>(), D, eps);
          rotate(row + h * D, cos.const_data_ptr<float>() + pos[b] * D, sin.const_data_ptr<float>() + pos[b] * D, D,
                 tmp.data());
        }
        for (int64_t h = 0; h < KV; ++h) {  // the new key and value join the cache at `col`
          const int64_t at_ = b * kc.stride(0) + h * kc.stride(1) + col * kc.stride(2);
          if (bf16) {
            store(kc.data_ptr<c10::BFloat16>() + at_, row + (H + h) * D, D);
            store(vc.data_ptr<c10::BFloat16>() + at_, row + (H + KV + h) * D, D);
          } else {
            store(kc.data_ptr<float>() + at_, row + (H + h) * D, D);
            store(vc.data_ptr<float>() + at_, row + (H + KV + h) * D, D);
          }
        }
      }
      float* att_p = att.mutable_data_ptr<float>();
      if (bf16) {
        attend<c10::BFloat16>(qkv_p, ks, vs, l, B, L, m, mask_stride, att_p);
      } else {
        attend<float>(qkv_p, ks, vs, l, B, L, m, mask_stride, att_p);
      }
      at::Tensor o = w.o(att, nf4).contiguous();
      add_into(o.mutable_data_ptr<float>(), x.const_data_ptr<float>(), B * C);  // o + x
      x = o;
      at::Tensor gu = w.gate_up(norm_rows(x, w.ln2, w.ln2_bias), nf4).contiguous();
      if (gpt) {
        gelu_tanh(gu.mutable_data_ptr<float>(), B * I);
      } else {
        for (int64_t b = 0; b < B; ++b)
          swiglu(gu.const_data_ptr<float>() + b * 2 * I, act.mutable_data_ptr<float>() + b * I, I);
      }
      at::Tensor down = w.down(gpt ? gu : act, nf4).contiguous();
      add_into(down.mutable_data_ptr<float>(), x.const_data_ptr<float>(), B * C);
      x = down;
    }
    return head(norm_rows(x, norm, norm_bias), nf4);
  }
};

// One projection's product as a step computes it, (B, width) fp32, for tests and benchmarks:
// (weight, scales, bias) and (kind, out, width, group) as DecoderStep.add_layer takes them.
at::Tensor project(const at::Tensor& x, std::vector<at::Tensor> tensors, std::vector<int64_t> meta) {
  c10::InferenceMode guard;
  return DecoderStep::projection(tensors, meta, 0)(x, nullptr);
}

}  // namespace stagecraft_native

using stagecraft_native::DecoderStep;

TORCH_LIBRARY_FRAGMENT(stagecraft, m) {
  m.class_<DecoderStep>("DecoderStep")
      .def(torch::init<std::vector<int64_t>, double, int64_t, std::vector<at::Tensor>>())
      .def("add_layer", &DecoderStep::add_layer)
      .def("set_head", &DecoderStep::set_head)
      .def("step", &DecoderStep::step);
  m.def("native_isa() -> str", &stagecraft_native::few_rows_isa);
  m.def("native_few_rows() -> str[]", &stagecraft_native::few_rows_products);
  m.def("native_project(Tensor x, Tensor[] tensors, int[] meta) -> Tensor", &stagecraft_native::project);
}
