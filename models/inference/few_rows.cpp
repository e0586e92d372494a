// Products of our own for a decode step's few rows (few_rows.h). At one row a decode step streams
// every weight from memory once, so that is its pace; at up to 8 rows each weight is still read
// (and, int8 / int4, widened and dequantized) once for all of them. The AVX-512 code is compiled
// for it (target attributes) and run only where the CPU has it; int8 has an AVX2 path too.
#include "few_rows.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/_convert_weight_to_int4pack_for_cpu.h>
#include <ATen/ops/empty.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace stagecraft_native {

namespace {

const char* const kIsas[] = {"baseline", "avx2", "avx512", "avx512bf16"};
enum Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

// The CPU's best of kIsas, capped by STAGECRAFT_NATIVE_ISA.
Isa detect() {
  int isa = kBaseline;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = kAvx2;
  if (isa == kAvx2 && __builtin_cpu_supports("avx512f")) isa = kAvx512;
  if (isa == kAvx512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16")) isa = kAvx512Bf16;
  if (const char* cap = std::getenv("STAGECRAFT_NATIVE_ISA"))
    for (int i = 0; i < 4; ++i)
      if (std::strcmp(cap, kIsas[i]) == 0) isa = std::min(isa, i);
  return static_cast<Isa>(isa);
}

const Isa kIsa = detect();

// 16 weights of an (outputs, inputs) row as fp32 lanes: fp32 as stored, int8 widened.
__attribute__((target("avx512f"))) inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }
__attribute__((target("avx512f"))) inline __m512 load16(const int8_t* w) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))));
}

// few_rows_sums for R rows: four weight rows at a time (eight at one row: eight chains of FMAs),
// each of their values loaded (and, int8, widened) once for all R rows, the ones after the next
// prefetched. At one row a SmolLM2 fp32 step took 10.8 ms against 12.3 through oneDNN's packed
// product (11.4 without the prefetch); at 8 int8 rows the values are widened once, not once a row
// (benchmarks/RESULTS.md, "Few-rows products of our own"). Two weight rows at a time past 4 rows
// (32 accumulators fewer than 36) was slower: each row's x loaded for two weight rows, not four
// (nf4_kernels.py, SmolLM2's int8 layers at 8 rows: 12.7 ms against 7.0).
template <int R, typename W>
__attribute__((target("avx512f"))) void sums_avx512(const float* x, const W* w, int64_t K, int64_t o0, int64_t o1,
                                                   float* sums, int64_t ld) {
  constexpr int J = R == 1 ? 8 : 4;  // weight rows at a time
  constexpr int64_t line = 64 / sizeof(W);  // weights in a cache line
  int64_t o = o0;
  for (; o + J <= o1; o += J) {
    __m512 acc[J][R];
    for (int j = 0; j < J; ++j)
      for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
    const W* w0 = w + o * K;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      __m512 wv[J];
      for (int j = 0; j < J; ++j) {
        wv[j] = load16(w0 + j * K + k);
        if (k % line == 0) _mm_prefetch(reinterpret_cast<const char*>(w0 + (2 * J + j) * K + k), _MM_HINT_T0);
      }
      for (int r = 0; r < R; ++r) {
        const __m512 xv = _mm512_loadu_ps(x + r * K + k);
        for (int j = 0; j < J; ++j) acc[j][r] = _mm512_fmadd_ps(wv[j], xv, acc[j][r]);
      }
    }
    for (int j = 0; j < J; ++j)
      for (int r = 0; r < R; ++r) {
        float s = _mm512_reduce_add_ps(acc[j][r]);
        for (int64_t t = k; t < K; ++t) s += x[r * K + t] * static_cast<float>(w0[j * K + t]);
        sums[r * ld + o + j - o0] = s;
      }
  }
  for (; o < o1; ++o)
    for (int r = 0; r < R; ++r) {
      float s = 0;
      for (int64_t t = 0; t < K; ++t) s += x[r * K + t] * static_cast<float>(w[o * K + t]);
      sums[r * ld + o - o0] = s;
    }
}

