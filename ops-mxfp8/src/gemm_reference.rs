//! CPU reference of the grouped MXFP8 GEMM: the product of the exactly dequantized operands,
//! accumulated in f64. Every E4M3 × E4M3 product and every 32-element block sum is exact in f64,
//! so the only rounding is in the f64 additions across K-blocks (relative error ~1e-16): this is
//! the exact value the kernels approximate with fp32 accumulation and one rounding to bf16/f16.
//! Also SGLang's/DeepGEMM's `calc_diff` similarity used against the unquantized product.

use std::sync::LazyLock;

use kiln_runtime::{E4m3, E8m0};

use crate::ScaleLayout;
use crate::layout::{BLOCK, blocked_offset};
use crate::reference::{Experts, clamp_experts};

/// The operands of one grouped GEMM, as host slices.
#[derive(Debug, Clone, Copy)]
pub struct GemmOperands<'a> {
    /// `[E, N, K]` E4M3 weights.
    pub weights: &'a [E4m3],
    /// `[E·N, K/32]` E8M0 weight scales in the 128×4 layout.
    pub weight_scales: &'a [E8m0],
    /// `[T, K]` E4M3 tokens.
    pub tokens: &'a [E4m3],
    /// `[S, K/32]` E8M0 token scales in the 128×4 layout (S a multiple of 128).
    pub token_scales: &'a [E8m0],
    /// Output features N.
    pub n: usize,
    /// Reduction length K (a multiple of 128).
    pub k: usize,
}

/// Which expert writes an output row, and where its token scales are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowOwner {
    /// Expert index (selects the weights).
    pub expert: usize,
    /// Scale row of this token row.
    pub scale_row: usize,
}

static E4M3_F64: LazyLock<[f64; 256]> = LazyLock::new(|| std::array::from_fn(|b| E4m3(b as u8).to_f32() as f64));

fn scale_f64(s: E8m0) -> f64 {
    s.to_f32() as f64
}

impl GemmOperands<'_> {
    /// Token rows T.
    pub fn rows(&self) -> usize {
        self.tokens.len() / self.k
    }

    /// Token scale rows S.
    pub fn scale_rows(&self) -> usize {
        self.token_scales.len() / (self.k / BLOCK)
    }

    /// The exact product of weight row `j` of `expert` and token row `row` (token scales at
    /// `scale_row`): `Σ_kb 2^(sw−127)·2^(sx−127)·Σ_{k∈kb} e4m3(w_k)·e4m3(x_k)` in f64. NaN when an
    /// element or a scale used is NaN.
    pub fn dot(&self, expert: usize, j: usize, row: usize, scale_row: usize) -> f64 {
        let (n, k) = (self.n, self.k);
        let nkb = k / BLOCK;
        let lut = &*E4M3_F64;
        let wrow = expert * n + j;
        let w = &self.weights[wrow * k..(wrow + 1) * k];
        let x = &self.tokens[row * k..(row + 1) * k];
        let mut acc = 0.0f64;
        for kb in 0..nkb {
            let mut s = 0.0f64;
            for i in kb * BLOCK..(kb + 1) * BLOCK {
                s += lut[w[i].0 as usize] * lut[x[i].0 as usize];
            }
            let sw = scale_f64(self.weight_scales[blocked_offset(wrow, kb, nkb)]);
            let sx = scale_f64(self.token_scales[blocked_offset(scale_row, kb, nkb)]);
            acc += s * (sw * sx);
        }
        acc
    }
}

/// For each of `rows` output rows, the expert that writes it (after the kernels' clamping of the
/// metadata, see [`crate::Experts`]), or `None` when no expert covers it (the row is not written).
/// With overlapping experts the first one is reported (the kernels race there).
pub fn row_owners(experts: Experts<'_>, rows: usize, scale_rows: usize) -> Vec<Option<RowOwner>> {
    let mut owners = vec![None; rows];
    for (g, e) in clamp_experts(Some(experts), rows, scale_rows, ScaleLayout::Blocked128x4).iter().enumerate() {
        for r in 0..e.rows {
            let o = &mut owners[e.row0 + r];
            if o.is_none() {
                *o = Some(RowOwner { expert: g, scale_row: e.srow0 + r });
            }
        }
    }
    owners
}

/// The whole reference output `[T, N]` in f64: `None` for rows no expert writes.
pub fn grouped_gemm(ops: &GemmOperands<'_>, experts: Experts<'_>) -> Vec<Option<Vec<f64>>> {
    row_owners(experts, ops.rows(), ops.scale_rows())
        .into_iter()
        .enumerate()
        .map(|(row, owner)| owner.map(|o| (0..ops.n).map(|j| ops.dot(o.expert, j, row, o.scale_row)).collect()))
        .collect()
}

