//! Validation and launch planning (pure: unit-tested without a GPU). Everything the kernel relies
//! on is checked here before any launch; the launch shape and flags are chosen from the sizes.

use kiln_runtime::{Error, LaunchConfig, Result, ensure};

use crate::{Activation, MAX_D, MAX_ROWS, Shape};

// Launch shape, as in activation.cuh (kThreads, kVecPer, kScalarPer, flag bits).
pub(crate) const THREADS: u64 = 256;
pub(crate) const VEC_PER: u64 = 1;
pub(crate) const SCALAR_PER: u64 = 4;
pub(crate) const FLAG_VECTOR: i32 = 1;
pub(crate) const FLAG_EXPERT: i32 = 2;
pub(crate) const FLAG_SORTED: i32 = 4;
pub(crate) const FLAG_PREFETCH: i32 = 8;
pub(crate) const FLAG_EARLY_TRIGGER: i32 = 16;
pub(crate) const FLAG_HALF_VECTOR: i32 = 32;
pub(crate) const FLAG_IDS_EARLY: i32 = 64;
pub(crate) const FLAG_RELEASE_KEPT: i32 = 128;
/// Inputs below this size make a latency-bound launch: smaller blocks (more SMs issue loads),
/// and PDL dependents released only once the loads are issued. Measured on H100 (CUDA-graph
/// replay): releasing them right after the wait costs ~0.25 µs on such launches and gains up
/// to 0.3 µs on larger ones.
pub(crate) const SMALL_BYTES: u64 = 512 << 10;
/// Threads per block of small launches.
pub(crate) const SMALL_THREADS: u64 = 128;
/// Inputs below this size take 8-byte units on the vector path: twice the threads, half the
/// serial arithmetic after the loads (the critical path of the tiniest launches).
pub(crate) const HALF_VECTOR_BYTES: u64 = 64 << 10;
/// Unfiltered inputs up to this size are prefetched into L2 before the PDL wait (measured on H100:
/// a gain for latency-bound launches, a loss of ~2 % for bandwidth-bound ones). Filtered launches
/// prefetch kept or hinted rows of their first wave at every size ([`first_wave_prefetch`]).
pub(crate) const PREFETCH_MAX_BYTES: u64 = 16 << 20;

/// The lengths and settings of one call, as validation sees them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Request {
    pub(crate) op: &'static str,
    pub(crate) act: Activation,
    pub(crate) shape: Shape,
    pub(crate) in_len: usize,
    pub(crate) out_len: usize,
    /// Contiguous forms: lengths must equal `rows·2d` and `rows·d` exactly.
    pub(crate) exact: bool,
    /// `(expert_ids.len(), expert_step)`.
    pub(crate) expert: Option<(usize, usize)>,
    /// `(sorted_token_ids.len(), num_tokens_post_padded.len(), num_valid_tokens)`.
    pub(crate) sorted: Option<(usize, usize, usize)>,
    /// `(limit, f32(RN_T(limit)))`.
    pub(crate) clamp: Option<(f32, f32)>,
    /// [`crate::Options::filter_tile`].
    pub(crate) filter_tile: Option<usize>,
    /// [`crate::Options::ids_before_wait`].
    pub(crate) ids_early: bool,
}

/// What the kernel needs besides pointers, after validation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    pub(crate) rows: u64,
    pub(crate) d: u64,
    pub(crate) in_stride: u64,
    pub(crate) out_stride: u64,
    pub(crate) expert_step: u32,
    pub(crate) num_valid_tokens: i32,
    pub(crate) clamp: f32,
    pub(crate) filter_flags: i32,
    /// A forced tile of the tiled kernel ([`crate::Options::filter_tile`]), `1..=32`.
    pub(crate) filter_tile: Option<u32>,
    /// The caller permits reading the ids before the PDL wait ([`crate::Options::ids_before_wait`]).
    pub(crate) ids_early: bool,
}

pub(crate) fn mul(op: &'static str, a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| Error::invalid(op, format!("{what}: {a} * {b} overflows")))
}

