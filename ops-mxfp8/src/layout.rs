//! MXFP8 layout facts shared by the quantizer and the grouped GEMM: block size, the two scale
//! layouts and their byte offsets. The device twin is `cuda/layout.cuh` (same names, same
//! formulas); change both together.

use kiln_runtime::{Error, Result};

/// Elements per E8M0 scale (one block of a row along K).
pub const BLOCK: usize = 32;
/// Rows of one 128×4 scale atom.
pub const ATOM_ROWS: usize = 128;
/// K-blocks (scale columns) of one atom.
pub const ATOM_KBLOCKS: usize = 4;
/// Bytes of one atom.
pub const ATOM_BYTES: usize = ATOM_ROWS * ATOM_KBLOCKS;

/// How the E8M0 scale bytes of a `[scale_rows, k / 32]` scale tensor are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScaleLayout {
    /// The cuBLAS/CUTLASS block-scaled GEMM layout ("128×4", "swizzled"): atoms of 128 rows × 4
    /// K-blocks (512 bytes), row-major over `(row / 128, kb / 4)`; inside an atom the byte of
    /// `(row, kb)` is `(row % 32)·16 + ((row / 32) % 4)·4 + kb % 4`. Needs `k % 128 == 0`; the scale
    /// tensor holds whole 128-row groups (each expert's rows are padded to a multiple of 128).
    Blocked128x4,
    /// Plain row-major `[scale_rows, k / 32]`: byte `row·(k/32) + kb`. Needs `k % 32 == 0`.
    RowMajor,
}

impl ScaleLayout {
    /// Both layouts.
    pub const ALL: [ScaleLayout; 2] = [ScaleLayout::Blocked128x4, ScaleLayout::RowMajor];

    /// The value the kernels receive (`mxfp8::ScaleLayout` in `layout.cuh`).
    pub const fn device_code(self) -> i32 {
        match self {
            ScaleLayout::Blocked128x4 => 0,
            ScaleLayout::RowMajor => 1,
        }
    }

    /// Short name for test and snapshot labels.
    pub const fn tag(self) -> &'static str {
        match self {
            ScaleLayout::Blocked128x4 => "blocked",
            ScaleLayout::RowMajor => "rowmajor",
        }
    }

    /// What `k` must be a multiple of.
    pub const fn k_multiple(self) -> usize {
        match self {
            ScaleLayout::Blocked128x4 => ATOM_KBLOCKS * BLOCK,
            ScaleLayout::RowMajor => BLOCK,
        }
    }

    /// What a scale-row offset (an expert's first scale row) and the scale tensor's row count
    /// must be multiples of.
    pub const fn row_multiple(self) -> usize {
        match self {
            ScaleLayout::Blocked128x4 => ATOM_ROWS,
            ScaleLayout::RowMajor => 1,
        }
    }

    /// Scale rows that `rows` token rows occupy (rounded up to whole atoms when blocked).
    /// Saturates at `usize::MAX` for `rows` within 127 of it (a size no tensor has).
    pub const fn padded_rows(self, rows: usize) -> usize {
        rows.div_ceil(self.row_multiple()).saturating_mul(self.row_multiple())
    }

    /// Bytes of the scale tensor of a dense `[rows, k]` tensor. Saturates at `usize::MAX` when the
    /// size does not fit `usize` (such a shape can have no buffer; the ops reject it with an `Err`).
    pub const fn scale_bytes(self, rows: usize, k: usize) -> usize {
        self.padded_rows(rows).saturating_mul(k / BLOCK)
    }

    /// [`ScaleLayout::scale_bytes`], `None` when it does not fit `usize` (what the ops validate with).
    pub(crate) const fn checked_scale_bytes(self, rows: usize, k: usize) -> Option<usize> {
        match rows.div_ceil(self.row_multiple()).checked_mul(self.row_multiple()) {
            Some(padded) => padded.checked_mul(k / BLOCK),
            None => None,
        }
    }

    /// Byte offset of the scale of `(scale row srow, K-block kb)` when there are `nkb = k / 32`
    /// K-blocks per row. Like an index, the arguments must address a scale tensor whose size fits
    /// `usize` (larger ones overflow).
    ///
    /// ```
    /// use kiln_mxfp8::ScaleLayout;
    /// // Row 33, block 5 of a k = 256 tensor (8 blocks, 2 atoms per 128 rows).
    /// assert_eq!(ScaleLayout::Blocked128x4.offset(33, 5, 8), 512 + 16 + 4 + 1);
    /// assert_eq!(ScaleLayout::RowMajor.offset(33, 5, 8), 33 * 8 + 5);
    /// ```
    pub const fn offset(self, srow: usize, kb: usize, nkb: usize) -> usize {
        match self {
            ScaleLayout::Blocked128x4 => blocked_offset(srow, kb, nkb),
            ScaleLayout::RowMajor => srow * nkb + kb,
        }
    }
}