/// SGLang's / DeepGEMM's similarity `1 − 2·Σxy / Σ(x² + y²)` (0 for identical vectors).
pub fn calc_diff(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "calc_diff of different lengths");
    let (mut xy, mut sq) = (0.0f64, 0.0f64);
    for (&a, &b) in x.iter().zip(y) {
        xy += a * b;
        sq += a * a + b * b;
    }
    if sq == 0.0 { 0.0 } else { 1.0 - 2.0 * xy / sq }
}

/// `‖got − want‖ / ‖want‖` (0 when both are zero).
pub fn relative_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "relative_error of different lengths");
    let (mut d, mut w) = (0.0f64, 0.0f64);
    for (&g, &v) in got.iter().zip(want) {
        d += (g - v) * (g - v);
        w += v * v;
    }
    if w == 0.0 { d.sqrt() } else { (d / w).sqrt() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{ATOM_ROWS, blockscale_offsets, expert_offsets};
    use crate::reference::{Dims, dequantize, dequantize_into, quantize};

    fn e4(v: f32) -> E4m3 {
        let q = E4m3::from_f32_sat(v);
        assert_eq!(q.to_f32(), v, "{v} is not an E4M3 value");
        q
    }

    /// Scales of `[rows, k]` in the blocked layout, all `s`, with `set(row, kb) = byte` overrides.
    fn scales(rows: usize, k: usize, s: u8, set: &[(usize, usize, u8)]) -> Vec<E8m0> {
        let nkb = k / BLOCK;
        let mut v = vec![E8m0(s); rows.div_ceil(ATOM_ROWS) * ATOM_ROWS * nkb];
        for &(r, kb, b) in set {
            v[blocked_offset(r, kb, nkb)] = E8m0(b);
        }
        v
    }

    #[test]
    fn by_hand() {
        // E = 2, N = 128, K = 128. Expert 0: all weights 1, expert 1: all 0.5; weight scale of
        // (expert 1, row 5, block 2) is 2^2. Tokens: row 0 ones, row 1 twos (token scale of
        // block 0 is 2^-1), row 2 minus ones. Expert 0 has rows 0-1, expert 1 row 2.
        let (n, k) = (128, 128);
        let mut weights = vec![e4(1.0); n * k];
        weights.extend(vec![e4(0.5); n * k]);
        let weight_scales = scales(2 * n, k, 127, &[(n + 5, 2, 129)]);
        let mut tokens = vec![e4(1.0); k];
        tokens.extend(vec![e4(2.0); k]);
        tokens.extend(vec![e4(-1.0); k]);
        // Scale rows: expert 0 from 0 (rows 0, 1), expert 1 from 128; padding rows hold NaN.
        let token_scales = scales(256, k, 127, &[(1, 0, 126), (2, 0, 255), (2, 3, 255), (129, 1, 255)]);
        let ops = GemmOperands { weights: &weights, weight_scales: &weight_scales, tokens: &tokens, token_scales: &token_scales, n, k };
        let ex = Experts { offsets: &[0, 2], tokens: &[2, 1], scale_offsets: &[0, 128] };
        let out = grouped_gemm(&ops, ex);
        let row = |r: usize| out[r].as_ref().unwrap();
        assert!(row(0).iter().all(|&v| v == 128.0));
        // Row 1: block 0 gives 32·1·2·0.5, blocks 1-3 give 96·2.
        assert!(row(1).iter().all(|&v| v == 224.0));
        // Row 2 (expert 1): 128·0.5·(−1), except feature 5 whose block 2 is scaled by 4.
        for (j, &v) in row(2).iter().enumerate() {
            assert_eq!(v, if j == 5 { -48.0 - 64.0 } else { -64.0 }, "feature {j}");
        }
    }

    #[test]
    fn uncovered_rows_and_clamped_experts() {
        // 6 rows; expert 0 rows 1-2, expert 1 rows 4..=5 but claims 9 (clamped to 2), expert 2
        // empty, expert 3 has a misaligned scale offset (skipped); rows 0 and 3 are not written.
        let ex = Experts { offsets: &[1, 4, 0, 0], tokens: &[2, 9, 0, 3], scale_offsets: &[0, 128, 256, 100] };
        let owners = row_owners(ex, 6, 384);
        assert_eq!(owners[0], None);
        assert_eq!(owners[1], Some(RowOwner { expert: 0, scale_row: 0 }));
        assert_eq!(owners[2], Some(RowOwner { expert: 0, scale_row: 1 }));
        assert_eq!(owners[3], None);
        assert_eq!(owners[4], Some(RowOwner { expert: 1, scale_row: 128 }));
        assert_eq!(owners[5], Some(RowOwner { expert: 1, scale_row: 129 }));
        // A scale tensor too short for an expert clamps its rows to the scale rows it has.
        let ex = Experts { offsets: &[0], tokens: &[200], scale_offsets: &[0] };
        let owners = row_owners(ex, 300, 128);
        assert!(owners[127].is_some() && owners[128].is_none());
    }

    #[test]
    fn nan_scales_and_elements_propagate() {
        let (n, k) = (128, 128);
        let weights = vec![e4(1.0); n * k];
        let mut tokens = vec![e4(1.0); 2 * k];
        tokens[k + 7] = E4m3(0x7F);
        let weight_scales = scales(n, k, 127, &[(3, 1, 255)]);
        let token_scales = scales(128, k, 127, &[]);
        let ops = GemmOperands { weights: &weights, weight_scales: &weight_scales, tokens: &tokens, token_scales: &token_scales, n, k };
        assert!(ops.dot(0, 3, 0, 0).is_nan());
        assert_eq!(ops.dot(0, 4, 0, 0), 128.0);
        assert!(ops.dot(0, 4, 1, 1).is_nan());
    }

    /// The factored reference equals the naive product of independently dequantized operands
    /// (part 1's dequantization reference), on random quantized data with varied scales.
    #[test]
    fn matches_naive_dequantized_product() {
        let (e, n, k) = (3usize, 256usize, 384usize);
        let counts = [5i32, 0, 131];
        let rows: usize = counts.iter().map(|&c| c as usize).sum();
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Roughly N(0,1)-shaped with a spread of magnitudes, so block scales vary.
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            let m = ((state & 7) as i32) - 3;
            ((u - 0.5) * 4.0 * 2f64.powi(m)) as f32
        };
        let wf: Vec<f32> = (0..e * n * k).map(|_| rnd()).collect();
        let xf: Vec<f32> = (0..rows * k).map(|_| rnd()).collect();
        let (wq, ws) = quantize(&wf, e * n, k, ScaleLayout::Blocked128x4);
        let (offs, scale_rows) = blockscale_offsets(&counts, ScaleLayout::Blocked128x4).unwrap();
        let eoffs = expert_offsets(&counts).unwrap();
        let ex = Experts { offsets: &eoffs, tokens: &counts, scale_offsets: &offs };
        let mut xq = vec![E4m3(0); rows * k];
        let mut xs = vec![E8m0(0xFF); scale_rows * k / BLOCK];
        let d = Dims { rows, k, x_stride: k, q_stride: k };
        crate::reference::quantize_into(&xf, d, Some(ex), ScaleLayout::Blocked128x4, &mut xq, &mut xs, scale_rows);
        let wd = dequantize(&wq, &ws, e * n, k, ScaleLayout::Blocked128x4);
        let mut xd = vec![0.0f32; rows * k];
        dequantize_into(&xq, &xs, d, Some(ex), ScaleLayout::Blocked128x4, scale_rows, &mut xd);
        let ops = GemmOperands { weights: &wq, weight_scales: &ws, tokens: &xq, token_scales: &xs, n, k };
        let out = grouped_gemm(&ops, ex);
        let mut checked = 0;
        for (row, owner) in row_owners(ex, rows, scale_rows).iter().enumerate() {
            let g = owner.unwrap().expert;
            for j in 0..n {
                let naive: f64 = (0..k).map(|i| wd[(g * n + j) * k + i] as f64 * xd[row * k + i] as f64).sum();
                let got = out[row].as_ref().unwrap()[j];
                assert!((got - naive).abs() <= 1e-12 * naive.abs().max(1.0), "row {row} feature {j}: {got} vs {naive}");
                checked += 1;
            }
        }
        assert_eq!(checked, rows * n);
    }

    #[test]
    fn similarity_measures() {
        let x = [1.0, -2.0, 3.0];
        assert_eq!(calc_diff(&x, &x), 0.0);
        assert_eq!(calc_diff(&x, &[-1.0, 2.0, -3.0]), 2.0);
        assert!((calc_diff(&x, &[1.0, -2.0, 3.3]) - (1.0 - 2.0 * 14.9 / 29.89)).abs() < 1e-12);
        assert_eq!(relative_error(&x, &x), 0.0);
        assert!((relative_error(&[1.0, 0.0], &[2.0, 0.0]) - 0.5).abs() < 1e-15);
        assert_eq!(calc_diff(&[0.0], &[0.0]), 0.0);
    }
}
