//! CPU reference of the activation kernels, modelling each rounding they make.
//!
//! - Default path ([`gated`]): `RN_T(act(g)·u)` with `act` and the product exact (f64, `erf` and
//!   `erfc` implemented here), rounded once, exactly ([`round`]). The kernel computes `act` in f32
//!   with the arch-default fast math, so it is within 1 ulp of this for f16/bf16 and
//!   [`default_path_rel_error`] (1e-5 but in the far tails) relative for f32 ([`gated_exact`]);
//!   with `--ftz` (sm_90) results below the f32 normal range may be ±0
//!   ([`default_path_may_flush`]).
//! - Rounding form ([`gated_with_activation_rounding`]): every f32 operation of the kernel is
//!   replayed in f32 in the same order; only the libm calls (`expf`, `erff`, `tanhf`: CUDA
//!   documents ≤ 2 ulp, not correctly rounded) cannot be reproduced on a CPU. Each is modelled as
//!   any f32 within [`LIBM_ULP`] steps of the exact value, and the result is the range of outputs
//!   that gives (the kernel's operations are monotone in the libm result). For f16/bf16 that range
//!   is a single value except within a few f32 ulps of a rounding boundary of `T`.

use crate::{Activation, Float};

/// f32 steps around the exact value that a CUDA libm result may take (documented ≤ 2 ulp, plus
/// one for the binade edge).
pub const LIBM_ULP: u32 = 3;

/// `x` rounded to nearest, ties to even, directly from f64 (no double rounding): for 16-bit types
/// through f32 rounded to odd, which keeps ≥ 2 more bits than `T` and so decides every tie as a
/// direct rounding would.
pub fn round<T: Float>(x: f64) -> T {
    if T::ID == kiln_runtime::DtypeId::F32 {
        return T::from_f32(x as f32);
    }
    T::from_f32(round_to_odd(x))
}

fn round_to_odd(x: f64) -> f32 {
    let r = x as f32;
    if !x.is_finite() || r as f64 == x {
        return r;
    }
    let toward_zero = if (r as f64).abs() > x.abs() { if r > 0.0 { r.next_down() } else { r.next_up() } } else { r };
    f32::from_bits(toward_zero.to_bits() | 1)
}

/// The error function, to about 1e-15 relative.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let r = if a < 2.0 { erf_series(a) } else { 1.0 - erfc_continued_fraction(a) };
    r.copysign(x)
}

/// The complementary error function `1 − erf(x)`, without cancellation for large `x`.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x < 2.0 { 1.0 - erf(x) } else { erfc_continued_fraction(x) }
}

// erf(a) = 2/√π · e^{-a²} · Σ_{n≥0} 2ⁿ a^{2n+1} / (1·3·…·(2n+1)): positive terms, no cancellation.
fn erf_series(a: f64) -> f64 {
    let a2 = a * a;
    let (mut term, mut sum) = (a, a);
    let mut n = 0u32;
    while term > sum * 1e-18 {
        n += 1;
        term *= 2.0 * a2 / (2 * n + 1) as f64;
        sum += term;
    }
    std::f64::consts::FRAC_2_SQRT_PI * (-a2).exp() * sum
}

// erfc(a) = e^{-a²}/√π · 1/(a + (1/2)/(a + (2/2)/(a + (3/2)/(a + …)))), evaluated backwards.
fn erfc_continued_fraction(a: f64) -> f64 {
    let mut f = a;
    // 80 terms reach double precision from a = 2 on.
    for k in (1..=80).rev() {
        f = a + (k as f64 * 0.5) / f;
    }
    (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
}

/// `act(g)`, exact to about 1e-15 relative.
pub fn activation(act: Activation, g: f64) -> f64 {
    match act {
        Activation::Silu => g / (1.0 + (-g).exp()),
        Activation::Gelu => g * 0.5 * erfc(-g * std::f64::consts::FRAC_1_SQRT_2),
        Activation::GeluTanh => {
            // ½(1 + tanh y) = 1 / (1 + e^{-2y}): no cancellation for y ≪ 0.
            let y = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g);
            g / (1.0 + (-2.0 * y).exp())
        }
    }
}

/// The SiLU clamp as the kernel applies it (`limit` is the effective limit,
/// [`crate::effective_clamp_limit`]): `g = g > L ? L : g`, `u = clamp(u, -L, L)`; NaN propagates.
pub fn clamp(g: f32, u: f32, limit: Option<f32>) -> (f32, f32) {
    match limit {
        None => (g, u),
        Some(l) => (
            if g > l { l } else { g },
            if u > l {
                l
            } else if u < -l {
                -l
            } else {
                u
            },
        ),
    }
}

