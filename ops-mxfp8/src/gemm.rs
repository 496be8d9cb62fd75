//! The grouped MXFP8 GEMM of MoE layers: the typed API, its validation (a pure function, tested
//! without a GPU), the kernel choice and the kernel specs.

use std::sync::LazyLock;

use kiln_runtime::cudarc::driver::{DevicePtr, DevicePtrMut};
use kiln_runtime::{
    Arch, Dtype, DtypeId, E4m3, E8m0, Error, FastMath, Header, KernelSource, KernelSpec, MathPolicy, PRELUDE, Result, Runtime, Targets,
    ensure, template_expr,
};

use crate::checked_len;
use crate::ffi_gemm::{self, GemmPtrs};
use crate::layout::{ATOM_ROWS, BLOCK};
use crate::quant::{Experts, HEADERS, MAX_EXPERTS};

const OP: &str = "grouped_gemm_mxfp8";

/// The GEMM's own device header (`#include <mxfp8/gemm_common.cuh>`).
const GEMM_HEADERS: &[Header] = &[Header { name: "mxfp8/gemm_common.cuh", text: include_str!("../cuda/gemm_common.cuh") }];

static MMA_SOURCE: KernelSource =
    KernelSource { name: "mxfp8_gemm_sm90.cuh", text: include_str!("../cuda/gemm_sm90.cuh"), headers: &[PRELUDE, HEADERS, GEMM_HEADERS] };
static WGMMA_SOURCE: KernelSource = KernelSource {
    name: "mxfp8_gemm_sm90_wgmma.cuh",
    text: include_str!("../cuda/gemm_sm90_wgmma.cuh"),
    headers: &[PRELUDE, HEADERS, GEMM_HEADERS],
};
static SM100_SOURCE: KernelSource =
    KernelSource { name: "mxfp8_gemm_sm100.cuh", text: include_str!("../cuda/gemm_sm100.cuh"), headers: &[PRELUDE, HEADERS, GEMM_HEADERS] };

/// Tokens per expert (on average, `rows / experts`) up to which the decode kernels (swap-AB, 64
/// tokens per tile: each weight tile is streamed once per expert) are chosen over the prefill
/// kernels (128 tokens per tile, twice the tensor work per weight byte).
pub const DECODE_MAX_TOKENS_PER_EXPERT: usize = 64;

/// Size in bytes of `GemmArgs` (`gemm_common.cuh`), the parameter of the mma.sync kernels.
pub(crate) const ARGS_BYTES: usize = 96;
/// Size in bytes of `TmaParams` (two 128-byte tensor maps and `GemmArgs`, 128-byte aligned).
pub(crate) const TMA_PARAMS_BYTES: usize = 384;

/// Output element types of the GEMM: `half::bf16` and `half::f16`.
pub trait GemmOutput: Dtype + sealed::Sealed {}
impl GemmOutput for half::bf16 {}
impl GemmOutput for half::f16 {}
mod sealed {
    pub trait Sealed {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// One MXFP8 operand on the device: E4M3 elements and their E8M0 scales in the 128×4 blocked
/// layout ([`crate::ScaleLayout::Blocked128x4`]).
#[derive(Debug, Clone, Copy)]
pub struct Mxfp8Operand<'a, Q, S> {
    /// The elements, row-major with K contiguous.
    pub data: &'a Q,
    /// The scales, one byte per 32 elements of a row.
    pub scales: &'a S,
}

/// Shape of a grouped GEMM call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupedGemmShape {
    /// Experts E: the weights are `[E, N, K]` and each metadata buffer holds E int32.
    pub experts: usize,
    /// Output features N (a multiple of 128).
    pub n: usize,
    /// Reduction length K (a multiple of 128).
    pub k: usize,
    /// Token rows T of `tokens` (`[T, K]`) and `out` (`[T, N]`).
    pub rows: usize,
}

/// A kernel of the grouped GEMM (for tests and benchmarks that pin one; [`grouped_gemm_mxfp8`]
/// chooses by architecture and tokens per expert).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GemmKernel {
    /// sm_90, mma.sync, 128 tokens × 128 weights per tile.
    MmaPrefill,
    /// sm_90, mma.sync swap-AB, 128 weights × 64 tokens per tile.
    MmaDecode,
    /// sm_90a, wgmma + TMA, 128 tokens × 128 weights per tile.
    WgmmaPrefill,
    /// sm_90a, wgmma + TMA swap-AB, 128 weights × 64 tokens per tile.
    WgmmaDecode,
    /// sm_100a, tcgen05 block-scaled MMA, 128 weights × 128 tokens per tile (never run on hardware).
    Sm100,
}

