/* Element-wise activations for imported networks: the scalar reference (libm's expf, tanhf, erff)
 * and AVX2 / AVX-512 variants, 8 or 16 floats per step, the tail through masked loads and stores.
 *
 * The SIMD variants share one exponential: Cody-Waite range reduction x = n ln 2 + r, |r| <= ln2/2,
 * and Cephes' degree-5 polynomial for e^r (within 2 ulp of expf), scaled by 2^n through the
 * exponent bits; inputs are clamped to [-87.3, 88.7] so 2^n stays a normal float.  On top of it:
 * sigmoid = 1 / (1 + e^-x) (a true division), tanh = sign(x) (1 - e) / (1 + e) with e = e^-2|x|,
 * erf from Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, with the exponential above), so the
 * variants agree with the reference to about 1e-6 relative (sigmoid, SiLU, tanh) and 2e-7
 * absolute (erf, GELU); tests/test_onnx_layers.py holds them to that.  Each kind's loop is
 * specialised at compile time (the kind is a constant argument of an inlined body).
 *
 * The channel affine (scale, shift, activation) is one fused multiply-add and the activation per
 * value, in the same order in every variant: the variants agree with the reference bit for bit. */
#include <math.h>
#include <stdint.h>
#include "elementwise.h"
#include "simd.h"

#define EXP_HI 88.7f
#define EXP_LO -87.3f
#define ERF_P 0.3275911f
#define ERF_A1 0.254829592f
#define ERF_A2 -0.284496736f
#define ERF_A3 1.421413741f
#define ERF_A4 -1.453152027f
#define ERF_A5 1.061405429f

typedef void (*unary_fn)(const float *x, float *y, size_t n, int kind, float alpha, float beta);

static inline float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

static inline float unary_one(float v, int kind, float alpha, float beta) {
    switch (kind) {
    case QC_UNARY_SIGMOID: return 1.f / (1.f + expf(-v));
    case QC_UNARY_SILU: return v / (1.f + expf(-v));
    case QC_UNARY_HARDSIGMOID: return clampf(alpha * v + beta, 0.f, 1.f);
    case QC_UNARY_HARDSWISH: return v * clampf(v * (1.f / 6.f) + 0.5f, 0.f, 1.f);
    case QC_UNARY_TANH: return tanhf(v);
    case QC_UNARY_GELU: return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    case QC_UNARY_LEAKYRELU: return v < 0.f ? alpha * v : v;
    case QC_UNARY_ERF: return erff(v);
    case QC_UNARY_ELU: return v < 0.f ? alpha * expm1f(v) : v;
    default: return v;
    }
}

static void unary_scalar(const float *x, float *y, size_t n, int kind, float alpha, float beta) {
    for (size_t i = 0; i < n; i++) y[i] = unary_one(x[i], kind, alpha, beta);
}

#if QC_HAVE_X86
/* ---- AVX-512 ---------------------------------------------------------------------------------- */
QC_AVX512 QC_INLINE __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_LO)), _mm512_set1_ps(EXP_HI));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

QC_AVX512 QC_INLINE __m512 erf512(__m512 v) {
    const __m512 sign = _mm512_and_ps(v, _mm512_set1_ps(-0.f));
    const __m512 a = _mm512_andnot_ps(_mm512_set1_ps(-0.f), v);
    const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_fmadd_ps(a, _mm512_set1_ps(ERF_P), _mm512_set1_ps(1.f)));
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(ERF_A5), t, _mm512_set1_ps(ERF_A4));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(ERF_A3));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(ERF_A2));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(ERF_A1));
    p = _mm512_mul_ps(p, t);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
    return _mm512_or_ps(_mm512_fnmadd_ps(p, e, _mm512_set1_ps(1.f)), sign);
}

