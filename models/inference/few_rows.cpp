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

namespace stagecraft_native {

bool few_rows_avx512() {
  static const bool on = __builtin_cpu_supports("avx512f") && std::getenv("STAGECRAFT_NATIVE_NO_AVX512") == nullptr;
  return on;
}

namespace {

const bool kAvx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");

// 16 weights of an (outputs, inputs) row as fp32 lanes: fp32 as stored, int8 widened.
__attribute__((target("avx512f"))) inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }
__attribute__((target("avx512f"))) inline __m512 load16(const int8_t* w) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))));
}

// few_rows_sums for R rows: four weight rows at a time, each of their values loaded (and, int8,
// widened) once for all R rows, the four after the next prefetched. At one row a SmolLM2 fp32 step
// took 10.8 ms against 12.3 through oneDNN's packed product (11.4 without the prefetch); at 8 int8
// rows the values are widened once, not once a row (benchmarks/RESULTS.md, "Few-rows products").
template <int R, typename W>
__attribute__((target("avx512f"))) void sums_avx512(const float* x, const W* w, int64_t K, int64_t o0, int64_t o1,
                                                   float* sums, int64_t ld) {
  constexpr int64_t line = 64 / sizeof(W);  // weights in a cache line
  int64_t o = o0;
  for (; o + 4 <= o1; o += 4) {
    __m512 acc[4][R];
    for (int j = 0; j < 4; ++j)
      for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
    const W* w0 = w + o * K;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      __m512 wv[4];
      for (int j = 0; j < 4; ++j) {
        wv[j] = load16(w0 + j * K + k);
        if (k % line == 0) _mm_prefetch(reinterpret_cast<const char*>(w0 + (8 + j) * K + k), _MM_HINT_T0);
      }
      for (int r = 0; r < R; ++r) {
        const __m512 xv = _mm512_loadu_ps(x + r * K + k);
        for (int j = 0; j < 4; ++j) acc[j][r] = _mm512_fmadd_ps(wv[j], xv, acc[j][r]);
      }
    }
    for (int j = 0; j < 4; ++j)
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

// One 64-output block's sums for R rows, H of its halves from half h0 (H = 2: both): per input,
// its 32 bytes loaded once, the nibbles of each half widened to 2 x 16 fp32 lanes of q - 8 and
// dequantized, (q - 8) * scale + zero as torch's kernel does, then FMA'd into every row's sums.
// 2 H x R accumulators: H = 2 for up to 4 rows, H = 1 past them (16 registers either way).
template <int R, int H>
__attribute__((target("avx512f"))) void int4_block(const float* x, const uint8_t* w, const uint16_t* scales, int64_t K,
                                                  int64_t N, int64_t group, int64_t n0, int h0, float* y) {
  __m512 acc[2 * H][R];
  for (int v = 0; v < 2 * H; ++v)
    for (int r = 0; r < R; ++r) acc[v][r] = _mm512_setzero_ps();
  const __m256i low = _mm256_set1_epi8(15), eight = _mm256_set1_epi8(8);
  const __m512i top = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t k0 = 0; k0 < K; k0 += group) {
    __m512 s[2 * H], z[2 * H];  // the group's scales and zeros: bf16 pairs, one 32-bit lane each
    const uint16_t* g = scales + ((k0 / group) * N + n0) * 2;
    for (int v = 0; v < 2 * H; ++v) {
      const __m512i pair = _mm512_loadu_si512(g + 2 * (32 * (h0 + v / 2) + 16 * (v % 2)));
      s[v] = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
      z[v] = _mm512_castsi512_ps(_mm512_and_si512(pair, top));
    }
    for (int64_t k = k0; k < k0 + group; ++k) {
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k * 32));
      __m512 wv[2 * H];
      for (int h = 0; h < H; ++h) {
        const __m256i nib = h0 + h == 0 ? bytes : _mm256_srli_epi16(bytes, 4);
        const __m256i q = _mm256_sub_epi8(_mm256_and_si256(nib, low), eight);  // q - 8, exact
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
        const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1)));
        wv[2 * h] = _mm512_fmadd_ps(lo, s[2 * h], z[2 * h]);
        wv[2 * h + 1] = _mm512_fmadd_ps(hi, s[2 * h + 1], z[2 * h + 1]);
      }
      for (int r = 0; r < R; ++r) {
        const __m512 xv = _mm512_set1_ps(x[r * K + k]);
        for (int v = 0; v < 2 * H; ++v) acc[v][r] = _mm512_fmadd_ps(wv[v], xv, acc[v][r]);
      }
    }
  }
  for (int v = 0; v < 2 * H; ++v)
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(y + r * N + n0 + 32 * (h0 + v / 2) + 16 * (v % 2), acc[v][r]);
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
void int4_range(const float* x, const uint8_t* w, const uint16_t* scales, int64_t K, int64_t N, int64_t group,
                int64_t u0, int64_t u1, float* y) {
  const int64_t full = N / kBlock;
  for (int64_t u = u0; u < u1;) {
    const int64_t b = u / 2;
    if (b == full) {
      int4_tail(R, x, w, scales, K, N, group, y);
      ++u;
      continue;
    }
    const uint8_t* wb = w + b * K * 32;
    if (u % 2 == 0 && u + 1 < u1) {  // the whole block: each byte read once for both halves
      if constexpr (R <= 4) {
        int4_block<R, 2>(x, wb, scales, K, N, group, b * kBlock, 0, y);
      } else {
        int4_block<R, 1>(x, wb, scales, K, N, group, b * kBlock, 0, y);
        int4_block<R, 1>(x, wb, scales, K, N, group, b * kBlock, 1, y);
      }
      u += 2;
    } else {
      int4_block<R, 1>(x, wb, scales, K, N, group, b * kBlock, static_cast<int>(u % 2), y);
      ++u;
    }
  }
}

}  // namespace

