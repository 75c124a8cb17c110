// SIMD lanes for the CPU step kernels: 8 floats as a GCC/Clang vector type, with exp and tanh
// written on it, so the cell math of cell_math.h runs 8 hidden units at a time.
//
// Why not at::vec::Vectorized: outside ATen's per-ISA builds (an extension is compiled for the
// baseline ISA) it falls back to scalar std::exp / std::tanh per element, which made the
// pointwise step slower than the GEMM it follows. Generic vector types compile to SSE on the
// baseline and to AVX2/FMA in the clones the launcher asks for (see ops_cpu.cpp).
//
// Accuracy: exp is the Cephes single-precision scheme (range reduction by ln 2 in two parts, a
// degree-5 polynomial, exponent by bit arithmetic), within 2 ulp on [-87, 88]; tanh uses an odd
// polynomial below 0.625 and 1 - 2 / (exp(2|x|) + 1) above, within a few ulp. That is float
// rounding level against torch.nn's SLEEF (1 ulp), far below the parity tolerances.
#pragma once

#include <cstdint>
#include <cstring>

#include "fastrnn/cell_math.h"

namespace fastrnn {
namespace cpu {

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

// A broadcastable wrapper: the cell math writes V(1), V(0) - x, a * b + c.
struct VecF {
  f32x8 v;
  VecF() = default;
  VecF(f32x8 x) : v(x) {}
  explicit VecF(float x) : v(f32x8{} + x) {}
  explicit VecF(int x) : VecF(static_cast<float>(x)) {}
  FASTRNN_INLINE friend VecF operator+(VecF a, VecF b) { return a.v + b.v; }
  FASTRNN_INLINE friend VecF operator-(VecF a, VecF b) { return a.v - b.v; }
  FASTRNN_INLINE friend VecF operator*(VecF a, VecF b) { return a.v * b.v; }
  FASTRNN_INLINE friend VecF operator/(VecF a, VecF b) { return a.v / b.v; }
};

FASTRNN_INLINE f32x8 select(i32x8 mask, f32x8 a, f32x8 b) {
  return reinterpret_cast<f32x8>((mask & reinterpret_cast<i32x8>(a)) | (~mask & reinterpret_cast<i32x8>(b)));
}

FASTRNN_INLINE f32x8 exp8(f32x8 x) {
  const f32x8 hi = f32x8{} + 88.3762626647949f, lo = f32x8{} - 87.3365478515625f;
  x = select(x > hi, hi, x);
  x = select(x < lo, lo, x);
  // n = round(x / ln 2); r = x - n ln 2 with ln 2 split so n * ln2_hi is exact.
  f32x8 fx = x * 1.44269504088896341f + 0.5f;
  i32x8 n = __builtin_convertvector(fx, i32x8);
  f32x8 fn = __builtin_convertvector(n, f32x8);
  fn = select(fn > fx, fn - 1.0f, fn);  // floor (conversion truncates toward zero)
  n = __builtin_convertvector(fn, i32x8);
  const f32x8 r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  const f32x8 r2 = r * r;
  f32x8 p = f32x8{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const i32x8 scale = (n + 127) << 23;  // 2^n; n in [-126, 127] after the clamp
  return p * reinterpret_cast<f32x8>(scale);
}

FASTRNN_INLINE f32x8 tanh8(f32x8 x) {
  const i32x8 sign = reinterpret_cast<i32x8>(x) & static_cast<int32_t>(0x80000000u);
  const f32x8 ax = reinterpret_cast<f32x8>(reinterpret_cast<i32x8>(x) & 0x7fffffff);
  // |x| < 0.625: x + x^3 P(x^2)
  const f32x8 z = ax * ax;
  f32x8 p = f32x8{} - 5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const f32x8 small = ax + ax * z * p;
  // otherwise 1 - 2 / (exp(2|x|) + 1), which saturates to 1 for large |x|
  const f32x8 large = 1.0f - 2.0f / (exp8(ax + ax) + 1.0f);
  const f32x8 t = select(ax < 0.625f, small, large);
  return reinterpret_cast<f32x8>(reinterpret_cast<i32x8>(t) | sign);
}

}  // namespace cpu

template <>
struct Lanes<cpu::VecF> {
  static constexpr int64_t width = 8;
  FASTRNN_INLINE static cpu::VecF load(const float* p) {
    cpu::f32x8 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  FASTRNN_INLINE static void store(float* p, cpu::VecF v) { std::memcpy(p, &v.v, sizeof(v.v)); }
  FASTRNN_INLINE static cpu::VecF exp(cpu::VecF x) { return cpu::exp8(x.v); }
  FASTRNN_INLINE static cpu::VecF tanh(cpu::VecF x) { return cpu::tanh8(x.v); }
};

}  // namespace fastrnn
