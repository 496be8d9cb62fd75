//! CPU references.
//!
//! - The *model* functions ([`cos_sin`], [`head`], [`fused_qk_norm_rope`], [`apply_rope_rows`])
//!   perform the kernels' arithmetic operation for operation — the same fixed-point angle
//!   reduction and f32 polynomials, the same f32 operations in the same order (the lane-sum tree
//!   included) — so the GPU output must match them bit for bit.
//! - The *exact* functions ([`head_f64`], [`fused_qk_norm_rope_f64`], [`apply_rope_rows_f64`]) do
//!   the same math in f64 with the platform's `sin_cos`, without intermediate rounding: the
//!   yardstick for the op's accuracy (within 2 units in the last place of the storage type).

use crate::config::{Element, Heads, QkNormRope, Rope, RopeStyle, Rows};
use crate::plan::LANE_ELEMS;

// The constants of `cos_sin` in cuda/rope.cuh (a T0 test checks that the texts agree).
const TWO_PI_OVER_2P32: f32 = 1.462_918_1e-9;
const SIN: [f32; 4] = [-0.166_666_67, 0.008_333_334, -0.000_198_412_7, 2.755_731_9e-6];
const COS: [f32; 5] = [-0.5, 0.041_666_668, -0.001_388_888_9, 2.480_158_8e-5, -2.755_732e-7];

/// `f / 2π` as the kernel's 0.64 fixed-point fraction of a turn (the integer part dropped):
/// `pos · turns_of(f)` modulo 2^64 is then the angle `pos · f` in 2^-64 turns, exactly reduced.
pub fn turns_of(f: f64) -> u64 {
    let t = f / std::f64::consts::TAU;
    ((t - t.floor()) * 18_446_744_073_709_551_616.0) as u64
}

/// `(cos θ, sin θ)` for `θ = 2π · frac(pos · turns / 2^64)`, exactly as the kernel computes them:
/// the top 32 bits of the wrapped product, split into the nearest quarter turn and a rest of at
/// most 1/8 turn, Taylor polynomials in f32 (Horner, FMA) on the rest, quadrant select.
pub fn cos_sin(pos: i64, turns: u64) -> (f32, f32) {
    let a = ((pos as u64).wrapping_mul(turns) >> 32) as u32;
    let q = a.wrapping_add(1 << 29) >> 30;
    let r = a.wrapping_sub(q << 30) as i32;
    let rho = r as f32 * TWO_PI_OVER_2P32;
    let z = rho * rho;
    let mut ps = SIN[3].mul_add(z, SIN[2]);
    ps = ps.mul_add(z, SIN[1]);
    ps = ps.mul_add(z, SIN[0]);
    let mut pc = COS[4].mul_add(z, COS[3]);
    for &c in COS[..3].iter().rev() {
        pc = pc.mul_add(z, c);
    }
    let sr = (rho * z).mul_add(ps, rho);
    let cr = z.mul_add(pc, 1.0);
    match q & 3 {
        0 => (cr, sr),
        1 => (-sr, cr),
        2 => (-cr, -sr),
        _ => (sr, -cr),
    }
}

/// The kernel's (cos, sin) table of one token.
pub fn cos_sin_table(pos: i64, freqs: &[f64]) -> Vec<(f32, f32)> {
    freqs.iter().map(|&f| cos_sin(pos, turns_of(f))).collect()
}

/// The kernel's lane layout of one head: for each of its pow2ceil(head_dim/16) lanes, the
/// 8-element chunks the lane holds (first, second). NeoX: lane `l < A/2` holds chunks `l` and
/// `l + A/2` (`A = rotary_dim/8`, the rotary chunks), so that each element meets its partner in the
/// same lane; the other chunks (all of them for interleaved, `A = 0`) go to the next lanes, lane
/// `A/2 + m` holding `A + m` and `A + ⌈(head_dim/8 − A)/2⌉ + m` when those exist.
pub fn lane_chunks(head_dim: usize, style: RopeStyle, rotary_dim: usize) -> Vec<[Option<usize>; 2]> {
    let chunks = head_dim / LANE_ELEMS;
    let lanes = head_dim.div_ceil(2 * LANE_ELEMS).next_power_of_two();
    let a = if style == RopeStyle::Neox { rotary_dim / LANE_ELEMS } else { 0 };
    let half_a = a / 2;
    let hb = (chunks - a).div_ceil(2);
    (0..lanes)
        .map(|l| match l.checked_sub(half_a) {
            None => [Some(l), Some(l + half_a)],
            Some(m) if m < hb => [Some(a + m), (a + hb + m < chunks).then_some(a + hb + m)],
            Some(_) => [None, None],
        })
        .collect()
}

