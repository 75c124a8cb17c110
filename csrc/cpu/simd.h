// SIMD lanes for the CPU step kernels: 16 floats as a GCC/Clang vector type, with exp and tanh
// written on it, so the cell math of cell_math.h runs 16 hidden units at a time.
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

// 16 lanes: one AVX-512 register in the x86-64-v4 build of the step loops, two AVX2 registers
// in the v3 one (the compiler splits wider-than-native vectors), four SSE ones on the baseline.
constexpr int kLanes = 16;
typedef float f32v __attribute__((vector_size(kLanes * 4)));
typedef int32_t i32v __attribute__((vector_size(kLanes * 4)));
// 8 lanes, for the streaming dot products of the single-step path (memory bound; 16 would only
// add register pressure on AVX2).
typedef float f32x8 __attribute__((vector_size(32)));

FASTRNN_INLINE f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// A broadcastable wrapper: the cell math writes V(1), V(0) - x, a * b + c.
struct VecF {
  f32v v;
  VecF() = default;
  VecF(f32v x) : v(x) {}
  explicit VecF(float x) : v(f32v{} + x) {}
  explicit VecF(int x) : VecF(static_cast<float>(x)) {}
  FASTRNN_INLINE friend VecF operator+(VecF a, VecF b) { return a.v + b.v; }
  FASTRNN_INLINE friend VecF operator-(VecF a, VecF b) { return a.v - b.v; }
  FASTRNN_INLINE friend VecF operator*(VecF a, VecF b) { return a.v * b.v; }
  FASTRNN_INLINE friend VecF operator/(VecF a, VecF b) { return a.v / b.v; }
};

FASTRNN_INLINE f32v select(i32v mask, f32v a, f32v b) {
  return reinterpret_cast<f32v>((mask & reinterpret_cast<i32v>(a)) | (~mask & reinterpret_cast<i32v>(b)));
}

FASTRNN_INLINE f32v expv(f32v x) {
  const f32v hi = f32v{} + 88.3762626647949f, lo = f32v{} - 87.3365478515625f;
  x = select(x > hi, hi, x);
  x = select(x < lo, lo, x);
  // n = round(x / ln 2); r = x - n ln 2 with ln 2 split so n * ln2_hi is exact.
  f32v fx = x * 1.44269504088896341f + 0.5f;
  i32v n = __builtin_convertvector(fx, i32v);
  f32v fn = __builtin_convertvector(n, f32v);
  fn = select(fn > fx, fn - 1.0f, fn);  // floor (conversion truncates toward zero)
  n = __builtin_convertvector(fn, i32v);
  const f32v r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  const f32v r2 = r * r;
  f32v p = f32v{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const i32v scale = (n + 127) << 23;  // 2^n; n in [-126, 127] after the clamp
  return p * reinterpret_cast<f32v>(scale);
}

FASTRNN_INLINE f32v tanhv(f32v x) {
  const i32v sign = reinterpret_cast<i32v>(x) & static_cast<int32_t>(0x80000000u);
  const f32v ax = reinterpret_cast<f32v>(reinterpret_cast<i32v>(x) & 0x7fffffff);
  // |x| < 0.625: x + x^3 P(x^2)
  const f32v z = ax * ax;
  f32v p = f32v{} - 5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const f32v small = ax + ax * z * p;
  // otherwise 1 - 2 / (exp(2|x|) + 1), which saturates to 1 for large |x|
  const f32v large = 1.0f - 2.0f / (expv(ax + ax) + 1.0f);
  const f32v t = select(ax < 0.625f, small, large);
  return reinterpret_cast<f32v>(reinterpret_cast<i32v>(t) | sign);
}

}  // namespace cpu

template <>
struct Lanes<cpu::VecF> {
  static constexpr int64_t width = cpu::kLanes;
  FASTRNN_INLINE static cpu::VecF load(const float* p) {
    cpu::f32v v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  FASTRNN_INLINE static void store(float* p, cpu::VecF v) { std::memcpy(p, &v.v, sizeof(v.v)); }
  FASTRNN_INLINE static cpu::VecF exp(cpu::VecF x) { return cpu::expv(x.v); }
  FASTRNN_INLINE static cpu::VecF tanh(cpu::VecF x) { return cpu::tanhv(x.v); }
};

}  // namespace fastrnn
