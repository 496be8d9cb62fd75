//! Validation and launch planning: pure functions of the arguments' shapes (no GPU), so that every
//! rejection can be tested anywhere.

use std::cell::RefCell;

use kiln_runtime::{Result, ensure};

use crate::config::{Rope, RopeStyle, Rows};
use crate::ffi::{self, Params};
use crate::reference;

/// Largest head_dim: 16 lanes of two 8-element chunks.
pub(crate) const MAX_HEAD_DIM: usize = 256;
/// Elements per chunk (one 16-byte vector of a 16-bit type); each lane holds two chunks.
pub(crate) const LANE_ELEMS: usize = 8;
/// Threads per CTA at most (`kMaxThreads`, the kernel's launch bound).
pub(crate) const MAX_THREADS: usize = 512;

/// Which of the two arrays a check is about, for messages.
pub(crate) type Name = &'static str;

/// Grid, block and the kernel parameters of one launch (addresses still to be filled in).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub grid: (u32, u32),
    pub block: u32,
    pub params: Params,
}

/// Checks the rotation settings against `head_dim`.
pub(crate) fn check_rope(op: &'static str, rope: &Rope, head_dim: usize) -> Result<()> {
    ensure!(
        head_dim.is_multiple_of(LANE_ELEMS) && (LANE_ELEMS..=MAX_HEAD_DIM).contains(&head_dim),
        op,
        "head_dim={head_dim}: must be a multiple of {LANE_ELEMS} in {LANE_ELEMS}..={MAX_HEAD_DIM}"
    );
    ensure!(rope.base.is_finite() && rope.base > 0.0, op, "rope base={:?}: must be finite and > 0", rope.base);
    let rd = rope.rotary_dim;
    ensure!(rd >= 2 && rd.is_multiple_of(2) && rd <= head_dim, op, "rotary_dim={rd}: must be even, >= 2 and <= head_dim={head_dim}");
    if rope.style == RopeStyle::Neox {
        ensure!(
            rd.is_multiple_of(2 * LANE_ELEMS),
            op,
            "rotary_dim={rd}: NeoX style needs a multiple of {} (each half must span whole {LANE_ELEMS}-element lanes)",
            2 * LANE_ELEMS
        );
    }
    if let Some(y) = rope.yarn {
        ensure!(y.factor.is_finite() && y.factor > 0.0, op, "yarn factor={:?}: must be finite and > 0", y.factor);
        ensure!(y.low.is_finite() && y.high.is_finite(), op, "yarn low={:?} high={:?}: must be finite", y.low, y.high);
        ensure!(
            y.attention_factor.is_finite() && (y.attention_factor as f32).is_finite(),
            op,
            "yarn attention_factor={:?}: must be finite in f32",
            y.attention_factor
        );
    }
    Ok(())
}

/// Checks one row-major operand: its width, stride, buffer length and the token count.
pub(crate) fn check_rows(op: &'static str, name: Name, rows: Rows, len: usize, width: usize, what: &str) -> Result<()> {
    ensure!(rows.width == width, op, "{name} width={} != {what} = {width}", rows.width);
    ensure!(rows.stride >= rows.width, op, "{name} row stride={} < width={}", rows.stride, rows.width);
    ensure!(rows.tokens <= i32::MAX as usize, op, "tokens={} exceeds {} (one CTA row per token)", rows.tokens, i32::MAX);
    ensure!(rows.stride <= i64::MAX as usize / 8, op, "{name} row stride={} is too large", rows.stride);
    let span = rows.span();
    ensure!(
        span.is_some_and(|s| s <= len),
        op,
        "{name}.len()={len} < (tokens-1)*stride+width with tokens={}, stride={}, width={}",
        rows.tokens,
        rows.stride,
        rows.width
    );
    Ok(())
}

/// Lanes per head: enough for two 8-element chunks each, rounded up to a power of two (1..=16).
pub(crate) fn lanes_per_head(head_dim: usize) -> usize {
    head_dim.div_ceil(2 * LANE_ELEMS).next_power_of_two()
}