// few_rows_sums for int8 weights by AVX-512's bf16 dot products: 32 of a weight row's values
// widened and made bf16 (exactly: |q| <= 128) once for all R rows, then one vdpbf16ps a row for
// their 32 products with the row's bf16 activations (as torch's int8 kernel takes them): at 8
// rows half the instructions of widening to fp32 and an FMA a row for each 16.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void sums_int8_bf16(const uint16_t* xb, const float* xf,
                                                                          const int8_t* w, int64_t K, int64_t o0,
                                                                          int64_t o1, float* sums, int64_t ld) {
  constexpr int J = R == 1 ? 8 : 4;  // weight rows at a time
  int64_t o = o0;
  for (; o + J <= o1; o += J) {
    __m512 acc[J][R];
    for (int j = 0; j < J; ++j)
      for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
    const int8_t* w0 = w + o * K;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      __m512bh wv[J];
      for (int j = 0; j < J; ++j) {
        const int8_t* wj = w0 + j * K + k;
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wj))));
        const __m512 hi =
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wj + 16))));
        wv[j] = _mm512_cvtne2ps_pbh(hi, lo);  // weights k .. k + 31 in order
        if (k % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(w0 + (2 * J + j) * K + k), _MM_HINT_T0);
      }
      for (int r = 0; r < R; ++r) {
        const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xb + r * K + k));
        for (int j = 0; j < J; ++j) acc[j][r] = _mm512_dpbf16_ps(acc[j][r], wv[j], xv);
      }
    }
    for (int j = 0; j < J; ++j)
      for (int r = 0; r < R; ++r) {
        float s = _mm512_reduce_add_ps(acc[j][r]);
        for (int64_t t = k; t < K; ++t) s += xf[r * K + t] * static_cast<float>(w0[j * K + t]);
        sums[r * ld + o + j - o0] = s;
      }
  }
  for (; o < o1; ++o)
    for (int r = 0; r < R; ++r) {
      float s = 0;
      for (int64_t t = 0; t < K; ++t) s += xf[r * K + t] * static_cast<float>(w[o * K + t]);
      sums[r * ld + o - o0] = s;
    }
}

void sums_int8_bf16_rows(int64_t R, const uint16_t* xb, const float* x, const int8_t* w, int64_t K, int64_t o0,
                         int64_t o1, float* sums, int64_t ld) {
  switch (R) {
    case 1: return sums_int8_bf16<1>(xb, x, w, K, o0, o1, sums, ld);
    case 2: return sums_int8_bf16<2>(xb, x, w, K, o0, o1, sums, ld);
    case 3: return sums_int8_bf16<3>(xb, x, w, K, o0, o1, sums, ld);
    case 4: return sums_int8_bf16<4>(xb, x, w, K, o0, o1, sums, ld);
    case 5: return sums_int8_bf16<5>(xb, x, w, K, o0, o1, sums, ld);
    case 6: return sums_int8_bf16<6>(xb, x, w, K, o0, o1, sums, ld);
    case 7: return sums_int8_bf16<7>(xb, x, w, K, o0, o1, sums, ld);
    default: return sums_int8_bf16<8>(xb, x, w, K, o0, o1, sums, ld);
  }
}

template <typename W>
void sums_rows(int64_t R, const float* x, const W* w, int64_t K, int64_t o0, int64_t o1, float* sums, int64_t ld) {
  switch (R) {
    case 1: return sums_avx512<1>(x, w, K, o0, o1, sums, ld);
    case 2: return sums_avx512<2>(x, w, K, o0, o1, sums, ld);
    case 3: return sums_avx512<3>(x, w, K, o0, o1, sums, ld);
    case 4: return sums_avx512<4>(x, w, K, o0, o1, sums, ld);
    case 5: return sums_avx512<5>(x, w, K, o0, o1, sums, ld);
    case 6: return sums_avx512<6>(x, w, K, o0, o1, sums, ld);
    case 7: return sums_avx512<7>(x, w, K, o0, o1, sums, ld);
    default: return sums_avx512<8>(x, w, K, o0, o1, sums, ld);
  }
}

float dot_int8_plain(const float* x, const int8_t* w, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * static_cast<float>(w[i]);
  return s;
}