impl GemmKernel {
    /// Every kernel, in spec-table order.
    pub const ALL: [GemmKernel; 5] =
        [GemmKernel::MmaPrefill, GemmKernel::MmaDecode, GemmKernel::WgmmaPrefill, GemmKernel::WgmmaDecode, GemmKernel::Sm100];

    /// Name fragment of the spec.
    pub const fn tag(self) -> &'static str {
        match self {
            GemmKernel::MmaPrefill => "mma_prefill",
            GemmKernel::MmaDecode => "mma_decode",
            GemmKernel::WgmmaPrefill => "wgmma_prefill",
            GemmKernel::WgmmaDecode => "wgmma_decode",
            GemmKernel::Sm100 => "sm100",
        }
    }

    /// Token rows per tile (`kBT`).
    pub(crate) const fn token_tile(self) -> usize {
        match self {
            GemmKernel::MmaDecode | GemmKernel::WgmmaDecode => 64,
            _ => 128,
        }
    }

    /// Pipeline depth (`kStages`).
    const fn stages(self) -> usize {
        match self {
            GemmKernel::MmaPrefill | GemmKernel::MmaDecode | GemmKernel::Sm100 => 4,
            GemmKernel::WgmmaPrefill => 5,
            GemmKernel::WgmmaDecode => 6,
        }
    }

    /// Threads per CTA.
    pub(crate) const fn threads(self) -> u32 {
        match self {
            GemmKernel::MmaPrefill | GemmKernel::MmaDecode => 256,
            GemmKernel::WgmmaPrefill | GemmKernel::WgmmaDecode => 384,
            GemmKernel::Sm100 => 192,
        }
    }

    /// Whether the kernel reads its tiles with TMA (and takes `TmaParams`).
    pub(crate) const fn uses_tma(self) -> bool {
        !matches!(self, GemmKernel::MmaPrefill | GemmKernel::MmaDecode)
    }

    /// Dynamic shared memory for `experts` experts: the formulas of `mma_smem_bytes`,
    /// `wg_smem_bytes` and `sm100_smem_bytes` in the `.cuh` files (each kernel traps when it gets
    /// less than its own formula says).
    pub(crate) const fn smem_bytes(self, experts: usize) -> usize {
        let (stages, bt, table) = (self.stages(), self.token_tile(), 24 * experts);
        match self {
            GemmKernel::MmaPrefill | GemmKernel::MmaDecode => {
                let rows = 128 + bt;
                stages * (rows * 128 + 1024) + 16 * rows + table
            }
            GemmKernel::WgmmaPrefill | GemmKernel::WgmmaDecode => {
                let rows = 128 + bt;
                1024 + stages * (rows * 128 + 1024 + 16 * rows) + (24 * stages).div_ceil(16) * 16 + table
            }
            GemmKernel::Sm100 => 1024 + stages * (256 * 128 + 1024) + ((2 * stages + 2) * 8).div_ceil(16) * 16 + 16 + table,
        }
    }

    /// Where it runs.
    const fn targets(self) -> Targets {
        match self {
            GemmKernel::Sm100 => Targets::Major(10),
            _ => Targets::Major(9),
        }
    }

    const fn arch_specific(self) -> bool {
        !matches!(self, GemmKernel::MmaPrefill | GemmKernel::MmaDecode)
    }

    fn expr(self, dt: DtypeId, pdl: bool) -> String {
        let (name, swap) = match self {
            GemmKernel::MmaPrefill => ("mxfp8::gemm::mxfp8_grouped_gemm_mma", false),
            GemmKernel::MmaDecode => ("mxfp8::gemm::mxfp8_grouped_gemm_mma", true),
            GemmKernel::WgmmaPrefill => ("mxfp8::gemm::mxfp8_grouped_gemm_wgmma", false),
            GemmKernel::WgmmaDecode => ("mxfp8::gemm::mxfp8_grouped_gemm_wgmma", true),
            GemmKernel::Sm100 => ("mxfp8::gemm::mxfp8_grouped_gemm_sm100", true),
        };
        if self == GemmKernel::Sm100 {
            template_expr(name, &[dt.into(), self.stages().into(), pdl.into()])
        } else {
            template_expr(name, &[dt.into(), swap.into(), self.token_tile().into(), self.stages().into(), pdl.into()])
        }
    }

    fn source(self) -> &'static KernelSource {
        match self {
            GemmKernel::MmaPrefill | GemmKernel::MmaDecode => &MMA_SOURCE,
            GemmKernel::WgmmaPrefill | GemmKernel::WgmmaDecode => &WGMMA_SOURCE,
            GemmKernel::Sm100 => &SM100_SOURCE,
        }
    }

    /// Whether the kernel can run on a device of this architecture.
    pub fn runs_on(self, arch: Arch) -> bool {
        self.targets().allows(arch.for_kernel(self.arch_specific()))
    }
}

