//! Grouped MXFP8 quantization and dequantization: the typed API, its validation (pure functions,
//! tested without a GPU) and the kernel specs.

use std::sync::LazyLock;

use kiln_runtime::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use kiln_runtime::{
    Dtype, DtypeId, E4m3, E8m0, Error, FastMath, Header, KernelSource, KernelSpec, MathPolicy, PRELUDE, Result, Runtime, Targets,
};
use kiln_runtime::{ensure, template_expr};

use crate::ffi;
use crate::layout::{ATOM_ROWS, BLOCK, ScaleLayout};

/// The crate's own device headers (`#include <mxfp8/…>`): the layout/scale-rule facts, the
/// device-side expert scheduler and the sm_90+ asynchronous-copy primitives, for every kernel of
/// the crate.
pub const HEADERS: &[Header] = &[
    Header { name: "mxfp8/layout.cuh", text: include_str!("../cuda/layout.cuh") },
    Header { name: "mxfp8/experts.cuh", text: include_str!("../cuda/experts.cuh") },
    Header { name: "mxfp8/tma.cuh", text: include_str!("../cuda/tma.cuh") },
];

static SOURCE: KernelSource =
    KernelSource { name: "mxfp8_quant.cuh", text: include_str!("../cuda/quant.cuh"), headers: &[PRELUDE, HEADERS] };

/// Most experts one grouped call takes (the per-CTA expert table lives in shared memory).
pub const MAX_EXPERTS: usize = 1024;

/// Threads per CTA of both kernels.
pub(crate) const THREADS: u32 = 256;
/// Rows × columns of one tile (`kTileRows`, `kTileCols` in `quant.cuh`; the TMA kernels' box).
pub(crate) const TILE_ROWS: usize = 64;
pub(crate) const TILE_COLS: usize = 256;
/// Shared memory per expert of the table (`experts.cuh`: a 16-byte `Expert` and an i64).
const SMEM_PER_EXPERT: usize = 24;

/// Size of the by-value parameter struct of both kernels.
pub(crate) const PARAMS_BYTES: usize = 96;

/// Largest row stride, tensor extent (`(rows-1)·stride + k` elements) and grouped scale tensor a
/// call may have: `i64::MAX / 16`. The kernels take them as i64 and form element indices up to 7
/// rows past a tile's last valid row and an 8-row step (`8·stride`), all below `8·MAX_EXTENT`, and
/// byte offsets of elements of at most 4 bytes, below `4·MAX_EXTENT`: every one fits in an i64
/// (and in the u64 byte strides of `vector_ok` and the TMA tensor map).
pub(crate) const MAX_EXTENT: usize = i64::MAX as usize / 16;

/// Shape of one call: `rows × k` elements; row strides of the high-precision tensor (`x`: the
/// quantizer's input, the dequantizer's output) and of the E4M3 tensor, in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mxfp8Shape {
    /// Token rows (`m`, or `m_total` in the grouped form).
    pub rows: usize,
    /// Columns; a multiple of 32 (of 128 in the blocked layout).
    pub k: usize,
    /// Elements between consecutive rows of the bf16/f16/f32 tensor (≥ k).
    pub x_stride: usize,
    /// Bytes between consecutive rows of the E4M3 tensor (≥ k).
    pub q_stride: usize,
}

impl Mxfp8Shape {
    /// Both tensors contiguous.
    pub const fn contiguous(rows: usize, k: usize) -> Self {
        Mxfp8Shape { rows, k, x_stride: k, q_stride: k }
    }
}

