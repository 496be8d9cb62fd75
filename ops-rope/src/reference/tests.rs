//! T0: the CPU references on hand-computed cases, the angle code against libm, and the bit model
//! against exact f64 math (the op's accuracy claim) at long context.

use half::{bf16, f16};

use super::*;
use crate::config::Yarn;

/// A small deterministic generator (SplitMix64) for the random cases.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn cuh_number(text: &str, name: &str) -> f32 {
    let at = text.find(&format!("{name} = ")).unwrap_or_else(|| panic!("{name} not in rope.cuh")) + name.len() + 3;
    text[at..].split(';').next().unwrap().trim().trim_end_matches('f').parse().unwrap()
}

#[test]
fn constants_match_the_kernel_source() {
    let text = crate::SOURCE.text;
    assert_eq!(cuh_number(text, "kTwoPiOver2p32").to_bits(), TWO_PI_OVER_2P32.to_bits());
    for (k, c) in SIN.iter().enumerate() {
        assert_eq!(cuh_number(text, &format!("kS{}", k + 1)).to_bits(), c.to_bits(), "kS{}", k + 1);
    }
    for (k, c) in COS.iter().enumerate() {
        assert_eq!(cuh_number(text, &format!("kC{}", k + 1)).to_bits(), c.to_bits(), "kC{}", k + 1);
    }
    // They are what they claim: 2π/2^32, (−1)^k/(2k+1)! and (−1)^k/(2k)!, each rounded to f32
    // (one rounding from the f64 value, which is within 2^-52 relative of the exact one).
    assert_eq!(TWO_PI_OVER_2P32, (std::f64::consts::TAU / 4_294_967_296.0) as f32);
    let fact = |n: u32| (1..=n).map(|i| i as f64).product::<f64>();
    let sign = |k: usize| if k % 2 == 1 { -1.0 } else { 1.0 };
    for (i, &c) in SIN.iter().enumerate() {
        assert_eq!(c, (sign(i + 1) / fact(2 * i as u32 + 3)) as f32, "sin coefficient {i}");
    }
    for (i, &c) in COS.iter().enumerate() {
        assert_eq!(c, (sign(i + 1) / fact(2 * i as u32 + 2)) as f32, "cos coefficient {i}");
    }
}

#[test]
fn turns_by_hand() {
    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
    assert_eq!(turns_of(0.0), 0);
    // π/2 rad = a quarter turn; 2π + π/2 wraps to the same quarter.
    assert_eq!(turns_of(std::f64::consts::FRAC_PI_2), 1 << 62);
    assert_eq!(turns_of(std::f64::consts::TAU + std::f64::consts::FRAC_PI_2), 1 << 62);
    // 1 rad: 2^64 / 2π, to the f64 rounding of 1/2π.
    assert!(turns_of(1.0).abs_diff((TWO_64 / std::f64::consts::TAU) as u64) <= 1 << 12);
}

#[test]
fn cos_sin_by_hand() {
    assert_eq!(cos_sin(0, turns_of(0.3)), (1.0, 0.0));
    assert_eq!(cos_sin(12345, 0), (1.0, 0.0));
    // Quarter turns are exact: (0, 1), (−1, 0), (0, −1), and back.
    let quarter = 1u64 << 62;
    assert_eq!(cos_sin(1, quarter), (-0.0, 1.0));
    assert_eq!(cos_sin(2, quarter), (-1.0, -0.0));
    assert_eq!(cos_sin(3, quarter), (0.0, -1.0));
    assert_eq!(cos_sin(4, quarter), (1.0, 0.0));
    // Every quadrant, and odd/even symmetry for negative positions.
    for theta in [0.5f64, 2.0, 4.0, 5.9, 1e3] {
        let (c, s) = cos_sin(1, turns_of(theta));
        let (wc, ws) = (theta.cos(), theta.sin());
        assert!((c as f64 - wc).abs() < 2e-7 && (s as f64 - ws).abs() < 2e-7, "θ={theta}: ({c}, {s}) vs ({wc}, {ws})");
        let (cn, sn) = cos_sin(-1, turns_of(theta));
        assert!((cn as f64 - wc).abs() < 2e-7 && (sn as f64 + ws).abs() < 2e-7, "θ=-{theta}: ({cn}, {sn})");
    }
}

