//! Validation of a call and the choice of kernel and launch shape: pure functions of the shape,
//! the buffer lengths and the pointers' alignment (no GPU needed, unit-tested in T0).

use kiln_runtime::{Error, Result, ensure};

use crate::{Form, Norm, Shape};

/// Largest supported `hidden` (2^27 elements): keeps every in-row index in 32 bits and the
/// two-pass kernel's binary counter within its fixed depth.
pub const MAX_HIDDEN: usize = 1 << 27;

/// Depth of the two-pass kernel's binary counter (`kStreamLevels` in rmsnorm.cuh).
const STREAM_LEVELS: u32 = 28;

/// Largest CTA of each kernel (`__launch_bounds__` in rmsnorm.cuh): K = 1 / other K / two-pass.
const MAX_THREADS_K1: usize = 256;
const MAX_THREADS: usize = 512;

/// Threads per CTA when several rows share a CTA (measured on the H100, hidden 128: 128 beats
/// 256 from 32 to 8192 rows, e.g. 128 rows 1.14 vs 1.51 µs, and ties beyond). Also for fewer rows
/// than the CTA has room for: a 1×128 launch in a 32-thread CTA took 1.45 µs, in a 128-thread one
/// (seven idle row groups) 1.23 µs (S5-1).
const ROWS_CTA_THREADS: usize = 128;

/// Threads of the CTA of a launch whose rows would fill exactly one [`ROWS_CTA_THREADS`] CTA
/// with row groups of 16 or 32 threads (8×128, 4×256 in 16-bit types): with twice the threads
/// the lone CTA has idle groups and takes the late trigger ([`late_trigger`]). Measured on the
/// H100 (S6-3, against the full 128-thread CTA): 8×128 1.16 → 1.09 µs, 4×256 1.34 → 1.08. Where
/// the 128-thread CTA already has idle groups, or with 8-thread groups (hidden 64), the larger
/// CTA measured 2–10 % slower (1×128 1.05 → 1.07, 8×64 1.15 → 1.22).
const LONE_CTA_THREADS: usize = 256;

/// Several rows per thread (kernels of two or more chunks per thread only) once a
/// one-row-per-thread grid would take more than this many waves of resident CTAs (counting 2048
/// threads per SM): small grids are latency-bound and keep the lighter one-row kernel.
const MULTI_ROW_WAVES: usize = 3;

/// A launch shape of the kernels (they all give bit-identical results; tests force each one).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    /// log2 of the threads per row (0..=9; at most 256 threads for `chunks_per_thread == 1`).
    pub log2_group: u32,
    /// Chunks of 16 bytes per thread held in registers (1, 2 or 4), or 0 for the two-pass kernel.
    pub chunks_per_thread: u32,
    /// Rows each thread holds (1..=[`max_rows`]; always 1 with element-wise accesses); 0: chosen
    /// from the row count.
    pub rows_per_thread: u32,
    /// Element-wise accesses even where 16-byte ones are possible.
    pub scalar: bool,
    /// The warp-per-row kernel for few short rows ([`Kind::WarpHf`] and its forms): unfused,
    /// at most [`WARP_MAX_CHUNKS`] chunks, `log2_group` 5, one chunk and one row per thread. On
    /// the element-wise path the plan runs the same shape with the register kernel instead.
    pub warp: bool,
}

/// Longest rows (chunks of 16 bytes: hidden 256 in 16-bit types, 128 in f32) of the
/// warp-per-row kernel.
pub const WARP_MAX_CHUNKS: usize = 32;

/// Rows of a CTA of the warp-per-row kernel (one warp each).
const WARP_CTA_ROWS: usize = 8;

/// Rows up to which an unfused vector-path launch of at most [`WARP_MAX_CHUNKS`] chunks runs the
/// warp-per-row kernel: 2048 for rows of 16 chunks or more, 512 for shorter ones (whose warps
/// are mostly idle lanes). Measured on the H100 (S12-7, `rms_norm_hf` bf16, twice each, µs, the
/// register kernels' choice → the warp kernel, bit-identical): 1×128 1.04 → 0.83, 8×128 1.06 →
/// 0.86, 128×128 1.08 → 0.91, 512×128 1.20 → 1.03, 2048×128 1.60 → 1.52, 1×256 1.05 → 0.83,
/// 2048×256 1.85 → 1.68, 512×64 1.14 → 1.00, but 2048×64 1.38 → 1.46. Its form is a template
/// argument: with `p.form` read at run time the same kernel took 0.93–1.33 µs.
fn warp_rows_max(chunks: usize) -> usize {
    if chunks >= 16 { 2048 } else { 512 }
}

/// Most rows a thread holds (the `kRows` of the multi-row unfused kernels in rmsnorm.cuh); 1 for
/// the fused, K = 4 and two-pass kernels.
pub fn max_rows(chunks_per_thread: u32, fused: bool) -> u32 {
    match (chunks_per_thread, fused) {
        (1, false) => 4,
        (2, false) => 2,
        _ => 1,
    }
}