/// The MoE expert metadata of a grouped call: three `[num_experts]` int32 device buffers, read only
/// by the kernel (never by the host, so a call needs no synchronisation).
///
/// - `expert_offsets[g]`: first row of expert g in the token tensors;
/// - `tokens_per_expert[g]`: its rows `m_g`;
/// - `blockscale_offsets[g]`: its first scale row: a multiple of 128 in the blocked layout,
///   usually the exclusive prefix sum of `round_up(m_g, 128)` ([`crate::layout::blockscale_offsets`]).
///
/// Contents the host cannot check are clamped on the device (nothing is ever accessed out of
/// bounds): expert g processes `min(m_g, rows − expert_offsets[g], scale_rows −
/// blockscale_offsets[g])` rows when `m_g > 0`, `0 ≤ expert_offsets[g] < rows`,
/// `0 ≤ blockscale_offsets[g] < scale_rows` and (blocked) `blockscale_offsets[g] % 128 == 0`, and
/// none otherwise. Overlapping experts are not detected.
#[derive(Debug)]
pub struct Experts<'a, M> {
    /// First token row of each expert.
    pub expert_offsets: &'a M,
    /// Rows of each expert.
    pub tokens_per_expert: &'a M,
    /// First scale row of each expert.
    pub blockscale_offsets: &'a M,
}

// Copy without requiring `M: Copy` (the fields are references).
impl<M> Clone for Experts<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Experts<'_, M> {}

/// Which kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dir {
    Quantize,
    Dequantize,
}

impl Dir {
    pub(crate) const fn op(self) -> &'static str {
        match self {
            Dir::Quantize => "quantize_mxfp8",
            Dir::Dequantize => "dequantize_mxfp8",
        }
    }
    const fn kernel(self) -> &'static str {
        match self {
            Dir::Quantize => "mxfp8_quantize",
            Dir::Dequantize => "mxfp8_dequantize",
        }
    }
    const fn dtypes(self) -> &'static [DtypeId] {
        match self {
            Dir::Quantize => &[DtypeId::Bf16, DtypeId::F16],
            Dir::Dequantize => &[DtypeId::Bf16, DtypeId::F16, DtypeId::F32],
        }
    }
}

const DIRS: [Dir; 2] = [Dir::Quantize, Dir::Dequantize];

fn spec(dir: Dir, dt: DtypeId, vec: bool, pdl: bool) -> KernelSpec {
    let name = format!("{}__{}__{}{}", dir.op(), dt.tag(), if vec { "vec" } else { "scalar" }, if pdl { "__pdl" } else { "" });
    let expr = template_expr(dir.kernel(), &[dt.into(), vec.into(), pdl.into()]);
    // Precise math: no flush to zero (subnormal inputs, the 2^-127 scale); nothing else is affected.
    KernelSpec::new(name, &SOURCE, expr).pdl(pdl).math(MathPolicy::Fixed(FastMath::PRECISE)).targets(Targets::AtLeast(8, 9))
}

/// Which quantization kernel runs (the dequantizer has only the register kernel). Every kernel
/// gives bit-identical results; the choice is about speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QuantKernel {
    /// The fastest for the shape and device (what [`quantize_mxfp8_grouped`] uses): on sm_90+
    /// with 16-byte aligned `x` rows, [`QuantKernel::Tma4`] from 24 tiles (64 rows × 256
    /// columns) per SM up and [`QuantKernel::Tma2`] below; otherwise [`QuantKernel::Registers`].
    #[default]
    Auto,
    /// 4 CTAs per SM, each tile loaded straight into registers; any layout and alignment, sm_89+.
    Registers,
    /// TMA tile loads into a 2-stage shared-memory ring per CTA, 3 CTAs per SM (sm_90+, 16-byte
    /// aligned x rows and row stride).
    Tma2,
    /// TMA tile loads into a 4-stage ring, one CTA per SM: the fastest at large sizes.
    Tma4,
}

impl QuantKernel {
    const fn tag(self) -> &'static str {
        match self {
            QuantKernel::Auto => "auto",
            QuantKernel::Registers => "registers",
            QuantKernel::Tma2 => "tma2",
            QuantKernel::Tma4 => "tma4",
        }
    }
}