// x · w over n values, w int8, on a CPU without AVX-512: 8 lanes of partial sums, then their
// total and the tail's. Intrinsics, not a loop left to the compiler: GCC turned the int8-to-float
// conversion into scalar code, 20x slower.
__attribute__((target("avx2,fma"))) float dot_int8_avx2(const float* x, const int8_t* w, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + i));
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), acc);
  }
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  return _mm_cvtss_f32(h) + dot_int8_plain(x + i, w + i, n - i);
}

// torch's int4 CPU layout, as its AVX-512 build packs it (int4_layout_known() checks it): the
// outputs in blocks of 64, each block's inputs one after another, 32 bytes an input: byte j holds
// output j in its low nibble and output j + 32 in its high one. A last block of n < 64 outputs
// holds an input's in n / 2 bytes: output 2i in byte i's low nibble, 2i + 1 in its high one.
constexpr int64_t kBlock = 64;

int int4_at(const uint8_t* w, int64_t n, int64_t k, int64_t N, int64_t K) {
  const int64_t full = N / kBlock, b = n / kBlock;
  if (b < full) {
    const int64_t d = n % kBlock;
    const uint8_t byte = w[b * K * 32 + k * 32 + d % 32];
    return d < 32 ? byte & 15 : byte >> 4;
  }
  const int64_t tail = N - full * kBlock, m = n - full * kBlock;
  const uint8_t byte = w[full * kBlock * K / 2 + k * tail / 2 + m / 2];
  return m % 2 == 0 ? byte & 15 : byte >> 4;
}

// One 64-output block's sums for R rows, H of its halves from half h0 (H = 2: both), by AVX-512's
// bf16 dot products (vdpbf16ps: a pair of inputs for 16 outputs in one instruction); 2 H x R
// accumulators, H = 2 for up to 4 rows, H = 1 past them. Two inputs' 64 bytes are loaded at once and their words paired (word i of input k
// and of k + 1 in one 32-bit lane); each nibble of a word, or'd into 0x4300 (bf16 128.0), is the
// exact bf16 of 128 + q. So a group's sums are  sum (128 + q) x, and with the group's x summed,
//   y += scale * sum (128 + q) x + (zero - 136 scale) * sum x  =  sum ((q - 8) scale + zero) x,
// torch's dequantized weight times x, in another order (x is bf16, as torch's kernel takes it).
// A word's four nibbles are outputs 2i, 2i + 32 (its low byte), 2i + 1, 2i + 33: the vectors hold
// even and odd outputs of a half, interleaved back when stored.
template <int R, int H>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void int4_block(const uint16_t* xb, const float* xsum,
                                                                            const uint8_t* w, const uint16_t* scales,
                                                                            int64_t K, int64_t N, int64_t group,
                                                                            int64_t n0, int h0, float* y) {
  constexpr int V = 2 * H;  // vectors: v = 2 * (half - h0) + parity
  constexpr int U = V * R <= 8 ? 2 : 1;  // sums kept apart for input pairs in turn: chains of U x V x R
  alignas(64) float total[V][R][16] = {};
  __m512 acc[U][V][R];
  __m512 s[V], zz[V];
  const __m512i pair_words = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                              6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i nibble = _mm512_set1_epi32(0x000F000F), bf16_128 = _mm512_set1_epi32(0x43004300);
  const __m512i top = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const int64_t groups = K / group;
  for (int64_t g = 0; g < groups; ++g) {
    const auto* sz = reinterpret_cast<const int32_t*>(scales) + g * N + n0;  // (scale, zero) pairs
    for (int v = 0; v < V; ++v) {
      const int half = h0 + v / 2, parity = v % 2;
      const __m512i pick = _mm512_set_epi32(30 + parity, 28 + parity, 26 + parity, 24 + parity, 22 + parity,
                                            20 + parity, 18 + parity, 16 + parity, 14 + parity, 12 + parity,
                                            10 + parity, 8 + parity, 6 + parity, 4 + parity, 2 + parity, parity);
      const __m512i pair = _mm512_permutex2var_epi32(_mm512_loadu_si512(sz + 32 * half), pick,
                                                     _mm512_loadu_si512(sz + 32 * half + 16));
      s[v] = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
      zz[v] = _mm512_fnmadd_ps(_mm512_set1_ps(136.0f), s[v], _mm512_castsi512_ps(_mm512_and_si512(pair, top)));
      for (int u = 0; u < U; ++u)
        for (int r = 0; r < R; ++r) acc[u][v][r] = _mm512_setzero_ps();
    }
    for (int64_t k0 = g * group; k0 < (g + 1) * group; k0 += 2 * U)
      for (int u = 0; u < U; ++u) {
        const int64_t k = k0 + 2 * u;
        const __m512i words = _mm512_permutexvar_epi16(pair_words, _mm512_loadu_si512(w + k * 32));
        __m512bh wv[V];
        for (int v = 0; v < V; ++v) {
          const unsigned shift = 4 * (h0 + v / 2) + 8 * (v % 2);
          const __m512i q = _mm512_ternarylogic_epi32(_mm512_srli_epi16(words, shift), nibble, bf16_128, 0xEA);
          wv[v] = reinterpret_cast<__m512bh>(q);
        }
        for (int r = 0; r < R; ++r) {
          int32_t xpair;
          std::memcpy(&xpair, xb + r * K + k, sizeof xpair);
          const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(xpair));
          for (int v = 0; v < V; ++v) acc[u][v][r] = _mm512_dpbf16_ps(acc[u][v][r], wv[v], xv);
        }
      }
    for (int v = 0; v < V; ++v)
      for (int r = 0; r < R; ++r) {
        const __m512 a = U == 2 ? _mm512_add_ps(acc[0][v][r], acc[U - 1][v][r]) : acc[0][v][r];
        const __m512 t = _mm512_fmadd_ps(s[v], a, _mm512_load_ps(total[v][r]));
        _mm512_store_ps(total[v][r], _mm512_fmadd_ps(zz[v], _mm512_set1_ps(xsum[r * groups + g]), t));
      }
  }
  const __m512i first = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i second = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (int hh = 0; hh < H; ++hh)
    for (int r = 0; r < R; ++r) {
      const __m512 even = _mm512_load_ps(total[2 * hh][r]), odd = _mm512_load_ps(total[2 * hh + 1][r]);
      float* out = y + r * N + n0 + 32 * (h0 + hh);
      _mm512_storeu_ps(out, _mm512_permutex2var_ps(even, first, odd));
      _mm512_storeu_ps(out + 16, _mm512_permutex2var_ps(even, second, odd));
    }
}