/// Which kernel template runs (index into the spec table's kernel axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Rows1,
    Rows2,
    Rows4,
    Stream,
    /// K = 1, up to 4 rows per thread (unfused only).
    Rows1x4,
    /// K = 2, up to 2 rows per thread (unfused only).
    Rows2x2,
    /// Rows1 releasing its PDL dependents after its stores (unfused only): see [`late_trigger`].
    Rows1Late,
    /// Rows2, Rows4, Rows2x2 loading x by plain loads (unfused only): see [`Kind::plain_loads`].
    Rows2Plain,
    Rows4Plain,
    Rows2x2Plain,
    /// `rmsnorm_warp_rows` for the HF / fp32 / Gemma form (unfused, vector path): see
    /// [`warp_rows_max`].
    WarpHf,
    WarpFp32,
    WarpGemma,
}

impl Kind {
    /// Kernels of the unfused op.
    pub(crate) const PLAIN: [Kind; 13] = [
        Kind::Rows1,
        Kind::Rows2,
        Kind::Rows4,
        Kind::Stream,
        Kind::Rows1x4,
        Kind::Rows2x2,
        Kind::Rows1Late,
        Kind::Rows2Plain,
        Kind::Rows4Plain,
        Kind::Rows2x2Plain,
        Kind::WarpHf,
        Kind::WarpFp32,
        Kind::WarpGemma,
    ];
    /// Kernels of the fused op.
    pub(crate) const FUSED: [Kind; 4] = [Kind::Rows1, Kind::Rows2, Kind::Rows4, Kind::Stream];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The warp-per-row kernel of each form.
    fn warp(form: Form) -> Kind {
        match form {
            Form::Hf => Kind::WarpHf,
            Form::Fp32 => Kind::WarpFp32,
            Form::Gemma => Kind::WarpGemma,
        }
    }

    /// The form a warp-per-row kernel is instantiated for (`kHf` = 0, `kFp32` = 1, `kGemma` = 2
    /// in rmsnorm.cuh); None for the other kernels.
    pub(crate) fn warp_form(self) -> Option<i64> {
        match self {
            Kind::WarpHf => Some(0),
            Kind::WarpFp32 => Some(1),
            Kind::WarpGemma => Some(2),
            _ => None,
        }
    }

    /// (chunks per thread, most rows per thread) of a register kernel; None for the two-pass one.
    pub(crate) fn shape(self) -> Option<(u32, u32)> {
        match self {
            Kind::Rows1 | Kind::Rows1Late | Kind::WarpHf | Kind::WarpFp32 | Kind::WarpGemma => Some((1, 1)),
            Kind::Rows2 | Kind::Rows2Plain => Some((2, 1)),
            Kind::Rows4 | Kind::Rows4Plain => Some((4, 1)),
            Kind::Rows1x4 => Some((1, 4)),
            Kind::Rows2x2 | Kind::Rows2x2Plain => Some((2, 2)),
            Kind::Stream => None,
        }
    }

    /// Whether the kernel loads x by plain loads (`kPlain`) instead of `ld.global.L1::no_allocate`.
    pub(crate) fn is_plain(self) -> bool {
        matches!(self, Kind::Rows2Plain | Kind::Rows4Plain | Kind::Rows2x2Plain)
    }

    /// The kernel an unfused vector-path launch of `self` reading `input_bytes` of rows runs:
    /// from [`PLAIN_LOADS_MIN_BYTES`] the kernels of two or more chunks a thread take their
    /// plain-load twin. Measured on the H100 (S11-14, every `rmsnorm_hf` row, twice each,
    /// alternating, µs `no_allocate` → plain loads): 16384×8192 180.62 → 178.05, 8192×8192 91.39 →
    /// 90.30, 2048×8192 24.54 → 24.16, 16384×4096 91.40 → 90.20, 8192×4096 47.25 → 46.31,
    /// 2048×4096 13.07 → 12.85. Below 16 MiB the same kernels went both ways (512×4096 4.09 → 3.81,
    /// 32×8192 2.09 → 1.97, but 512×8192 7.11 → 7.44, 32×4096 1.62 → 1.69), and the one-chunk
    /// kernels lost where the others gained (65536×128 12.33 → 12.61, 8192×128 2.51 → 2.58). Plain
    /// or `evict_last` weight loads on top added nothing (same call). The fused kernels (x and the
    /// residual) were not measured and keep `no_allocate`.
    pub(crate) fn plain_loads(self, vec: bool, fused: bool, input_bytes: usize) -> Kind {
        if !vec || fused || input_bytes < PLAIN_LOADS_MIN_BYTES {
            return self;
        }
        match self {
            Kind::Rows2 => Kind::Rows2Plain,
            Kind::Rows4 => Kind::Rows4Plain,
            Kind::Rows2x2 => Kind::Rows2x2Plain,
            k => k,
        }
    }
}

/// Unfused launches reading at least this many bytes of rows take the plain-load kernels (see
/// [`Kind::plain_loads`]).
pub(crate) const PLAIN_LOADS_MIN_BYTES: usize = 16 << 20;

