//! CPU reference, bit-exact with the kernels: the same fp32 operations in the same order
//! (FMA chunk sums, butterfly and pairwise trees, IEEE division and square root), the same
//! round-to-nearest-even conversions. The T2 tests require identical bits.

use half::{bf16, f16};

use crate::{Form, FusedSum, Norm, Shape};

/// Element types of the reference, with exact widening and RNE narrowing.
pub trait RefFloat: Copy {
    /// Exact widening.
    fn to_f32(self) -> f32;
    /// Round to nearest, ties to even (overflow to ±inf).
    fn from_f32(v: f32) -> Self;
}

impl RefFloat for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}
impl RefFloat for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}
impl RefFloat for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// `f32(RN_T(v))`.
pub fn round_to<T: RefFloat>(v: f32) -> f32 {
    T::from_f32(v).to_f32()
}

/// Pairwise tree that combines the highest index bit first (`a[i] + a[i + n/2]`, …), over `a`
/// padded with zeros to a power of two: the shape of a butterfly `xor n/2, …, 1`.
fn tree(mut a: Vec<f32>) -> f32 {
    a.resize(a.len().max(1).next_power_of_two(), 0.0);
    let mut n = a.len();
    while n > 1 {
        n /= 2;
        for i in 0..n {
            a[i] += a[i + n];
        }
    }
    a[0]
}

/// The kernels' sum of squares of `u` (one row), for chunks of `chunk` elements: FMA
/// accumulation inside a chunk, a 32-wide butterfly over each group of 32 chunks, a pairwise
/// tree over the groups.
pub fn sum_squares(u: &[f32], chunk: usize) -> f32 {
    let sums: Vec<f32> = u.chunks(chunk).map(|c| c.iter().fold(0.0f32, |acc, &e| e.mul_add(e, acc))).collect();
    tree(sums.chunks(32).map(|g| tree(g.to_vec())).collect())
}

/// `RN(1 / RN(sqrt(RN(RN(sumsq / hidden) + eps))))`.
pub fn rstd(sumsq: f32, hidden: usize, eps: f32) -> f32 {
    1.0 / (sumsq / hidden as f32 + eps).sqrt()
}

/// The fp32 value of one output before its final rounding to `T`.
pub fn apply<T: RefFloat>(form: Form, u: f32, rstd: f32, w: f32) -> f32 {
    let n = u * rstd;
    match form {
        Form::Hf => round_to::<T>(n) * w,
        Form::Fp32 => n * w,
        Form::Gemma => n * (1.0 + w),
    }
}

fn chunk_of<T>() -> usize {
    16 / size_of::<T>()
}

fn norm_row<T: RefFloat, W: RefFloat>(u: &[f32], weight: &[W], norm: Norm, out: &mut Vec<T>) {
    let r = rstd(sum_squares(u, chunk_of::<T>()), u.len(), norm.eps);
    out.extend(u.iter().zip(weight).map(|(&u, &w)| T::from_f32(apply::<T>(norm.form, u, r, w.to_f32()))));
}

/// `norm(x)` for rows of `x` at `shape.x_stride`; the result is contiguous (`rows × hidden`).
pub fn rms_norm<T: RefFloat, W: RefFloat>(x: &[T], weight: &[W], shape: Shape, norm: Norm) -> Vec<T> {
    let h = shape.hidden;
    let mut out = Vec::with_capacity(shape.rows * h);
    for i in 0..shape.rows {
        let u: Vec<f32> = x[i * shape.x_stride..][..h].iter().map(|v| v.to_f32()).collect();
        norm_row(&u, weight, norm, &mut out);
    }
    out
}

