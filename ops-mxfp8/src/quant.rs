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
                let exact = layout.padded_rows(rows) as u128 * nkb as u128;
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
    let q = rows
        .checked_mul(k)
        .ok_or_else(|| Error::invalid(op, format!("q.len()=rows*k={} overflows usize (rows={rows}, k={k})", rows as u128 * k as u128)))?;
    let scales = layout.checked_scale_bytes(rows, k).ok_or_else(|| {
        let exact = layout.padded_rows(rows) as u128 * (k / BLOCK) as u128;
        Error::invalid(
            op,
            format!("scales.len()=padded_rows(rows)*k/32={exact} overflows usize (rows={rows}, k={k}, {} layout)", layout.tag()),
        )
    })?;
    Ok((q, scales))
}

fn meta_lens<M: DevicePtr<i32>>(e: &Experts<'_, M>) -> [usize; 3] {
    [e.expert_offsets.len(), e.tokens_per_expert.len(), e.blockscale_offsets.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_runtime::Error;

    const BLK: ScaleLayout = ScaleLayout::Blocked128x4;
    const RM: ScaleLayout = ScaleLayout::RowMajor;

    fn dense(x: usize, q: usize, s: usize) -> Lens {
        Lens { x, q, scales: s, experts: None }
    }

    fn reason(r: Result<Option<Plan>>) -> String {
        match r {
            Err(Error::InvalidArgument { reason, .. }) => reason,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn kernel_choice() {
        let s = Mxfp8Shape::contiguous(4096, 7168);
        let big = Mxfp8Shape::contiguous(32768, 2048);
        let p = |dir, s: Mxfp8Shape| {
            plan(dir, DtypeId::Bf16, s, BLK, dense(s.rows * s.k, s.rows * s.k, s.rows.div_ceil(128) * 128 * s.k / 32)).unwrap().unwrap()
        };
        let (mid, large, deq) = (p(Dir::Quantize, s), p(Dir::Quantize, big), p(Dir::Dequantize, s));
        assert_eq!(mid.tiles, 64 * 28);
        assert_eq!(choose(&mid, QuantKernel::Auto, true, true, 132).unwrap(), Some(2), "13.6 tiles per SM");
        assert_eq!(choose(&large, QuantKernel::Auto, true, true, 132).unwrap(), Some(4), "31 tiles per SM");
        assert_eq!(choose(&large, QuantKernel::Auto, false, true, 132).unwrap(), None, "unaligned: registers");
        assert_eq!(choose(&large, QuantKernel::Auto, true, false, 132).unwrap(), None, "sm_89: registers");
        assert_eq!(choose(&deq, QuantKernel::Auto, true, true, 132).unwrap(), None, "the dequantizer has no TMA kernel");
        assert_eq!(choose(&large, QuantKernel::Registers, true, true, 132).unwrap(), None);
        assert_eq!(choose(&mid, QuantKernel::Tma4, true, true, 132).unwrap(), Some(4));
        assert!(reason(choose(&mid, QuantKernel::Tma2, true, false, 132).map(|_| None)).contains("kernel tma2 needs"));
        assert!(reason(choose(&mid, QuantKernel::Tma4, false, true, 132).map(|_| None)).contains("aligned: false"));
        // The TMA kernels' shared memory fits the H100's 227 KiB per CTA with 1024 experts.
        assert!(tma_smem(4, MAX_EXPERTS) <= 227 * 1024);
    }

    #[test]
    fn valid_calls_plan() {
        let s = Mxfp8Shape::contiguous(300, 256);
        let p = plan(Dir::Quantize, DtypeId::Bf16, s, BLK, dense(300 * 256, 300 * 256, 384 * 8)).unwrap().unwrap();
        assert_eq!((p.scale_rows, p.num_experts, p.smem), (384, 0, 24));
        assert_eq!(p.tiles, 5, "padding rows are written by the last data tile, they are no tiles");
        let p = plan(Dir::Dequantize, DtypeId::F32, s, BLK, dense(300 * 256, 300 * 256, 384 * 8)).unwrap().unwrap();
        assert_eq!(p.tiles, 5, "the dequantizer skips padding rows");
        let g = Lens { x: 300 * 256, q: 300 * 256, scales: 512 * 8, experts: Some([8; 3]) };
        let p = plan(Dir::Quantize, DtypeId::F16, s, BLK, g).unwrap().unwrap();
        assert_eq!((p.scale_rows, p.num_experts, p.smem, p.tiles), (512, 8, 192, 5 + 8));
        // Row-major takes k % 32 and any number of scale rows.
        let s = Mxfp8Shape::contiguous(3, 96);
        assert!(plan(Dir::Quantize, DtypeId::Bf16, s, RM, dense(288, 288, 9)).unwrap().is_some());
        let g = Lens { x: 288, q: 288, scales: 7 * 3, experts: Some([2; 3]) };
        assert_eq!(plan(Dir::Quantize, DtypeId::Bf16, s, RM, g).unwrap().unwrap().scale_rows, 7);
    }

    #[test]
    fn empty_work_needs_no_launch() {
        assert_eq!(plan(Dir::Quantize, DtypeId::Bf16, Mxfp8Shape::contiguous(0, 128), BLK, dense(0, 0, 0)).unwrap(), None);
        assert_eq!(plan(Dir::Quantize, DtypeId::Bf16, Mxfp8Shape::contiguous(4, 0), RM, dense(0, 0, 0)).unwrap(), None);
        let g = Lens { x: 512, q: 512, scales: 512, experts: Some([0; 3]) };
        assert_eq!(plan(Dir::Quantize, DtypeId::Bf16, Mxfp8Shape::contiguous(4, 128), BLK, g).unwrap(), None);
        let g = Lens { x: 512, q: 512, scales: 0, experts: Some([3; 3]) };
        assert_eq!(plan(Dir::Dequantize, DtypeId::Bf16, Mxfp8Shape::contiguous(4, 128), BLK, g).unwrap(), None);
    }

    #[test]
    fn bad_calls_name_their_values() {
        let s = Mxfp8Shape::contiguous(4, 96);
        assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, BLK, dense(384, 384, 512 * 3))).contains("k=96 is not a multiple of 128"));
        let s = Mxfp8Shape::contiguous(4, 100);
        assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, RM, dense(400, 400, 16))).contains("k=100 is not a multiple of 32"));
        let s = Mxfp8Shape::contiguous(4, 128);
        assert!(reason(plan(Dir::Quantize, DtypeId::F32, s, RM, dense(512, 512, 16))).contains("unsupported dtype f32"));
        assert!(reason(plan(Dir::Dequantize, DtypeId::I32, s, RM, dense(512, 512, 16))).contains("unsupported dtype i32"));
        assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, RM, dense(511, 512, 16))).contains("x.len()=511 < (rows-1)*x_stride+k=512"));
        assert!(reason(plan(Dir::Dequantize, DtypeId::Bf16, s, RM, dense(511, 512, 16))).contains("out.len()=511"));
        assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, RM, dense(512, 500, 16))).contains("q.len()=500"));
        assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, RM, dense(512, 512, 15))).contains("scales.len()=15 < 16"));
        assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, BLK, dense(512, 512, 16))).contains("scales.len()=16 < 512"));
        let st = Mxfp8Shape { rows: 4, k: 128, x_stride: 100, q_stride: 128 };
        assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, st, RM, dense(9999, 9999, 16))).contains("x_stride=100 < k=128"));
        let st = Mxfp8Shape { rows: 4, k: 128, x_stride: 130, q_stride: 128 };
        assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, st, RM, dense(3 * 130 + 127, 512, 16))).contains("(rows-1)*x_stride+k=518"));
        let g = |experts, scales| Lens { x: 512, q: 512, scales, experts: Some(experts) };
        assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, BLK, g([2, 2, 3], 512))).contains("blockscale_offsets.len()=3"));
        assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, BLK, g([1025; 3], 512))).contains("num_experts=1025 exceeds 1024"));
        assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, BLK, g([2; 3], 256))).contains("scales.len()=256 is not a whole number"));
        assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, RM, g([2; 3], 17))).contains("scales.len()=17 is not a whole number"));
        let big = Mxfp8Shape::contiguous(1 << 31, 32);
        assert!(
            reason(plan(Dir::Quantize, DtypeId::Bf16, big, RM, dense(usize::MAX, usize::MAX, usize::MAX))).contains("exceeds i32::MAX")
        );
    }

    #[test]
    fn overflowing_shapes_are_errors() {
        let deq = |s: Mxfp8Shape, l: ScaleLayout, lens: Lens| reason(plan(Dir::Dequantize, DtypeId::Bf16, s, l, lens));
        // Strides of 2^63 made (rows-1)*stride+k wrap to 128, so 3 rows passed with tiny buffers.
        let s = Mxfp8Shape { rows: 3, k: 128, x_stride: 1 << 63, q_stride: 1 << 63 };
        assert!(deq(s, RM, dense(128, 128, 12)).contains("x_stride=9223372036854775808 exceeds 576460752303423487"));
        // One row never multiplies the stride, but the kernel and the vector check still do.
        let s = Mxfp8Shape { rows: 1, k: 128, x_stride: 1 << 63, q_stride: 128 };
        assert!(deq(s, RM, dense(128, 128, 4)).contains("x_stride=9223372036854775808 exceeds"));
        let s = Mxfp8Shape { rows: 1, k: 128, x_stride: 128, q_stride: 1 << 62 };
        assert!(deq(s, RM, dense(128, 128, 4)).contains("q_stride=4611686018427387904 exceeds"));
        // 2^20 rows × 2^49 columns: the extents and the scale bytes wrapped to 0.
        let r = deq(Mxfp8Shape::contiguous(1 << 20, 1 << 49), RM, dense(0, 0, 0));
        assert!(
            r.contains("(rows-1)*x_stride+k=590295810358705651712 exceeds 576460752303423487")
                && r.contains("rows=1048576, x_stride=562949953421312, k=562949953421312"),
            "{r}"
        );
        let s = Mxfp8Shape { rows: 1 << 20, k: 128, x_stride: 128, q_stride: 1 << 49 };
        assert!(deq(s, RM, dense(usize::MAX, 0, 0)).contains("(rows-1)*q_stride+k=590295247408752230528 exceeds"));
        // No overflow of usize, but past the kernels' 64-bit offsets.
        let r = deq(Mxfp8Shape::contiguous(1 << 11, 1 << 49), RM, dense(usize::MAX, usize::MAX, usize::MAX));
        assert!(r.contains("(rows-1)*x_stride+k=1152921504606846976 exceeds"), "{r}");
        let r = deq(Mxfp8Shape::contiguous(1, 1 << 58), BLK, dense(usize::MAX, usize::MAX, usize::MAX));
        assert!(r.contains("scale bytes padded_rows(rows)*k/32=1152921504606846976 exceed 576460752303423487"), "{r}");
        let g = Lens { x: 512, q: 512, scales: 1 << 62, experts: Some([2; 3]) };
        assert!(deq(Mxfp8Shape::contiguous(4, 128), RM, g).contains("scales.len()=4611686018427387904 exceeds 576460752303423487"));
        // The largest stride is accepted, and its byte stride does not overflow in `vector_ok`.
        let s = Mxfp8Shape { rows: 1, k: 128, x_stride: MAX_EXTENT, q_stride: MAX_EXTENT };
        let p = plan(Dir::Dequantize, DtypeId::F32, s, RM, dense(128, 128, 4)).unwrap().unwrap();
        assert!(!vector_ok(&p, 256, 256), "(2^59 - 1)·4 bytes is no multiple of 16");
    }

    #[test]
    fn allocated_outputs_that_overflow_are_errors() {
        assert_eq!(dense_output_lens(300, 256, BLK).unwrap(), (300 * 256, 384 * 8));
        let r = |x: Result<(usize, usize)>| reason(x.map(|_| None));
        assert!(
            r(dense_output_lens(1 << 20, 1 << 49, RM))
                .contains("q.len()=rows*k=590295810358705651712 overflows usize (rows=1048576, k=562949953421312)")
        );
        assert!(
            r(dense_output_lens(1, 1 << 62, BLK))
                .contains("scales.len()=padded_rows(rows)*k/32=18446744073709551616 overflows usize (rows=1, k=4611686018427387904")
        );
    }

    #[test]
    fn vector_path_needs_alignment() {
        let s = Mxfp8Shape::contiguous(4, 128);
        let p = plan(Dir::Quantize, DtypeId::Bf16, s, BLK, dense(512, 512, 512)).unwrap().unwrap();
        assert!(vector_ok(&p, 256, 256));
        assert!(!vector_ok(&p, 258, 256), "x not 16-byte aligned");
        assert!(!vector_ok(&p, 256, 260), "q not 8-byte aligned");
        let p = Plan { shape: Mxfp8Shape { x_stride: 132, ..s }, ..p };
        assert!(!vector_ok(&p, 256, 256), "x rows not 16-byte multiples");
        let p = Plan { shape: Mxfp8Shape { q_stride: 132, ..s }, ..p };
        assert!(!vector_ok(&p, 256, 256), "q rows not 8-byte multiples");
        // Dequantization to f32: 16-byte output rows need x_stride % 4 == 0.
        let p = plan(Dir::Dequantize, DtypeId::F32, Mxfp8Shape { x_stride: 130, ..s }, RM, dense(1024, 512, 16)).unwrap().unwrap();
        assert!(!vector_ok(&p, 256, 256));
        let p = plan(Dir::Dequantize, DtypeId::F32, Mxfp8Shape { x_stride: 132, ..s }, RM, dense(1024, 512, 16)).unwrap().unwrap();
        assert!(vector_ok(&p, 256, 256));
    }

    #[test]
    fn spec_table_is_indexed_consistently() {
        let mut seen = std::collections::HashSet::new();
        for dir in DIRS {
            for &dt in dir.dtypes() {
                for vec in [true, false] {
                    for pdl in [false, true] {
                        let i = spec_index(dir, dt, vec, pdl);
                        assert!(seen.insert(i));
                        assert_eq!(SPECS[i].name(), spec(dir, dt, vec, pdl).name());
                        assert_eq!(SPECS[i].is_pdl(), pdl);
                    }
                }
            }
        }
        assert_eq!(seen.len(), SPECS.len());
        assert_eq!(SPECS[spec_index(Dir::Quantize, DtypeId::Bf16, true, true)].expr(), "mxfp8_quantize<__nv_bfloat16, true, true>");
    }
}