/// Checks everything the kernel relies on; `Ok(None)` when there is nothing to do.
pub(crate) fn validate(r: &Request) -> Result<Option<Plan>> {
    let op = r.op;
    let Shape { rows, d, in_row_stride, out_row_stride } = r.shape;
    if let Some((_, step)) = r.expert {
        ensure!(step >= 1, op, "expert_step={step} (must be >= 1)");
    }
    if let Some((_, _, valid)) = r.sorted {
        ensure!(valid <= i32::MAX as usize, op, "num_valid_tokens={valid} exceeds i32::MAX (token ids are i32)");
    }
    if let Some((limit, effective)) = r.clamp {
        ensure!(r.act == Activation::Silu, op, "clamp_limit={limit} applies to SiLU only, not {}", r.act.name());
        ensure!(limit.is_finite() && limit > 0.0, op, "clamp_limit={limit} (must be finite and > 0)");
        ensure!(effective.is_finite() && effective > 0.0, op, "clamp_limit={limit} rounds to {effective} in the element type");
    }
    if let Some(tile) = r.filter_tile {
        ensure!((1..=MAX_TILE as usize).contains(&tile), op, "filter_tile={tile} (must be 1..={MAX_TILE})");
    }
    if r.exact {
        let want_in = mul(op, rows, mul(op, 2, d, "2*d")?, "rows*2*d")?;
        let want_out = mul(op, rows, d, "rows*d")?;
        ensure!(r.in_len == want_in, op, "input.len()={} != rows*2*d={want_in} (rows={rows}, d={d})", r.in_len);
        ensure!(r.out_len == want_out, op, "out.len()={} != rows*d={want_out} (rows={rows}, d={d})", r.out_len);
    }
    if rows == 0 || d == 0 {
        return Ok(None);
    }
    ensure!(rows <= MAX_ROWS, op, "rows={rows} exceeds {MAX_ROWS}");
    ensure!(d <= MAX_D, op, "d={d} exceeds {MAX_D}");
    let width = 2 * d;
    ensure!(in_row_stride >= width, op, "in_row_stride={in_row_stride} < 2*d={width}");
    ensure!(out_row_stride >= d, op, "out_row_stride={out_row_stride} < d={d}");
    let need_in = mul(op, rows - 1, in_row_stride, "(rows-1)*in_row_stride")?
        .checked_add(width)
        .ok_or_else(|| Error::invalid(op, format!("input extent overflows (rows={rows}, in_row_stride={in_row_stride})")))?;
    let need_out = mul(op, rows - 1, out_row_stride, "(rows-1)*out_row_stride")?
        .checked_add(d)
        .ok_or_else(|| Error::invalid(op, format!("output extent overflows (rows={rows}, out_row_stride={out_row_stride})")))?;
    ensure!(
        r.in_len >= need_in,
        op,
        "input.len()={} < (rows-1)*in_row_stride+2*d={need_in} (rows={rows}, d={d}, in_row_stride={in_row_stride})",
        r.in_len
    );
    ensure!(
        r.out_len >= need_out,
        op,
        "out.len()={} < (rows-1)*out_row_stride+d={need_out} (rows={rows}, d={d}, out_row_stride={out_row_stride})",
        r.out_len
    );
    ensure!(need_in <= i64::MAX as usize && need_out <= i64::MAX as usize, op, "extents exceed i64");
    let mut flags = 0;
    let mut expert_step = 1u32;
    if let Some((len, step)) = r.expert {
        ensure!(
            len.saturating_mul(step) >= rows,
            op,
            "expert_ids.len()={len} * expert_step={step} < rows={rows} (ids must cover every row)"
        );
        // Every row r < rows reads id r / step; a step ≥ rows reads id 0 exactly as `rows` does.
        expert_step = step.min(rows) as u32;
        flags |= FLAG_EXPERT;
    }
    let mut num_valid_tokens = 0;
    if let Some((sorted_len, npp_len, valid)) = r.sorted {
        ensure!(sorted_len >= rows, op, "sorted_token_ids.len()={sorted_len} < rows={rows}");
        ensure!(npp_len >= 1, op, "num_tokens_post_padded is empty (needs one i32)");
        num_valid_tokens = valid as i32;
        flags |= FLAG_SORTED;
    }
    Ok(Some(Plan {
        rows: rows as u64,
        d: d as u64,
        in_stride: in_row_stride as u64,
        out_stride: out_row_stride as u64,
        expert_step,
        num_valid_tokens,
        clamp: r.clamp.map_or(0.0, |(_, e)| e),
        filter_flags: flags,
        filter_tile: r.filter_tile.map(|t| t as u32),
        ids_early: r.ids_early && flags != 0,
    }))
}

