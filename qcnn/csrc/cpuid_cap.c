/* What CPUID tells the other libraries of this process, capped at one of our SIMD levels.
 *
 * `qcnn bench --isa avx2 --peers` measures the common AVX2 machine on an AVX-512 one; our kernels
 * follow qc_set_isa, but onnxruntime, MNN and ncnn choose theirs from CPUID alone (OpenVINO has
 * ONEDNN_MAX_CPU_ISA) and would run AVX-512 code beside our AVX2.  Linux on x86-64 can make CPUID
 * fault in a thread (arch_prctl ARCH_SET_CPUID, on CPUs with CPUID faulting: "cpuid_fault" in
 * /proc/cpuinfo); the SIGSEGV handler installed here then runs the instruction itself, clears the
 * feature bits above the cap and resumes after it.  The setting belongs to the calling thread and
 * is inherited by the threads it creates later, so it is installed before the libraries load: they
 * read CPUID when they initialise.  Any other fault goes to the handler that was there before. */
#if defined(__linux__) && defined(__x86_64__)
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include "qcnn.h"

#if defined(__linux__) && defined(__x86_64__)
static struct sigaction previous;
static volatile sig_atomic_t cap = -1;

static long cpuid_enabled(int on) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on); }

/* The feature bits a CPU of level `level` would not have (Intel SDM vol. 2, CPUID). */
static void mask(unsigned leaf, unsigned sub, unsigned r[4], int level) {
    enum { EAX, EBX, ECX, EDX };
    if (leaf == 1 && level < QC_ISA_AVX2)
        r[ECX] &= ~(1u << 12 | 1u << 28 | 1u << 29);                    /* FMA, AVX, F16C */
    if (leaf == 7 && sub == 0) {
        if (level < QC_ISA_AVX2)
            r[EBX] &= ~(1u << 3 | 1u << 5 | 1u << 8);                   /* BMI1, AVX2, BMI2 */
        if (level < QC_ISA_AVX512)                                      /* AVX-512 F DQ IFMA PF ER CD BW VL */
            r[EBX] &= ~(1u << 16 | 1u << 17 | 1u << 21 | 1u << 26 | 1u << 27 | 1u << 28 | 1u << 30 | 1u << 31);
        if (level < QC_ISA_AVX512VNNI) {
            r[ECX] &= ~(1u << 1 | 1u << 6 | 1u << 11 | 1u << 12 | 1u << 14);   /* VBMI VBMI2 VNNI BITALG VPOPCNTDQ */
            r[EDX] &= ~(1u << 2 | 1u << 3 | 1u << 8 | 1u << 23);               /* 4VNNIW 4FMAPS VP2INTERSECT FP16 */
        }
        r[EDX] &= ~(1u << 22 | 1u << 24 | 1u << 25);                    /* AMX BF16, TILE, INT8: beyond every cap */
    }
    if (leaf == 7 && sub == 1 && level < QC_ISA_AVX512VNNI)
        r[EAX] &= ~(1u << 4 | 1u << 5 | 1u << 21 | 1u << 23);           /* AVX-VNNI AVX512_BF16 AMX-FP16 AVX-IFMA */
    if (leaf == 0xD && sub == 0) {                                      /* register state the CPU could save */
        if (level < QC_ISA_AVX512) r[EAX] &= ~(7u << 5);                /* opmask, ZMM_Hi256, Hi16_ZMM */
        r[EAX] &= ~(3u << 17);                                          /* AMX tile state */
    }
}

static void on_fault(int sig, siginfo_t *info, void *context) {
    greg_t *g = ((ucontext_t *)context)->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    /* a faulting CPUID raises #GP, SI_KERNEL; the instruction is there to read */
    if (cap >= 0 && info->si_code == SI_KERNEL && ip[0] == 0x0F && ip[1] == 0xA2) {
        unsigned r[4];
        const unsigned leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX];
        cpuid_enabled(1);
        __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
        cpuid_enabled(0);
        mask(leaf, sub, r, cap);
        g[REG_RAX] = r[0], g[REG_RBX] = r[1], g[REG_RCX] = r[2], g[REG_RDX] = r[3];
        g[REG_RIP] += 2;
        return;
    }
    if (previous.sa_flags & SA_SIGINFO)
        previous.sa_sigaction(sig, info, context);
    else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN)
        previous.sa_handler(sig);
    else
        signal(sig, SIG_DFL);      /* the instruction faults again, now with the default action */
}
#endif

int qc_cap_cpuid(int isa) {
#if defined(__linux__) && defined(__x86_64__)
    if (isa != QC_ISA_SCALAR && isa != QC_ISA_AVX2 && isa != QC_ISA_AVX512 && isa != QC_ISA_AVX512VNNI)
        return 0;
    if (cap < 0) {
        struct sigaction on = {0};
        on.sa_sigaction = on_fault;
        on.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&on.sa_mask);
        if (sigaction(SIGSEGV, &on, &previous) != 0)
            return 0;
    }
    cap = isa;
    if (cpuid_enabled(0) != 0) {        /* no CPUID faulting here (ENODEV) */
        sigaction(SIGSEGV, &previous, NULL);
        cap = -1;
        return 0;
    }
    return 1;
#else
    (void)isa;
    return 0;
#endif
}

int qc_cpuid(unsigned leaf, unsigned sub, unsigned out[4]) {
#if defined(__x86_64__) || defined(__i386__)
    __cpuid_count(leaf, sub, out[0], out[1], out[2], out[3]);
    return 1;
#else
    (void)leaf, (void)sub;
    out[0] = out[1] = out[2] = out[3] = 0;
    return 0;
#endif
}