/// Byte offset of scale `(srow, kb)` in the 128×4 blocked layout (`nkb % 4 == 0`).
pub const fn blocked_offset(srow: usize, kb: usize, nkb: usize) -> usize {
    let atom = (srow / ATOM_ROWS) * (nkb / ATOM_KBLOCKS) + kb / ATOM_KBLOCKS;
    atom * ATOM_BYTES + (srow % 32) * 16 + ((srow / 32) % 4) * 4 + kb % ATOM_KBLOCKS
}

/// The `blockscale_offsets` SGLang's callers use: the exclusive prefix sum of
/// `round_up(tokens[g], 128)` (blocked) or of `tokens[g]` (row-major), and the scale rows they
/// need in all. Negative counts count as 0. An offset past `i32::MAX` (the metadata is int32) is
/// an [`Error::InvalidArgument`] naming the expert and the offset.
///
/// ```
/// use kiln_mxfp8::{ScaleLayout, layout::blockscale_offsets};
/// assert_eq!(blockscale_offsets(&[3, 0, 129], ScaleLayout::Blocked128x4)?, (vec![0, 128, 128], 384));
/// assert_eq!(blockscale_offsets(&[3, 0, 129], ScaleLayout::RowMajor)?, (vec![0, 3, 3], 132));
/// assert!(blockscale_offsets(&[i32::MAX, 1], ScaleLayout::Blocked128x4).is_err());
/// # Ok::<(), kiln_runtime::Error>(())
/// ```
pub fn blockscale_offsets(tokens_per_expert: &[i32], layout: ScaleLayout) -> Result<(Vec<i32>, usize)> {
    const OP: &str = "blockscale_offsets";
    let mut at = 0usize;
    let mut offsets = Vec::with_capacity(tokens_per_expert.len());
    for (g, &m) in tokens_per_expert.iter().enumerate() {
        let o = i32::try_from(at).map_err(|_| {
            Error::invalid(
                OP,
                format!(
                    "blockscale offset of expert {g} = {at} exceeds i32::MAX (the {} layout's padded rows of experts 0..{g})",
                    layout.tag()
                ),
            )
        })?;
        offsets.push(o);
        let rows = layout.padded_rows(m.max(0) as usize);
        at = at.checked_add(rows).ok_or_else(|| {
            Error::invalid(OP, format!("scale rows {at} + {rows} of expert {g} (tokens_per_expert[{g}]={m}) overflow usize"))
        })?;
    }
    Ok((offsets, at))
}

