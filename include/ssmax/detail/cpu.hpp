#pragma once
// What the kernels ask of the CPU at run time, beyond the instruction sets the build
// targets: which bf16 arithmetic is faster on it.

namespace ssmax::detail {

/// True when vdpbf16ps (two bf16 multiply-adds per float lane) outruns the float FMA on
/// this CPU, so that a bf16 prefill should take it (attention_options::bf16,
/// bf16_method::automatic). Decided by the vendor and read once:
/// - AMD (Zen 4, Zen 5): yes. On Zen 4 vdpbf16ps runs at twice the FMA's multiply-adds,
///   and the bf16 prefill is 1.27x the float one (docs/performance.md, "bf16 arithmetic
///   on each CPU");
/// - Intel (Cooper Lake to Granite Rapids): no. One vdpbf16ps port against two FMA ports:
///   on a Xeon of family 6, model 207 it ran at 0.49 of the FMA rate and the bf16 prefill
///   at 0.76x the float one;
/// - any other CPU: no (the float GEMM is the measured, portable choice).
inline bool bf16_dot_products_outrun_fma() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool amd = __builtin_cpu_is("amd") != 0;
  return amd;
#else
  return false;
#endif
}

}  // namespace ssmax::detail