/// Whether a launch releases its PDL dependents after its stores ([`Kind::Rows1Late`]) rather
/// than once its loads are issued: a single CTA of one-chunk row groups (unfused) with fewer rows
/// than groups. Its idle groups reach the trigger right after the wait, which releases the
/// dependents before any row is loaded. Measured on the H100 (S5-4, the trigger after the stores
/// in every launch against as before): 1–4 rows of hidden 64–256 bf16 1.23 µs → 1.03–1.12, while
/// a full CTA (8×128) went 1.16 → 1.31 and one-row CTAs of two or more chunks (1×512 1.27 →
/// 1.62, 1×4096 1.51 → 1.63) lost too. A kernel of its own, not a runtime flag: as a flag the
/// second trigger site slowed other launches by 1–16 % (S5-5: 4×256 1.24 → 1.44 µs). That full
/// CTA does gain in a CTA of twice the size, half idle ([`LONE_CTA_THREADS`]). Releasing once the
/// working threads' loads are issued (idle threads not triggering) was slower at hidden 128 and
/// 256 (S6-1: 1×128 1.06 → 1.19 µs, 2×256 1.07 → 1.32) and faster only at hidden 64. Since
/// session 12 the vector path of these launches runs the warp-per-row kernel instead
/// ([`warp_rows_max`]); this remains the element-wise path's choice.
fn late_trigger(kind: Kind, log2_group: u32, rows: usize, block: usize, fused: bool) -> bool {
    // A Rows1 CTA holds block >> log2_group rows (one when a row fills the CTA), so fewer rows
    // than that means a single CTA with idle groups.
    kind == Kind::Rows1 && !fused && rows < block >> log2_group
}

/// A buffer as seen by validation: device address and length in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Buf {
    pub ptr: u64,
    pub len: usize,
}

/// Everything validation looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request {
    pub op: &'static str,
    /// Bytes per activation element.
    pub elem: usize,
    /// Bytes per weight element.
    pub weight_elem: usize,
    pub shape: Shape,
    pub norm: Norm,
    pub x: Buf,
    /// `None`: the output is `x` itself (in place, `out_stride` must equal `x_stride`).
    pub out: Option<Buf>,
    /// Fused add: the residual (read and written).
    pub residual: Option<Buf>,
    pub weight: Buf,
    pub force: Option<Variant>,
    /// Streaming multiprocessors of the device (for the rows-per-thread choice).
    pub sms: usize,
}

/// A validated launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub kind: Kind,
    pub log2_group: u32,
    pub iters_log2: u32,
    pub rows_per_thread: u32,
    pub block: u32,
    pub grid: u32,
    pub vec: bool,
    pub chunks: usize,
}

/// Elements per 16-byte chunk for an element of `elem` bytes.
pub(crate) fn chunk_elems(elem: usize) -> usize {
    16 / elem
}

fn log2(n: usize) -> u32 {
    debug_assert!(n.is_power_of_two());
    n.trailing_zeros()
}

/// Rows up to which a row of 1024 chunks (hidden 8192 in 16-bit types) uses 512 threads of two
/// chunks (shorter per-thread chains for latency-bound calls) rather than 256 threads of four.
const WIDE_ROWS_MAX: usize = 128;

/// Rows up to which an unfused launch of 64 or 128 chunks (hidden 512 / 1024 in 16-bit types)
/// gives each row a CTA of one chunk per thread and as many idle threads (`2·chunks` threads)
/// instead of a warp of two or four chunks per thread. Measured on the H100 (S6-4, sweep of every
/// launch shape): 1×1024 1.80 → 1.20 µs, 8×1024 1.83 → 1.29, 128×1024 → 1.47 (the best shape),
/// 1×512 1.26 → 1.21, 8×512 1.46 → 1.30, 128×512 1.52 → 1.37; the warp per row stays ahead from
/// 2048 rows of 512 (2.57 µs vs 2.99).
const HALF_IDLE_ROWS_MAX: usize = 128;

/// Rows up to which an unfused launch of 128 chunks past [`HALF_IDLE_ROWS_MAX`] uses a 128-thread
/// CTA of one chunk per thread per row (S6-4: 512×1024 2.25 → 1.96 µs, 2048×1024 4.20 → 3.91;
/// at 16384 rows the warp of four chunks is ahead, 24.41 vs 25.08).
const CTA_ROW_1024_MAX: usize = 2048;

/// The launch shape used unless a test forces another one: several rows per CTA up to 32
/// chunks (hidden 256 in 16-bit types), a warp per row up to 128 chunks (unfused: a CTA per row
/// up to 128 rows, and for rows of 128 chunks up to 2048 rows), a CTA per row (two chunks a
/// thread up to 512 chunks, four beyond, except for few rows of 1024 chunks) with the row in
/// registers up to 2048 chunks (hidden 16384), the two-pass kernel (512 threads) beyond.
pub fn default_variant(chunks: usize, rows: usize, fused: bool) -> Variant {
    let cp = chunks.max(1).next_power_of_two();
    let (log2_group, chunks_per_thread) = match cp {
        1..=32 => (log2(cp), 1),
        64 | 128 if !fused && rows <= HALF_IDLE_ROWS_MAX => (log2(cp) + 1, 1),
        128 if !fused && rows <= CTA_ROW_1024_MAX => (7, 1),
        64 | 128 => (5, (cp / 32) as u32),
        256 | 512 => (log2(cp / 2), 2),
        1024 if rows <= WIDE_ROWS_MAX => (9, 2),
        1024 | 2048 => (log2(cp / 4), 4),
        _ => (9, 0),
    };
    Variant { log2_group, chunks_per_thread, rows_per_thread: 0, scalar: false, warp: false }
}

