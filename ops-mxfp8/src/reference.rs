//! CPU reference of the MXFP8 kernels, modelling them bit for bit: the exact RCEIL scale rule on
//! amax's bits, `q = RN_sat_e4m3(x · 2^-e)` with an IEEE f32 product (no flush to zero), the
//! dequantized value as an f32 product, the scale layouts and the clamping of device metadata.
//! Values come in as f32 (bf16 and f16 widen exactly); callers round dequantized f32 values to
//! their dtype with one RNE rounding, as the kernel does.

use kiln_runtime::{E4m3, E8m0};

use crate::layout::{BLOCK, ScaleLayout};

/// Largest |x| over the finite elements (0 when there are none).
pub fn finite_amax(block: &[f32]) -> f32 {
    block.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, v| m.max(v.abs()))
}

/// The RCEIL exponent `e = ceil(log2(amax / 448))` clamped to `[−127, 127]` of a finite
/// `amax ≥ 0`, from its bits (the kernel's formula; see `cuda/layout.cuh`).
pub fn scale_exponent(amax: f32) -> i32 {
    debug_assert!(amax.is_finite() && amax >= 0.0);
    let bits = amax.to_bits();
    let e = (bits >> 23) as i32 - 127 - 8 + i32::from((bits & 0x7f_ffff) > 0x60_0000);
    e.max(-127)
}

/// `2^-e` as an f32 (normal for every `e` in `[−127, 120]`).
pub fn inv_scale(e: i32) -> f32 {
    f32::from_bits(((127 - e) as u32) << 23)
}

/// Quantizes one block (up to 32 elements) into `out`; returns its scale.
pub fn quantize_block(block: &[f32], out: &mut [E4m3]) -> E8m0 {
    let e = scale_exponent(finite_amax(block));
    let mul = inv_scale(e);
    for (o, &x) in out.iter_mut().zip(block) {
        *o = E4m3::from_f32_sat(x * mul);
    }
    E8m0((e + 127) as u8)
}

/// The dequantized value `e4m3(q) · 2^(s − 127)` as the kernel computes it: an f32 product
/// (exact, except that it overflows to ±inf from 2^128 on).
pub fn dequantize_value(q: E4m3, s: E8m0) -> f32 {
    q.to_f32() * s.to_f32()
}

/// The device-resident metadata of a grouped call, as host slices (one entry per expert).
#[derive(Debug, Clone, Copy)]
pub struct Experts<'a> {
    /// First row of each expert in the token tensors.
    pub offsets: &'a [i32],
    /// Rows of each expert.
    pub tokens: &'a [i32],
    /// First scale row of each expert.
    pub scale_offsets: &'a [i32],
}

/// One expert after the kernels' clamping (see `cuda/experts.cuh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clamped {
    /// First token row.
    pub row0: usize,
    /// Rows processed (0: the expert is skipped).
    pub rows: usize,
    /// First scale row.
    pub srow0: usize,
}

/// The kernels' view of the metadata: an expert takes part with
/// `min(tokens, rows − offset, scale_rows − scale_offset)` rows when `tokens > 0`,
/// `0 ≤ offset < rows`, `0 ≤ scale_offset < scale_rows` and `scale_offset` is a multiple of the
/// layout's row multiple (128 when blocked); otherwise with none. `None` is the dense form: one
/// expert of all rows.
pub fn clamp_experts(experts: Option<Experts<'_>>, rows: usize, scale_rows: usize, layout: ScaleLayout) -> Vec<Clamped> {
    let Some(ex) = experts else {
        return vec![Clamped { row0: 0, rows, srow0: 0 }];
    };
    let (rows, scale_rows) = (rows as i64, scale_rows as i64);
    (0..ex.tokens.len())
        .map(|g| {
            let (off, n, so) = (ex.offsets[g] as i64, ex.tokens[g] as i64, ex.scale_offsets[g] as i64);
            let ok = n > 0
                && (0..rows).contains(&off)
                && (0..scale_rows).contains(&so)
                && (so as u64).is_multiple_of(layout.row_multiple() as u64);
            if ok {
                Clamped { row0: off as usize, rows: n.min(rows - off).min(scale_rows - so) as usize, srow0: so as usize }
            } else {
                Clamped { row0: 0, rows: 0, srow0: 0 }
            }
        })
        .collect()
}