/// Whether the 16-byte vector path may be used: both base pointers 16-byte aligned, and `d` and
/// both strides multiples of the vector width (then every gate, up and output vector is aligned).
pub(crate) fn vector_path(plan: &Plan, in_addr: u64, out_addr: u64, elem: usize) -> bool {
    let lanes = (16 / elem) as u64;
    in_addr.is_multiple_of(16)
        && out_addr.is_multiple_of(16)
        && plan.d.is_multiple_of(lanes)
        && plan.in_stride.is_multiple_of(lanes)
        && plan.out_stride.is_multiple_of(lanes)
}

/// Rejects overlapping input and output ranges: blocks run in any order, so a block could read
/// input that another block has already overwritten (there is no in-place variant).
pub(crate) fn disjoint(op: &'static str, in_addr: u64, in_len: usize, out_addr: u64, out_len: usize, elem: usize) -> Result<()> {
    let in_end = in_addr.saturating_add(in_len.saturating_mul(elem) as u64);
    let out_end = out_addr.saturating_add(out_len.saturating_mul(elem) as u64);
    ensure!(
        in_len == 0 || out_len == 0 || in_end <= out_addr || out_end <= in_addr,
        op,
        "input [{in_addr:#x}, {in_end:#x}) and out [{out_addr:#x}, {out_end:#x}) overlap"
    );
    Ok(())
}

/// Block `(tx, ty)` with `tx·ty = threads` (`tx` threads along a row, `ty` rows per block), grid
/// `(column blocks, row blocks)` with the row blocks split as `gridDim.y ≤ 65535` times
/// `gridDim.z` (the kernel skips the row blocks past the end). A row has `d / lanes` units;
/// a thread handles `per` of them.
pub(crate) fn geometry(plan: &Plan, lanes: u64, per: u64, threads: u64) -> LaunchConfig {
    let units = plan.d / lanes;
    let tx = units.div_ceil(per).next_power_of_two().min(threads);
    let ty = threads / tx;
    let col_blocks = units.div_ceil(tx * per);
    let row_blocks = plan.rows.div_ceil(ty);
    let grid_y = row_blocks.min(65535);
    let grid_z = row_blocks.div_ceil(grid_y);
    LaunchConfig { grid: (col_blocks as u32, grid_y as u32, grid_z as u32), block: (tx as u32, ty as u32, 1), smem: 0 }
}

/// Whether a launch with these kernel flags may run the wide kernel (which has neither the row
/// filter nor the element-wise path): vector path, no filter.
pub(crate) fn wide_allowed(flags: i32) -> bool {
    flags & FLAG_VECTOR != 0 && flags & (FLAG_EXPERT | FLAG_SORTED) == 0
}

/// Whether a launch with these kernel flags and this block may run the tiled kernel: a filtered
/// 16-byte-vector launch whose thread rows are whole warps (the kernel's ballot spans one row).
pub(crate) fn tiled_allowed(flags: i32, cfg: &LaunchConfig) -> bool {
    flags & FLAG_VECTOR != 0 && flags & FLAG_HALF_VECTOR == 0 && flags & (FLAG_EXPERT | FLAG_SORTED) != 0 && cfg.block.0 >= 32
}