QC_AVX512 QC_INLINE __m512 unary512(__m512 v, const int kind, __m512 alpha, __m512 beta) {
    const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.f);
    switch (kind) {
    case QC_UNARY_SIGMOID:
        return _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(zero, v))));
    case QC_UNARY_SILU:
        return _mm512_div_ps(v, _mm512_add_ps(one, exp512(_mm512_sub_ps(zero, v))));
    case QC_UNARY_HARDSIGMOID:
        return _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(alpha, v, beta), zero), one);
    case QC_UNARY_HARDSWISH: {
        const __m512 g = _mm512_fmadd_ps(v, _mm512_set1_ps(1.f / 6.f), _mm512_set1_ps(0.5f));
        return _mm512_mul_ps(v, _mm512_min_ps(_mm512_max_ps(g, zero), one));
    }
    case QC_UNARY_TANH: {
        const __m512 sign = _mm512_and_ps(v, _mm512_set1_ps(-0.f));
        const __m512 a = _mm512_andnot_ps(_mm512_set1_ps(-0.f), v);
        const __m512 e = exp512(_mm512_mul_ps(a, _mm512_set1_ps(-2.f)));
        return _mm512_or_ps(_mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e)), sign);
    }
    case QC_UNARY_GELU: {
        const __m512 h = _mm512_mul_ps(v, _mm512_set1_ps(0.5f));
        return _mm512_fmadd_ps(h, erf512(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f))), h);
    }
    case QC_UNARY_LEAKYRELU:
        return _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, alpha);
    case QC_UNARY_ERF:
        return erf512(v);
    case QC_UNARY_ELU:
        return _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), _mm512_sub_ps(exp512(v), one), alpha);
    default:
        return v;
    }
}

QC_AVX512 QC_INLINE void run512(const float *x, float *y, size_t n, const int kind, float alpha, float beta) {
    const __m512 a = _mm512_set1_ps(alpha), b = _mm512_set1_ps(beta);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, unary512(_mm512_loadu_ps(x + i), kind, a, b));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, unary512(_mm512_maskz_loadu_ps(m, x + i), kind, a, b));
    }
}

QC_AVX512 static void unary_avx512(const float *x, float *y, size_t n, int kind, float alpha, float beta) {
    switch (kind) {
    case QC_UNARY_SIGMOID: run512(x, y, n, QC_UNARY_SIGMOID, alpha, beta); break;
    case QC_UNARY_SILU: run512(x, y, n, QC_UNARY_SILU, alpha, beta); break;
    case QC_UNARY_HARDSIGMOID: run512(x, y, n, QC_UNARY_HARDSIGMOID, alpha, beta); break;
    case QC_UNARY_HARDSWISH: run512(x, y, n, QC_UNARY_HARDSWISH, alpha, beta); break;
    case QC_UNARY_TANH: run512(x, y, n, QC_UNARY_TANH, alpha, beta); break;
    case QC_UNARY_GELU: run512(x, y, n, QC_UNARY_GELU, alpha, beta); break;
    case QC_UNARY_LEAKYRELU: run512(x, y, n, QC_UNARY_LEAKYRELU, alpha, beta); break;
    case QC_UNARY_ERF: run512(x, y, n, QC_UNARY_ERF, alpha, beta); break;
    case QC_UNARY_ELU: run512(x, y, n, QC_UNARY_ELU, alpha, beta); break;
    default: unary_scalar(x, y, n, kind, alpha, beta);
    }
}

/* ---- AVX2 ------------------------------------------------------------------------------------- */
QC_AVX2 QC_INLINE __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_LO)), _mm256_set1_ps(EXP_HI));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

QC_AVX2 QC_INLINE __m256 erf256(__m256 v) {
    const __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.f));
    const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.f), v);
    const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_fmadd_ps(a, _mm256_set1_ps(ERF_P), _mm256_set1_ps(1.f)));
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(ERF_A5), t, _mm256_set1_ps(ERF_A4));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A3));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A2));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A1));
    p = _mm256_mul_ps(p, t);
    const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
    return _mm256_or_ps(_mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.f)), sign);
}