const DTYPES: [DtypeId; 2] = [DtypeId::Bf16, DtypeId::F16];

fn spec(kernel: GemmKernel, dt: DtypeId, pdl: bool) -> KernelSpec {
    let name = format!("{OP}__{}__{}{}", dt.tag(), kernel.tag(), if pdl { "__pdl" } else { "" });
    // Precise math: the 2^-127 scale and scale products below 2^-126 stay subnormal instead of
    // flushing to zero; the FFMA/FMUL of the promotion run at full rate either way.
    KernelSpec::new(name, kernel.source(), kernel.expr(dt, pdl))
        .pdl(pdl)
        .math(MathPolicy::Fixed(FastMath::PRECISE))
        .arch_specific(kernel.arch_specific())
        .targets(kernel.targets())
        .dynamic_smem(kernel.smem_bytes(MAX_EXPERTS) as u32)
}

/// Every spec of the GEMM, in the order [`spec_index`] computes.
pub(crate) static SPECS: LazyLock<Vec<KernelSpec>> = LazyLock::new(|| {
    let mut v = Vec::new();
    for kernel in GemmKernel::ALL {
        for dt in DTYPES {
            for pdl in [false, true] {
                v.push(spec(kernel, dt, pdl));
            }
        }
    }
    v
});

pub(crate) fn spec_index(kernel: GemmKernel, dt: DtypeId, pdl: bool) -> usize {
    let k = GemmKernel::ALL.iter().position(|&x| x == kernel).expect("every kernel is in ALL");
    let d = DTYPES.iter().position(|&x| x == dt).expect("dtype validated before the lookup");
    k * 4 + d * 2 + usize::from(pdl)
}

/// The `.param` size of a GEMM spec's kernel, if `spec` is one.
pub(crate) fn params_bytes(spec: &KernelSpec) -> Option<usize> {
    let fp = spec.fingerprint();
    let i = SPECS.iter().position(|s| s.fingerprint() == fp)?;
    Some(if GemmKernel::ALL[i / 4].uses_tma() { TMA_PARAMS_BYTES } else { ARGS_BYTES })
}

/// Workspace bytes a call of this shape needs. The current kernels need none (0), but callers
/// should size the workspace with this query: later kernels (e.g. split-K for a single hot expert)
/// will use it, and a call checks `workspace.len() >= grouped_gemm_workspace_size(shape)`.
pub fn grouped_gemm_workspace_size(shape: &GroupedGemmShape) -> usize {
    let _ = shape;
    0
}

/// Lengths (in elements) of the buffers of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GemmLens {
    pub weights: usize,
    pub weight_scales: usize,
    pub tokens: usize,
    pub token_scales: usize,
    /// `[expert_offsets, tokens_per_expert, blockscale_offsets]`.
    pub meta: [usize; 3],
    pub out: usize,
    pub workspace: usize,
}

/// Device addresses of one call (alignment checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct GemmAddrs {
    pub weights: u64,
    pub weight_scales: u64,
    pub tokens: u64,
    pub token_scales: u64,
    pub out: u64,
}

/// A validated call: everything the launch needs but the pointers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GemmPlan {
    pub kernel: GemmKernel,
    pub dtype: DtypeId,
    pub shape: GroupedGemmShape,
    pub scale_rows: usize,
    pub smem: u32,
}

/// Chooses the kernel for a device: the wgmma kernels on compute capability 9.x (decode when the
/// average tokens per expert is at most [`DECODE_MAX_TOKENS_PER_EXPERT`]), the tcgen05 kernel on
/// 10.x, an error elsewhere; a pinned kernel must run on the device.
pub(crate) fn choose(arch: Arch, shape: &GroupedGemmShape, pinned: Option<GemmKernel>) -> Result<GemmKernel> {
    if let Some(k) = pinned {
        if !k.runs_on(arch) {
            return Err(Error::UnsupportedArch { arch, reason: format!("{OP}: kernel {} does not run on this device", k.tag()) });
        }
        return Ok(k);
    }
    match arch.major {
        9 => Ok(if shape.rows <= DECODE_MAX_TOKENS_PER_EXPERT.saturating_mul(shape.experts) {
            GemmKernel::WgmmaDecode
        } else {
            GemmKernel::WgmmaPrefill
        }),
        10 => Ok(GemmKernel::Sm100),
        _ => Err(Error::UnsupportedArch {
            arch,
            reason: format!("{OP} has kernels for compute capability 9.x (Hopper, wgmma) and 10.x (Blackwell, tcgen05) only"),
        }),
    }
}