/// Most rows per thread row of the tiled kernel (one ballot of a warp gathers them).
pub(crate) const MAX_TILE: u32 = 32;
/// Filtered launches whose general grid has at least this many blocks (two waves of 8 CTAs on
/// an H100) count as large: they release their dependents once the filter keeps a row
/// ([`release_kept_flags`]), and with [`Plan::ids_early`] they take the tiled kernel with
/// [`TILE`] rows per thread row.
pub(crate) const MANY_BLOCKS: u64 = 2048;
/// Rows per thread row of the tiled kernel for large `ids_before_wait` launches.
pub(crate) const TILE: u32 = 2;

/// The tiled kernel's rows per thread row for a launch of `cfg` with these kernel flags, or
/// `None` for the general kernel: `None` unless [`tiled_allowed`]; else the forced tile, or with
/// [`Plan::ids_early`] (only the tiled kernel reads the ids before the wait) [`TILE`] from
/// [`MANY_BLOCKS`] blocks and 1 below. Filtered launches with the ids after the wait (the
/// default) take the general kernel at every size since session 13: with [`release_kept_flags`]
/// it is at or ahead of SGLang at every skip ratio, while the tiled kernel's serial rows cost
/// 1 % at skip 0 from 8192 rows (below SGLang). Measured on the H100 (S13-5, silu bf16, twice
/// each, SGLang's filtered kernel in the same call; SGLang µs / kiln µs at skip 0 / 50 / 90 %,
/// tile 2 → general kernel, both releasing dependents once kept): 2048×8192 0.993 / 0.983 /
/// 1.176 → 1.032 / 1.089 / 1.133, 512×28672 1.022 / 0.993 / 1.190 → 1.046 / 1.095 / 1.130,
/// 16384×8192 0.989 / 1.043 / 1.303 → 1.008 / 1.010 / 1.094, 16384×28672 0.991 / 1.051 / 1.385
/// → 1.000 / 1.005 / 1.024. (Session 7's tile sweep, S7-3, and session 11's thresholds, S11-3,
/// are in docs/PERF.md.)
pub(crate) fn filter_tile(flags: i32, cfg: &LaunchConfig, plan: &Plan) -> Option<u32> {
    if !tiled_allowed(flags, cfg) {
        return None;
    }
    let tile = plan.filter_tile.unwrap_or(if plan.ids_early && blocks(cfg) >= MANY_BLOCKS { TILE } else { 1 });
    (tile > 1 || plan.ids_early).then_some(tile)
}

fn blocks(cfg: &LaunchConfig) -> u64 {
    cfg.grid.0 as u64 * cfg.grid.1 as u64 * cfg.grid.2 as u64
}

/// [`FLAG_RELEASE_KEPT`] for filtered launches that release their dependents right after the wait
/// ([`FLAG_EARLY_TRIGGER`]) and whose general grid `cfg` has at least [`MANY_BLOCKS`] blocks:
/// the kernels then release them once the filter keeps the row, and a skipped block (or warp,
/// in the tiled kernel) exits without the trigger. On the H100 a trigger right before the exit
/// kept a skipped block's slot far longer: S13-3 (silu bf16, general kernel, twice each, µs,
/// skip 90 %) 16384×8192 40.1 → 24.5, 16384×28672 140.0 → 101.0, 2048×8192 5.53 → 3.98,
/// skip 0 within ±0.3 % from 8192 rows. On launches of a wave or so the later release delays the
/// dependents' start instead: S13-5 (every size) 32×8192 skip 50 % 1.18 → 1.41 µs, skip 90 %
/// 1.16 → 1.36, 512×8192 skip 90 % 1.83 → 1.87; 2048×8192 skip 0 (4096 blocks) 16.88 → 17.48
/// is the price above the threshold (SGLang: 18.03). Releasing them once the loads are issued
/// instead (as small launches do) was slower at skip 0 / 50 % (S13-11: 2048×8192 17.45 → 17.84 /
/// 9.21 → 9.70 µs, 512×28672 15.30 → 15.80 / 8.18 → 8.68).
pub(crate) fn release_kept_flags(plan: &Plan, flags: i32, cfg: &LaunchConfig) -> i32 {
    let early = flags & FLAG_EARLY_TRIGGER != 0;
    if plan.filter_flags != 0 && early && blocks(cfg) >= MANY_BLOCKS { flags | FLAG_RELEASE_KEPT } else { flags }
}

