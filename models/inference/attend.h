// One query's attention over a bf16 KV cache with AVX-512's bf16 dot products (attend.cpp): the
// query heads that share a KV head together, each cached key and value read and widened once for
// all of them. native_step.cpp's attention calls these where `attend_bf16_runs` says they run, its
// own loops elsewhere.
#pragma once

#include <cstdint>

namespace stagecraft_native {

// Whether the kernels below run here for G query heads a KV head and D values a head: the CPU has
// AVX-512's bf16 dot products (few_rows_isa() "avx512bf16"), G <= 8 and D a multiple of 32.
bool attend_bf16_runs(int64_t G, int64_t D);

// p[g * L + j] = (q_g · k_j) * scale for the L positions j where mask[j] (all where mask is null),
// -inf elsewhere. q: G rows of D bf16 values; k_j at k + j * stride, D bf16 values.
void scores_bf16(const uint16_t* q, const uint16_t* k, int64_t stride, int64_t L, const bool* mask, int64_t G,
                 int64_t D, float scale, float* p);

// y[g * D + d] = sum over the positions j where mask[j] of w[g * L + j] * v_j[d]; v_j at v + j *
// stride, D bf16 values.
void values_bf16(const float* w, const uint16_t* v, int64_t stride, int64_t L, const bool* mask, int64_t G, int64_t D,
                 float* y);

}  // namespace stagecraft_native