/// Validates a call. `Ok(None)`: nothing to do (no launch).
pub(crate) fn plan(
    dtype: DtypeId,
    shape: GroupedGemmShape,
    lens: GemmLens,
    addrs: GemmAddrs,
    arch: Arch,
    pinned: Option<GemmKernel>,
) -> Result<Option<GemmPlan>> {
    let GroupedGemmShape { experts, n, k, rows } = shape;
    ensure!(DTYPES.contains(&dtype), OP, "unsupported output dtype {dtype}: the GEMM writes bf16 or f16");
    ensure!(k > 0 && k % 128 == 0, OP, "k={k} is not a positive multiple of 128 (four 32-element scale blocks per 128×4 atom)");
    ensure!(k <= i32::MAX as usize, OP, "k={k} exceeds i32::MAX (the kernels take K as int32)");
    ensure!(n > 0 && n % 128 == 0, OP, "n={n} is not a positive multiple of 128 (the weight tile and the weight scale atoms)");
    ensure!(experts >= 1, OP, "experts=0: the weights hold at least one expert");
    ensure!(experts <= MAX_EXPERTS, OP, "experts={experts} exceeds {MAX_EXPERTS} (the per-CTA expert table of the tile scheduler)");
    ensure!(
        experts.checked_mul(n).is_some_and(|v| v <= i32::MAX as usize),
        OP,
        "experts*n={} exceeds i32::MAX (TMA row coordinates)",
        experts as u128 * n as u128
    );
    ensure!(rows <= i32::MAX as usize, OP, "rows={rows} exceeds i32::MAX (expert offsets are int32)");
    let nkb = k / BLOCK;
    let wn = checked_len(OP, "experts*n*k", &[("experts", experts), ("n", n), ("k", k)])?;
    ensure!(lens.weights == wn, OP, "weights.len()={} != experts*n*k={wn} (experts={experts}, n={n}, k={k})", lens.weights);
    let wsn = checked_len(OP, "experts*n*k/32", &[("experts", experts), ("n", n), ("k/32", nkb)])?;
    ensure!(
        lens.weight_scales == wsn,
        OP,
        "weight_scales.len()={} != experts*n*k/32={wsn} (experts={experts}, n={n}, k={k})",
        lens.weight_scales
    );
    let tn = checked_len(OP, "rows*k", &[("rows", rows), ("k", k)])?;
    ensure!(lens.tokens == tn, OP, "tokens.len()={} != rows*k={tn} (rows={rows}, k={k})", lens.tokens);
    let on = checked_len(OP, "rows*n", &[("rows", rows), ("n", n)])?;
    ensure!(lens.out == on, OP, "out.len()={} != rows*n={on} (rows={rows}, n={n})", lens.out);
    let group = ATOM_ROWS * nkb;
    ensure!(
        lens.token_scales.is_multiple_of(group),
        OP,
        "token_scales.len()={} is not a whole number of 128-row scale groups of {group} bytes (k/32={nkb})",
        lens.token_scales
    );
    let scale_rows = lens.token_scales / nkb;
    ensure!(scale_rows <= i32::MAX as usize, OP, "token scale rows={scale_rows} exceed i32::MAX (blockscale offsets are int32)");
    let [no, nt, ns] = lens.meta;
    ensure!(
        no == experts && nt == experts && ns == experts,
        OP,
        "expert metadata lengths expert_offsets.len()={no}, tokens_per_expert.len()={nt}, blockscale_offsets.len()={ns} != experts={experts}"
    );
    let ws = grouped_gemm_workspace_size(&shape);
    ensure!(lens.workspace >= ws, OP, "workspace.len()={} < grouped_gemm_workspace_size()={ws}", lens.workspace);
    for (name, a) in
        [("weights", addrs.weights), ("weight_scales", addrs.weight_scales), ("tokens", addrs.tokens), ("token_scales", addrs.token_scales)]
    {
        ensure!(a.is_multiple_of(16), OP, "{name} at {a:#x} is not 16-byte aligned (16-byte asynchronous copies)");
    }
    ensure!(addrs.out.is_multiple_of(4), OP, "out at {:#x} is not 4-byte aligned (two outputs per store)", addrs.out);
    let kernel = choose(arch, &shape, pinned)?;
    if rows == 0 || scale_rows == 0 {
        return Ok(None);
    }
    Ok(Some(GemmPlan { kernel, dtype, shape, scale_rows, smem: kernel.smem_bytes(experts) as u32 }))
}