/// Every launch shape that can run rows of `chunks` chunks (for tests that compare them), with
/// each allowed number of rows per thread.
pub fn variants(chunks: usize, fused: bool) -> Vec<Variant> {
    let mut v = Vec::new();
    for log2_group in 0..=9 {
        for chunks_per_thread in [0, 1, 2, 4] {
            for rows_per_thread in 1..=max_rows(chunks_per_thread, fused) {
                for scalar in [false, true].into_iter().filter(|&s| !s || rows_per_thread == 1) {
                    let cand = Variant { log2_group, chunks_per_thread, rows_per_thread, scalar, warp: false };
                    if check_variant(cand, chunks, fused).is_ok() {
                        v.push(cand);
                    }
                }
            }
        }
    }
    let warp = Variant { log2_group: 5, chunks_per_thread: 1, rows_per_thread: 1, scalar: false, warp: true };
    if check_variant(warp, chunks, fused).is_ok() {
        v.push(warp);
    }
    v
}

/// Why `v` cannot run rows of `chunks` chunks, if it cannot.
fn check_variant(v: Variant, chunks: usize, fused: bool) -> std::result::Result<(), String> {
    let cp = chunks.max(1).next_power_of_two();
    let g = 1usize << v.log2_group.min(31);
    let max = if v.chunks_per_thread == 1 { MAX_THREADS_K1 } else { MAX_THREADS };
    if g > max {
        return Err(format!("{g} threads per row exceed this kernel's {max}"));
    }
    if v.warp {
        if fused || chunks > WARP_MAX_CHUNKS {
            return Err(format!("the warp-per-row kernel is unfused and takes at most {WARP_MAX_CHUNKS} chunks ({chunks}, fused={fused})"));
        }
        if (v.log2_group, v.chunks_per_thread, v.rows_per_thread.max(1), v.scalar) != (5, 1, 1, false) {
            return Err("the warp-per-row kernel is log2_group 5, one chunk and one row per thread, 16-byte accesses".to_string());
        }
    }
    let max_r = max_rows(v.chunks_per_thread, fused);
    if v.rows_per_thread > max_r {
        return Err(format!("rows_per_thread={} > {max_r} for this kernel", v.rows_per_thread));
    }
    match v.chunks_per_thread {
        0 => {
            if v.log2_group < 5 {
                return Err(format!("the two-pass kernel needs whole warps (log2_group={} < 5)", v.log2_group));
            }
            let iters = (cp / g).max(1);
            if log2(iters) >= STREAM_LEVELS {
                return Err(format!("{iters} chunk slots per thread exceed the two-pass kernel's counter"));
            }
        }
        k @ (1 | 2 | 4) => {
            if k > 1 && v.log2_group < 5 {
                return Err(format!("chunks_per_thread={k} needs whole warps per row (log2_group={} < 5)", v.log2_group));
            }
            if g * (k as usize) < cp {
                return Err(format!("{g} threads × {k} chunks cannot hold {chunks} chunks"));
            }
        }
        k => return Err(format!("chunks_per_thread={k} is not 0, 1, 2 or 4")),
    }
    Ok(())
}

fn needed(op: &'static str, what: &str, rows: usize, stride: usize, hidden: usize) -> Result<usize> {
    if rows == 0 {
        return Ok(0);
    }
    (rows - 1)
        .checked_mul(stride)
        .and_then(|n| n.checked_add(hidden))
        .ok_or_else(|| Error::invalid(op, format!("(rows-1)*{what}+hidden overflows: rows={rows}, {what}={stride}, hidden={hidden}")))
}

fn check_buf(r: &Request, name: &str, stride_name: &str, b: Buf, stride: usize) -> Result<()> {
    let Shape { rows, hidden, .. } = r.shape;
    ensure!(stride >= hidden, r.op, "{stride_name}={stride} < hidden={hidden}");
    let need = needed(r.op, stride_name, rows, stride, hidden)?;
    ensure!(b.len >= need, r.op, "{name}.len()={} < (rows-1)*{stride_name}+hidden={need} (rows={rows}, hidden={hidden})", b.len);
    ensure!(b.ptr.is_multiple_of(r.elem as u64), r.op, "{name} at {:#x} is not aligned to its {}-byte elements", b.ptr, r.elem);
    Ok(())
}

