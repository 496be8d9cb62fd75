//! Seeded random data, poison values and float comparisons in units in the last place.

use half::{bf16, f16};

/// SplitMix64: small, fast, good enough for test data; seeded for reproducibility.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator with this seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// `n` normal values scaled by `scale`, never exactly zero.
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let v = self.normal() * scale;
                if v == 0.0 { scale * 1e-3 } else { v }
            })
            .collect()
    }
}

/// A seed that differs per run unless `KILN_TEST_SEED` fixes it (printed on failure by callers).
pub fn seed() -> u64 {
    std::env::var("KILN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(42))
}

/// Element types the tests drive, with exact conversions to/from f64 (RNE narrowing).
pub trait TestFloat: kiln_runtime::Dtype + PartialEq + std::fmt::Debug {
    /// Exact widening.
    fn to_f64(self) -> f64;
    /// Round-to-nearest-even narrowing from f64 (through f32 for 16-bit types only where the
    /// result is identical: we round directly from f64).
    fn from_f64(v: f64) -> Self;
    /// Raw bits (for bit-exact comparisons and poison checks).
    fn bits(self) -> u32;
    /// A NaN with a recognisable payload, used to poison outputs.
    fn poison() -> Self;
    /// Distance in units in the last place (monotone integer mapping); NaN vs non-NaN is huge.
    fn ulp_diff(a: Self, b: Self) -> u64;
}

fn ordered16(b: u16) -> i32 {
    if b & 0x8000 != 0 { -((b & 0x7fff) as i32) } else { b as i32 }
}

macro_rules! half_test_float {
    ($t:ty, $poison:expr) => {
        impl TestFloat for $t {
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            fn from_f64(v: f64) -> Self {
                <$t>::from_f32(kiln_runtime::f64_to_f32_odd(v))
            }
            fn bits(self) -> u32 {
                self.to_bits() as u32
            }
            fn poison() -> Self {
                <$t>::from_bits($poison)
            }
            fn ulp_diff(a: Self, b: Self) -> u64 {
                if a.is_nan() || b.is_nan() {
                    return if a.is_nan() && b.is_nan() { 0 } else { u64::MAX };
                }
                ordered16(a.to_bits()).abs_diff(ordered16(b.to_bits())) as u64
            }
        }
    };
}
half_test_float!(bf16, 0x7fa5);
half_test_float!(f16, 0x7e5a);

impl TestFloat for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn bits(self) -> u32 {
        self.to_bits()
    }
    fn poison() -> Self {
        f32::from_bits(0x7fc0_dead)
    }
    fn ulp_diff(a: Self, b: Self) -> u64 {
        if a.is_nan() || b.is_nan() {
            return if a.is_nan() && b.is_nan() { 0 } else { u64::MAX };
        }
        let o = |x: f32| {
            let b = x.to_bits() as i64;
            if b & 0x8000_0000 != 0 { -(b & 0x7fff_ffff) } else { b }
        };
        o(a).abs_diff(o(b))
    }
}

/// Converts f64 values to `T` (RNE).
pub fn to_t<T: TestFloat>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

/// The worst mismatch between `got` and `want` beyond `max_ulp`, as a readable message.
pub fn check_ulp<T: TestFloat>(what: &str, got: &[T], want: &[T], max_ulp: u64) -> anyhow::Result<()> {
    anyhow::ensure!(got.len() == want.len(), "{what}: length {} vs {}", got.len(), want.len());
    let mut worst: Option<(usize, u64)> = None;
    let mut bad = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = T::ulp_diff(g, w);
        if d > max_ulp {
            bad += 1;
            if worst.is_none_or(|(_, wd)| d > wd) {
                worst = Some((i, d));
            }
        }
    }
    if let Some((i, d)) = worst {
        anyhow::bail!(
            "{what}: {bad} of {} elements beyond {max_ulp} ulp; worst at {i}: got {:?} ({:#x}) want {:?} ({:#x}), {d} ulp",
            got.len(),
            got[i],
            got[i].bits(),
            want[i],
            want[i].bits()
        );
    }
    Ok(())
}

/// Relative-error check for f32 (`|g − w| ≤ rel·|w| + abs`).
pub fn check_rel(what: &str, got: &[f32], want: &[f64], rel: f64, abs: f64) -> anyhow::Result<()> {
    anyhow::ensure!(got.len() == want.len(), "{what}: length {} vs {}", got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        anyhow::ensure!(
            g.is_finite() == w.is_finite() && ((g - w).abs() <= rel * w.abs() + abs || g == w),
            "{what}: element {i}: got {g} want {w}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulp_distance() {
        let one = bf16::from_f32(1.0);
        let next = bf16::from_bits(one.to_bits() + 1);
        assert_eq!(bf16::ulp_diff(one, next), 1);
        assert_eq!(bf16::ulp_diff(bf16::from_f32(-0.0), bf16::from_f32(0.0)), 0);
        assert_eq!(bf16::ulp_diff(bf16::poison(), one), u64::MAX);
        assert!(check_ulp("x", &[one], &[next], 0).is_err());
        assert!(check_ulp("x", &[one], &[next], 1).is_ok());
    }

    #[test]
    fn rng_is_seeded() {
        assert_eq!(Rng::new(1).next_u64(), Rng::new(1).next_u64());
        assert!(Rng::new(3).normals(1000, 1.0).iter().all(|v| *v != 0.0));
    }
}
