/* Run-time choice of SIMD variant: one place decides, every kernel family follows (each family
 * indexes its own table of variants with qc_isa()). */
#include <stdlib.h>
#include <string.h>
#include "simd.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)   /* arch/arm64/include/uapi/asm/hwcap.h */
#endif
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

static int current = -1;

/* This architecture's levels, weakest first: qc_set_isa caps a request along this order. */
#if defined(__x86_64__) || defined(__i386__)
static const int levels[] = {QC_ISA_SCALAR, QC_ISA_AVX2, QC_ISA_AVX512, QC_ISA_AVX512VNNI};
#elif defined(__aarch64__)
static const int levels[] = {QC_ISA_SCALAR, QC_ISA_NEON, QC_ISA_NEONDOT};
#else
static const int levels[] = {QC_ISA_SCALAR};
#endif
#define NLEVELS ((int)(sizeof levels / sizeof levels[0]))

#if defined(__aarch64__)
/* The ARMv8.2 dot-product instructions (udot/sdot), as the OS reports them. */
static int arm_dotprod(void) {
#if defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
    int on = 0;
    size_t len = sizeof on;
    /* macOS 12 and later; where the key is missing the answer is no */
    return sysctlbyname("hw.optional.arm.FEAT_DotProd", &on, &len, NULL, 0) == 0 && on;
#else
    return 0;
#endif
}
#endif

int qc_isa_best(void) {
    const char *off = getenv("QCNN_DISABLE_SIMD");
    if (off && *off && strcmp(off, "0") != 0)
        return QC_ISA_SCALAR;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    /* libgcc also checks that the OS saves the wider registers (XCR0) before reporting these. */
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni") ? QC_ISA_AVX512VNNI
                                                                                              : QC_ISA_AVX512;
    if (avx2)
        return QC_ISA_AVX2;
#elif defined(__aarch64__)
    return arm_dotprod() ? QC_ISA_NEONDOT : QC_ISA_NEON;
#endif
    return QC_ISA_SCALAR;
}

/* The strongest level of this architecture that is at most both `isa` and `limit` (a level of this
 * architecture); a level of another architecture (or nonsense) gives scalar. */
static int capped(int isa, int limit) {
    int want = -1, top = 0;
    for (int i = 0; i < NLEVELS; i++) {
        if (levels[i] == isa) want = i;
        if (levels[i] == limit) top = i;
    }
    return want < 0 ? QC_ISA_SCALAR : levels[want < top ? want : top];
}

/* QCNN_ISA=scalar|avx2|avx512|avx512vnni (x86), scalar|neon|neondot (ARM) caps the variants, so that
 * one machine can measure and test the paths of the CPUs below it (most users have AVX2 only).  An
 * unknown name caps at scalar: qcnn/kernels.py refuses it with a message before any kernel runs. */
int qc_isa_cap(void) {
    static const char *names[QC_ISA_COUNT] = {"scalar", "avx2", "avx512", "avx512vnni", "neon", "neondot"};
    int best = qc_isa_best();
    const char *cap = getenv("QCNN_ISA");
    if (!cap || !*cap)
        return best;
    for (int i = 0; i < QC_ISA_COUNT; i++)
        if (strcmp(cap, names[i]) == 0)
            return capped(i, best);
    return QC_ISA_SCALAR;
}

int qc_isa(void) {
    if (current < 0)
        current = qc_isa_cap();
    return current;
}

int qc_set_isa(int isa) {
    current = capped(isa, qc_isa_cap());
    return current;
}

_Atomic int qc_ran_[QC_FAMILY_COUNT];

int qc_variants_ran(int family) {
    return family >= 0 && family < QC_FAMILY_COUNT ? atomic_load(&qc_ran_[family]) : 0;
}

void qc_variants_reset(void) {
    for (int f = 0; f < QC_FAMILY_COUNT; f++) atomic_store(&qc_ran_[f], 0);
}