/// Σ x² as the kernel forms it: each lane folds the elements of its chunks ([`lane_chunks`]) in
/// order with an FMA, then an xor butterfly adds the lanes (offsets lanes/2 … 1).
pub fn sum_squares(x: &[f32], style: RopeStyle, rotary_dim: usize) -> f32 {
    let layout = lane_chunks(x.len(), style, rotary_dim);
    let lanes = layout.len();
    let mut v: Vec<f32> = layout
        .iter()
        .map(|cs| cs.iter().flatten().flat_map(|&c| &x[c * LANE_ELEMS..(c + 1) * LANE_ELEMS]).fold(0.0f32, |s, &e| e.mul_add(e, s)))
        .collect();
    let mut o = lanes / 2;
    while o >= 1 {
        v = (0..lanes).map(|l| v[l] + v[l ^ o]).collect();
        o /= 2;
    }
    v[0]
}

/// One head through the kernel's f32 arithmetic; returns the values before the final rounding.
///
/// `x`: the head's values (exactly widened); `norm`: `(weight, eps)` for the RMSNorm, or `None`;
/// `table`: the token's [`cos_sin_table`]; `attention_factor` scales the rotated elements.
pub fn head(
    x: &[f32],
    norm: Option<(&[f32], f32)>,
    table: &[(f32, f32)],
    style: RopeStyle,
    rotary_dim: usize,
    attention_factor: f32,
) -> Vec<f32> {
    let mut e = x.to_vec();
    if let Some((w, eps)) = norm {
        let r = 1.0 / (sum_squares(x, style, rotary_dim) / x.len() as f32 + eps).sqrt();
        for (v, &wi) in e.iter_mut().zip(w) {
            *v = (*v * r) * wi;
        }
    }
    let mut out = e.clone();
    let rot = |a: f32, b: f32, (c, s): (f32, f32)| ((a.mul_add(c, -(b * s))) * attention_factor, (b.mul_add(c, a * s)) * attention_factor);
    match style {
        RopeStyle::Neox => {
            let half = rotary_dim / 2;
            for p in 0..half {
                (out[p], out[p + half]) = rot(e[p], e[p + half], table[p]);
            }
        }
        RopeStyle::Interleaved => {
            for p in 0..rotary_dim / 2 {
                (out[2 * p], out[2 * p + 1]) = rot(e[2 * p], e[2 * p + 1], table[p]);
            }
        }
    }
    out
}

/// One head in exact f64 math: `x·r·w` with `r = 1/sqrt(mean(x²) + eps)`, then the rotation by
/// `pos · f_p` with the platform's `sin_cos`.
pub fn head_f64(x: &[f64], norm: Option<(&[f64], f64)>, pos: f64, freqs: &[f64], style: RopeStyle, attention_factor: f64) -> Vec<f64> {
    let mut e = x.to_vec();
    if let Some((w, eps)) = norm {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ms + eps).sqrt();
        for (v, &wi) in e.iter_mut().zip(w) {
            *v = *v * r * wi;
        }
    }
    let mut out = e.clone();
    let half = freqs.len();
    for (p, &f) in freqs.iter().enumerate() {
        let (s, c) = (pos * f).sin_cos();
        let (ia, ib) = match style {
            RopeStyle::Neox => (p, p + half),
            RopeStyle::Interleaved => (2 * p, 2 * p + 1),
        };
        out[ia] = (e[ia] * c - e[ib] * s) * attention_factor;
        out[ib] = (e[ib] * c + e[ia] * s) * attention_factor;
    }
    out
}

/// The kernel's result on the heads `first_head .. first_head + n_heads` of every row of `x`
/// (in place), each head normalised with `norm = (weight, eps)` if given.
#[allow(clippy::too_many_arguments)]
fn model_rows<T: Element>(
    x: &mut [T],
    rows: Rows,
    first_head: usize,
    n_heads: usize,
    head_dim: usize,
    norm: Option<(&[f32], f32)>,
    positions: &[i64],
    rope: &Rope,
) {
    let freqs = rope.inv_frequencies();
    for (t, &pos) in positions.iter().enumerate().take(rows.tokens) {
        let table = cos_sin_table(pos, &freqs);
        for h in first_head..first_head + n_heads {
            let at = t * rows.stride + h * head_dim;
            let xs: Vec<f32> = x[at..at + head_dim].iter().map(|v| v.to_f32()).collect();
            let out = head(&xs, norm, &table, rope.style, rope.rotary_dim, rope.attention_factor());
            for (d, o) in x[at..at + head_dim].iter_mut().zip(out) {
                *d = T::from_f32(o);
            }
        }
    }
}

