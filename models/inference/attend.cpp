// attend.h: one query's attention over a bf16 cache, the heads of a KV head together. At 8 rows
// the step's attention loops (a dot product and an axpy a head and position, each widening the
// cached row) took about a third of a SmolLM2 int4 step over a 100-token cache.
#include "attend.h"

#include "few_rows.h"

#include <immintrin.h>

#include <cstring>
#include <limits>

namespace stagecraft_native {

namespace {

// Scores of G heads: a key's 32 bf16 values a vector, dot products of bf16 pairs (exact
// products, fp32 sums), each key loaded once for all G heads.
template <int G>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void scores(const uint16_t* q, const uint16_t* k,
                                                                    int64_t stride, int64_t L, const bool* mask,
                                                                    int64_t D, float scale, float* p) {
  for (int64_t j = 0; j < L; ++j) {
    if (mask && !mask[j]) {
      for (int g = 0; g < G; ++g) p[g * L + j] = -std::numeric_limits<float>::infinity();
      continue;
    }
    __m512 acc[G];
    for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_ps();
    const uint16_t* kj = k + j * stride;
    for (int64_t c = 0; c < D; c += 32) {
      const __m512bh kv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(kj + c));
      for (int g = 0; g < G; ++g)
        acc[g] = _mm512_dpbf16_ps(acc[g], kv, reinterpret_cast<__m512bh>(_mm512_loadu_si512(q + g * D + c)));
    }
    for (int g = 0; g < G; ++g) p[g * L + j] = _mm512_reduce_add_ps(acc[g]) * scale;
  }
}

// Weighted values of G heads, 16 of the D values at a time: each position's 16 widened once, the
// G heads' sums in registers.
template <int G>
__attribute__((target("avx512f,avx512bw"))) void values(const float* w, const uint16_t* v, int64_t stride, int64_t L,
                                                        const bool* mask, int64_t D, float* y) {
  for (int64_t c = 0; c < D; c += 16) {
    __m512 acc[G];
    for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_ps();
    for (int64_t j = 0; j < L; ++j) {
      if (mask && !mask[j]) continue;
      const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + j * stride + c));
      const __m512 vf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
      for (int g = 0; g < G; ++g) acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(w[g * L + j]), vf, acc[g]);
    }
    for (int g = 0; g < G; ++g) _mm512_storeu_ps(y + g * D + c, acc[g]);
  }
}

template <template <int> class F, typename... Args>
void by_heads(int64_t G, Args... args) {
  switch (G) {
    case 1: return F<1>::run(args...);
    case 2: return F<2>::run(args...);
    case 3: return F<3>::run(args...);
    case 4: return F<4>::run(args...);
    case 5: return F<5>::run(args...);
    case 6: return F<6>::run(args...);
    case 7: return F<7>::run(args...);
    default: return F<8>::run(args...);
  }
}

template <int G>
struct Scores {
  static void run(const uint16_t* q, const uint16_t* k, int64_t stride, int64_t L, const bool* mask, int64_t D,
                  float scale, float* p) {
    scores<G>(q, k, stride, L, mask, D, scale, p);
  }
};

template <int G>
struct Values {
  static void run(const float* w, const uint16_t* v, int64_t stride, int64_t L, const bool* mask, int64_t D,
                  float* y) {
    values<G>(w, v, stride, L, mask, D, y);
  }
};

}  // namespace

bool attend_bf16_runs(int64_t G, int64_t D) {
  static const bool isa = few_rows_isa() == "avx512bf16";
  return isa && G >= 1 && G <= 8 && D % 32 == 0;
}

void scores_bf16(const uint16_t* q, const uint16_t* k, int64_t stride, int64_t L, const bool* mask, int64_t G,
                 int64_t D, float scale, float* p) {
  by_heads<Scores>(G, q, k, stride, L, mask, D, scale, p);
}

void values_bf16(const float* w, const uint16_t* v, int64_t stride, int64_t L, const bool* mask, int64_t G, int64_t D,
                 float* y) {
  by_heads<Values>(G, w, v, stride, L, mask, D, y);
}

}  // namespace stagecraft_native