/// The grouped MXFP8 GEMM of an MoE layer, for every expert g and each of its token rows t
/// (`expert_offsets[g] ≤ t < expert_offsets[g] + tokens_per_expert[g]`):
///
/// `out[t, j] = RN( Σ_k e4m3(W[g, j, k]) · 2^(sw − 127) · e4m3(X[t, k]) · 2^(sx − 127) )`
///
/// with one E8M0 scale per 32 elements along K on both operands (`sw` from `weights.scales`,
/// `[E·N, K/32]` in the 128×4 layout; `sx` from `tokens.scales`, expert g's rows starting at scale
/// row `blockscale_offsets[g]`, the layout [`crate::quantize_mxfp8_grouped`] writes), fp32
/// accumulation and one rounding to `T` (bf16 or f16; f16 overflow gives ±inf). On Hopper each
/// 32-wide partial sum comes from the FP8 tensor cores and is scaled and added in fp32, in K order.
///
/// - Expert metadata stays on the device: no synchronisation; contents the host cannot see are
///   clamped as [`Experts`] describes (never an out-of-bounds access). Scale rows past an
///   expert's tokens (its padding to 128) are never used for stored outputs.
/// - Rows of `out` covered by no expert are **not written** (left as they are).
/// - `workspace` must hold [`grouped_gemm_workspace_size`] bytes; nothing is allocated per call.
/// - `rows == 0` (or an empty token-scale tensor) returns `Ok` without a launch; experts without
///   tokens cost nothing.
/// - Dispatch: compute capability 9.x runs the wgmma kernels (a swap-AB decode kernel when the
///   average tokens per expert is at most [`DECODE_MAX_TOKENS_PER_EXPERT`]); 10.x runs a tcgen05
///   block-scaled kernel that has **not yet run on hardware**; other devices get
///   [`Error::UnsupportedArch`].
///
/// Errors ([`Error::InvalidArgument`], naming the values): K or N not a positive multiple of
/// 128, K above `i32::MAX`, more than [`MAX_EXPERTS`] experts, buffer lengths inconsistent with E, N, K and `rows`,
/// token scales not a whole number of 128-row groups, metadata lengths ≠ E, a workspace that is
/// too small, misaligned pointers (16 bytes for the operands, 4 for `out`).
///
/// ```no_run
/// use kiln_mxfp8::{Experts, GroupedGemmShape, Mxfp8Operand, grouped_gemm_mxfp8, grouped_gemm_workspace_size, layout};
/// use kiln_runtime::{E4m3, E8m0, Runtime, half::bf16};
///
/// let rt = Runtime::new(0)?;
/// let s = rt.stream();
/// let (e, n, k, tokens) = (4usize, 4096usize, 7168usize, [3i32, 0, 130, 7]);
/// let rows: usize = tokens.iter().map(|&m| m as usize).sum();
/// let (bso, scale_rows) = layout::blockscale_offsets(&tokens, kiln_mxfp8::ScaleLayout::Blocked128x4)?;
/// // Weights and their scales (e.g. loaded from a checkpoint), tokens from quantize_mxfp8_grouped.
/// let w = s.alloc_zeros::<E4m3>(e * n * k).unwrap();
/// let ws = s.alloc_zeros::<E8m0>(e * n * k / 32).unwrap();
/// let x = s.alloc_zeros::<E4m3>(rows * k).unwrap();
/// let xs = s.alloc_zeros::<E8m0>(scale_rows * k / 32).unwrap();
/// let offsets = s.clone_htod(&layout::expert_offsets(&tokens)?).unwrap();
/// let counts = s.clone_htod(&tokens).unwrap();
/// let bso = s.clone_htod(&bso).unwrap();
/// let shape = GroupedGemmShape { experts: e, n, k, rows };
/// let mut workspace = s.alloc_zeros::<u8>(grouped_gemm_workspace_size(&shape).max(1)).unwrap();
/// let mut out = s.alloc_zeros::<bf16>(rows * n).unwrap();
/// grouped_gemm_mxfp8(
///     &rt,
///     Mxfp8Operand { data: &w, scales: &ws },
///     Mxfp8Operand { data: &x, scales: &xs },
///     Experts { expert_offsets: &offsets, tokens_per_expert: &counts, blockscale_offsets: &bso },
///     &mut out,
///     &mut workspace,
///     shape,
/// )?;
/// # Ok::<(), kiln_runtime::Error>(())
/// ```
pub fn grouped_gemm_mxfp8<T, M, WQ, WS, XQ, XS>(
    rt: &Runtime,
    weights: Mxfp8Operand<'_, WQ, WS>,
    tokens: Mxfp8Operand<'_, XQ, XS>,
    experts: Experts<'_, M>,
    out: &mut impl DevicePtrMut<T>,
    workspace: &mut impl DevicePtrMut<u8>,
    shape: GroupedGemmShape,
) -> Result<()>
where
    T: GemmOutput,
    M: DevicePtr<i32>,
    WQ: DevicePtr<E4m3>,
    WS: DevicePtr<E8m0>,
    XQ: DevicePtr<E4m3>,
    XS: DevicePtr<E8m0>,
{
    grouped_gemm_mxfp8_with(rt, weights, tokens, experts, out, workspace, shape, None)
}