/// Grid, block, heads per CTA and log2(lanes per head) for `heads` q+k heads of `tokens` tokens.
///
/// One CTA per token and chunk of heads, a group of [`lanes_per_head`] lanes per head, so that
/// each lane loads its two 16-byte chunks at once, plus [`table_threads`]`(pairs)`. Heads are split
/// into as few equal chunks as keep a CTA within [`MAX_THREADS`] threads.
pub(crate) fn launch_shape(tokens: usize, heads: usize, head_dim: usize, pairs: usize) -> ((u32, u32), u32, u32, u32) {
    let lanes = lanes_per_head(head_dim);
    let groups_per_warp = 32 / lanes;
    let max_groups = (MAX_THREADS - table_threads(MAX_HEAD_DIM / 2, 0)) / lanes;
    let chunks = heads.div_ceil(max_groups);
    let heads_per_cta = heads.div_ceil(chunks);
    let groups = heads_per_cta.next_multiple_of(groups_per_warp);
    ((tokens as u32, chunks as u32), (groups * lanes + table_threads(pairs, tokens)) as u32, heads_per_cta as u32, lanes.trailing_zeros())
}

/// From this many tokens on, a table thread computes two pairs: fewer threads per CTA (more CTAs
/// resident) matter more than the table's latency (measured on the H100: hd 256 at 16384 tokens
/// 108 µs with two pairs per thread vs 112 with one; at 1 token 2.4 µs vs 1.8; at 512 tokens
/// 5.38 µs vs 6.32 and at 2048 tokens 15.96 vs 16.99, with (32,4,4,128) unchanged at 512).
pub(crate) const TWO_PAIRS_FROM_TOKENS: usize = 512;

/// PDL vector launches whose q and k heads span at most this many bytes run the kernel that warms
/// L2 with them before the PDL wait (`kPrefetch`): the CTAs resident before the predecessor ends
/// then start from L2. Measured on the H100 (S4-6, against the kernel without that code): 1–32
/// tokens 0.5–8 % faster, 128 tokens 16–20 % (up to 2.2 MB), 512 tokens (4.7 MB) 7 % slower.
pub(crate) const PREFETCH_MAX_BYTES: usize = 3 << 20;

/// Norm + RoPE vector launches (without the prefetch) of at least this many CTAs run the kernel
/// built for 4 CTAs × 512 threads per SM (32 registers; ptxas reports 8 bytes of stack on sm_90a,
/// 16 on sm_100a) instead of 3 (40 registers, no spills). Measured on the H100 after the
/// bank-conflict-free layouts (S8-13, twice each, alternating): 2048 tokens 14.98 → 14.81 µs
/// (16,2,2,256), 14.95 → 14.64 (32,4,4,128), 27.33 → 26.83 (64,4,4,128), 16384 tokens 2–3 %
/// faster, 512 tokens of (64,4,4,128) (1024 CTAs) 8.16 → 7.82; but 512 tokens of the 18- and
/// 36-head shapes (512 CTAs) 4.77 → 5.22 / 4.76 → 5.52 and 1–128 tokens 5–13 % slower (there each
/// CTA's latency counts, and the 4-CTA build spills). RoPE alone (`apply_rope*`, whose 4-CTA build
/// spills 12 bytes on sm_90a) measured 0.6–1.6 % slower with it from 2048 tokens (S8-17) and keeps
/// the 3-CTA kernel. In session 2, before the layout change, 4 × 512 lost up to 2048 tokens. The
/// rule is measured on sm_90 only.
pub(crate) const LARGE_GRID_CTAS: u64 = 1024;

/// Whether a grid takes the 4-CTAs-per-SM kernel ([`LARGE_GRID_CTAS`]).
pub(crate) fn large_grid(grid: (u32, u32)) -> bool {
    grid.0 as u64 * grid.1 as u64 >= LARGE_GRID_CTAS
}

/// Threads after the head lanes that build the (cos, sin) table, in whole warps: one per rotary
/// pair, or one per two pairs from [`TWO_PAIRS_FROM_TOKENS`] tokens on.
pub(crate) fn table_threads(pairs: usize, tokens: usize) -> usize {
    let per_thread = if tokens >= TWO_PAIRS_FROM_TOKENS { 2 } else { 1 };
    pairs.div_ceil(per_thread).next_multiple_of(32)
}

thread_local! {
    /// The last configuration's angle steps: a launch computes them once per distinct `Rope`.
    static TURNS: RefCell<Option<(Rope, [u64; ffi::MAX_PAIRS])>> = const { RefCell::new(None) };
}

/// The kernel's per-pair angle steps, [`reference::turns_of`] of `rope.inv_frequencies()`, in a
/// fixed array (zeros past the rotary pairs; memoised per thread for the last `rope`).
fn turns(rope: &Rope) -> [u64; ffi::MAX_PAIRS] {
    TURNS.with(|c| {
        let mut c = c.borrow_mut();
        match &*c {
            Some((r, t)) if r == rope => *t,
            _ => {
                let mut t = [0; ffi::MAX_PAIRS];
                for (p, v) in t.iter_mut().enumerate().take(rope.rotary_dim / 2) {
                    *v = reference::turns_of(rope.frequency(p));
                }
                *c = Some((*rope, t));
                t
            }
        }
    })
}

