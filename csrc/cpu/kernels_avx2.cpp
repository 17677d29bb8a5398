// The bn_act and gan_loss kernels compiled a second time for AVX2 + FMA + F16C
// (at::vec's AVX2 implementation, Sleef for exp/log1p), chosen at run time by
// bn_act.cpp / gan_loss.cpp when the CPU has them and GAN_FAST_CPU_ISA is not
// "default" (which forces the portable kernels, for comparisons).
//
// Safety: every kernel template has internal linkage (*_impl.h) and the
// at::vec types live in namespace at::vec::AVX2, so this object defines no
// weak symbol that the portable build could pick up by mistake (check with
// `nm -C --defined-only kernels_avx2.o | grep " W "`: only AVX2 names).
// GAN_FAST_NO_AVX2 (a build define) or a non-GCC / non-x86-64 compiler leaves
// only the portable kernels.
#include <cstdlib>
#include <cstring>

#include "bn_act_kernels.h"
#include "gan_loss_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(GAN_FAST_NO_AVX2)

#pragma GCC push_options
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC target("avx2,fma,f16c")
// g++ does not define the ISA macros for a target pragma; the headers (sleef.h,
// at::vec) select their AVX2 declarations with them.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define GAN_FAST_ISA avx2
#include "bn_act_impl.h"
#include "gan_loss_impl.h"
#pragma GCC diagnostic pop
#pragma GCC pop_options

namespace gan_fast::cpu {
namespace {
// Compiled for the baseline ISA: safe to call on any x86-64 CPU.
bool use_avx2() {
  static const bool ok = [] {
    const char* env = std::getenv("GAN_FAST_CPU_ISA");
    if (env != nullptr && std::strcmp(env, "default") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return ok;
}
}  // namespace

const BnKernels* bn_kernels_avx2() { return use_avx2() ? &avx2::kernels() : nullptr; }
const LossKernels* loss_kernels_avx2() { return use_avx2() ? &avx2::loss_kernels() : nullptr; }
}  // namespace gan_fast::cpu

#else

namespace gan_fast::cpu {
const BnKernels* bn_kernels_avx2() { return nullptr; }
const LossKernels* loss_kernels_avx2() { return nullptr; }
}  // namespace gan_fast::cpu

#endif