#[test]
fn cos_sin_matches_libm_at_long_context() {
    let mut rng = Rng(7);
    let freqs = Rope::neox(1e6, 128).inv_frequencies();
    let mut worst = 0.0f64;
    let n = 200_000;
    for i in 0..n {
        let pos = (rng.next() % (1 << 21)) as i64 - if i % 7 == 0 { 1 << 20 } else { 0 };
        let f = if i % 3 == 0 { freqs[i % freqs.len()] } else { rng.uniform() * 1.5 };
        let (c, s) = cos_sin(pos, turns_of(f));
        // The exact angle, reduced in f64 from the integer position (|pos · f| < 2^21·1.5: the
        // f64 product is within 2^-31 rad of it).
        let (ws, wc) = (pos as f64 * f).sin_cos();
        worst = worst.max((c as f64 - wc).abs()).max((s as f64 - ws).abs());
    }
    // f32 rounding of the results (≤ 2^-25) + the polynomial and the reduction (≈ 1e-8): a few
    // 1e-8 at any position up to 2^21, where an f32 angle would be off by whole radians.
    assert!(worst < 1.5e-7, "worst absolute error {worst:e}");
}

#[test]
fn frequencies_by_hand() {
    assert_eq!(Rope::neox(10000.0, 4).inv_frequencies(), [1.0, 0.01]);
    assert_eq!(Rope::interleaved(16.0, 8).inv_frequencies(), [1.0, 0.5, 0.25, 0.125]);
    // YaRN ramp over pairs: p ≤ low extrapolates (f), p ≥ high interpolates (f / factor), blend
    // in between.
    let y = Yarn { factor: 4.0, low: 1.0, high: 3.0, attention_factor: 1.5 };
    assert_eq!(Rope::interleaved(16.0, 8).with_yarn(y).inv_frequencies(), [1.0, 0.5, 0.25 / 4.0 * 0.5 + 0.25 * 0.5, 0.125 / 4.0]);
    // low == high: high becomes high + 0.001, so the ramp jumps from 0 to 1 right after low.
    let y = Yarn { factor: 2.0, low: 2.0, high: 2.0, attention_factor: 1.0 };
    assert_eq!(Rope::interleaved(16.0, 8).with_yarn(y).inv_frequencies(), [1.0, 0.5, 0.25, 0.0625]);
    assert_eq!(Rope::neox(1e4, 16).with_yarn(y).attention_factor(), 1.0);
    assert_eq!(Rope::neox(1e4, 16).attention_factor(), 1.0);
}

#[test]
fn lane_layout_by_hand_and_complete() {
    let s = |v: &[(usize, usize)]| v.iter().map(|&(a, b)| [Some(a), Some(b)]).collect::<Vec<_>>();
    // NeoX, full rotary: lane l holds chunks l and l + 8 (elements d and d + 64 meet in one lane).
    assert_eq!(lane_chunks(128, RopeStyle::Neox, 128), s(&(0..8).map(|l| (l, l + 8)).collect::<Vec<_>>()));
    // NeoX, rotary 64 of 128: the rotary chunks 0..8 pair up in lanes 0..4, chunks 8..16 follow.
    let mut want = s(&[(0, 4), (1, 5), (2, 6), (3, 7), (8, 12), (9, 13), (10, 14), (11, 15)]);
    assert_eq!(lane_chunks(128, RopeStyle::Neox, 64), want);
    // head_dim 80 (10 chunks) on 8 lanes: three idle lanes.
    want = s(&[(0, 5), (1, 6), (2, 7), (3, 8), (4, 9)]);
    want.extend([[None, None]; 3]);
    assert_eq!(lane_chunks(80, RopeStyle::Interleaved, 80), want);
    assert_eq!(lane_chunks(80, RopeStyle::Neox, 80), want);
    // head_dim 24 (3 chunks): lane 1 has only one.
    assert_eq!(lane_chunks(24, RopeStyle::Interleaved, 24), [[Some(0), Some(2)], [Some(1), None]]);
    // Every chunk exactly once, for every layout the op accepts.
    for hd in (8..=256).step_by(8) {
        for (style, rd) in
            (2..=hd).step_by(2).map(|r| (RopeStyle::Interleaved, r)).chain((16..=hd).step_by(16).map(|r| (RopeStyle::Neox, r)))
        {
            let mut seen: Vec<usize> = lane_chunks(hd, style, rd).iter().flatten().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..hd / 8).collect::<Vec<_>>(), "hd {hd} {style:?} rotary {rd}");
        }
    }
}