QC_AVX2 QC_INLINE __m256 unary256(__m256 v, const int kind, __m256 alpha, __m256 beta) {
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.f);
    switch (kind) {
    case QC_UNARY_SIGMOID:
        return _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_sub_ps(zero, v))));
    case QC_UNARY_SILU:
        return _mm256_div_ps(v, _mm256_add_ps(one, exp256(_mm256_sub_ps(zero, v))));
    case QC_UNARY_HARDSIGMOID:
        return _mm256_min_ps(_mm256_max_ps(_mm256_fmadd_ps(alpha, v, beta), zero), one);
    case QC_UNARY_HARDSWISH: {
        const __m256 g = _mm256_fmadd_ps(v, _mm256_set1_ps(1.f / 6.f), _mm256_set1_ps(0.5f));
        return _mm256_mul_ps(v, _mm256_min_ps(_mm256_max_ps(g, zero), one));
    }
    case QC_UNARY_TANH: {
        const __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.f));
        const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.f), v);
        const __m256 e = exp256(_mm256_mul_ps(a, _mm256_set1_ps(-2.f)));
        return _mm256_or_ps(_mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e)), sign);
    }
    case QC_UNARY_GELU: {
        const __m256 h = _mm256_mul_ps(v, _mm256_set1_ps(0.5f));
        return _mm256_fmadd_ps(h, erf256(_mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f))), h);
    }
    case QC_UNARY_LEAKYRELU:
        return _mm256_blendv_ps(v, _mm256_mul_ps(v, alpha), _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
    case QC_UNARY_ERF:
        return erf256(v);
    case QC_UNARY_ELU:
        return _mm256_blendv_ps(v, _mm256_mul_ps(_mm256_sub_ps(exp256(v), one), alpha),
                                _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
    default:
        return v;
    }
}

QC_AVX2 QC_INLINE void run256(const float *x, float *y, size_t n, const int kind, float alpha, float beta) {
    const __m256 a = _mm256_set1_ps(alpha), b = _mm256_set1_ps(beta);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, unary256(_mm256_loadu_ps(x + i), kind, a, b));
    if (i < n) {
        const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - i)), lanes);
        _mm256_maskstore_ps(y + i, m, unary256(_mm256_maskload_ps(x + i, m), kind, a, b));
    }
}

QC_AVX2 static void unary_avx2(const float *x, float *y, size_t n, int kind, float alpha, float beta) {
    switch (kind) {
    case QC_UNARY_SIGMOID: run256(x, y, n, QC_UNARY_SIGMOID, alpha, beta); break;
    case QC_UNARY_SILU: run256(x, y, n, QC_UNARY_SILU, alpha, beta); break;
    case QC_UNARY_HARDSIGMOID: run256(x, y, n, QC_UNARY_HARDSIGMOID, alpha, beta); break;
    case QC_UNARY_HARDSWISH: run256(x, y, n, QC_UNARY_HARDSWISH, alpha, beta); break;
    case QC_UNARY_TANH: run256(x, y, n, QC_UNARY_TANH, alpha, beta); break;
    case QC_UNARY_GELU: run256(x, y, n, QC_UNARY_GELU, alpha, beta); break;
    case QC_UNARY_LEAKYRELU: run256(x, y, n, QC_UNARY_LEAKYRELU, alpha, beta); break;
    case QC_UNARY_ERF: run256(x, y, n, QC_UNARY_ERF, alpha, beta); break;
    case QC_UNARY_ELU: run256(x, y, n, QC_UNARY_ELU, alpha, beta); break;
    default: unary_scalar(x, y, n, kind, alpha, beta);
    }
}
#endif

#if QC_HAVE_NEON
/* ---- NEON: the same polynomials as the x86 variants, four lanes ------------------------------- */
QC_INLINE float32x4_t exp128(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(EXP_LO)), vdupq_n_f32(EXP_HI));
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.f)), p, vmulq_f32(r, r));
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

QC_INLINE float32x4_t with_sign128(float32x4_t magnitude, float32x4_t v) {
    const uint32x4_t sign = vandq_u32(vreinterpretq_u32_f32(v), vdupq_n_u32(0x80000000u));
    return vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(magnitude), sign));
}

QC_INLINE float32x4_t erf128(float32x4_t v) {
    const float32x4_t a = vabsq_f32(v), one = vdupq_n_f32(1.f);
    const float32x4_t t = vdivq_f32(one, vfmaq_f32(one, a, vdupq_n_f32(ERF_P)));
    float32x4_t p = vfmaq_f32(vdupq_n_f32(ERF_A4), vdupq_n_f32(ERF_A5), t);
    p = vfmaq_f32(vdupq_n_f32(ERF_A3), p, t);
    p = vfmaq_f32(vdupq_n_f32(ERF_A2), p, t);
    p = vfmaq_f32(vdupq_n_f32(ERF_A1), p, t);
    p = vmulq_f32(p, t);
    const float32x4_t e = exp128(vnegq_f32(vmulq_f32(a, a)));
    return with_sign128(vfmsq_f32(one, p, e), v);
}