/// `act(g)·u` in f64 (after the clamp): what the default path rounds once.
pub fn gated_exact<T: Float>(act: Activation, gate: T, up: T, limit: Option<f32>) -> f64 {
    let (g, u) = clamp(gate.to_f32(), up.to_f32(), limit);
    activation(act, g as f64) * u as f64
}

/// The default path: `RN_T(act(g)·u)`.
pub fn gated<T: Float>(act: Activation, gate: T, up: T, limit: Option<f32>) -> T {
    round::<T>(gated_exact(act, gate, up, limit))
}

/// The relative error the default path may add to `act(g)·u` before its final rounding.
///
/// 1e-5 in general (fast `__expf`, approximate division: ~1e-6), growing in the far tails with
/// the exponent the activation evaluates: an f32 argument `z` carries a relative error of a few
/// ε, which `exp` turns into `|z|·ε` (`z = -g` for SiLU, `g²/2` for `erfc(-g/√2)`, `-2·√(2/π)(g +
/// 0.044715 g³)` for the tanh form). Bounded by 8ε|z|.
pub fn default_path_rel_error(act: Activation, g: f32) -> f64 {
    let g = g as f64;
    let z = match act {
        Activation::Silu => g.abs(),
        Activation::Gelu => g * g / 2.0,
        Activation::GeluTanh => (2.0 * (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).abs(),
    };
    1e-5f64.max(8.0 * f32::EPSILON as f64 * z)
}

/// Whether flushing f32 subnormals (fast math, `--ftz=true`) may turn the default path's result
/// into ±0: when `act(g)` or `act(g)·u` is below the smallest normal f32, allowing for an `exp`
/// that overflows to infinity or an approximate division by more than 2^126 (both give 0).
pub fn default_path_may_flush<T: Float>(act: Activation, gate: T, up: T, limit: Option<f32>) -> bool {
    let (g, u) = clamp(gate.to_f32(), up.to_f32(), limit);
    let a = activation(act, g as f64).abs();
    a < 2f64.powi(-120) || a * (u as f64).abs() < 2f64.powi(-126)
}

fn libm_bounds(exact: f64, min: f32, max: f32) -> (f32, f32) {
    let r = exact as f32;
    let (mut lo, mut hi) = (r, r);
    for _ in 0..LIBM_ULP {
        lo = lo.next_down();
        hi = hi.next_up();
    }
    (lo.max(min), hi.min(max))
}

fn ordered(a: f32, b: f32) -> (f32, f32) {
    if a <= b { (a, b) } else { (b, a) }
}

/// The f32 values the rounding form's activation (`act_exact` in `activation.cuh`, PyTorch eager's
/// operation order, IEEE arithmetic) can take for `g`, given libm results within [`LIBM_ULP`].
pub fn activation_f32_bounds(act: Activation, g: f32) -> (f32, f32) {
    match act {
        Activation::Silu => {
            let (lo, hi) = libm_bounds((-(g as f64)).exp(), 0.0, f32::INFINITY);
            let f = |e: f32| g / (1.0 + e);
            ordered(f(lo), f(hi))
        }
        Activation::Gelu => {
            // 0.70710678118654752f in the kernel: the same f32.
            let arg = g * std::f32::consts::FRAC_1_SQRT_2;
            let (lo, hi) = libm_bounds(erf(arg as f64), -1.0, 1.0);
            let f = |e: f32| (g * 0.5) * (1.0 + e);
            ordered(f(lo), f(hi))
        }
        Activation::GeluTanh => {
            let cube = (g * g) * g;
            // 0.7978845608028654f in the kernel: the same f32.
            let inner = 0.797_884_6_f32 * 0.044715_f32.mul_add(cube, g);
            let (lo, hi) = libm_bounds((inner as f64).tanh(), -1.0, 1.0);
            let f = |t: f32| (0.5 * g) * (1.0 + t);
            ordered(f(lo), f(hi))
        }
    }
}

/// The rounding form `RN_T(f32(RN_T(act(g)))·u)`: the lowest and highest output the kernel can
/// produce (equal unless `act(g)` lies within a few f32 ulps of a rounding boundary of `T`).
pub fn gated_with_activation_rounding<T: Float>(act: Activation, gate: T, up: T, limit: Option<f32>) -> (T, T) {
    let (g, u) = clamp(gate.to_f32(), up.to_f32(), limit);
    let (lo, hi) = activation_f32_bounds(act, g);
    let out = |a: f32| T::from_f32(T::from_f32(a).to_f32() * u).to_f32();
    let (a, b) = ordered(out(lo), out(hi));
    (T::from_f32(a), T::from_f32(b))
}

/// Whether `got` is one of the outputs `bounds` admits: bit for bit when the bounds agree, else
/// within them.
pub fn admits<T: Float>(bounds: (T, T), got: T) -> bool {
    let (lo, hi, g) = (bounds.0.to_f32(), bounds.1.to_f32(), got.to_f32());
    if lo.to_bits() == hi.to_bits() { g.to_bits() == lo.to_bits() } else { lo <= g && g <= hi }
}

#[cfg(test)]
mod tests {
    use kiln_runtime::half::{bf16, f16};

    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn erf_matches_tabulated_values() {
        for (x, want) in [(0.5, 0.5204998778130465), (1.0, 0.8427007929497149), (1.9, 0.9927904292352575), (2.5, 0.999593047982555)] {
            assert!(close(erf(x), want, 1e-15), "erf({x}) = {} want {want}", erf(x));
            assert!(close(erf(-x), -want, 1e-15));
        }
        for (x, want) in [
            (2.0, 0.004677734981047265),
            (3.0, 2.2090496998585438e-05),
            (5.0, 1.5374597944280351e-12),
            (10.0, 2.088487583762545e-45),
            (0.5, 0.4795001221869535),
            (-1.0, 1.842700792949715),
        ] {
            assert!(close(erfc(x), want, 1e-13), "erfc({x}) = {:e} want {want:e}", erfc(x));
        }
        assert_eq!(erf(0.0), 0.0);
        assert!(erf(-0.0).is_sign_negative());
    }

    #[test]
    fn activations_match_hand_computed_values() {
        // silu(1) = 1/(1+e^-1); gelu(1) = Φ(1); gelu_tanh(1) = ½(1 + tanh(√(2/π)·1.044715)).
        let cases = [
            (Activation::Silu, 1.0, 0.7310585786300049),
            (Activation::Silu, -1.0, -0.2689414213699951),
            (Activation::Silu, 3.0, 2.8577223804672998),
            (Activation::Gelu, 1.0, 0.8413447460685429),
            (Activation::Gelu, -1.0, -0.15865525393145707),
            (Activation::Gelu, 3.0, 2.99595030590511),
            (Activation::GeluTanh, 1.0, 0.8411919906082768),
            (Activation::GeluTanh, -1.0, -0.15880800939172324),
            (Activation::GeluTanh, 3.0, 2.996362607918227),
        ];
        for (act, g, want) in cases {
            assert!(close(activation(act, g), want, 1e-14), "{act:?}({g}) = {} want {want}", activation(act, g));
        }
        // Far tails: no cancellation (gelu(-10) = -10·Φ(-10) = -7.6e-23).
        assert!(close(activation(Activation::Gelu, -10.0), -7.619853024160593e-23, 1e-12));
        assert!(activation(Activation::GeluTanh, -12.0) < 0.0);
    }

    #[test]
    fn round_is_direct_round_to_nearest_even() {
        let one = 1.0f64;
        // bf16 has 8 significant bits: ulp(1) = 2^-7. Ties go to even, anything above a tie up.
        assert_eq!(round::<bf16>(one + 2f64.powi(-8)).to_f32(), 1.0);
        assert_eq!(round::<bf16>(one + 3.0 * 2f64.powi(-8)).to_f32(), 1.015625);
        // Just above the tie, by less than f32 can hold: a truncating conversion would see a tie.
        assert_eq!(round::<bf16>(one + 2f64.powi(-8) + 2f64.powi(-40)).to_f32(), 1.0078125);
        assert_eq!(round::<bf16>(-(one + 2f64.powi(-8) + 2f64.powi(-40))).to_f32(), -1.0078125);
        // f16: ulp(1) = 2^-10.
        assert_eq!(round::<f16>(one + 2f64.powi(-11)).to_f32(), 1.0);
        assert_eq!(round::<f16>(one + 2f64.powi(-11) + 2f64.powi(-45)).to_f32(), 1.0 + 2f32.powi(-10));
        assert_eq!(round::<f16>(1e6).to_f32(), f32::INFINITY);
        assert_eq!(round::<f16>(65519.0).to_f32(), 65504.0);
        assert_eq!(round::<f32>(one + 2f64.powi(-24)), 1.0);
        assert_eq!(round::<f32>(one + 2f64.powi(-24) + 2f64.powi(-45)), 1.0 + 2f32.powi(-23));
        // Subnormal f16: 2^-24 is the smallest; half of it is a tie to 0.
        assert_eq!(round::<f16>(2f64.powi(-25)).to_f32(), 0.0);
        assert_eq!(round::<f16>(2f64.powi(-25) + 2f64.powi(-60)).to_f32(), 2f32.powi(-24));
    }

    #[test]
    fn one_rounding_and_two_roundings_differ() {
        // g = 1, u = 1.125, bf16 (ulp 2^-8 in [0.5, 1)):
        //   one rounding:  silu(1)·1.125 = 0.822441 = 210.55 ulp → 211 ulp = 0.82421875
        //   two roundings: RN(silu(1)) = 0.7310586 = 187.15 ulp → 187 ulp = 0.73046875;
        //                  0.73046875·1.125 = 0.82177734 = 210.375 ulp → 210 ulp = 0.8203125
        let (g, u) = (bf16::from_f32(1.0), bf16::from_f32(1.125));
        assert_eq!(gated(Activation::Silu, g, u, None).to_f32(), 0.82421875);
        let (lo, hi) = gated_with_activation_rounding(Activation::Silu, g, u, None);
        assert_eq!((lo.to_f32(), hi.to_f32()), (0.8203125, 0.8203125));
        assert!(admits((lo, hi), bf16::from_f32(0.8203125)));
        assert!(!admits((lo, hi), bf16::from_f32(0.82421875)));
        // Same for g = -1, u = 1.75: -0.470703125 once, -0.47265625 twice.
        let (g, u) = (bf16::from_f32(-1.0), bf16::from_f32(1.75));
        assert_eq!(gated(Activation::Silu, g, u, None).to_f32(), -241.0 / 512.0);
        let (lo, hi) = gated_with_activation_rounding(Activation::Silu, g, u, None);
        assert_eq!((lo.to_f32(), hi.to_f32()), (-0.47265625, -0.47265625));
    }

    #[test]
    fn clamp_models_the_kernel() {
        assert_eq!(clamp(10.0, 9.0, Some(7.0)), (7.0, 7.0));
        assert_eq!(clamp(-10.0, -9.0, Some(7.0)), (-10.0, -7.0));
        assert_eq!(clamp(3.0, -2.0, Some(7.0)), (3.0, -2.0));
        let (g, u) = clamp(f32::NAN, f32::NAN, Some(7.0));
        assert!(g.is_nan() && u.is_nan());
        assert_eq!(clamp(10.0, 9.0, None), (10.0, 9.0));
        // silu(min(10, 7)) · clamp(9) = silu(7)·7.
        let want = 7.0 / (1.0 + (-7.0f64).exp()) * 7.0;
        assert_eq!(gated_exact(Activation::Silu, 10.0f32, 9.0f32, Some(7.0)), want);
    }

    #[test]
    fn libm_bounds_are_tight_and_contain_the_rounded_value() {
        for act in Activation::ALL {
            for &g in &[-7.5f32, -3.0, -1.0, -0.1, 0.1, 0.5, 1.0, 2.0, 6.0] {
                let (lo, hi) = activation_f32_bounds(act, g);
                let exact = activation(act, g as f64) as f32;
                assert!(lo <= hi, "{act:?}({g}): {lo} > {hi}");
                if g > -3.0 {
                    // (Further out, PyTorch's `1 + erf`/`1 + tanh` cancels and the interval is wide.)
                    let span = (hi.to_bits() as i64 - lo.to_bits() as i64).unsigned_abs();
                    assert!(span <= 16, "{act:?}({g}): [{lo}, {hi}] spans {span} ulp");
                    // Away from the cancelling tail the f32 formula is within a couple of ulps
                    // (its own roundings) of the correctly rounded value.
                    let (lo2, hi2) = (lo.next_down().next_down(), hi.next_up().next_up());
                    assert!(lo2 <= exact && exact <= hi2, "{act:?}({g}): {exact} not near [{lo}, {hi}]");
                }
            }
        }
    }

    #[test]
    fn default_path_tolerance_grows_only_in_the_tails() {
        for act in Activation::ALL {
            assert_eq!(default_path_rel_error(act, 1.0), 1e-5);
            assert_eq!(default_path_rel_error(act, -2.0), 1e-5);
        }
        // gelu_tanh(-9.1): z = 2y ≈ -64, so about 6e-5.
        let e = default_path_rel_error(Activation::GeluTanh, -9.1);
        assert!(e > 5e-5 && e < 7e-5, "{e}");
        // gelu_tanh(-10.1)·(-0.67) ≈ 1.9e-38: below the f32 normal range, fast math may flush it.
        assert!(default_path_may_flush(Activation::GeluTanh, -10.0625f32, -0.671875f32, None));
        assert!(!default_path_may_flush(Activation::GeluTanh, -5.0f32, -0.671875f32, None));
        assert!(!default_path_may_flush(Activation::Silu, -30.0f32, 1.0f32, None));
        assert!(default_path_may_flush(Activation::Silu, -95.0f32, 1.0f32, None));
    }

    #[test]
    fn f32_rounding_form_brackets_the_exact_product() {
        for act in Activation::ALL {
            for &(g, u) in &[(1.0f32, 1.125f32), (-2.0, 3.5), (0.3, -0.7)] {
                let (lo, hi) = gated_with_activation_rounding(act, g, u, None);
                let exact = gated_exact(act, g, u, None) as f32;
                assert!(lo <= exact && exact <= hi, "{act:?}: {exact} not in [{lo}, {hi}]");
            }
        }
    }
}