#[test]
fn sum_squares_follows_the_lane_tree() {
    let x: Vec<f32> = (1..=16).map(|v| v as f32).collect();
    assert_eq!(sum_squares(&x, RopeStyle::Neox, 16), 1496.0);
    // head_dim 24: lane 0 folds chunks 0 and 2, lane 1 chunk 1.
    let x: Vec<f32> = (0..24)
        .map(|i| {
            if i < 8 {
                1.0
            } else if i < 16 {
                2.0
            } else {
                3.0
            }
        })
        .collect();
    assert_eq!(sum_squares(&x, RopeStyle::Interleaved, 24), (8.0 + 72.0) + 32.0);
    // head_dim 64 on 4 lanes (chunks l and l + 4). The butterfly adds lanes l and l^2 first, then
    // l and l^1: 2^27 + 8 rounds back to 2^27 (a tie, to even) but 8 + 8 = 16 survives, so the
    // total is 2^27 + 16; a sequential sum gives 2^27.
    let x: Vec<f32> = (0..64)
        .map(|i| {
            if i < 8 {
                4096.0
            } else if i < 32 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    assert_eq!(sum_squares(&x, RopeStyle::Interleaved, 64), 2f32.powi(27) + 16.0);
    assert_eq!(sum_squares(&x, RopeStyle::Neox, 64), 2f32.powi(27) + 16.0);
    assert_eq!(x.iter().fold(0.0f32, |s, v| v.mul_add(*v, s)), 2f32.powi(27));
}

#[test]
fn norm_and_rotation_by_hand() {
    // x = 3 everywhere, eps = 7: mean square 9 + 7 = 16, r = 1/4, e = 0.75·w.
    let x = [3.0f32; 16];
    let w: Vec<f32> = (1..=16).map(|v| v as f32).collect();
    let e: Vec<f32> = w.iter().map(|v| 0.75 * v).collect();
    let identity = vec![(1.0f32, 0.0f32); 8];
    assert_eq!(head(&x, Some((&w, 7.0)), &identity, RopeStyle::Neox, 16, 1.0), e);
    assert_eq!(head(&x, Some((&w, 7.0)), &identity, RopeStyle::Interleaved, 16, 1.0), e);
    // A quarter turn: (a, b) → (−b, a).
    let quarter = vec![(0.0f32, 1.0f32); 8];
    let neox = head(&x, Some((&w, 7.0)), &quarter, RopeStyle::Neox, 16, 1.0);
    let want: Vec<f32> = (0..16).map(|d| if d < 8 { -e[d + 8] } else { e[d - 8] }).collect();
    assert_eq!(neox, want);
    let gptj = head(&x, Some((&w, 7.0)), &quarter, RopeStyle::Interleaved, 16, 1.0);
    let want: Vec<f32> = (0..16).map(|d| if d % 2 == 0 { -e[d + 1] } else { e[d - 1] }).collect();
    assert_eq!(gptj, want);
    // (a, b) = (1, 2) at 60°: (1·½ − 2·√3/2, 2·½ + 1·√3/2).
    let (c, s) = (0.5f32, 0.75f32.sqrt());
    let out = head(&[1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], None, &[(c, s); 4], RopeStyle::Interleaved, 8, 1.0);
    assert_eq!((out[0], out[1]), (1.0f32.mul_add(c, -(2.0 * s)), 2.0f32.mul_add(c, s)));
    assert!((out[0] as f64 - (0.5 - 3f64.sqrt())).abs() < 1e-6 && (out[1] as f64 - (1.0 + 0.75f64.sqrt())).abs() < 1e-6);
}

#[test]
fn partial_rotary_and_attention_factor() {
    // head_dim 32, rotary 16, attention factor 2: the last 16 elements are only normalised.
    let x: Vec<f32> = (0..32).map(|i| i as f32 - 5.5).collect();
    let quarter = vec![(0.0f32, 1.0f32); 8];
    for style in [RopeStyle::Neox, RopeStyle::Interleaved] {
        let plain = head(&x, None, &quarter, style, 16, 2.0);
        assert_eq!(plain[16..], x[16..], "{style:?}: unrotated part is untouched");
        let (a, b) = if style == RopeStyle::Neox { (0, 8) } else { (0, 1) };
        assert_eq!((plain[a], plain[b]), (-x[b] * 2.0, x[a] * 2.0), "{style:?}");
        let w = vec![1.0f32; 32];
        let normed = head(&x, Some((&w, 1e-6)), &quarter, style, 16, 2.0);
        let r = 1.0 / (sum_squares(&x, style, 16) / 32.0 + 1e-6).sqrt();
        assert_eq!(normed[16..], x[16..].iter().map(|v| v * r).collect::<Vec<_>>()[..]);
    }
    // Interleaved rotary_dim need not fill whole chunks: 6 of 32.
    let out = head(&x, None, &quarter[..3], RopeStyle::Interleaved, 6, 1.0);
    assert_eq!(out[..6], [-x[1], x[0], -x[3], x[2], -x[5], x[4]]);
    assert_eq!(out[6..], x[6..]);
}

/// Checks model against exact over random heads; returns the largest ulp distance seen among the
/// elements that are not tiny relative to their head (see the comment inside).
fn model_vs_exact<T: Element>(head_dim: usize, rope: Rope, norm: bool, seed: u64) -> u32 {
    let mut rng = Rng(seed);
    let freqs = rope.inv_frequencies();
    let mut worst = 0;
    for case in 0..300 {
        let pos = (rng.next() % (1 << 20)) as i64 + if case == 0 { 1 << 20 } else { 0 };
        let x: Vec<T> = (0..head_dim).map(|_| T::from_f64(rng.normal() * 2.0)).collect();
        let w: Vec<f32> = (0..head_dim).map(|_| (rng.normal() * 0.5 + 1.0) as f32).collect();
        let xs: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let table = cos_sin_table(pos, &freqs);
        let got = head(&xs, norm.then_some((&w[..], 1e-6)), &table, rope.style, rope.rotary_dim, rope.attention_factor());
        let x64: Vec<f64> = xs.iter().map(|&v| v as f64).collect();
        let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let attn = rope.yarn.map_or(1.0, |y| y.attention_factor);
        let want = head_f64(&x64, norm.then_some((&w64[..], 1e-6f32 as f64)), pos as f64, &freqs, rope.style, attn);
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (d, (&g, &wv)) in got.iter().zip(&want).enumerate() {
            let u = ulps(T::from_f32(g), wv);
            // An output that cancels to below 2^-10 of its head's largest value has an ulp that
            // approaches the f32 arithmetic's error (a few 2^-24 of the head's scale): only the
            // absolute error is meaningful there.
            if wv.abs() < scale * 2f64.powi(-10) {
                assert!((T::from_f32(g).to_f32() as f64 - wv).abs() <= scale * 2f64.powi(-17), "tiny element {d} pos {pos}: {g} vs {wv}");
                continue;
            }
            assert!(u <= 2, "{rope:?} hd {head_dim} pos {pos} element {d}: got {g} want {wv} ({u} ulp)");
            worst = worst.max(u);
        }
    }
    worst
}

#[test]
fn model_is_within_2_ulp_of_exact_math_up_to_2_pow_20() {
    let yarn = Yarn { factor: 40.0, low: 10.0, high: 41.0, attention_factor: 1.2 };
    for hd in [64, 80, 96, 128, 256] {
        for rope in [
            Rope::neox(1e6, hd / 16 * 16),
            Rope::interleaved(1e4, hd),
            Rope::neox(5e5, 32).with_yarn(yarn),
            Rope::interleaved(1e4, hd / 2).with_yarn(yarn),
        ] {
            for norm in [true, false] {
                model_vs_exact::<bf16>(hd, rope, norm, hd as u64);
                model_vs_exact::<f16>(hd, rope, norm, hd as u64 + 1);
            }
        }
    }
}

#[test]
fn whole_op_models_touch_only_q_and_k() {
    let heads = Heads { nq: 3, nk: 2, nv: 2, head_dim: 64 };
    let rows = Rows::strided(5, 7 * 64, 7 * 64 + 24);
    let mut rng = Rng(3);
    let input: Vec<bf16> = (0..rows.span().unwrap()).map(|_| bf16::from_f64(rng.normal())).collect();
    let w: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 / 64.0).collect();
    let positions: Vec<i64> = (0..5).map(|t| t * 1000 + 3).collect();
    let cfg = QkNormRope { heads, eps: 1e-6, rope: Rope::neox(1e6, 64) };
    let mut got = input.clone();
    fused_qk_norm_rope(&mut got, rows, &w, &w, &positions, &cfg);
    let exact = fused_qk_norm_rope_f64(&input, rows, &w, &w, &positions, &cfg);
    for t in 0..5 {
        let row = t * rows.stride;
        // V heads and the padding keep their bits.
        for i in row + 5 * 64..(row + rows.stride).min(input.len()) {
            assert_eq!(got[i].to_bits(), input[i].to_bits());
            assert_eq!(exact[i], input[i].to_f64());
        }
        for i in row..row + 5 * 64 {
            assert_ne!(exact[i], input[i].to_f64(), "q/k element {i} changed in the exact result");
            assert!(exact[i].abs() < 0.01 || ulps(got[i], exact[i]) <= 2, "element {i}: {} vs {}", got[i], exact[i]);
        }
    }
    // RoPE alone on heads 1..3 leaves head 0 and the rest alone.
    let mut got = input.clone();
    let rope = Rope::interleaved(1e4, 32);
    apply_rope_rows(&mut got, rows, 1, 2, 64, &positions, &rope);
    let exact = apply_rope_rows_f64(&input, rows, 1, 2, 64, &positions, &rope);
    for t in 0..5 {
        let row = t * rows.stride;
        for i in 0..rows.stride.min(input.len() - row) {
            let rotated = (64..192).contains(&i) && (i - 64) % 64 < 32;
            if !rotated {
                assert_eq!(got[row + i].to_bits(), input[row + i].to_bits(), "token {t} element {i}");
            } else {
                assert!(exact[row + i].abs() < 0.01 || ulps(got[row + i], exact[row + i]) <= 2);
            }
        }
    }
}

#[test]
fn ulps_counts_representable_steps() {
    let one = bf16::ONE;
    assert_eq!(ulps(one, 1.0), 0);
    assert_eq!(ulps(bf16::from_bits(one.to_bits() + 2), 1.0), 2);
    assert_eq!(ulps(bf16::from_f32(-0.0), 0.0), 0);
    assert_eq!(ulps(f16::from_bits(1), -f16::from_bits(1).to_f64()), 2);
    assert_eq!(ulps(f16::NAN, 1.0), u32::MAX);
}