/// [`grouped_gemm_mxfp8`] with a pinned kernel (`None`: the automatic choice).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn grouped_gemm_mxfp8_with<T, M, WQ, WS, XQ, XS>(
    rt: &Runtime,
    weights: Mxfp8Operand<'_, WQ, WS>,
    tokens: Mxfp8Operand<'_, XQ, XS>,
    experts: Experts<'_, M>,
    out: &mut impl DevicePtrMut<T>,
    workspace: &mut impl DevicePtrMut<u8>,
    shape: GroupedGemmShape,
    kernel: Option<GemmKernel>,
) -> Result<()>
where
    T: GemmOutput,
    M: DevicePtr<i32>,
    WQ: DevicePtr<E4m3>,
    WS: DevicePtr<E8m0>,
    XQ: DevicePtr<E4m3>,
    XS: DevicePtr<E8m0>,
{
    rt.check_context(OP, "weights.data", weights.data)?;
    rt.check_context(OP, "weights.scales", weights.scales)?;
    rt.check_context(OP, "tokens.data", tokens.data)?;
    rt.check_context(OP, "tokens.scales", tokens.scales)?;
    rt.check_context(OP, "out", &*out)?;
    rt.check_context(OP, "workspace", &*workspace)?;
    crate::ffi::check_meta_contexts(rt, OP, Some(&experts))?;
    let st = rt.stream();
    let (wq, _g0) = weights.data.device_ptr(st);
    let (ws, _g1) = weights.scales.device_ptr(st);
    let (xq, _g2) = tokens.data.device_ptr(st);
    let (xs, _g3) = tokens.scales.device_ptr(st);
    let (eo, _g4) = experts.expert_offsets.device_ptr(st);
    let (tp, _g5) = experts.tokens_per_expert.device_ptr(st);
    let (bo, _g6) = experts.blockscale_offsets.device_ptr(st);
    let lens = GemmLens {
        weights: weights.data.len(),
        weight_scales: weights.scales.len(),
        tokens: tokens.data.len(),
        token_scales: tokens.scales.len(),
        meta: [experts.expert_offsets.len(), experts.tokens_per_expert.len(), experts.blockscale_offsets.len()],
        out: out.len(),
        workspace: workspace.len(),
    };
    let (o, _g7) = out.device_ptr_mut(st);
    let (_ws, _g8) = workspace.device_ptr_mut(st);
    let addrs = GemmAddrs { weights: wq, weight_scales: ws, tokens: xq, token_scales: xs, out: o };
    match plan(T::ID, shape, lens, addrs, rt.arch(), kernel)? {
        Some(p) => {
            let ptrs = GemmPtrs { weights: wq, weight_scales: ws, tokens: xq, token_scales: xs, meta: [eo, tp, bo], out: o };
            ffi_gemm::launch(rt, &p, &ptrs)
        }
        None => Ok(()),
    }
}

/// The kernel [`grouped_gemm_mxfp8`] would run for this shape on this runtime's device.
#[doc(hidden)]
pub fn grouped_gemm_kernel(rt: &Runtime, shape: &GroupedGemmShape) -> Result<GemmKernel> {
    choose(rt.arch(), shape, None)
}

#[cfg(test)]
mod tests;