/// Stages of the TMA quantizer (`mxfp8_quantize_tma`) and the bytes of one stage (a tile).
const TMA_STAGES: [u32; 2] = [2, 4];
const TMA_STAGE_BYTES: u32 = (TILE_ROWS * TILE_COLS * 2) as u32;
/// Tiles per SM from which `Auto` picks the 4-stage kernel (measured on the H100: 4096×7168 with
/// 32 experts, 15.7 tiles per SM, is 7 % faster with Tma2; 32768×2048, 31 per SM, 6 % faster with
/// Tma4).
const TMA4_MIN_TILES_PER_SM: usize = 24;

/// Dynamic shared memory of the TMA quantizer: the stages, the mbarriers (padded to 16 bytes)
/// and the expert table.
pub(crate) fn tma_smem(stages: u32, experts: usize) -> u32 {
    stages * TMA_STAGE_BYTES + (8 * stages).div_ceil(16) * 16 + (SMEM_PER_EXPERT * experts.max(1)) as u32
}

fn tma_spec(dt: DtypeId, stages: u32, pdl: bool) -> KernelSpec {
    let name = format!("quantize_mxfp8_tma{stages}__{}{}", dt.tag(), if pdl { "__pdl" } else { "" });
    let expr = template_expr("mxfp8_quantize_tma", &[dt.into(), (stages as i32).into(), pdl.into()]);
    KernelSpec::new(name, &SOURCE, expr)
        .pdl(pdl)
        .math(MathPolicy::Fixed(FastMath::PRECISE))
        .targets(Targets::AtLeast(9, 0))
        .dynamic_smem(tma_smem(stages, MAX_EXPERTS))
}

/// The TMA quantizer's specs, in the order `tma_index` computes: dtype × stages × PDL.
pub(crate) static TMA_SPECS: LazyLock<Vec<KernelSpec>> = LazyLock::new(|| {
    let mut v = Vec::new();
    for &dt in Dir::Quantize.dtypes() {
        for stages in TMA_STAGES {
            for pdl in [false, true] {
                v.push(tma_spec(dt, stages, pdl));
            }
        }
    }
    v
});

pub(crate) fn tma_index(dt: DtypeId, stages: u32, pdl: bool) -> usize {
    let d = Dir::Quantize.dtypes().iter().position(|&x| x == dt).expect("dtype validated before the lookup");
    let s = TMA_STAGES.iter().position(|&x| x == stages).expect("a built stage count");
    (d * TMA_STAGES.len() + s) * 2 + usize::from(pdl)
}

/// The kernel a launch runs: `None` for the register kernel, else the TMA stage count. `vec`: the
/// pointers and strides allow the vector path; `sm90`: the device is sm_90 or newer.
pub(crate) fn choose(plan: &Plan, kernel: QuantKernel, vec: bool, sm90: bool, sms: usize) -> Result<Option<u32>> {
    let op = plan.dir.op();
    let tma_ok = plan.dir == Dir::Quantize && vec && sm90;
    match kernel {
        QuantKernel::Registers => Ok(None),
        QuantKernel::Auto if !tma_ok => Ok(None),
        QuantKernel::Auto => Ok(Some(if plan.tiles >= TMA4_MIN_TILES_PER_SM * sms.max(1) { 4 } else { 2 })),
        QuantKernel::Tma2 | QuantKernel::Tma4 => {
            ensure!(
                tma_ok,
                op,
                "kernel {} needs the quantizer on sm_90+ with 16-byte aligned x rows and row stride and 8-byte aligned q rows (sm_90+: {sm90}, aligned: {vec})",
                kernel.tag()
            );
            Ok(Some(if kernel == QuantKernel::Tma2 { 2 } else { 4 }))
        }
    }
}

/// Every spec, in the order `spec_index` computes.
pub(crate) static SPECS: LazyLock<Vec<KernelSpec>> = LazyLock::new(|| {
    let mut v = Vec::new();
    for dir in DIRS {
        for &dt in dir.dtypes() {
            for vec in [true, false] {
                for pdl in [false, true] {
                    v.push(spec(dir, dt, vec, pdl));
                }
            }
        }
    }
    v
});