/// Flags the tiled kernel adds to `flags`: with [`Plan::ids_early`], the ids before the PDL wait
/// and the kept rows of the first wave of blocks ([`first_wave_prefetch`]) prefetched into L2
/// before it. Until session 10 the kept rows of every block were prefetched, for inputs up to
/// [`PREFETCH_MAX_BYTES`] only; measured on the H100 (S10-5, silu bf16, twice each, alternating,
/// SGLang in the same call; µs before → after): 2048×8192 skip 50 % 10.53 → 9.76 (SGLang 10.03),
/// skip 0 18.28 → 18.14; 512×28672 skip 0 16.02 → 15.43, skip 50 % 8.93 → 8.27; 8192×8192 skip 0
/// 67.58 → 67.12; inputs up to 16 MiB and skip 90 % unchanged (±0.02 µs).
pub(crate) fn tiled_flags(plan: &Plan, flags: i32) -> i32 {
    if plan.ids_early { flags | FLAG_IDS_EARLY | FLAG_PREFETCH } else { flags }
}

/// Filtered vector-path launches with the ids read after the PDL wait (the issue-3 default, in
/// the general and the tiled kernel) take [`FLAG_PREFETCH`] as *id hints*: a thread of each
/// thread row in the blocks of the first wave ([`first_wave_prefetch`]) reads its rows' ids
/// before the wait (`ld.relaxed.gpu`, past L1) and prefetches the rows they keep into L2; after
/// the wait the kernel reads the ids again and decides by those alone, so a predecessor that
/// rewrites the ids only changes what was prefetched. The first wave is the part of the grid that
/// can be resident while the predecessor runs; later blocks would only add a round trip. Measured
/// on the H100 (S10-2, silu bf16, twice each, alternating, SGLang's filtered kernel in the same
/// call; µs without → with, in both kernels): skip 0 % 32×8192 1.81 → 1.48, 128×8192 2.60 →
/// 2.04, 512×8192 5.81 → 5.02, 512×28672 16.35 → 15.01, 2048×8192 18.61 → 18.25, 8192×8192 67.8
/// → 67.3; skip 50 % 128×8192 2.14 → 1.74, 512×8192 3.96 → 3.13, 128×28672 3.73 → 2.91; skip 90 %
/// 512×8192 1.93 → 2.12, 128×28672 1.81 → 1.91, 512×28672 5.06 → 5.11, 2048×8192 3.97 → 4.04
/// (the skipped rows' extra id load); geomeans vs SGLang skip 0 / 50 / 90 %: 0.980 / 1.003 /
/// 1.106 → 1.075 / 1.096 / 1.097. Launches whose tiled kernel reads the ids before the wait
/// ([`tiled_flags`]) prefetch by the ids themselves; `ids_before_wait` launches that cannot take
/// the tiled kernel (half vectors, thread rows narrower than a warp) read them after the wait, so
/// they take the hints too.
pub(crate) fn hinted_flags(plan: &Plan, flags: i32) -> i32 {
    let filtered_vector = plan.filter_flags != 0 && flags & FLAG_VECTOR != 0;
    if filtered_vector && flags & FLAG_IDS_EARLY == 0 { flags | FLAG_PREFETCH } else { flags }
}

/// Whether a launch of the general kernel with these final kernel flags may run the filtered
/// kernel instead (`act_and_mul_filtered_kernel`, whose flags are compile-time constants: they
/// must equal the launch's exactly), and which of its instantiations (its `kRelease`): a
/// 16-byte-vector launch with the expert filter alone and id hints ([`hinted_flags`]) that
/// releases its dependents once its loads are issued (0), right after the wait (1), or once the
/// filter keeps the row (2, [`release_kept_flags`]). The caller also needs the default rounding
/// and PDL (the kernel is instantiated for those only).
pub(crate) fn filtered_fixed(flags: i32) -> Option<usize> {
    const BASE: i32 = FLAG_VECTOR | FLAG_EXPERT | FLAG_PREFETCH;
    [BASE, BASE | FLAG_EARLY_TRIGGER, BASE | FLAG_EARLY_TRIGGER | FLAG_RELEASE_KEPT].iter().position(|&f| f == flags)
}