/// The `expert_offsets` of experts stored back to back: the exclusive prefix sum of `tokens`
/// (negative counts count as 0). An offset past `i32::MAX` (the metadata is int32) is an
/// [`Error::InvalidArgument`] naming the expert and the offset.
///
/// ```
/// use kiln_mxfp8::layout::expert_offsets;
/// assert_eq!(expert_offsets(&[3, 0, 5])?, vec![0, 3, 3]);
/// assert!(expert_offsets(&[i32::MAX, 1, 1]).is_err());
/// # Ok::<(), kiln_runtime::Error>(())
/// ```
pub fn expert_offsets(tokens_per_expert: &[i32]) -> Result<Vec<i32>> {
    let mut at = 0usize;
    let mut offsets = Vec::with_capacity(tokens_per_expert.len());
    for (g, &m) in tokens_per_expert.iter().enumerate() {
        let o = i32::try_from(at).map_err(|_| {
            Error::invalid("expert_offsets", format!("expert offset of expert {g} = {at} exceeds i32::MAX (tokens of experts 0..{g})"))
        })?;
        offsets.push(o);
        // Cannot overflow: `at` ≤ i32::MAX here and `m` ≤ i32::MAX.
        at += m.max(0) as usize;
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_offsets_form_a_bijection_onto_whole_atoms() {
        // Every (row, kb) of 256 rows × 12 blocks maps to a distinct byte below the tensor size.
        let (rows, nkb) = (256, 12);
        let mut seen = vec![false; rows * nkb];
        for r in 0..rows {
            for kb in 0..nkb {
                let o = blocked_offset(r, kb, nkb);
                assert!(!seen[o], "({r}, {kb}) collides at {o}");
                seen[o] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn blocked_offsets_by_hand() {
        // Atom (0, 0): rows 0..128, blocks 0..4.
        assert_eq!(blocked_offset(0, 0, 8), 0);
        assert_eq!(blocked_offset(0, 3, 8), 3);
        assert_eq!(blocked_offset(1, 0, 8), 16);
        assert_eq!(blocked_offset(31, 0, 8), 31 * 16);
        assert_eq!(blocked_offset(32, 0, 8), 4);
        assert_eq!(blocked_offset(127, 3, 8), 31 * 16 + 3 * 4 + 3);
        // Next atom along K, then the next 128-row group (2 atoms per group when nkb = 8).
        assert_eq!(blocked_offset(0, 4, 8), 512);
        assert_eq!(blocked_offset(128, 0, 8), 1024);
        assert_eq!(blocked_offset(130, 6, 8), 1024 + 512 + 2 * 16 + 2);
        // SGLang's form: bso·(K/32) + (r/128)·(4K) + (kb/4)·512 + (r%32)·16 + ((r%128)/32)·4 + kb%4.
        let k = 384usize;
        for (bso, r, kb) in [(128usize, 5usize, 7usize), (256, 200, 11), (0, 127, 0)] {
            let sg = bso * (k / 32) + (r / 128) * (4 * k) + (kb / 4) * 512 + (r % 32) * 16 + ((r % 128) / 32) * 4 + kb % 4;
            assert_eq!(blocked_offset(bso + r, kb, k / 32), sg);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(ScaleLayout::Blocked128x4.scale_bytes(1, 128), 128 * 4);
        assert_eq!(ScaleLayout::Blocked128x4.scale_bytes(129, 256), 256 * 8);
        assert_eq!(ScaleLayout::RowMajor.scale_bytes(129, 96), 129 * 3);
        assert_eq!(ScaleLayout::Blocked128x4.k_multiple(), 128);
        assert_eq!(expert_offsets(&[3, 0, 5, -2, 1]).unwrap(), vec![0, 3, 3, 8, 8]);
    }

    fn reason<T: std::fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(Error::InvalidArgument { reason, .. }) => reason,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn sizes_saturate_instead_of_wrapping() {
        // 2^20 rows × 2^49 columns: 2^64 scale bytes, which wrapped to 0.
        let (rows, k) = (1usize << 20, 1usize << 49);
        assert_eq!(ScaleLayout::RowMajor.checked_scale_bytes(rows, k), None);
        assert_eq!(ScaleLayout::RowMajor.scale_bytes(rows, k), usize::MAX);
        assert_eq!(ScaleLayout::Blocked128x4.checked_scale_bytes(1, 1 << 62), None, "128 padded rows × 2^57 blocks");
        assert_eq!(ScaleLayout::Blocked128x4.padded_rows(usize::MAX), usize::MAX);
        assert_eq!(ScaleLayout::Blocked128x4.checked_scale_bytes(usize::MAX, 128), None);
        assert_eq!(ScaleLayout::Blocked128x4.checked_scale_bytes(129, 256), Some(256 * 8));
    }

    #[test]
    fn offsets_past_i32_are_errors() {
        let blk = ScaleLayout::Blocked128x4;
        // 2^31 scale rows after padding i32::MAX tokens to 128: fine as a total, not as an offset.
        assert_eq!(blockscale_offsets(&[i32::MAX], blk).unwrap(), (vec![0], 1 << 31), "the total may pass i32::MAX");
        let r = reason(blockscale_offsets(&[5, i32::MAX, 1], blk));
        assert!(r.contains("blockscale offset of expert 2 = 2147483776 exceeds i32::MAX"), "{r}");
        let r = reason(blockscale_offsets(&[i32::MAX, 1, 1], ScaleLayout::RowMajor));
        assert!(r.contains("blockscale offset of expert 2 = 2147483648 exceeds i32::MAX"), "{r}");
        assert_eq!(expert_offsets(&[i32::MAX - 1, 1]).unwrap(), vec![0, i32::MAX - 1]);
        assert_eq!(expert_offsets(&[1, i32::MAX - 1, 7]).unwrap(), vec![0, 1, i32::MAX], "the total may pass i32::MAX");
        let r = reason(expert_offsets(&[i32::MAX, 1, 1]));
        assert!(r.contains("expert offset of expert 2 = 2147483648 exceeds i32::MAX"), "{r}");
    }
}