/// Exact f64 counterpart of [`model_rows`]; returns the whole buffer widened, with the processed
/// heads replaced by their exact (unrounded) results.
#[allow(clippy::too_many_arguments)]
fn exact_rows<T: Element>(
    x: &[T],
    rows: Rows,
    first_head: usize,
    n_heads: usize,
    head_dim: usize,
    norm: Option<(&[f64], f64)>,
    positions: &[i64],
    rope: &Rope,
) -> Vec<f64> {
    let freqs = rope.inv_frequencies();
    let attn = rope.yarn.map_or(1.0, |y| y.attention_factor);
    let mut out: Vec<f64> = x.iter().map(|v| v.to_f32() as f64).collect();
    for (t, &pos) in positions.iter().enumerate().take(rows.tokens) {
        for h in first_head..first_head + n_heads {
            let at = t * rows.stride + h * head_dim;
            let r = head_f64(&out[at..at + head_dim], norm, pos as f64, &freqs, rope.style, attn);
            out[at..at + head_dim].copy_from_slice(&r);
        }
    }
    out
}

/// Bit-exact model of [`crate::fused_qk_norm_rope`] on host data, in place (weights widened to
/// f32, positions widened to i64).
pub fn fused_qk_norm_rope<T: Element>(qkv: &mut [T], rows: Rows, q_weight: &[f32], k_weight: &[f32], positions: &[i64], cfg: &QkNormRope) {
    let Heads { nq, nk, head_dim, .. } = cfg.heads;
    model_rows(qkv, rows, 0, nq, head_dim, Some((q_weight, cfg.eps)), positions, &cfg.rope);
    model_rows(qkv, rows, nq, nk, head_dim, Some((k_weight, cfg.eps)), positions, &cfg.rope);
}

/// Exact f64 result of [`crate::fused_qk_norm_rope`]: the whole buffer widened, q and k heads
/// replaced by their exact values (V heads and row padding keep their input values).
pub fn fused_qk_norm_rope_f64<T: Element>(
    qkv: &[T],
    rows: Rows,
    q_weight: &[f32],
    k_weight: &[f32],
    positions: &[i64],
    cfg: &QkNormRope,
) -> Vec<f64> {
    let Heads { nq, nk, head_dim, .. } = cfg.heads;
    let (qw, kw): (Vec<f64>, Vec<f64>) = (q_weight.iter().map(|&v| v as f64).collect(), k_weight.iter().map(|&v| v as f64).collect());
    let eps = cfg.eps as f64;
    let mut out = exact_rows(qkv, rows, 0, nq, head_dim, Some((&qw, eps)), positions, &cfg.rope);
    let k_part = exact_rows(qkv, rows, nq, nk, head_dim, Some((&kw, eps)), positions, &cfg.rope);
    for t in 0..rows.tokens {
        let at = t * rows.stride + nq * head_dim;
        out[at..at + nk * head_dim].copy_from_slice(&k_part[at..at + nk * head_dim]);
    }
    out
}

/// Bit-exact model of RoPE alone ([`crate::apply_rope`], [`crate::apply_rope_qkv`]) on the heads
/// `first_head .. first_head + n_heads` of every row of `x`, in place.
pub fn apply_rope_rows<T: Element>(
    x: &mut [T],
    rows: Rows,
    first_head: usize,
    n_heads: usize,
    head_dim: usize,
    positions: &[i64],
    rope: &Rope,
) {
    model_rows(x, rows, first_head, n_heads, head_dim, None, positions, rope);
}

/// Exact f64 counterpart of [`apply_rope_rows`] (the whole buffer widened, the rotated heads
/// replaced by their exact values).
pub fn apply_rope_rows_f64<T: Element>(
    x: &[T],
    rows: Rows,
    first_head: usize,
    n_heads: usize,
    head_dim: usize,
    positions: &[i64],
    rope: &Rope,
) -> Vec<f64> {
    exact_rows(x, rows, first_head, n_heads, head_dim, None, positions, rope)
}

/// Units in the last place of `T` between `got` and the exact value `want` once rounded to `T`
/// (NaN against anything else: `u32::MAX`; −0 and +0 are 0 apart).
pub fn ulps<T: Element>(got: T, want: f64) -> u32 {
    let w = T::from_f64(want);
    if got.to_f32().is_nan() || w.to_f32().is_nan() {
        return if got.to_f32().is_nan() && w.to_f32().is_nan() { 0 } else { u32::MAX };
    }
    let ord = |b: u16| if b & 0x8000 != 0 { -((b & 0x7fff) as i32) } else { b as i32 };
    ord(got.bits()).abs_diff(ord(w.bits()))
}

#[cfg(test)]
mod tests;
