// An AVX2-only view of this x86-64 CPU for one command: no AVX-512, AVX-VNNI or AMX, at native speed.
//
// Libraries choose their kernels from CPUID when they load (torch's ATen and oneDNN, onnxruntime's MLAS,
// OpenVINO, numpy); onnxruntime has no switch to hold it to AVX2 (oneDNN's ONEDNN_MAX_CPU_ISA and torch's
// ATEN_CPU_CAPABILITY hold only their own). Loaded with LD_PRELOAD, this turns on Linux's CPUID faulting
// (arch_prctl ARCH_SET_CPUID; /proc/cpuinfo must list cpuid_fault): every CPUID instruction then traps, and the
// SIGSEGV handler runs the real CPUID with faulting briefly off, clears the feature bits of AVX-512, AVX-VNNI,
// AVX512-BF16 and AMX, and steps over the instruction. The kernels chosen then are the ones an AVX2-only CPU
// runs, with their numerics; the clock, caches and cores stay this machine's. The program's own SIGSEGV
// handlers (Python's faulthandler, Ray's) are kept and called for every other fault. Chromium is left alone.
// /proc/cpuinfo still lists the real flags. Build and use through bench/avx2only.sh.
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn real_sigaction;
static struct sigaction chained;  // the SIGSEGV handler the program set, called for faults that are not CPUID
static int active;

#define BIT(n) (1u << (n))

static void set_faulting(int on) { syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1); }

static void mask(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
    if (leaf == 7 && sub == 0) {
        // EBX: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL; ECX: VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ;
        // EDX: 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8.
        *b &= ~(BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31));
        *c &= ~(BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14));
        *d &= ~(BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25));
    } else if (leaf == 7 && sub == 1) {
        *a &= ~(BIT(4) | BIT(5) | BIT(23));  // AVX-VNNI, AVX512-BF16, AVX-IFMA
        *d &= ~(BIT(4) | BIT(5) | BIT(19));  // AVX-VNNI-INT8, AVX-NE-CONVERT, AVX10
    } else if (leaf == 0xd && sub == 0) {
        *a &= ~(BIT(5) | BIT(6) | BIT(7) | BIT(17) | BIT(18));  // the AVX-512 and AMX register states
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *r = uc->uc_mcontext.gregs;
    const uint8_t *ip = (const uint8_t *)r[REG_RIP];
    // A faulting CPUID is a general-protection fault (SI_KERNEL); a bad address (SEGV_MAPERR, e.g. a jump to
    // unmapped code) is not, and reading at its RIP would fault again.
    if (active && info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {  // CPUID
        uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
        set_faulting(0);
        __cpuid_count(leaf, sub, a, b, c, d);
        set_faulting(1);
        mask(leaf, sub, &a, &b, &c, &d);
        r[REG_RAX] = a, r[REG_RBX] = b, r[REG_RCX] = c, r[REG_RDX] = d;
        r[REG_RIP] += 2;
        return;
    }
    if ((chained.sa_flags & SA_SIGINFO) && chained.sa_sigaction) {
        chained.sa_sigaction(sig, info, context);
    } else if (chained.sa_handler != SIG_DFL && chained.sa_handler != SIG_IGN) {
        chained.sa_handler(sig);
    } else {  // a real crash: the default action when the instruction runs again
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        real_sigaction(SIGSEGV, &dfl, NULL);
    }
}

// The program's SIGSEGV handler is recorded and chained instead of replacing this one.
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    if (!active || sig != SIGSEGV) return real_sigaction(sig, act, old);
    if (old) *old = chained;
    if (act) chained = *act;
    return 0;
}

__sighandler_t signal(int sig, __sighandler_t handler) {
    struct sigaction act = {.sa_handler = handler, .sa_flags = SA_RESTART}, old;
    return sigaction(sig, &act, &old) == 0 ? old.sa_handler : SIG_ERR;
}

__attribute__((constructor)) static void start(void) {
    char exe[4096] = {0};
    if (readlink("/proc/self/exe", exe, sizeof exe - 1) > 0 && strstr(exe, "chrom")) return;
    real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    struct sigaction act = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK};
    sigemptyset(&act.sa_mask);
    // Faulting is per thread and inherited by the threads and children created after; execve turns it off, and
    // LD_PRELOAD turns it on again in the new program.
    if (real_sigaction(SIGSEGV, &act, NULL) == 0 && syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) == 0) active = 1;
}
