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

// Whether the AVX-512 code runs: the CPU has AVX-512F and STAGECRAFT_NATIVE_NO_AVX512 is unset (it
// takes the paths of a CPU without it, so that a machine with it can test them).
bool few_rows_avx512();

// The code the few-rows products run here: "avx512", "avx2" (int8 only) or "baseline".
std::string few_rows_isa();

// The precisions whose products are ours up to kFewRows rows here: "int8" everywhere; "fp32"
// (the rows layout) with AVX-512, and "int4" with it where torch's int4 layout is known.
std::vector<std::string> few_rows_products();

// sums[r * ld + (o - o0)] = x[r] · w[o] for the outputs [o0, o1): R rows of x (R, K), w (outputs,
// K) fp32 (few_rows_avx512() only) or int8 (any CPU).
void few_rows_sums(int64_t R, const float* x, const float* w, int64_t K, int64_t o0, int64_t o1, float* sums,
                   int64_t ld);
void few_rows_sums(int64_t R, const float* x, const int8_t* w, int64_t K, int64_t o0, int64_t o1, float* sums,
                   int64_t ld);

// Whether torch's `_convert_weight_to_int4pack_for_cpu` lays int4 weights out as int4_sums reads
// them (checked once, on a probe weight).
bool int4_layout_known();

// The units int4_sums splits N outputs into: each 64-output block's two halves, and a last
// block of fewer outputs as one.
int64_t int4_units(int64_t N);

// y[r * N + n] = x[r] · w[n] for the outputs of units [u0, u1) (int4_units), w in torch's int4
// layout of N outputs (a multiple of 16) and K inputs, each dequantized as torch's kernel does,
// (q - 8) * scale + zero, from `scales` (K / group, N, 2) bf16 (scale, zero). few_rows_avx512() only.
void int4_sums(int64_t R, const float* x, const uint8_t* w, const uint16_t* scales, int64_t K, int64_t N,
               int64_t group, int64_t u0, int64_t u1, float* y);

}  // namespace stagecraft_native