float bf16_value(uint16_t u) {
  const uint32_t bits = static_cast<uint32_t>(u) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The last block of fewer than 64 outputs (a model's odd widths; at most 48 outputs), plainly.
void int4_tail(int64_t R, const float* x, const uint8_t* w, const uint16_t* scales, int64_t K, int64_t N,
               int64_t group, float* y) {
  for (int64_t n = N / kBlock * kBlock; n < N; ++n)
    for (int64_t r = 0; r < R; ++r) {
      float sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        const uint16_t* sz = scales + ((k / group) * N + n) * 2;
        const float value = std::fma(static_cast<float>(int4_at(w, n, k, N, K) - 8), bf16_value(sz[0]), bf16_value(sz[1]));
        sum = std::fma(value, x[r * K + k], sum);
      }
      y[r * N + n] = sum;
    }
}

template <int R>
void int4_range(const uint16_t* xb, const float* xf, const uint8_t* w, const uint16_t* scales, int64_t K, int64_t N,
                int64_t group, int64_t u0, int64_t u1, float* y) {
  const int64_t full = N / kBlock, groups = K / group;
  std::vector<float> sums(R * groups);  // each row's sum over each group (int4_block)
  float* xsum = sums.data();
  for (int r = 0; r < R; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      float t = 0;
      for (int64_t k = g * group; k < (g + 1) * group; ++k) t += xf[r * K + k];
      xsum[r * groups + g] = t;
    }
  for (int64_t u = u0; u < u1;) {
    const int64_t b = u / 2;
    if (b == full) {
      int4_tail(R, xf, w, scales, K, N, group, y);
      ++u;
      continue;
    }
    const uint8_t* wb = w + b * K * 32;
    if (u % 2 == 0 && u + 1 < u1) {  // the whole block: each byte read once for both halves
      if constexpr (R <= 4) {
        int4_block<R, 2>(xb, xsum, wb, scales, K, N, group, b * kBlock, 0, y);
      } else {
        int4_block<R, 1>(xb, xsum, wb, scales, K, N, group, b * kBlock, 0, y);
        int4_block<R, 1>(xb, xsum, wb, scales, K, N, group, b * kBlock, 1, y);
      }
      u += 2;
    } else {
      int4_block<R, 1>(xb, xsum, wb, scales, K, N, group, b * kBlock, static_cast<int>(u % 2), y);
      ++u;
    }
  }
}

// Whether torch's `_convert_weight_to_int4pack_for_cpu` lays int4 weights out as int4_at reads
// them: checked once, on a probe weight.
bool int4_layout_known() {
  static const bool known = [] {
    const int64_t N = 112, K = 64;  // a block of 64 and a last one of 48
    at::Tensor q = at::empty({N, K}, at::kInt);
    int32_t* qp = q.data_ptr<int32_t>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) qp[n * K + k] = static_cast<int32_t>((n * 7 + k * 3 + n * k) % 16);
    const at::Tensor packed = at::_convert_weight_to_int4pack_for_cpu(q, 1).contiguous();
    if (packed.scalar_type() != at::kByte || packed.numel() != N * K / 2) return false;
    const uint8_t* w = packed.const_data_ptr<uint8_t>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        if (int4_at(w, n, k, N, K) != qp[n * K + k]) return false;
    return true;
  }();
  return known;
}

}  // namespace

