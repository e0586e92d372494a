// The CPU kernel of `stagecraft::nf4_linear` (models/layers/nf4.py) in C++: bitsandbytes' fused
// NF4 GEMV called from the dispatcher without a trip through Python. Built on first use with
// torch.utils.cpp_extension (a few seconds, cached); where it cannot be built, nf4.py registers the
// same kernel in Python instead. The operator's schema is defined in nf4.py; this file adds its
// CPU implementation and `stagecraft::nf4_bind`, which hands it the kernel's address (taken from
// bitsandbytes' library through ctypes, so nothing here links against bitsandbytes).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace {

// gemv_4bit_inference_cpu_nf4_bf16(rows, outputs, inputs, x, codes, absmax, out, block size,
// x's row stride, out's row stride)
using Kernel = void (*)(int64_t, int64_t, int64_t, const void*, const void*, const void*, void*, int64_t, int64_t,
                        int64_t);
Kernel kernel = nullptr;
constexpr int64_t kBlock = 64;  // inputs per absmax (nf4.BLOCK)

void bind(int64_t address) { kernel = reinterpret_cast<Kernel>(address); }

// x (rows, inputs) @ the NF4 weight's transpose: (rows, outputs) in bf16.
at::Tensor nf4_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& absmax, int64_t outputs) {
  TORCH_CHECK(kernel != nullptr, "stagecraft::nf4_linear: no kernel bound (stagecraft::nf4_bind)");
  TORCH_CHECK(x.dim() == 2, "stagecraft::nf4_linear: x must be (rows, inputs)");
  const at::Tensor a = x.scalar_type() == at::kBFloat16 ? x.contiguous() : x.to(at::kBFloat16).contiguous();
  const int64_t rows = a.size(0), inputs = a.size(1);
  at::Tensor out = at::empty({rows, outputs}, a.options());
  kernel(rows, outputs, inputs, a.const_data_ptr(), codes.const_data_ptr(), absmax.const_data_ptr(),
         out.mutable_data_ptr(), kBlock, inputs, outputs);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(stagecraft, m) { m.def("nf4_bind(int address) -> ()", bind); }

TORCH_LIBRARY_IMPL(stagecraft, CPU, m) { m.impl("nf4_linear", nf4_linear); }