/// The fused op on rows of `x` (at `shape.x_stride`) and `residual` (at
/// `shape.residual_stride`): returns `(new x, new residual)`, both contiguous.
pub fn fused_add_rms_norm<T: RefFloat, W: RefFloat>(x: &[T], residual: &[T], weight: &[W], shape: Shape, norm: Norm) -> (Vec<T>, Vec<T>) {
    let h = shape.hidden;
    let mut out = Vec::with_capacity(shape.rows * h);
    let mut res = Vec::with_capacity(shape.rows * h);
    for i in 0..shape.rows {
        let xs = &x[i * shape.x_stride..][..h];
        let rs = &residual[i * shape.residual_stride..][..h];
        let v: Vec<f32> = xs.iter().zip(rs).map(|(a, b)| a.to_f32() + b.to_f32()).collect();
        res.extend(v.iter().map(|&v| T::from_f32(v)));
        let u: Vec<f32> = match norm.sum {
            FusedSum::Rounded => v.iter().map(|&v| round_to::<T>(v)).collect(),
            FusedSum::Fp32 => v,
        };
        norm_row(&u, weight, norm, &mut out);
    }
    (out, res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: &[f32]) -> Vec<bf16> {
        v.iter().map(|&x| bf16::from_f32(x)).collect()
    }
    fn f(v: &[bf16]) -> Vec<f32> {
        v.iter().map(|x| x.to_f32()).collect()
    }

    #[test]
    fn rstd_is_exact_ieee() {
        // x = [2, 2, 2, 2]: s = 16, mean = 4; sqrt(4 + 2^-20) rounds to 2 + 2^-22 and its
        // reciprocal to 0.5 - 2^-24 (the exact value exceeds it by about 2^-47).
        let eps = 2f32.powi(-20);
        assert_eq!(sum_squares(&[2.0; 4], 8), 16.0);
        assert_eq!(rstd(16.0, 4, eps), 0.5 - 2f32.powi(-24));
        // u·rstd = 1 - 2^-23 rounds to 1 in bf16, so every form returns the (1 + ) weight.
        let x = b(&[2.0; 4]);
        let shape = Shape::new(1, 4);
        let w = b(&[1.0, 2.0, -3.0, 0.5]);
        assert_eq!(f(&rms_norm(&x, &w, shape, Norm::hf(eps))), [1.0, 2.0, -3.0, 0.5]);
        assert_eq!(f(&rms_norm(&x, &w, shape, Norm::fp32(eps))), [1.0, 2.0, -3.0, 0.5]);
        let w = b(&[0.0, 1.0, -2.0, -0.5]);
        assert_eq!(f(&rms_norm(&x, &w, shape, Norm::gemma(eps))), [1.0, 2.0, -1.0, 0.5]);
        // f32 activations keep the fp32 product (1 - 2^-23)·w; for w = -3 it is a tie between
        // 3 - 2^-22 (odd) and 3 - 2^-21 (even).
        let wf = [1.0f32, 2.0, -3.0, 0.5];
        let y = rms_norm(&[2.0f32; 4], &wf, shape, Norm::fp32(eps));
        assert_eq!(y, [1.0 - 2f32.powi(-23), 2.0 - 2f32.powi(-22), -(3.0 - 2f32.powi(-21)), 0.5 - 2f32.powi(-24)]);
    }

    #[test]
    fn hf_rounding_differs_from_fp32_multiply() {
        // x = [1, 1], eps = 0.7852: rstd = 1/sqrt(1.7852) ≈ 0.748442, just above the bf16 midpoint
        // 0.748046875, so RN_bf16(rstd) = 0.75. With w = 1 + 2^-7:
        //   HF:   0.75 · (1 + 2^-7) = 0.755859375 exactly, the midpoint of 193·2^-8 and 194·2^-8:
        //         ties to even give 194·2^-8 = 0.7578125;
        //   fp32: 0.748442 · 1.0078125 ≈ 0.754289, nearest bf16 193·2^-8 = 0.75390625.
        let (x, w) = (b(&[1.0, 1.0]), b(&[1.0078125, 1.0078125]));
        let shape = Shape::new(1, 2);
        let r = rstd(2.0, 2, 0.7852);
        assert!(r > 0.75 - 2f32.powi(-9) && r < 0.75, "{r}");
        assert_eq!(f(&rms_norm(&x, &w, shape, Norm::hf(0.7852))), [0.7578125; 2]);
        assert_eq!(f(&rms_norm(&x, &w, shape, Norm::fp32(0.7852))), [0.75390625; 2]);
    }

    #[test]
    fn fused_sum_rounding() {
        // x = 1, r = 3·2^-9: v = 1.005859375 (exact in fp32), RN_bf16(v) = 1 + 2^-7 = 1.0078125.
        // D = 1, eps = 3.01, w = 1: xn = u / sqrt(u² + 3.01) is
        //   0.502296 for u = RN(v)   -> above the bf16 midpoint 0.501953125 -> 0.50390625,
        //   0.501568 for u = v       -> below it                            -> 0.5.
        let (x, r, w) = (b(&[1.0]), b(&[3.0 * 2f32.powi(-9)]), b(&[1.0]));
        let shape = Shape::new(1, 1);
        let (y, res) = fused_add_rms_norm(&x, &r, &w, shape, Norm::hf(3.01));
        assert_eq!((f(&y), f(&res)), (vec![0.50390625], vec![1.0078125]));
        let (y, res) = fused_add_rms_norm(&x, &r, &w, shape, Norm::hf(3.01).with_sum(FusedSum::Fp32));
        assert_eq!((f(&y), f(&res)), (vec![0.5], vec![1.0078125]));
    }

    #[test]
    fn summation_order() {
        // Inside a chunk: sequential FMAs. 2^24 + 1 is a tie that rounds to even (2^24), twice.
        assert_eq!(sum_squares(&[4096.0, 1.0, 1.0, 0.0], 4), 2f32.powi(24));
        // Across chunks of a group: the butterfly adds chunks 1 and 3 first (xor 2), then 0 + 2.
        let mut u = vec![0.0f32; 16];
        (u[0], u[4], u[12]) = (4096.0, 1.0, 1.0);
        assert_eq!(sum_squares(&u, 4), 2f32.powi(24) + 2.0);
        // Across groups (32 chunks each), a pairwise tree: with 4 groups, groups 1 and 3 meet first
        // (then 0 + 2), so the two small ones survive...
        let mut u = vec![0.0f32; 97 * 4];
        (u[0], u[32 * 4], u[96 * 4]) = (4096.0, 1.0, 1.0);
        assert_eq!(sum_squares(&u, 4), 2f32.powi(24) + 2.0);
        // ...while with 3 groups (padded to 4) group 2 meets group 0 first and is rounded away.
        let mut u = vec![0.0f32; 65 * 4];
        (u[0], u[32 * 4], u[64 * 4]) = (4096.0, 1.0, 1.0);
        assert_eq!(sum_squares(&u, 4), 2f32.powi(24));
    }

    #[test]
    fn f16_overflow_and_strides() {
        // Squares are fp32, so f16 values near 65504 do not overflow the sum (60000² = 3.6e9 is
        // exact in fp32); the output overflows to inf when -sqrt(2) meets the weight 65504.
        // Row 1 (at stride 4): 9 · RN(1/9) = 1 ± 2^-24, which rounds back to the weights.
        let x: Vec<f16> = [0.0f32, -60000.0, 7.0, 7.0, 9.0, 9.0, 7.0, 7.0].iter().map(|&v| f16::from_f32(v)).collect();
        let w = [f16::from_f32(2.0), f16::from_f32(65504.0)];
        let y = rms_norm(&x, &w, Shape::new(2, 2).with_x_stride(4), Norm::fp32(1e-6));
        let y: Vec<f32> = y.iter().map(|v| v.to_f32()).collect();
        assert_eq!(y, [0.0, f32::NEG_INFINITY, 2.0, 65504.0]);
    }

    #[test]
    fn fused_rounded_equals_add_then_norm() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f32 / (1u64 << 53) as f32 * 8.0 - 4.0
        };
        let (rows, h) = (3, 300);
        let x: Vec<bf16> = (0..rows * h).map(|_| bf16::from_f32(rnd())).collect();
        let r: Vec<bf16> = (0..rows * h).map(|_| bf16::from_f32(rnd())).collect();
        let w: Vec<f32> = (0..h).map(|_| rnd()).collect();
        let shape = Shape::new(rows, h);
        for norm in [Norm::hf(1e-6), Norm::fp32(1e-5), Norm::gemma(1e-6)] {
            let (y, res) = fused_add_rms_norm(&x, &r, &w, shape, norm);
            let sum: Vec<bf16> = x.iter().zip(&r).map(|(a, b)| bf16::from_f32(a.to_f32() + b.to_f32())).collect();
            assert_eq!(res, sum);
            assert_eq!(y, rms_norm(&sum, &w, shape, norm));
            // And the result is the math to within an ulp or so (here checked against f64).
            for (i, &yi) in y.iter().enumerate() {
                let row = &sum[i / h * h..][..h];
                let ms: f64 = row.iter().map(|v| (v.to_f32() as f64).powi(2)).sum::<f64>() / h as f64;
                let n = row[i % h].to_f32() as f64 / (ms + norm.eps as f64).sqrt();
                let want = match norm.form {
                    Form::Gemma => n * (1.0 + w[i % h] as f64),
                    _ => n * w[i % h] as f64,
                };
                assert!((yi.to_f32() as f64 - want).abs() <= want.abs() * 2f64.powi(-7) + 1e-30, "{i}: {yi} vs {want}");
            }
        }
    }
}