std::string few_rows_isa() { return kIsas[kIsa]; }

bool few_rows_avx512() { return kIsa >= kAvx512; }

bool few_rows_int4() { return kIsa >= kAvx512Bf16 && int4_layout_known(); }

std::vector<std::string> few_rows_products() {
  if (!few_rows_avx512()) return {"int8"};
  if (!few_rows_int4()) return {"fp32", "int8"};
  return {"fp32", "int8", "int4"};
}

void few_rows_sums(int64_t R, const float* x, const float* w, int64_t K, int64_t o0, int64_t o1, float* sums,
                   int64_t ld) {
  sums_rows(R, x, w, K, o0, o1, sums, ld);
}

void few_rows_sums(int64_t R, const uint16_t* xb, const float* x, const int8_t* w, int64_t K, int64_t o0, int64_t o1,
                   float* sums, int64_t ld) {
  if (kIsa >= kAvx512Bf16) return sums_int8_bf16_rows(R, xb, x, w, K, o0, o1, sums, ld);
  if (few_rows_avx512()) return sums_rows(R, x, w, K, o0, o1, sums, ld);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t o = o0; o < o1; ++o)
      sums[r * ld + o - o0] = kIsa >= kAvx2 ? dot_int8_avx2(x + r * K, w + o * K, K) : dot_int8_plain(x + r * K, w + o * K, K);
}

int64_t int4_units(int64_t N) { return 2 * (N / kBlock) + (N % kBlock != 0 ? 1 : 0); }

void int4_sums(int64_t R, const uint16_t* xb, const float* x, const uint8_t* w, const uint16_t* scales, int64_t K,
               int64_t N, int64_t group, int64_t u0, int64_t u1, float* y) {
  TORCH_CHECK(K % group == 0 && group % 2 == 0 && N % 16 == 0, "int4_sums: ", K, " inputs in groups of ", group,
              ", ", N, " outputs");
  switch (R) {
    case 1: return int4_range<1>(xb, x, w, scales, K, N, group, u0, u1, y);
    case 2: return int4_range<2>(xb, x, w, scales, K, N, group, u0, u1, y);
    case 3: return int4_range<3>(xb, x, w, scales, K, N, group, u0, u1, y);
    case 4: return int4_range<4>(xb, x, w, scales, K, N, group, u0, u1, y);
    case 5: return int4_range<5>(xb, x, w, scales, K, N, group, u0, u1, y);
    case 6: return int4_range<6>(xb, x, w, scales, K, N, group, u0, u1, y);
    case 7: return int4_range<7>(xb, x, w, scales, K, N, group, u0, u1, y);
    default: return int4_range<8>(xb, x, w, scales, K, N, group, u0, u1, y);
  }
}

}  // namespace stagecraft_native