QC_INLINE float32x4_t unary128(float32x4_t v, const int kind, float32x4_t alpha, float32x4_t beta) {
    const float32x4_t zero = vdupq_n_f32(0.f), one = vdupq_n_f32(1.f);
    switch (kind) {
    case QC_UNARY_SIGMOID:
        return vdivq_f32(one, vaddq_f32(one, exp128(vnegq_f32(v))));
    case QC_UNARY_SILU:
        return vdivq_f32(v, vaddq_f32(one, exp128(vnegq_f32(v))));
    case QC_UNARY_HARDSIGMOID:
        return vminq_f32(vmaxq_f32(vfmaq_f32(beta, alpha, v), zero), one);
    case QC_UNARY_HARDSWISH: {
        const float32x4_t g = vfmaq_f32(vdupq_n_f32(0.5f), v, vdupq_n_f32(1.f / 6.f));
        return vmulq_f32(v, vminq_f32(vmaxq_f32(g, zero), one));
    }
    case QC_UNARY_TANH: {
        const float32x4_t e = exp128(vmulq_f32(vabsq_f32(v), vdupq_n_f32(-2.f)));
        return with_sign128(vdivq_f32(vsubq_f32(one, e), vaddq_f32(one, e)), v);
    }
    case QC_UNARY_GELU: {
        const float32x4_t h = vmulq_f32(v, vdupq_n_f32(0.5f));
        return vfmaq_f32(h, h, erf128(vmulq_f32(v, vdupq_n_f32(0.70710678118654752f))));
    }
    case QC_UNARY_LEAKYRELU:
        return vbslq_f32(vcltq_f32(v, zero), vmulq_f32(v, alpha), v);
    case QC_UNARY_ERF:
        return erf128(v);
    case QC_UNARY_ELU:
        return vbslq_f32(vcltq_f32(v, zero), vmulq_f32(vsubq_f32(exp128(v), one), alpha), v);
    default:
        return v;
    }
}

QC_INLINE void run128(const float *x, float *y, size_t n, const int kind, float alpha, float beta) {
    const float32x4_t a = vdupq_n_f32(alpha), b = vdupq_n_f32(beta);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, unary128(vld1q_f32(x + i), kind, a, b));
    if (i < n) {                      /* NEON has no masked loads: the tail goes through a buffer */
        float buf[4] = {0.f, 0.f, 0.f, 0.f};
        for (size_t j = i; j < n; j++) buf[j - i] = x[j];
        vst1q_f32(buf, unary128(vld1q_f32(buf), kind, a, b));
        for (size_t j = i; j < n; j++) y[j] = buf[j - i];
    }
}

static void unary_neon(const float *x, float *y, size_t n, int kind, float alpha, float beta) {
    switch (kind) {       /* one specialised loop per kind: the switch leaves the inner loop */
    case QC_UNARY_SIGMOID: run128(x, y, n, QC_UNARY_SIGMOID, alpha, beta); break;
    case QC_UNARY_SILU: run128(x, y, n, QC_UNARY_SILU, alpha, beta); break;
    case QC_UNARY_HARDSIGMOID: run128(x, y, n, QC_UNARY_HARDSIGMOID, alpha, beta); break;
    case QC_UNARY_HARDSWISH: run128(x, y, n, QC_UNARY_HARDSWISH, alpha, beta); break;
    case QC_UNARY_TANH: run128(x, y, n, QC_UNARY_TANH, alpha, beta); break;
    case QC_UNARY_GELU: run128(x, y, n, QC_UNARY_GELU, alpha, beta); break;
    case QC_UNARY_LEAKYRELU: run128(x, y, n, QC_UNARY_LEAKYRELU, alpha, beta); break;
    case QC_UNARY_ERF: run128(x, y, n, QC_UNARY_ERF, alpha, beta); break;
    case QC_UNARY_ELU: run128(x, y, n, QC_UNARY_ELU, alpha, beta); break;
    default: unary_scalar(x, y, n, kind, alpha, beta);
    }
}
#endif