pub(crate) fn spec_index(dir: Dir, dt: DtypeId, vec: bool, pdl: bool) -> usize {
    let base = match dir {
        Dir::Quantize => 0,
        Dir::Dequantize => Dir::Quantize.dtypes().len() * 4,
    };
    let d = dir.dtypes().iter().position(|&x| x == dt).expect("dtype validated before the lookup");
    base + d * 4 + usize::from(!vec) * 2 + usize::from(pdl)
}

/// Lengths (in elements) of the buffers of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lens {
    pub x: usize,
    pub q: usize,
    pub scales: usize,
    /// `[offsets, tokens, scale offsets]` of the grouped form.
    pub experts: Option<[usize; 3]>,
}

/// A validated call: everything the launch needs but the pointers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub dir: Dir,
    pub dtype: DtypeId,
    pub shape: Mxfp8Shape,
    pub layout: ScaleLayout,
    /// 0 for the dense form (no metadata).
    pub num_experts: usize,
    pub scale_rows: usize,
    /// An upper bound of the tiles of valid metadata (the grid is never larger).
    pub tiles: usize,
    /// Dynamic shared memory of the expert table.
    pub smem: u32,
}

/// Validates a call. `Ok(None)`: nothing to do (no launch).
pub(crate) fn plan(dir: Dir, dtype: DtypeId, shape: Mxfp8Shape, layout: ScaleLayout, lens: Lens) -> Result<Option<Plan>> {
    let op = dir.op();
    let Mxfp8Shape { rows, k, x_stride, q_stride } = shape;
    let supported = dir.dtypes();
    ensure!(supported.contains(&dtype), op, "unsupported dtype {dtype}: {op} takes {}", tags(supported));
    let km = layout.k_multiple();
    ensure!(k.is_multiple_of(km), op, "k={k} is not a multiple of {km} (required by the {} scale layout)", layout.tag());
    ensure!(x_stride >= k, op, "x_stride={x_stride} < k={k}");
    ensure!(q_stride >= k, op, "q_stride={q_stride} < k={k}");
    ensure!(rows <= i32::MAX as usize, op, "rows={rows} exceeds i32::MAX (expert offsets are int32)");
    for (name, stride) in [("x_stride", x_stride), ("q_stride", q_stride)] {
        ensure!(stride <= MAX_EXTENT, op, "{name}={stride} exceeds {MAX_EXTENT} (i64::MAX/16: the kernels' 64-bit offsets)");
    }
    let need = |name: &str, stride: usize| -> Result<usize> {
        if rows == 0 {
            return Ok(0);
        }
        (rows - 1).checked_mul(stride).and_then(|v| v.checked_add(k)).filter(|&v| v <= MAX_EXTENT).ok_or_else(|| {
            let exact = (rows as u128 - 1) * stride as u128 + k as u128;
            Error::invalid(
                op,
                format!("(rows-1)*{name}+k={exact} exceeds {MAX_EXTENT} (i64::MAX/16: the kernels' 64-bit offsets; rows={rows}, {name}={stride}, k={k})"),
            )
        })
    };
    let (xn, qn) = (need("x_stride", x_stride)?, need("q_stride", q_stride)?);
    let (xname, qname) = match dir {
        Dir::Quantize => ("x", "q"),
        Dir::Dequantize => ("out", "q"),
    };
    ensure!(lens.x >= xn, op, "{xname}.len()={} < (rows-1)*x_stride+k={xn} (rows={rows}, x_stride={x_stride}, k={k})", lens.x);
    ensure!(lens.q >= qn, op, "{qname}.len()={} < (rows-1)*q_stride+k={qn} (rows={rows}, q_stride={q_stride}, k={k})", lens.q);
    let nkb = k / BLOCK;
    let ktiles = k.div_ceil(TILE_COLS);
    let (num_experts, scale_rows, row_tiles) = match lens.experts {
        None => {
            let sb = layout.checked_scale_bytes(rows, k).filter(|&b| b <= MAX_EXTENT).ok_or_else(|| {
                let exact = exact_scale_bytes(layout, rows, k);
                Error::invalid(
                    op,
                    format!(
                        "scale bytes padded_rows(rows)*k/32={exact} exceed {MAX_EXTENT} (i64::MAX/16: the kernels' 64-bit offsets; rows={rows}, k={k}, {} layout)",
                        layout.tag()
                    ),
                )
            })?;
            ensure!(
                lens.scales >= sb,
                op,
                "scales.len()={} < {sb} ({} layout: {} scale rows × k/32={nkb})",
                lens.scales,
                layout.tag(),
                layout.padded_rows(rows)
            );
            (0, layout.padded_rows(rows), rows.div_ceil(TILE_ROWS))
        }
        Some([no, nt, ns]) => {
            ensure!(
                no == nt && nt == ns,
                op,
                "expert metadata lengths differ: expert_offsets.len()={no}, tokens_per_expert.len()={nt}, blockscale_offsets.len()={ns}"
            );
            ensure!(no <= MAX_EXPERTS, op, "num_experts={no} exceeds {MAX_EXPERTS}");
            let row_bytes = nkb * layout.row_multiple();
            ensure!(
                nkb == 0 || lens.scales.is_multiple_of(row_bytes),
                op,
                "scales.len()={} is not a whole number of {} (k/32={nkb}){}",
                lens.scales,
                if layout.row_multiple() == 1 {
                    "scale rows".to_string()
                } else {
                    format!("{ATOM_ROWS}-row scale groups of {row_bytes} bytes")
                },
                if layout.row_multiple() == 1 { format!(" bytes per row {nkb}") } else { String::new() }
            );
            ensure!(
                lens.scales <= MAX_EXTENT,
                op,
                "scales.len()={} exceeds {MAX_EXTENT} (i64::MAX/16: the kernels' 64-bit offsets)",
                lens.scales
            );
            let scale_rows = lens.scales.checked_div(nkb).unwrap_or(0);
            // With valid metadata Σ ⌈m_g / 64⌉ ≤ ⌈rows / 64⌉ + G (padding rows are no tiles).
            (no, scale_rows, rows.div_ceil(TILE_ROWS) + no)
        }
    };
    if rows == 0 || k == 0 || (lens.experts.is_some() && (num_experts == 0 || scale_rows == 0)) {
        return Ok(None);
    }
    let smem = (SMEM_PER_EXPERT * num_experts.max(1)) as u32;
    let tiles = row_tiles.saturating_mul(ktiles);
    Ok(Some(Plan { dir, dtype, shape, layout, num_experts, scale_rows, tiles, smem }))
}