/// Whether a filtered launch with these kernel flags prefetches the rows of its first wave only:
/// the kept rows ([`tiled_flags`], ids before the wait) or those the ids hint at
/// ([`hinted_flags`]). Its `Params::hint_blocks` is then [`prefetch_blocks`]; otherwise
/// `i32::MAX` (every block).
pub(crate) fn first_wave_prefetch(plan: &Plan, flags: i32) -> bool {
    flags & FLAG_PREFETCH != 0 && plan.filter_flags != 0
}

/// `Params::hint_blocks` of a [`first_wave_prefetch`] launch whose first wave (blocks per SM
/// times SMs; blocks run in linear-index order) is `first_wave` blocks: the first wave of the
/// general kernel; of the tiled kernel, which takes `tile` rows per thread row, the first
/// `first_wave / tile` blocks, i.e. as many rows as the general kernel's first wave. Prefetching
/// every row of the tiled kernel's first wave was slower: those bytes come from DRAM while the
/// predecessor still streams its own. Measured on the H100 (S11-2, silu bf16, ids after the
/// wait, twice each, alternating, µs, skip 0 / 50 / 90 %): 2048×8192 18.26 / 10.72 / 4.03 →
/// 18.13 / 10.36 / 3.99 (SGLang 18.06 / 10.05 / 4.48); from 8192 rows within ±0.5 % but 8192×8192
/// skip 50 % 35.07 → 35.51. 512×28672 at tile 2: 16.39 / 9.75 / 3.77 (S10-3) → 16.04 / 9.37 /
/// 3.76 (S11-3).
pub(crate) fn prefetch_blocks(first_wave: u32, tile: Option<u32>) -> i32 {
    (first_wave / tile.unwrap_or(1).max(1)).clamp(1, i32::MAX as u32) as i32
}

/// The grid of the tiled kernel: `cfg`'s blocks and column blocks, with each block taking
/// `tile` rows per thread row (`1 ≤ tile ≤ 32`).
pub(crate) fn tiled_geometry(cfg: &LaunchConfig, rows: u64, tile: u32) -> LaunchConfig {
    let row_blocks = rows.div_ceil(cfg.block.1 as u64 * tile as u64);
    let grid_y = row_blocks.min(65535);
    let grid_z = row_blocks.div_ceil(grid_y);
    LaunchConfig { grid: (cfg.grid.0, grid_y as u32, grid_z as u32), ..*cfg }
}

/// Launch configuration and kernel flags for a validated plan: the unit (16-byte vector, 8-byte
/// half vector or element), the block size, when to release PDL dependents, whether to
/// prefetch into L2.
pub(crate) fn launch_config(plan: &Plan, vector: bool, elem: usize) -> (LaunchConfig, i32) {
    let bytes = plan.rows * 2 * plan.d * elem as u64;
    let small = bytes < SMALL_BYTES;
    let threads = if small { SMALL_THREADS } else { THREADS };
    let mut flags = plan.filter_flags;
    let cfg = if vector {
        flags |= FLAG_VECTOR;
        if plan.filter_flags == 0 && bytes <= PREFETCH_MAX_BYTES {
            flags |= FLAG_PREFETCH;
        }
        let lanes = 16 / elem as u64;
        if bytes < HALF_VECTOR_BYTES {
            flags |= FLAG_HALF_VECTOR;
            geometry(plan, lanes / 2, VEC_PER, threads)
        } else {
            geometry(plan, lanes, VEC_PER, threads)
        }
    } else {
        geometry(plan, 1, SCALAR_PER, threads)
    };
    if !small {
        flags |= FLAG_EARLY_TRIGGER;
    }
    (cfg, flags)
}