/// Validates a call and chooses its launch; `Ok(None)` when there is nothing to do (rows == 0).
pub(crate) fn plan(r: &Request) -> Result<Option<Plan>> {
    let op = r.op;
    let Shape { rows, hidden, x_stride, out_stride, residual_stride } = r.shape;
    let eps = r.norm.eps;
    ensure!(eps.is_finite() && eps > 0.0, op, "eps={eps} must be finite and > 0");
    ensure!(hidden >= 1, op, "hidden=0: a row must have at least one element");
    ensure!(hidden <= MAX_HIDDEN, op, "hidden={hidden} exceeds the supported maximum {MAX_HIDDEN}");
    ensure!(rows <= i32::MAX as usize, op, "rows={rows} exceeds {}", i32::MAX);
    ensure!(r.weight.len == hidden, op, "weight.len()={} != hidden={hidden}", r.weight.len);
    ensure!(
        r.weight.ptr.is_multiple_of(r.weight_elem as u64),
        op,
        "weight at {:#x} is not aligned to its {}-byte elements",
        r.weight.ptr,
        r.weight_elem
    );
    check_buf(r, "x", "x_stride", r.x, x_stride)?;
    match r.out {
        Some(out) => check_buf(r, "out", "out_stride", out, out_stride)?,
        None => ensure!(out_stride == x_stride, op, "in place: out_stride={out_stride} != x_stride={x_stride}"),
    }
    if let Some(res) = r.residual {
        check_buf(r, "residual", "residual_stride", res, residual_stride)?;
    }
    if rows == 0 {
        return Ok(None);
    }

    let v = chunk_elems(r.elem);
    let chunks = hidden.div_ceil(v);
    let fused = r.residual.is_some();
    let var = r.force.unwrap_or_else(|| default_variant(chunks, rows, fused));
    check_variant(var, chunks, fused).map_err(|e| Error::invalid(op, format!("variant {var:?}: {e}")))?;

    let row_aligned = |b: Buf, stride: usize| b.ptr.is_multiple_of(16) && (rows == 1 || stride.is_multiple_of(v));
    let vec = !var.scalar
        && hidden.is_multiple_of(v)
        && r.weight.ptr.is_multiple_of(16)
        && row_aligned(r.x, x_stride)
        && r.out.is_none_or(|o| row_aligned(o, out_stride))
        && r.residual.is_none_or(|b| row_aligned(b, residual_stride));

    let cp = chunks.next_power_of_two();
    let g = 1usize << var.log2_group;
    // The warp-per-row kernel runs on the vector path only (a forced warp variant on the
    // element-wise path takes the register kernel with the same shape).
    let warp = vec
        && match r.force {
            Some(v) => v.warp,
            None => !fused && chunks <= WARP_MAX_CHUNKS && rows <= warp_rows_max(chunks),
        };
    let (kind, block, grid, iters_log2, rows_per_thread) = match var.chunks_per_thread {
        _ if warp => {
            let per = rows.min(WARP_CTA_ROWS);
            (Kind::warp(r.norm.form), 32 * per, rows.div_ceil(per), 0, 1)
        }
        0 => (Kind::Stream, g, rows, log2((cp / g).max(1)), 1),
        k => {
            // Rows handled by one CTA per row held by a thread (G ≤ 32: ROWS_CTA_THREADS / G
            // row groups even when there are fewer rows).
            let (block, rows_per_slot) = if var.log2_group <= 5 {
                let lone_full = !fused && k == 1 && var.log2_group >= 4 && rows << var.log2_group == ROWS_CTA_THREADS;
                let per_cta = if lone_full { LONE_CTA_THREADS } else { ROWS_CTA_THREADS } >> var.log2_group;
                let block = (per_cta << var.log2_group).max(32);
                (block, block >> var.log2_group)
            } else {
                (g, 1)
            };
            let most = max_rows(k, fused) as usize;
            let resident = r.sms * (2048 / block).min(32);
            // The element-wise path holds one row per thread (rmsnorm.cuh).
            let n = match var.rows_per_thread {
                _ if !vec => 1,
                // Measured (bench rmsnorm_hf.sweep, H100): one row per thread is best for the
                // one-chunk kernels (65536×128: 13.3 µs vs 13.6 with four), several rows only pay
                // off for long rows (8192×8192: 92.0 µs with two vs 104.5 with one).
                0 if k > 1 && rows.div_ceil(rows_per_slot) > MULTI_ROW_WAVES * resident => most,
                0 => 1,
                n => n as usize,
            };
            let kind = match (k, n > 1) {
                (1, false) => Kind::Rows1,
                (2, false) => Kind::Rows2,
                (1, true) => Kind::Rows1x4,
                (2, true) => Kind::Rows2x2,
                _ => Kind::Rows4,
            };
            let grid = rows.div_ceil(rows_per_slot * n);
            let kind = if late_trigger(kind, var.log2_group, rows, block, fused) { Kind::Rows1Late } else { kind };
            let kind = kind.plain_loads(vec, fused, rows.saturating_mul(hidden).saturating_mul(r.elem));
            (kind, block, grid, 0, n as u32)
        }
    };
    let log2_group = if warp { 5 } else { var.log2_group };
    Ok(Some(Plan { kind, log2_group, iters_log2, rows_per_thread, block: block as u32, grid: grid as u32, vec, chunks }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Norm;

    fn req(rows: usize, hidden: usize) -> Request {
        let n = rows * hidden;
        Request {
            op: "test",
            elem: 2,
            weight_elem: 2,
            shape: Shape::new(rows, hidden),
            norm: Norm::hf(1e-6),
            x: Buf { ptr: 0x1000, len: n },
            out: Some(Buf { ptr: 0x9000_0000, len: n }),
            residual: None,
            weight: Buf { ptr: 0x2000, len: hidden },
            force: None,
            sms: 132,
        }
    }

    fn err(r: &Request) -> String {
        match plan(r) {
            Err(Error::InvalidArgument { op: "test", reason }) => reason,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn bad_inputs_name_their_values() {
        let mut r = req(4, 4096);
        r.norm.eps = 0.0;
        assert_eq!(err(&r), "eps=0 must be finite and > 0");
        r.norm.eps = f32::NAN;
        assert!(err(&r).contains("eps=NaN"));
        r.norm.eps = f32::INFINITY;
        assert!(err(&r).contains("eps=inf"));
        r.norm.eps = -1e-6;
        assert!(err(&r).contains("eps=-0.000001"));

        let mut r = req(4, 4096);
        r.weight.len = 4095;
        assert_eq!(err(&r), "weight.len()=4095 != hidden=4096");
        let mut r = req(4, 4096);
        r.x.len = 4 * 4096 - 1;
        assert_eq!(err(&r), "x.len()=16383 < (rows-1)*x_stride+hidden=16384 (rows=4, hidden=4096)");
        let mut r = req(4, 4096);
        r.out = Some(Buf { ptr: 0x9000_0000, len: 100 });
        assert!(err(&r).starts_with("out.len()=100 < "));
        let mut r = req(4, 4096);
        r.shape.x_stride = 4000;
        assert_eq!(err(&r), "x_stride=4000 < hidden=4096");
        let mut r = req(4, 4096);
        r.shape.out_stride = 8192;
        assert_eq!(err(&r), "out.len()=16384 < (rows-1)*out_stride+hidden=28672 (rows=4, hidden=4096)");
        let mut r = req(4, 4096);
        r.out = None;
        r.shape.out_stride = 8192;
        assert_eq!(err(&r), "in place: out_stride=8192 != x_stride=4096");
        let mut r = req(2, 16);
        r.residual = Some(Buf { ptr: 0x4000, len: 31 });
        assert!(err(&r).starts_with("residual.len()=31 < "));
        let mut r = req(2, 16);
        r.x.ptr = 0x1001;
        assert!(err(&r).contains("not aligned"));
        let mut r = req(1, 0);
        r.weight.len = 0;
        assert!(err(&r).starts_with("hidden=0"));
        let mut r = req(0, MAX_HIDDEN + 1);
        r.weight.len = MAX_HIDDEN + 1;
        assert!(err(&r).contains("exceeds the supported maximum"));
        let mut r = req(1, 8);
        r.shape.rows = i32::MAX as usize + 1;
        assert_eq!(err(&r), "rows=2147483648 exceeds 2147483647");
    }

    #[test]
    fn warp_kernel_for_few_short_rows() {
        let p = |r: &Request| plan(r).unwrap().unwrap();
        for (rows, hidden, block, grid) in [(1, 128, 32, 1), (8, 128, 256, 1), (9, 256, 256, 2), (2048, 128, 256, 256), (512, 64, 256, 64)]
        {
            let a = p(&req(rows, hidden));
            assert_eq!((a.kind, a.block, a.grid, a.log2_group, a.rows_per_thread), (Kind::WarpHf, block, grid, 5, 1), "{rows}x{hidden}");
        }
        let mut r = req(3, 128);
        r.norm = Norm::fp32(1e-6);
        assert_eq!(p(&r).kind, Kind::WarpFp32);
        r.norm = Norm::gemma(1e-6);
        assert_eq!(p(&r).kind, Kind::WarpGemma);
        // f32: 32 chunks at hidden 128.
        let mut r = req(1, 128);
        r.elem = 4;
        r.weight_elem = 4;
        assert_eq!(p(&r).kind, Kind::WarpHf);
        // Not: more rows, longer rows, fused, the element-wise path.
        assert_ne!(p(&req(2049, 128)).kind, Kind::WarpHf);
        assert_ne!(p(&req(513, 64)).kind, Kind::WarpHf);
        assert_ne!(p(&req(1, 264)).kind, Kind::WarpHf);
        let mut r = req(1, 128);
        r.residual = Some(Buf { ptr: 0x4000_0000, len: 128 });
        assert_eq!(p(&r).kind, Kind::Rows1);
        let mut r = req(1, 128);
        r.x.ptr += 2;
        assert_eq!(p(&r).kind, Kind::Rows1Late);
        // Forced: the warp variant runs as Rows1 with a warp per row on the element-wise path;
        // it is refused where it cannot run.
        let warp = Variant { log2_group: 5, chunks_per_thread: 1, rows_per_thread: 1, scalar: false, warp: true };
        let mut r = req(64, 128);
        r.force = Some(warp);
        assert_eq!(p(&r).kind, Kind::WarpHf);
        r.x.ptr += 2;
        let a = p(&r);
        assert_eq!((a.kind, a.log2_group, a.vec), (Kind::Rows1, 5, false));
        let mut r = req(4, 264);
        r.force = Some(warp);
        assert!(err(&r).contains("at most 32 chunks"));
        let mut r = req(4, 128);
        r.force = Some(Variant { log2_group: 4, ..warp });
        assert!(err(&r).contains("log2_group 5"));
    }

    #[test]
    fn late_trigger_policy() {
        // The element-wise path (a misaligned x): the vector path of these sizes runs the
        // warp-per-row kernel.
        let late = |rows: usize, hidden: usize, fused: bool| {
            let mut r = req(rows, hidden);
            r.x.ptr += 2;
            if fused {
                r.residual = Some(Buf { ptr: 0x4000_0000, len: rows * hidden });
            }
            plan(&r).unwrap().unwrap().kind == Kind::Rows1Late
        };
        // A lone 128-thread CTA with idle row groups: 16 groups of hidden 64, 8 of 128, 4 of 256.
        assert!(late(1, 64, false) && late(15, 64, false) && !late(16, 64, false));
        assert!(late(1, 128, false) && late(7, 128, false) && !late(9, 128, false));
        assert!(late(3, 256, false) && !late(5, 256, false));
        // Rows that would fill it exactly with groups of 16 or 32 threads get a 256-thread CTA
        // (idle groups again); groups of 8 do not.
        assert!(late(8, 128, false) && late(4, 256, false));
        for (rows, hidden, block) in [(8, 128, 256), (4, 256, 256), (16, 64, 128), (9, 128, 128), (16, 128, 128), (8, 128, 128)] {
            let mut r = req(rows, hidden);
            r.x.ptr += 2;
            if block == 128 && rows == 8 {
                r.residual = Some(Buf { ptr: 0x4000_0000, len: rows * hidden });
            }
            assert_eq!(plan(&r).unwrap().unwrap().block as usize, block, "{rows}x{hidden}");
        }
        // Fused, two or more chunks per thread, or a CTA per row: never.
        assert!(!late(1, 128, true));
        assert!(!late(1, 512, false) && !late(1, 4096, false) && !late(1, 8192, false));
    }

    #[test]
    fn zero_rows_is_a_no_op_after_validation() {
        let mut r = req(0, 4096);
        assert_eq!(plan(&r).unwrap(), None);
        // Still validated: a wrong weight length is an error even with no rows.
        r.weight.len = 3;
        assert!(plan(&r).is_err());
    }

    #[test]
    fn plain_loads_from_16_mib_of_rows() {
        let p = |rows, hidden| plan(&req(rows, hidden)).unwrap().unwrap().kind;
        assert_eq!(p(2048, 4096), Kind::Rows2Plain, "16 MiB, K = 2");
        assert_eq!(p(2047, 4096), Kind::Rows2, "below 16 MiB");
        assert_eq!(p(2048, 8192), Kind::Rows4Plain, "32 MiB, K = 4");
        assert_eq!(p(512, 8192), Kind::Rows4, "8 MiB");
        assert_eq!(p(16384, 8192), Kind::Rows4Plain, "256 MiB");
        assert_eq!(p(8192, 4096), Kind::Rows2x2Plain, "64 MiB, K = 2, two rows a thread");
        assert_eq!(p(65536, 128), Kind::Rows1, "one chunk a thread: never");
        assert_eq!(p(1024, 32768), Kind::Stream, "two-pass: never");
        // Fused launches and the element-wise path keep no_allocate.
        let mut r = req(2048, 8192);
        r.residual = Some(Buf { ptr: 0x4000_0000, len: 2048 * 8192 });
        assert_eq!(plan(&r).unwrap().unwrap().kind, Kind::Rows4);
        let mut r = req(2048, 8192);
        r.x.ptr = 0x1008;
        let a = plan(&r).unwrap().unwrap();
        assert!(!a.vec && !a.kind.is_plain(), "{a:?}");
        // f32 rows of 4096 (the T2 PDL chain at 2048 rows): 32 MiB, K = 4.
        let mut r = req(2048, 4096);
        (r.elem, r.weight_elem) = (4, 4);
        assert_eq!(plan(&r).unwrap().unwrap().kind, Kind::Rows4Plain);
        assert_eq!(Kind::Rows4.plain_loads(true, false, usize::MAX), Kind::Rows4Plain);
        assert_eq!(Kind::Rows1x4.plain_loads(true, false, usize::MAX), Kind::Rows1x4);
    }

    #[test]
    fn default_shapes() {
        let p = |rows, hidden| plan(&req(rows, hidden)).unwrap().unwrap();
        // hidden 128 bf16: 16 chunks, half a warp per row, 8 rows per 128-thread CTA, one row
        // per thread at every row count (65536 rows: 8192 CTAs).
        let a = p(8192, 128);
        assert_eq!((a.kind, a.log2_group, a.block, a.grid, a.rows_per_thread, a.vec), (Kind::Rows1, 4, 128, 1024, 1, true));
        let a = p(65536, 128);
        assert_eq!((a.kind, a.block, a.grid, a.rows_per_thread), (Kind::Rows1, 128, 8192, 1));
        let a = p(16384, 128);
        assert_eq!((a.grid, a.rows_per_thread), (2048, 1));
        // x 4096: one row per 256-thread CTA up to 3168 rows, two beyond (from 16 MiB of rows
        // the plain-load kernels).
        let a = p(2048, 4096);
        assert_eq!((a.kind, a.block, a.grid, a.rows_per_thread), (Kind::Rows2Plain, 256, 2048, 1));
        let a = p(8192, 4096);
        assert_eq!((a.kind, a.block, a.grid, a.rows_per_thread), (Kind::Rows2x2Plain, 256, 4096, 2));
        // Up to 2048 rows of 128: a warp per row (one 32-thread CTA for one row).
        let a = p(1, 128);
        assert_eq!((a.kind, a.block, a.grid), (Kind::WarpHf, 32, 1));
        // 512 / 1024: a CTA per row of one chunk per thread and as many idle threads up to 128
        // rows, 1024 also with no idle threads up to 2048 rows; else a warp per row, 2 / 4 chunks
        // a lane, 4 rows per CTA. The fused op keeps the warp per row.
        let a = p(8, 1024);
        assert_eq!((a.kind, a.log2_group, a.block, a.grid), (Kind::Rows1, 8, 256, 8));
        let a = p(128, 512);
        assert_eq!((a.kind, a.log2_group, a.block, a.grid), (Kind::Rows1, 7, 128, 128));
        let a = p(1000, 1024);
        assert_eq!((a.kind, a.log2_group, a.block, a.grid), (Kind::Rows1, 7, 128, 1000));
        let a = p(4096, 1024);
        assert_eq!((a.kind, a.log2_group, a.block, a.grid), (Kind::Rows4, 5, 128, 1024));
        let a = p(1000, 512);
        assert_eq!((a.kind, a.log2_group, a.block, a.grid), (Kind::Rows2, 5, 128, 250));
        let mut r = req(8, 1024);
        r.residual = Some(Buf { ptr: 0x4000_0000, len: 8 * 1024 });
        let a = plan(&r).unwrap().unwrap();
        assert_eq!((a.kind, a.log2_group, a.block), (Kind::Rows4, 5, 128));
        // 4096: a CTA of 256 threads per row, 2 chunks each; 8192: 256 × 4; 16384: 512 × 4.
        let a = p(3, 4096);
        assert_eq!((a.kind, a.log2_group, a.block, a.grid), (Kind::Rows2, 8, 256, 3));
        assert_eq!((p(3, 8192).kind, p(3, 8192).block), (Kind::Rows2, 512));
        assert_eq!((p(129, 8192).kind, p(129, 8192).block), (Kind::Rows4, 256));
        assert_eq!((p(3, 16384).kind, p(3, 16384).block), (Kind::Rows4, 512));
        // Beyond registers: the two-pass kernel, 512 threads, 8 chunk slots each at 32768.
        let a = p(2, 32768);
        assert_eq!((a.kind, a.block, a.iters_log2), (Kind::Stream, 512, 3));
        let a = p(2, 16392);
        assert_eq!((a.kind, a.block, a.iters_log2), (Kind::Stream, 512, 3));
        // Element-wise accesses for sizes that are not a multiple of 16 bytes (even with aligned
        // strides), misaligned pointers or strides; 16-byte ones otherwise.
        let mut r = req(3, 7);
        r.shape = r.shape.with_x_stride(8).with_out_stride(8);
        r.x.len = 24;
        r.out = Some(Buf { ptr: 0x9000_0000, len: 24 });
        r.weight.len = 7;
        assert!(!plan(&r).unwrap().unwrap().vec);
        let mut r = req(3, 4096);
        r.x.ptr += 2;
        assert!(!plan(&r).unwrap().unwrap().vec);
        let mut r = req(3, 4096);
        r.shape = r.shape.with_out_stride(4100);
        r.out = Some(Buf { ptr: 0x9000_0000, len: 3 * 4100 });
        assert!(!plan(&r).unwrap().unwrap().vec);
        r.shape = r.shape.with_out_stride(4104);
        r.out = Some(Buf { ptr: 0x9000_0000, len: 3 * 4104 });
        assert!(plan(&r).unwrap().unwrap().vec);
    }

    #[test]
    fn forced_variants_are_checked() {
        let mut r = req(4, 4096); // 512 chunks
        let v = |log2_group, chunks_per_thread, rows_per_thread, scalar| {
            Some(Variant { log2_group, chunks_per_thread, rows_per_thread, scalar, warp: false })
        };
        r.force = v(5, 4, 1, false);
        assert!(err(&r).contains("cannot hold 512 chunks"));
        r.force = v(4, 2, 1, false);
        assert!(err(&r).contains("needs whole warps"));
        r.force = v(9, 1, 1, false);
        assert!(err(&r).contains("512 threads per row exceed this kernel's 256"));
        r.force = v(10, 0, 1, false);
        assert!(err(&r).contains("exceed"));
        r.force = v(8, 2, 3, false);
        assert!(err(&r).contains("rows_per_thread=3 > 2"));
        r.force = v(7, 4, 1, true);
        let p = plan(&r).unwrap().unwrap();
        assert_eq!((p.kind, p.block, p.vec), (Kind::Rows4, 128, false));
        // Element-wise accesses hold one row per thread whatever was asked.
        r.force = v(8, 2, 2, true);
        assert_eq!(plan(&r).unwrap().unwrap().rows_per_thread, 1);
        r.force = v(8, 2, 2, false);
        let p = plan(&r).unwrap().unwrap();
        assert_eq!((p.kind, p.block, p.grid, p.rows_per_thread), (Kind::Rows2x2, 256, 2, 2));
        r.force = v(5, 0, 1, false);
        let p = plan(&r).unwrap().unwrap();
        assert_eq!((p.kind, p.block, p.iters_log2), (Kind::Stream, 32, 4));
        // Fused kernels hold fewer rows.
        r.residual = Some(Buf { ptr: 0x4000, len: 4 * 4096 });
        r.force = v(8, 2, 2, false);
        assert!(err(&r).contains("rows_per_thread=2 > 1"));
        for chunks in [1, 7, 16, 33, 512, 1025, 4096, 5000] {
            for fused in [false, true] {
                let vs = variants(chunks, fused);
                let d = default_variant(chunks, 1000, fused);
                assert!(vs.contains(&Variant { rows_per_thread: 1, ..d }), "{chunks}");
                assert!(vs.iter().any(|v| v.chunks_per_thread == 0));
            }
        }
        assert!(variants(16, false).iter().any(|v| v.rows_per_thread == 4));
        assert_eq!(variants(2049, false).iter().filter(|v| v.chunks_per_thread > 0).count(), 0);
    }
}