/// Shape of the token tensors: `rows × k`, row strides in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Token rows.
    pub rows: usize,
    /// Columns (multiple of 32).
    pub k: usize,
    /// Row stride of the bf16/f16/f32 tensor.
    pub x_stride: usize,
    /// Row stride of the E4M3 tensor.
    pub q_stride: usize,
}

/// What the quantization kernel writes, written into `q` and `scales` (everything else left as
/// it is): each expert's rows of `q`, its scale rows, and in the blocked layout its padding scale
/// rows `[m, round_up(m, 128))` as byte 0.
pub fn quantize_into(
    x: &[f32],
    d: Dims,
    experts: Option<Experts<'_>>,
    layout: ScaleLayout,
    q: &mut [E4m3],
    scales: &mut [E8m0],
    scale_rows: usize,
) {
    let nkb = d.k / BLOCK;
    for e in clamp_experts(experts, d.rows, scale_rows, layout) {
        for r in 0..layout.padded_rows(e.rows) {
            for kb in 0..nkb {
                let s = if r < e.rows {
                    let xo = (e.row0 + r) * d.x_stride + kb * BLOCK;
                    let qo = (e.row0 + r) * d.q_stride + kb * BLOCK;
                    quantize_block(&x[xo..xo + BLOCK], &mut q[qo..qo + BLOCK])
                } else {
                    E8m0(0)
                };
                scales[layout.offset(e.srow0 + r, kb, nkb)] = s;
            }
        }
    }
}

/// What the dequantization kernel computes (f32 products before the rounding to the output
/// dtype), written into each expert's rows of `out`; other elements are left as they are.
pub fn dequantize_into(
    q: &[E4m3],
    scales: &[E8m0],
    d: Dims,
    experts: Option<Experts<'_>>,
    layout: ScaleLayout,
    scale_rows: usize,
    out: &mut [f32],
) {
    let nkb = d.k / BLOCK;
    for e in clamp_experts(experts, d.rows, scale_rows, layout) {
        for r in 0..e.rows {
            for kb in 0..nkb {
                let s = scales[layout.offset(e.srow0 + r, kb, nkb)];
                for c in kb * BLOCK..(kb + 1) * BLOCK {
                    out[(e.row0 + r) * d.x_stride + c] = dequantize_value(q[(e.row0 + r) * d.q_stride + c], s);
                }
            }
        }
    }
}

/// Dense quantization of a contiguous `[rows, k]` tensor: `(q [rows·k], scales)`.
pub fn quantize(x: &[f32], rows: usize, k: usize, layout: ScaleLayout) -> (Vec<E4m3>, Vec<E8m0>) {
    let mut q = vec![E4m3(0); rows * k];
    let mut s = vec![E8m0(0); layout.scale_bytes(rows, k)];
    let d = Dims { rows, k, x_stride: k, q_stride: k };
    quantize_into(x, d, None, layout, &mut q, &mut s, layout.padded_rows(rows));
    (q, s)
}