/* ---- channel affine ----------------------------------------------------------------------------- */
typedef void (*affine_fn)(const float *x, float *y, size_t npix, int c, const float *scale, const float *shift,
                          int act);

static void affine_scalar(const float *x, float *y, size_t npix, int c, const float *scale, const float *shift,
                          int act) {
    for (size_t p = 0; p < npix; p++)
        for (int ch = 0; ch < c; ch++)
            y[p * c + ch] = qc_act(fmaf(x[p * c + ch], scale[ch], shift[ch]), act);
}

#if QC_HAVE_X86
QC_AVX512 static void affine_avx512(const float *x, float *y, size_t npix, int c, const float *scale,
                                    const float *shift, int act) {
    for (size_t p = 0; p < npix; p++) {
        const float *xp = x + p * c;
        float *yp = y + p * c;
        int ch = 0;
        for (; ch + 16 <= c; ch += 16)
            _mm512_storeu_ps(yp + ch, qc_act512(_mm512_fmadd_ps(_mm512_loadu_ps(xp + ch), _mm512_loadu_ps(scale + ch),
                                                                _mm512_loadu_ps(shift + ch)), act));
        if (ch < c) {
            const __mmask16 m = (__mmask16)((1u << (c - ch)) - 1);
            const __m512 v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, xp + ch), _mm512_maskz_loadu_ps(m, scale + ch),
                                             _mm512_maskz_loadu_ps(m, shift + ch));
            _mm512_mask_storeu_ps(yp + ch, m, qc_act512(v, act));
        }
    }
}

QC_AVX2 static void affine_avx2(const float *x, float *y, size_t npix, int c, const float *scale,
                                const float *shift, int act) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (size_t p = 0; p < npix; p++) {
        const float *xp = x + p * c;
        float *yp = y + p * c;
        int ch = 0;
        for (; ch + 8 <= c; ch += 8)
            _mm256_storeu_ps(yp + ch, qc_act256(_mm256_fmadd_ps(_mm256_loadu_ps(xp + ch), _mm256_loadu_ps(scale + ch),
                                                                _mm256_loadu_ps(shift + ch)), act));
        if (ch < c) {
            const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(c - ch), lanes);
            const __m256 v = _mm256_fmadd_ps(_mm256_maskload_ps(xp + ch, m), _mm256_maskload_ps(scale + ch, m),
                                             _mm256_maskload_ps(shift + ch, m));
            _mm256_maskstore_ps(yp + ch, m, qc_act256(v, act));
        }
    }
}
#endif

#if QC_HAVE_NEON
static void affine_neon(const float *x, float *y, size_t npix, int c, const float *scale, const float *shift,
                        int act) {
    for (size_t p = 0; p < npix; p++) {
        const float *xp = x + p * c;
        float *yp = y + p * c;
        int ch = 0;
        for (; ch + 4 <= c; ch += 4)     /* vfmaq is fused like fmaf: bit-equal to the scalar loop */
            vst1q_f32(yp + ch, qc_act128(vfmaq_f32(vld1q_f32(shift + ch), vld1q_f32(xp + ch), vld1q_f32(scale + ch)),
                                         act));
        for (; ch < c; ch++) yp[ch] = qc_act(fmaf(xp[ch], scale[ch], shift[ch]), act);
    }
}
#endif

static const affine_fn AFFINE[QC_ISA_COUNT] = QC_VARIANTS(affine_scalar, affine_avx2, affine_avx512, affine_neon);

void qc_affine_f32(const float *x, float *y, size_t npix, int c, const float *scale, const float *shift, int act) {
    AFFINE[qc_isa()](x, y, npix, c, scale, shift, act);
}

static const unary_fn UNARY[QC_ISA_COUNT] = QC_VARIANTS(unary_scalar, unary_avx2, unary_avx512, unary_neon);

void qc_unary_f32(const float *x, float *y, size_t n, int kind, float alpha, float beta) {
    UNARY[qc_isa()](x, y, n, kind, alpha, beta);
}