fn tags(d: &[DtypeId]) -> String {
    d.iter().map(|t| t.tag()).collect::<Vec<_>>().join("/")
}

/// Whether the vectorised kernel may run: 16-byte aligned x rows (the quantizer's input, the
/// dequantizer's output) and 8-byte aligned q rows.
pub(crate) fn vector_ok(plan: &Plan, x_addr: u64, q_addr: u64) -> bool {
    let esize = plan.dtype.size() as u64;
    // `plan` bounded x_stride by MAX_EXTENT, so the byte stride cannot overflow.
    let x_ok = x_addr.is_multiple_of(16) && (plan.shape.x_stride as u64 * esize).is_multiple_of(16);
    let q_ok = q_addr.is_multiple_of(8) && plan.shape.q_stride.is_multiple_of(8);
    x_ok && q_ok
}

/// Quantizes a `[rows, k]` bf16/f16 tensor `x` into new buffers: `q` (`[rows, k]` E4M3,
/// contiguous) and `scales` (`layout.scale_bytes(rows, k)` E8M0 bytes; in the blocked layout the
/// padding rows `rows..round_up(rows, 128)` hold byte 0). `x_stride` is `x`'s row stride in
/// elements. Stream-ordered; no synchronisation. Allocates both outputs on every call: inside a
/// CUDA-graph capture use [`quantize_mxfp8_into`] with buffers allocated beforehand.
pub fn quantize_mxfp8<T: Dtype>(
    rt: &Runtime,
    x: &impl DevicePtr<T>,
    rows: usize,
    k: usize,
    x_stride: usize,
    layout: ScaleLayout,
) -> Result<(CudaSlice<E4m3>, CudaSlice<E8m0>)> {
    let shape = Mxfp8Shape { rows, k, x_stride, q_stride: k };
    rt.check_context(Dir::Quantize.op(), "x", x)?; // before allocating
    let (q_len, scales_len) = dense_output_lens(rows, k, layout)?;
    let lens = Lens { x: x.len(), q: q_len, scales: scales_len, experts: None };
    let plan = plan(Dir::Quantize, T::ID, shape, layout, lens)?;
    let (mut q, mut s) = ffi::alloc_outputs(rt, lens.q, lens.scales)?;
    if let Some(p) = plan {
        ffi::quantize(rt, &p, x, &mut q, &mut s, None::<Experts<'_, CudaSlice<i32>>>, QuantKernel::Auto)?;
    }
    Ok((q, s))
}

/// Quantizes a dense `[rows, k]` tensor into caller buffers: `q` `[rows, k]` (row stride
/// `shape.q_stride`), `scales` (`layout.scale_bytes(rows, k)` bytes or more; padding rows of the
/// blocked layout get byte 0). Elements of `q` between rows are not written.
pub fn quantize_mxfp8_into<T: Dtype>(
    rt: &Runtime,
    x: &impl DevicePtr<T>,
    q: &mut impl DevicePtrMut<E4m3>,
    scales: &mut impl DevicePtrMut<E8m0>,
    shape: Mxfp8Shape,
    layout: ScaleLayout,
) -> Result<()> {
    let lens = Lens { x: x.len(), q: q.len(), scales: scales.len(), experts: None };
    match plan(Dir::Quantize, T::ID, shape, layout, lens)? {
        Some(p) => ffi::quantize(rt, &p, x, q, scales, None::<Experts<'_, CudaSlice<i32>>>, QuantKernel::Auto),
        None => Ok(()),
    }
}

/// Quantizes the experts' rows of `x` (`[rows = m_total, k]`): for each expert g, token rows
/// `expert_offsets[g] .. + tokens_per_expert[g]` of `x` go to the same rows of `q`, their scales to
/// scale rows `blockscale_offsets[g] ..` of `scales`, and in the blocked layout the padding scale
/// rows up to `round_up(m_g, 128)` get byte 0. Rows and scale rows of no expert are not written.
///
/// `scales` holds `scale_rows × k/32` bytes (`scale_rows` a multiple of 128 when blocked). The
/// metadata stays on the device (see [`Experts`] for how bad contents are clamped). Empty work
/// (`rows == 0`, no experts) returns without a launch; experts with no tokens cost nothing.
pub fn quantize_mxfp8_grouped<T: Dtype, M: DevicePtr<i32>>(
    rt: &Runtime,
    x: &impl DevicePtr<T>,
    experts: Experts<'_, M>,
    q: &mut impl DevicePtrMut<E4m3>,
    scales: &mut impl DevicePtrMut<E8m0>,
    shape: Mxfp8Shape,
    layout: ScaleLayout,
) -> Result<()> {
    quantize_mxfp8_grouped_with(rt, x, experts, q, scales, shape, layout, QuantKernel::Auto)
}

/// [`quantize_mxfp8_grouped`] with the kernel named (for benchmarks and tests; the results are
/// the same). A TMA kernel on a call it cannot run (before sm_90, unaligned `x`/`q` rows) is an
/// `Err`.
#[allow(clippy::too_many_arguments)]
pub fn quantize_mxfp8_grouped_with<T: Dtype, M: DevicePtr<i32>>(
    rt: &Runtime,
    x: &impl DevicePtr<T>,
    experts: Experts<'_, M>,
    q: &mut impl DevicePtrMut<E4m3>,
    scales: &mut impl DevicePtrMut<E8m0>,
    shape: Mxfp8Shape,
    layout: ScaleLayout,
    kernel: QuantKernel,
) -> Result<()> {
    let lens = Lens { x: x.len(), q: q.len(), scales: scales.len(), experts: Some(meta_lens(&experts)) };
    match plan(Dir::Quantize, T::ID, shape, layout, lens)? {
        Some(p) => ffi::quantize(rt, &p, x, q, scales, Some(experts), kernel),
        None => Ok(()),
    }
}

/// Dequantizes a dense `[rows, k]` E4M3 tensor with its scales into `out` (bf16, f16 or f32):
/// `out = RN(e4m3(q) · 2^(s − 127))`, the product in f32. Elements of `out` between rows
/// (`shape.x_stride > k`) are not written.
pub fn dequantize_mxfp8<T: Dtype>(
    rt: &Runtime,
    q: &impl DevicePtr<E4m3>,
    scales: &impl DevicePtr<E8m0>,
    out: &mut impl DevicePtrMut<T>,
    shape: Mxfp8Shape,
    layout: ScaleLayout,
) -> Result<()> {
    let lens = Lens { x: out.len(), q: q.len(), scales: scales.len(), experts: None };
    match plan(Dir::Dequantize, T::ID, shape, layout, lens)? {
        Some(p) => ffi::dequantize(rt, &p, q, scales, out, None::<Experts<'_, CudaSlice<i32>>>),
        None => Ok(()),
    }
}

/// Dequantizes the experts' rows (the layout [`quantize_mxfp8_grouped`] writes) into `out`; rows of
/// no expert are not written.
pub fn dequantize_mxfp8_grouped<T: Dtype, M: DevicePtr<i32>>(
    rt: &Runtime,
    q: &impl DevicePtr<E4m3>,
    scales: &impl DevicePtr<E8m0>,
    experts: Experts<'_, M>,
    out: &mut impl DevicePtrMut<T>,
    shape: Mxfp8Shape,
    layout: ScaleLayout,
) -> Result<()> {
    let lens = Lens { x: out.len(), q: q.len(), scales: scales.len(), experts: Some(meta_lens(&experts)) };
    match plan(Dir::Dequantize, T::ID, shape, layout, lens)? {
        Some(p) => ffi::dequantize(rt, &p, q, scales, out, Some(experts)),
        None => Ok(()),
    }
}

/// Lengths of the outputs [`quantize_mxfp8`] allocates: `rows·k` E4M3 and
/// `layout.scale_bytes(rows, k)` E8M0, or an `Err` naming the shape when either overflows.
fn dense_output_lens(rows: usize, k: usize, layout: ScaleLayout) -> Result<(usize, usize)> {
    let op = Dir::Quantize.op();
    let q = crate::checked_len(op, "q.len()=rows*k", &[("rows", rows), ("k", k)])?;
    let scales = layout.checked_scale_bytes(rows, k).ok_or_else(|| {
        let exact = exact_scale_bytes(layout, rows, k);
        Error::invalid(
            op,
            format!("scales.len()=padded_rows(rows)*k/32={exact} overflows usize (rows={rows}, k={k}, {} layout)", layout.tag()),
        )
    })?;
    Ok((q, scales))
}

/// `layout.scale_bytes(rows, k)` in u128, for messages about sizes that overflow `usize`.
fn exact_scale_bytes(layout: ScaleLayout, rows: usize, k: usize) -> u128 {
    let m = layout.row_multiple() as u128;
    (rows as u128).div_ceil(m) * m * (k / BLOCK) as u128
}

fn meta_lens<M: DevicePtr<i32>>(e: &Experts<'_, M>) -> [usize; 3] {
    [e.expert_offsets.len(), e.tokens_per_expert.len(), e.blockscale_offsets.len()]
}

#[cfg(test)]
mod tests;