/// Plans a launch over already validated shapes; `None` when there is nothing to do.
pub(crate) fn plan(tokens: usize, nq: usize, nk: usize, head_dim: usize, rope: &Rope, eps: f32) -> Option<Plan> {
    let heads = nq + nk;
    if tokens == 0 || heads == 0 {
        return None;
    }
    let (grid, block, heads_per_cta, lanes_log2) = launch_shape(tokens, heads, head_dim, rope.rotary_dim / 2);
    let mut flags = 0;
    if rope.style == RopeStyle::Interleaved {
        flags |= ffi::INTERLEAVED;
    }
    let params = Params {
        q: 0,
        k: 0,
        q_weight: 0,
        k_weight: 0,
        positions: 0,
        q_stride: 0,
        k_stride: 0,
        nq: nq as i32,
        nk: nk as i32,
        head_dim: head_dim as i32,
        lanes_log2: lanes_log2 as i32,
        rotary_dim: rope.rotary_dim as i32,
        heads_per_cta: heads_per_cta as i32,
        flags,
        eps,
        attention_factor: rope.attention_factor(),
        inv_head_dim: if head_dim.is_power_of_two() { 1.0 / head_dim as f32 } else { 0.0 },
        turns: turns(rope),
    };
    Some(Plan { grid, block, params })
}

/// Checks the head counts: their chunks must fit the grid's y dimension.
pub(crate) fn check_heads(op: &'static str, nq: usize, nk: usize) -> Result<()> {
    ensure!(nq.checked_add(nk).is_some_and(|h| h <= 65_535), op, "nq={nq} + nk={nk} heads: at most 65535 are supported");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_shapes_cover_every_head_within_limits() {
        for hd in (8..=256).step_by(8) {
            for heads in [1, 2, 3, 5, 9, 18, 36, 40, 48, 68, 72, 129, 300, 1000, 65535] {
                for tokens in [1, 7, 16384, 1 << 20] {
                    let pairs = hd / 2;
                    let ((gx, gy), block, hpc, log2) = launch_shape(tokens, heads, hd, pairs);
                    let lanes = 1usize << log2;
                    assert!(
                        lanes * 2 * LANE_ELEMS >= hd && lanes <= 16 && (lanes == 1 || lanes * LANE_ELEMS < hd),
                        "hd {hd}: {lanes} lanes"
                    );
                    assert_eq!(gx as usize, tokens);
                    assert!(block as usize <= MAX_THREADS && block.is_multiple_of(32), "block {block}");
                    let hpc = hpc as usize;
                    let head_threads = block as usize - table_threads(pairs, tokens);
                    assert!(
                        head_threads.is_multiple_of(32) && head_threads / lanes >= hpc,
                        "hd {hd} heads {heads}: {hpc} heads over {block} threads"
                    );
                    assert!(gy as usize * hpc >= heads && (gy as usize - 1) * hpc < heads, "chunks {gy} x {hpc} for {heads}");
                }
            }
        }
    }

    #[test]
    fn launch_shape_examples() {
        assert_eq!(launch_shape(1, 36, 128, 64), ((1, 1), 288 + 64, 36, 3));
        assert_eq!(launch_shape(16384, 68, 128, 64), ((16384, 2), 288 + 32, 34, 3));
        assert_eq!(launch_shape(7, 18, 256, 128), ((7, 1), 288 + 128, 18, 4));
        assert_eq!(launch_shape(16384, 18, 256, 128), ((16384, 1), 288 + 64, 18, 4));
        assert_eq!(launch_shape(16384, 18, 256, 32), ((16384, 1), 288 + 32, 18, 4));
        assert_eq!(launch_shape(3, 360, 64, 32), ((3, 4), 384 + 32, 90, 2));
    }

    #[test]
    fn turns_are_memoised_per_rope() {
        let a = Rope::neox(10000.0, 64);
        let b = Rope::neox(500000.0, 64);
        let of = |r: &Rope| r.inv_frequencies().into_iter().map(reference::turns_of).collect::<Vec<_>>();
        assert_eq!(turns(&a)[..32], of(&a)[..]);
        assert_eq!(turns(&b)[..32], of(&b)[..]);
        assert_eq!(turns(&a)[..32], of(&a)[..]);
        assert!(turns(&a)[32..].iter().all(|&t| t == 0));
        // f_0 = 1 rad = 1/2π turn.
        assert_eq!(turns(&a)[0], (18_446_744_073_709_551_616.0 / std::f64::consts::TAU) as u64);
    }
}