std::string few_rows_isa() { return few_rows_avx512() ? "avx512" : kAvx2 ? "avx2" : "baseline"; }

std::vector<std::string> few_rows_products() {
  if (!few_rows_avx512()) return {"int8"};
  if (!int4_layout_known()) return {"fp32", "int8"};
  return {"fp32", "int8", "int4"};
}

void few_rows_sums(int64_t R, const float* x, const float* w, int64_t K, int64_t o0, int64_t o1, float* sums,
                   int64_t ld) {
  sums_rows(R, x, w, K, o0, o1, sums, ld);
}

void few_rows_sums(int64_t R, const float* x, const int8_t* w, int64_t K, int64_t o0, int64_t o1, float* sums,
                   int64_t ld) {
  if (few_rows_avx512()) return sums_rows(R, x, w, K, o0, o1, sums, ld);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t o = o0; o < o1; ++o)
      sums[r * ld + o - o0] = kAvx2 ? dot_int8_avx2(x + r * K, w + o * K, K) : dot_int8_plain(x + r * K, w + o * K, K);
}

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

int64_t int4_units(int64_t N) { return 2 * (N / kBlock) + (N % kBlock != 0 ? 1 : 0); }

void int4_sums(int64_t R, const float* x, const uint8_t* w, const uint16_t* scales, int64_t K, int64_t N,
               int64_t group, int64_t u0, int64_t u1, float* y) {
  switch (R) {
    case 1: return int4_range<1>(x, w, scales, K, N, group, u0, u1, y);
    case 2: return int4_range<2>(x, w, scales, K, N, group, u0, u1, y);
    case 3: return int4_range<3>(x, w, scales, K, N, group, u0, u1, y);
    case 4: return int4_range<4>(x, w, scales, K, N, group, u0, u1, y);
    case 5: return int4_range<5>(x, w, scales, K, N, group, u0, u1, y);
    case 6: return int4_range<6>(x, w, scales, K, N, group, u0, u1, y);
    case 7: return int4_range<7>(x, w, scales, K, N, group, u0, u1, y);
    default: return int4_range<8>(x, w, scales, K, N, group, u0, u1, y);
  }
}

}  // namespace stagecraft_native
