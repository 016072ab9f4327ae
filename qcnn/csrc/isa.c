/* Run-time choice of SIMD variant: one place decides, every kernel family follows (each family
 * indexes its own table of variants with qc_isa()). */
#include <stdlib.h>
#include <string.h>
#include "qcnn.h"

static int current = -1;

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
#endif
    return QC_ISA_SCALAR;
}

/* QCNN_ISA=scalar|avx2|avx512|avx512vnni caps the variants, so that one machine can measure and
 * test the paths of the CPUs below it (most users have AVX2 only).  An unknown name caps at scalar:
 * qcnn/kernels.py refuses it with a message before any kernel runs. */
int qc_isa_cap(void) {
    static const char *names[QC_ISA_COUNT] = {"scalar", "avx2", "avx512", "avx512vnni"};
    int best = qc_isa_best();
    const char *cap = getenv("QCNN_ISA");
    if (!cap || !*cap)
        return best;
    for (int i = 0; i < QC_ISA_COUNT; i++)
        if (strcmp(cap, names[i]) == 0)
            return i < best ? i : best;
    return QC_ISA_SCALAR;
}

int qc_isa(void) {
    if (current < 0)
        current = qc_isa_cap();
    return current;
}

int qc_set_isa(int isa) {
    int best = qc_isa_cap();
    current = isa < QC_ISA_SCALAR ? QC_ISA_SCALAR : (isa > best ? best : isa);
    return current;
}