/// Dense dequantization of a contiguous `[rows, k]` tensor (f32 values).
pub fn dequantize(q: &[E4m3], scales: &[E8m0], rows: usize, k: usize, layout: ScaleLayout) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * k];
    let d = Dims { rows, k, x_stride: k, q_stride: k };
    dequantize_into(q, scales, d, None, layout, layout.padded_rows(rows), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::blockscale_offsets;
    use half::{bf16, f16};

    /// 2^e as an f32, exact also for subnormal results (f32::powi is not).
    fn p2(e: i32) -> f32 {
        2f64.powi(e) as f32
    }

    /// The definition, independently of the bit formula: the smallest e with amax ≤ 448·2^e.
    fn rceil_by_definition(amax: f32) -> i32 {
        let a = amax as f64;
        let mut e = -127;
        while a > 448.0 * 2f64.powi(e) {
            e += 1;
        }
        e
    }

    fn q(x: f32, amax: f32) -> u8 {
        let mut block = [0.0f32; 32];
        block[0] = amax;
        block[1] = x;
        let mut out = [E4m3(0); 32];
        quantize_block(&block, &mut out);
        out[1].0
    }

    #[test]
    fn scale_rule_matches_its_definition_on_every_bf16_and_f16() {
        for b in 0u16..0x7f80 {
            let a = bf16::from_bits(b).to_f32();
            assert_eq!(scale_exponent(a), rceil_by_definition(a), "bf16 {b:#x} = {a:e}");
        }
        for b in 0u16..0x7c00 {
            let a = f16::from_bits(b).to_f32();
            assert_eq!(scale_exponent(a), rceil_by_definition(a), "f16 {b:#x} = {a:e}");
        }
        // f32 extremes: subnormals clamp to −127, the largest finite value needs e = 120.
        for a in [f32::from_bits(1), f32::from_bits(0x7f_ffff), f32::MIN_POSITIVE, f32::MAX] {
            assert_eq!(scale_exponent(a), rceil_by_definition(a), "{a:e}");
        }
        assert_eq!(scale_exponent(f32::MAX), 120);
    }

    #[test]
    fn scales_by_hand() {
        assert_eq!(scale_exponent(448.0), 0);
        assert_eq!(scale_exponent(1.0), -8);
        assert_eq!(scale_exponent(1.75), -8);
        // amax / 448 just above a power of two: the next bf16 after 448 is 450.
        assert_eq!(scale_exponent(450.0), 1);
        assert_eq!(scale_exponent(1.7578125), -7);
        // The smallest exact boundary of the E8M0 range and the first value above it.
        assert_eq!(scale_exponent(1.75 * p2(-119)), -127);
        assert_eq!(scale_exponent(f32::from_bits((1.75 * p2(-119)).to_bits() + (1 << 16))), -126);
        assert_eq!(scale_exponent(0.0), -127);
        assert_eq!(inv_scale(-127), p2(127));
        assert_eq!(inv_scale(120), p2(-120));
    }

    #[test]
    fn elements_by_hand() {
        // amax 448 → scale 1: plain E4M3 rounding. Ties go to even.
        assert_eq!(q(1.0625, 448.0), 0x38); // 1.0625 halfway between 1.0 (0x38) and 1.125 (0x39)
        assert_eq!(q(1.1875, 448.0), 0x3A); // halfway between 1.125 and 1.25 → 1.25 (even)
        assert_eq!(q(-1.0625, 448.0), 0xB8);
        // Subnormal E4M3 (multiples of 2^-9): 2^-10 ties to 0, 3·2^-10 ties to 2^-8 (even code 2).
        assert_eq!(q(p2(-10), 448.0), 0x00);
        assert_eq!(q(3.0 * p2(-10), 448.0), 0x02);
        assert_eq!(q(-(p2(-12)), 448.0), 0x80);
        // Saturation: the amax element lands exactly on 448 (0x7E) for amax = 1.75·2^k.
        assert_eq!(q(448.0 * 8.0, 448.0 * 8.0), 0x7E);
        assert_eq!(q(-448.0 / 1024.0, 448.0 / 1024.0), 0xFE);
        // amax 450 → scale 2: 450 / 2 = 225 rounds to 224 (0x76), 448 / 2 = 224 too.
        assert_eq!(q(450.0, 450.0), 0x76);
        assert_eq!(q(448.0, 450.0), 0x76);
        // A power-of-two amax maps to 256 (0x78): 1.0 with scale 2^-8.
        assert_eq!(q(1.0, 1.0), 0x78);
        // f16's largest value: e = 8, 65504 / 256 = 255.875 → 256.
        assert_eq!(q(65504.0, 65504.0), 0x78);
        // bf16 subnormals with the smallest scale 2^-127 become normal E4M3 values.
        assert_eq!(q(p2(-130), p2(-130)), 0x20); // 2^-3
        assert_eq!(q(p2(-133), p2(-130)), 0x08); // 2^-6, the smallest normal
    }

    #[test]
    fn edge_blocks() {
        let mut out = [E4m3(0x55); 32];
        // All zero (and −0): the smallest scale, zeros keep their sign, no NaN.
        let mut z = [0.0f32; 32];
        z[3] = -0.0;
        assert_eq!(quantize_block(&z, &mut out), E8m0(0));
        assert!(out.iter().enumerate().all(|(i, v)| v.0 == if i == 3 { 0x80 } else { 0 }));
        // Tiny amax (bf16 subnormal 2^-133): scale 2^-127 (byte 0), elements exact.
        let mut t = [0.0f32; 32];
        t[0] = p2(-133);
        t[1] = -(p2(-131));
        assert_eq!(quantize_block(&t, &mut out), E8m0(0));
        assert_eq!((out[0].0, out[1].0), (0x08, 0x98));
        // NaN and ±inf take no part in the scale and leave the other elements alone.
        let mut b: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) / 4.0).collect();
        let (mut clean, mut clean_q) = (b.clone(), [E4m3(0); 32]);
        clean[0] = 0.0;
        clean[1] = 0.0;
        clean[2] = 0.0;
        let s_clean = quantize_block(&clean, &mut clean_q);
        b[0] = f32::NAN;
        b[1] = f32::INFINITY;
        b[2] = f32::NEG_INFINITY;
        assert_eq!(quantize_block(&b, &mut out), s_clean);
        assert_eq!(out[0].0 & 0x7F, 0x7F, "NaN → E4M3 NaN");
        assert_eq!((out[1].0, out[2].0), (0x7E, 0xFE), "±inf → ±448");
        assert_eq!(&out[3..], &clean_q[3..]);
        // A block of nothing but NaN and inf: scale byte 0.
        let nf = [f32::NAN, f32::INFINITY, f32::NAN, f32::NEG_INFINITY];
        assert_eq!(quantize_block(&nf, &mut out[..4]), E8m0(0));
    }

    #[test]
    fn dequantized_values() {
        assert_eq!(dequantize_value(E4m3(0x7E), E8m0(127)), 448.0);
        assert_eq!(dequantize_value(E4m3(0x01), E8m0(0)), p2(-136)); // f32 subnormal, exact
        assert_eq!(dequantize_value(E4m3(0xB8), E8m0(130)), -8.0);
        assert_eq!(dequantize_value(E4m3(0x78), E8m0(248)), f32::INFINITY); // 256·2^121
        assert!(dequantize_value(E4m3(0x7F), E8m0(127)).is_nan());
        assert!(dequantize_value(E4m3(0x38), E8m0(255)).is_nan());
    }

    #[test]
    fn round_trip_error_is_bounded() {
        // Relative error ≤ 2^-4 for E4M3 normals, absolute ≤ 2^(e−10) (half the subnormal step).
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (rows, k) = (37, 256);
        let x: Vec<f32> = (0..rows * k).map(|_| ((next() - 0.5) * 2f64.powf(next() * 40.0 - 20.0)) as f32).collect();
        for layout in ScaleLayout::ALL {
            let (qv, s) = quantize(&x, rows, k, layout);
            let y = dequantize(&qv, &s, rows, k, layout);
            for r in 0..rows {
                for kb in 0..k / 32 {
                    let e = s[layout.offset(r, kb, k / 32)].0 as i32 - 127;
                    for c in kb * 32..kb * 32 + 32 {
                        let (a, b) = (x[r * k + c] as f64, y[r * k + c] as f64);
                        let bound = (a.abs() * 2f64.powi(-4)).max(2f64.powi(e - 10));
                        assert!((a - b).abs() <= bound, "({r}, {c}): {a} → {b}, scale 2^{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn grouped_reference_writes_experts_and_padding_only() {
        // Two experts with a gap row between them; blocked scales padded to 128 rows each.
        let (rows, k) = (6usize, 128usize);
        let x: Vec<f32> = (0..rows * k).map(|i| (i % 97) as f32 - 40.0).collect();
        let tokens = [2, 3];
        let offsets = [0, 3];
        let (so, scale_rows) = blockscale_offsets(&tokens, ScaleLayout::Blocked128x4).unwrap();
        let ex = Experts { offsets: &offsets, tokens: &tokens, scale_offsets: &so };
        let mut q = vec![E4m3(0x55); rows * k];
        let mut s = vec![E8m0(0x55); scale_rows * 4 + 7];
        let d = Dims { rows, k, x_stride: k, q_stride: k };
        quantize_into(&x, d, Some(ex), ScaleLayout::Blocked128x4, &mut q, &mut s, scale_rows);
        assert!(q[2 * k..3 * k].iter().all(|v| v.0 == 0x55), "gap row untouched");
        assert!(q[..2 * k].iter().chain(&q[3 * k..]).all(|v| v.0 != 0x55), "expert rows written");
        assert!(s[scale_rows * 4..].iter().all(|v| v.0 == 0x55), "beyond the scale tensor untouched");
        // Padding rows of expert 0 (rows 2..128) and expert 1 (rows 3..128) hold byte 0.
        assert_eq!(s[ScaleLayout::Blocked128x4.offset(2, 1, 4)], E8m0(0));
        assert_eq!(s[ScaleLayout::Blocked128x4.offset(128 + 127, 3, 4)], E8m0(0));
        assert_ne!(s[ScaleLayout::Blocked128x4.offset(128, 0, 4)], E8m0(0));
        // Expert 1's first row is token row 3.
        let mut want = [E4m3(0); 32];
        let sw = quantize_block(&x[3 * k..3 * k + 32], &mut want);
        assert_eq!(s[ScaleLayout::Blocked128x4.offset(128, 0, 4)], sw);
        assert_eq!(&q[3 * k..3 * k + 32], &want);
    }

    #[test]
    fn clamping_rules() {
        let l = ScaleLayout::Blocked128x4;
        let ex =
            Experts { offsets: &[0, 5, -1, 8, 2, 0, 9], tokens: &[4, 100, 3, 1, -5, 3, 2], scale_offsets: &[0, 128, 0, 64, 0, 512, 256] };
        let c = clamp_experts(Some(ex), 10, 384, l);
        assert_eq!(c[0], Clamped { row0: 0, rows: 4, srow0: 0 });
        assert_eq!(c[1], Clamped { row0: 5, rows: 5, srow0: 128 }, "clamped to the token rows");
        assert_eq!(c[2].rows, 0, "negative offset");
        assert_eq!(c[3].rows, 0, "scale offset not a multiple of 128");
        assert_eq!(c[4].rows, 0, "negative count");
        assert_eq!(c[5].rows, 0, "scale offset past the scale tensor");
        assert_eq!(c[6], Clamped { row0: 9, rows: 1, srow0: 256 });
        // Row-major: any scale offset; rows clamped to the scale tensor too.
        let c = clamp_experts(Some(Experts { offsets: &[0], tokens: &[10], scale_offsets: &[7] }), 10, 12, ScaleLayout::RowMajor);
        assert_eq!(c[0], Clamped { row0: 0, rows: 5, srow0: 7 });
    }
}
