// Products of our own for a decode step's few rows (up to kFewRows) of fp32 activations, over
// weights in three layouts (few_rows.cpp): fp32 and int8 (outputs, inputs) rows, and torch's int4
// CPU layout. native_step.cpp calls them; past kFewRows rows, and where these do not run, it calls
// aten's kernels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace stagecraft_native {

constexpr int64_t kFewRows = 8;

// The code the few-rows products run here, the best of what the CPU has: "avx512bf16" (AVX-512
// with its bf16 dot products: int4's product needs them), "avx512", "avx2" (int8 only) or
// "baseline". STAGECRAFT_NATIVE_ISA (one of these names) caps it, so that a machine with the
// better code can test the others' paths.
std::string few_rows_isa();

// Whether the AVX-512 code runs (few_rows_isa() is "avx512bf16" or "avx512").
bool few_rows_avx512();

// The precisions whose products are ours up to kFewRows rows here: "int8" everywhere; "fp32"
// (the rows layout) with AVX-512; "int4" with its bf16 dot products where torch's int4 layout is
// the one int4_sums reads.
std::vector<std::string> few_rows_products();

// Whether int4_sums runs here (few_rows_products() has "int4").
bool few_rows_int4();

// sums[r * ld + (o - o0)] = x[r] · w[o] for the outputs [o0, o1): R rows of x (R, K), w (outputs,
// K) fp32 (few_rows_avx512() only) or int8 (any CPU; x bf16 values, `xb` as stored, `x` widened).
void few_rows_sums(int64_t R, const float* x, const float* w, int64_t K, int64_t o0, int64_t o1, float* sums,
                   int64_t ld);
void few_rows_sums(int64_t R, const uint16_t* xb, const float* x, const int8_t* w, int64_t K, int64_t o0, int64_t o1,
                   float* sums, int64_t ld);

// The units int4_sums splits N outputs into: each 64-output block's two halves, and a last
// block of fewer outputs as one.
int64_t int4_units(int64_t N);

// y[r * N + n] = x[r] · w[n] for the outputs of units [u0, u1) (int4_units), w in torch's int4
// layout of N outputs (a multiple of 16) and K inputs (a multiple of `group`), each weight
// (q - 8) * scale + zero as torch's kernel dequantizes it, `scales` (K / group, N, 2) bf16 (scale,
// zero). x (R, K) bf16 values: `xb` as stored, `xf` widened. few_rows_int4() only.
void int4_sums(int64_t R, const uint16_t* xb, const float* xf, const uint8_t* w, const uint16_t* scales, int64_t K,
               int64_t N, int64_t group, int64_t u0, int64_t u1, float* y);

}  // namespace stagecraft_native
