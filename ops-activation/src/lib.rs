//! # kiln-activation
//!
//! Gated activations of LLM MLP and MoE layers, `out[r, i] = act(x[r, i]) · x[r, d + i]` for an
//! input of `rows × 2d` and an output of `rows × d`, with `act` ∈ {SiLU, GELU (erf), GELU (tanh)},
//! for `f16`, `bf16` and `f32`, at memory speed.
//!
//! - Any `d ≥ 1`; rows may be strided (slices of larger buffers). Aligned pointers, strides and
//!   `d` take a 16-byte vector path, anything else a scalar path with identical results.
//! - Rounding: by default `RN_T(act_f32(g) · u_f32)` (one rounding, arch-default fast math);
//!   [`Rounding::Activation`] (the `…_with_activation_rounding` functions) computes
//!   `RN_T(f32(RN_T(act(g))) · u)` in IEEE arithmetic with PyTorch eager's operation order, i.e.
//!   `F.silu(g).to(T) * u`.
//! - Row filters ([`Options::expert_filter`], [`Options::sorted_filter`]): a skipped row is neither
//!   read nor written, so its output keeps whatever it held. Ids are read after the PDL wait, or
//!   before it where the caller vouches that they are final ([`Options::ids_before_wait`]). In
//!   the default form the first wave of blocks still peeks at the ids before the wait, but only
//!   to prefetch the rows they seem to keep into L2: what is computed depends on the ids read
//!   after the wait alone, so a predecessor that writes them is safe. Large filtered launches
//!   take several rows per block and find the kept ones with one read of their ids per warp, so
//!   skipped rows cost almost nothing.
//! - SiLU clamp ([`Options::clamp_limit`], gpt-oss style): gate clamped above, up to `±limit`.
//! - Everything is checked before a launch ([`kiln_runtime::Error::InvalidArgument`] naming the
//!   values); `rows == 0` or `d == 0` launches nothing. Work is stream-ordered on
//!   [`Runtime::stream`]; nothing synchronises.
//!
//! ```no_run
//! use kiln_activation::{Activation, Options, Shape, act_and_mul_with, silu_and_mul};
//! use kiln_runtime::Runtime;
//! use kiln_runtime::half::bf16;
//!
//! let rt = Runtime::new(0)?;
//! rt.preload(&kiln_activation::kernel_specs())?; // before any CUDA-graph capture
//! let (rows, d) = (128, 4096);
//! let x = rt.stream().clone_htod(&vec![bf16::from_f32(0.5); rows * 2 * d]).unwrap();
//! let mut y = rt.stream().alloc_zeros::<bf16>(rows * d).unwrap();
//! silu_and_mul(&rt, &x, &mut y, rows, d)?;
//!
//! // MoE: skip the rows whose expert id is -1.
//! let ids = rt.stream().clone_htod(&vec![0i32; rows]).unwrap();
//! let opts = Options::new().expert_filter(&ids, 1);
//! act_and_mul_with(&rt, Activation::Silu, &x, &mut y, Shape::contiguous(rows, d), &opts)?;
//! // The ids were written before the kernel that precedes this call: read them before the wait.
//! let early = opts.ids_before_wait();
//! act_and_mul_with(&rt, Activation::Silu, &x, &mut y, Shape::contiguous(rows, d), &early)?;
//! # Ok::<(), kiln_runtime::Error>(())
//! ```

#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod ffi;
mod plan;
pub mod reference;

use std::sync::LazyLock;

use plan::{Request, mul, validate};

use kiln_runtime::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceSlice};
use kiln_runtime::half::{bf16, f16};
use kiln_runtime::{
    Dtype, DtypeId, Error, FastMath, KernelSource, KernelSpec, MathPolicy, PRELUDE, Result, Runtime, TemplateArg, ensure, template_expr,
};

/// The kernel source (`cuda/activation.cuh`) and the prelude it includes.
static SOURCE: KernelSource = KernelSource { name: "activation.cuh", text: include_str!("../cuda/activation.cuh"), headers: &[PRELUDE] };

/// Widest row: column blocks are `gridDim.x` (< 2^31).
pub const MAX_D: usize = i32::MAX as usize;
/// Most rows: row blocks are spread over `gridDim.y·gridDim.z` (65535 each), and the kernel
/// indexes ids by a 32-bit row.
pub const MAX_ROWS: usize = i32::MAX as usize;

/// The gated activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `g / (1 + exp(-g))`.
    Silu,
    /// `g · ½(1 + erf(g/√2))`.
    Gelu,
    /// `g · ½(1 + tanh(√(2/π)(g + 0.044715 g³)))`.
    GeluTanh,
}

impl Activation {
    /// All three, in template-argument order.
    pub const ALL: [Activation; 3] = [Activation::Silu, Activation::Gelu, Activation::GeluTanh];

    /// `silu` / `gelu` / `gelu_tanh`.
    pub const fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
        }
    }

    /// The op name used in errors, spec names and benchmarks: `silu_and_mul`, ….
    pub const fn op(self) -> &'static str {
        match self {
            Activation::Silu => "silu_and_mul",
            Activation::Gelu => "gelu_and_mul",
            Activation::GeluTanh => "gelu_tanh_and_mul",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Where the result is rounded to the storage type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Rounding {
    /// `RN_T(act(g) · u)`: one rounding, arch-default fast math (SGLang's and FlashInfer's rule).
    #[default]
    Once,
    /// `RN_T(f32(RN_T(act(g))) · u)` with IEEE arithmetic: PyTorch eager `F.act(g).to(T) * u`.
    Activation,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::f16 {}
    impl Sealed for super::bf16 {}
    impl Sealed for f32 {}
}

/// The element types the activation kernels support: `f16`, `bf16`, `f32`.
pub trait Float: Dtype + sealed::Sealed + PartialEq + PartialOrd + std::fmt::Debug {
    /// Exact widening.
    fn to_f32(self) -> f32;
    /// Round to nearest, ties to even (the kernels' `from_f32`).
    fn from_f32(x: f32) -> Self;
}

impl Float for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}
impl Float for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}
impl Float for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

/// Rows, output width and row strides (in elements) of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Rows.
    pub rows: usize,
    /// Output width; the input row holds the gate `[0, d)` and the up projection `[d, 2d)`.
    pub d: usize,
    /// Elements from one input row to the next (≥ 2d).
    pub in_row_stride: usize,
    /// Elements from one output row to the next (≥ d).
    pub out_row_stride: usize,
}

impl Shape {
    /// Packed rows: strides `2d` and `d` (saturating: a `d` whose `2d` overflows is then rejected
    /// by the op's validation like any other impossible shape).
    pub const fn contiguous(rows: usize, d: usize) -> Shape {
        Shape { rows, d, in_row_stride: d.saturating_mul(2), out_row_stride: d }
    }

    /// Explicit strides (views into larger buffers).
    pub const fn strided(rows: usize, d: usize, in_row_stride: usize, out_row_stride: usize) -> Shape {
        Shape { rows, d, in_row_stride, out_row_stride }
    }
}

/// The expert filter: row `r` is skipped iff `expert_ids[r / expert_step] == -1`.
#[derive(Clone, Copy)]
struct ExpertFilter<'a> {
    ids: &'a dyn DevicePtr<i32>,
    step: usize,
}

/// The sorted (block-aligned MoE) filter: row `r` is skipped iff `r >= num_tokens_post_padded[0]`
/// or `sorted_token_ids[r] >= num_valid_tokens`.
#[derive(Clone, Copy)]
struct SortedFilter<'a> {
    sorted_token_ids: &'a dyn DevicePtr<i32>,
    num_tokens_post_padded: &'a dyn DevicePtr<i32>,
    num_valid_tokens: usize,
}

/// Optional behaviour of [`act_and_mul_with`]: rounding, row filters, SiLU clamp.
#[derive(Clone, Copy, Default)]
pub struct Options<'a> {
    rounding: Rounding,
    expert: Option<ExpertFilter<'a>>,
    sorted: Option<SortedFilter<'a>>,
    clamp_limit: Option<f32>,
    filter_tile: Option<usize>,
    ids_before_wait: bool,
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("rounding", &self.rounding)
            .field("expert_ids_len", &self.expert.map(|e| e.ids.len()))
            .field("expert_step", &self.expert.map(|e| e.step))
            .field("sorted_token_ids_len", &self.sorted.map(|s| s.sorted_token_ids.len()))
            .field("num_valid_tokens", &self.sorted.map(|s| s.num_valid_tokens))
            .field("clamp_limit", &self.clamp_limit)
            .field("filter_tile", &self.filter_tile)
            .field("ids_before_wait", &self.ids_before_wait)
            .finish()
    }
}

impl<'a> Options<'a> {
    /// Defaults: [`Rounding::Once`], no filter, no clamp.
    pub fn new() -> Self {
        Self::default()
    }

    /// Chooses the rounding.
    pub fn rounding(mut self, rounding: Rounding) -> Self {
        self.rounding = rounding;
        self
    }

    /// Skips row `r` (no load, no store) iff `expert_ids[r / expert_step] == -1`; other values,
    /// negative ones included, compute. Needs `expert_ids.len() · expert_step ≥ rows` and
    /// `expert_step ≥ 1`. `expert_step` is 1 for per-(token, k) routing and the block size for
    /// block-aligned (sorted) MoE layouts.
    pub fn expert_filter(mut self, expert_ids: &'a dyn DevicePtr<i32>, expert_step: usize) -> Self {
        self.expert = Some(ExpertFilter { ids: expert_ids, step: expert_step });
        self
    }

    /// Also skips row `r` iff `r >= num_tokens_post_padded[0]` (a device scalar) or
    /// `sorted_token_ids[r] >= num_valid_tokens` (padding). Needs `sorted_token_ids.len() ≥ rows`
    /// and `num_valid_tokens ≤ i32::MAX`. Usually combined with [`Options::expert_filter`].
    pub fn sorted_filter(
        mut self,
        sorted_token_ids: &'a dyn DevicePtr<i32>,
        num_tokens_post_padded: &'a dyn DevicePtr<i32>,
        num_valid_tokens: usize,
    ) -> Self {
        self.sorted = Some(SortedFilter { sorted_token_ids, num_tokens_post_padded, num_valid_tokens });
        self
    }

    /// SiLU only: `g = min(g, L)`, `u = clamp(u, -L, L)` before the activation, with
    /// `L = RN_T(limit)`; NaN propagates (as `torch.clamp`). `limit` must be finite and > 0.
    pub fn clamp_limit(mut self, limit: f32) -> Self {
        self.clamp_limit = Some(limit);
        self
    }

    /// Lets a filtered call read `expert_ids`, `sorted_token_ids` and `num_tokens_post_padded`
    /// before its PDL wait, i.e. while the kernel before it on the stream may still run (as
    /// SGLang always does), and prefetch the kept rows of the first wave of blocks into L2
    /// meanwhile. Warps whose rows are all skipped then leave before the wait (except in the
    /// grid's first block, which always waits: the grid never completes, nor releases its own
    /// dependents, before the kernel before it has completed).
    ///
    /// Only correct when the writes of those ids are complete by the time this kernel may start:
    /// under PDL that is as soon as the preceding kernel on the stream releases its dependents.
    /// So the ids must not be written by that preceding kernel, and if they are written by work
    /// before it, that kernel must not release its dependents before its own PDL wait (kiln's
    /// kernels never do; kernels without PDL release them at exit). In a MoE layer the ids come
    /// from the routing / alignment kernels and the kernel before the activation is the
    /// up-projection GEMM. A broken promise can only compute or skip rows wrongly (no access out
    /// of bounds: every index is still checked). Without PDL, or on launches that cannot
    /// take the tiled kernel (scalar path, rows of at most 16 vectors, inputs under 64 KiB), the ids
    /// are read after the wait as usual (with the default form's prefetch hints on the vector
    /// path). No effect without a filter.
    pub fn ids_before_wait(mut self) -> Self {
        self.ids_before_wait = true;
        self
    }

    /// Filtered launches only, for tests and benchmarks: the rows per thread row of the tiled
    /// kernel (`1..=32`; 1 runs the general kernel, unless [`Options::ids_before_wait`]) instead
    /// of the size-based choice. Where the tiled kernel does not apply (scalar path, half
    /// vectors, rows of at most 16 vectors, no filter) it is ignored. The results are the same
    /// for every value.
    #[doc(hidden)]
    pub fn filter_tile(mut self, tile: usize) -> Self {
        self.filter_tile = Some(tile);
        self
    }

    fn filtered(&self) -> bool {
        self.expert.is_some() || self.sorted.is_some()
    }
}

/// The clamp limit the kernel uses for `limit` in type `T`: `f32(RN_T(limit))`.
pub fn effective_clamp_limit<T: Float>(limit: f32) -> f32 {
    T::from_f32(limit).to_f32()
}

// ---------------------------------------------------------------------------------------------
// Specs

const DTYPES: [DtypeId; 3] = [DtypeId::F16, DtypeId::Bf16, DtypeId::F32];

fn dtype_index(dt: DtypeId) -> usize {
    DTYPES.iter().position(|&d| d == dt).expect("Float is implemented for f16, bf16 and f32 only")
}

fn spec_index(dt: DtypeId, act: Activation, rounding: Rounding, pdl: bool) -> usize {
    ((dtype_index(dt) * 3 + act.index()) * 2 + (rounding == Rounding::Activation) as usize) * 2 + pdl as usize
}

fn make_spec(dt: DtypeId, act: Activation, rounding: Rounding, pdl: bool, tiled: bool) -> KernelSpec {
    let round = rounding == Rounding::Activation;
    let variant = match (round, pdl) {
        (false, false) => "",
        (false, true) => "__pdl",
        (true, false) => "__round",
        (true, true) => "__round_pdl",
    };
    let (kernel, tag) = if tiled { ("act_and_mul_tiled_kernel", "__tiled") } else { ("act_and_mul_kernel", "") };
    let expr = template_expr(kernel, &[dt.into(), TemplateArg::Int(act.index() as i64), round.into(), pdl.into()]);
    // The rounding form must reproduce PyTorch eager bit for bit: IEEE division, precise libm.
    let math = if round { MathPolicy::Fixed(FastMath::PRECISE) } else { MathPolicy::ArchDefault };
    KernelSpec::new(format!("{}__{}{tag}{variant}", act.op(), dt.tag()), &SOURCE, expr).pdl(pdl).math(math)
}

/// The kernel of unfiltered vector-path launches of silu / gelu_tanh in the default rounding on
/// 16-bit types, if `(dt, act, rounding)` has one: `act_and_mul_wide_kernel`, which computes the
/// denominators of a whole 16-byte unit before its divisions and has no filter code (see
/// activation.cuh). Its index in `SPECS`, after the 36 general kernels.
fn wide_index(dt: DtypeId, act: Activation, rounding: Rounding, pdl: bool) -> Option<usize> {
    let a = match act {
        Activation::Silu => 0,
        Activation::GeluTanh => 1,
        Activation::Gelu => return None,
    };
    let d = WIDE_DTYPES.iter().position(|&x| x == dt)?;
    (rounding == Rounding::Once).then_some(GENERAL_SPECS + (d * 2 + a) * 2 + pdl as usize)
}

/// The tiled kernel of filtered vector-path launches (`act_and_mul_tiled_kernel`, see
/// activation.cuh): its index in `SPECS`, after the general and the wide kernels.
fn tiled_index(dt: DtypeId, act: Activation, rounding: Rounding, pdl: bool) -> usize {
    GENERAL_SPECS + WIDE_SPECS + spec_index(dt, act, rounding, pdl)
}

/// The filtered kernel (`act_and_mul_filtered_kernel`: the general kernel's body with the flags
/// of a default-rounding PDL launch with the expert filter fixed, see activation.cuh) that
/// releases dependents once its loads are issued, right after the wait or once the filter keeps
/// the row ([`FILTERED_RELEASES`]): its index in `SPECS`, after the tiled kernels.
fn filtered_index(dt: DtypeId, act: Activation, release: usize) -> usize {
    2 * GENERAL_SPECS + WIDE_SPECS + (dtype_index(dt) * 3 + act.index()) * FILTERED_RELEASES.len() + release
}

/// Name suffixes of the filtered kernel's instantiations, in `kRelease` order (see
/// `plan::filtered_fixed`).
const FILTERED_RELEASES: [&str; 3] = ["", "_early", "_kept"];

/// Specs of the general kernel (dtype × activation × rounding × PDL); the wide ones follow, then
/// the tiled ones (as many as the general), then the filtered ones (dtype × activation × when
/// dependents are released).
const GENERAL_SPECS: usize = 36;
const WIDE_SPECS: usize = 8;
const WIDE_DTYPES: [DtypeId; 2] = [DtypeId::F16, DtypeId::Bf16];

/// The general kernel's settings in `spec_index` order (the tiled kernel's in `tiled_index` order).
fn general_keys() -> impl Iterator<Item = (DtypeId, Activation, Rounding, bool)> {
    DTYPES.into_iter().flat_map(|dt| {
        Activation::ALL.into_iter().flat_map(move |act| {
            [Rounding::Once, Rounding::Activation]
                .into_iter()
                .flat_map(move |rounding| [false, true].map(move |pdl| (dt, act, rounding, pdl)))
        })
    })
}

static SPECS: LazyLock<Vec<KernelSpec>> = LazyLock::new(|| {
    let mut v: Vec<KernelSpec> = general_keys().map(|(dt, act, rounding, pdl)| make_spec(dt, act, rounding, pdl, false)).collect();
    debug_assert_eq!(v.len(), GENERAL_SPECS);
    for dt in WIDE_DTYPES {
        for act in [Activation::Silu, Activation::GeluTanh] {
            for pdl in [false, true] {
                debug_assert_eq!(Some(v.len()), wide_index(dt, act, Rounding::Once, pdl));
                let expr = template_expr("act_and_mul_wide_kernel", &[dt.into(), TemplateArg::Int(act.index() as i64), pdl.into()]);
                let name = format!("{}__{}__wide{}", act.op(), dt.tag(), if pdl { "__pdl" } else { "" });
                v.push(KernelSpec::new(name, &SOURCE, expr).pdl(pdl).math(MathPolicy::ArchDefault));
            }
        }
    }
    v.extend(general_keys().map(|(dt, act, rounding, pdl)| make_spec(dt, act, rounding, pdl, true)));
    for dt in DTYPES {
        for act in Activation::ALL {
            for (release, suffix) in FILTERED_RELEASES.into_iter().enumerate() {
                debug_assert_eq!(v.len(), filtered_index(dt, act, release));
                let args = [dt.into(), TemplateArg::Int(act.index() as i64), TemplateArg::Int(release as i64)];
                let expr = template_expr("act_and_mul_filtered_kernel", &args);
                let name = format!("{}__{}__filtered{suffix}__pdl", act.op(), dt.tag());
                v.push(KernelSpec::new(name, &SOURCE, expr).pdl(true).math(MathPolicy::ArchDefault));
            }
        }
    }
    v
});

/// Every kernel instantiation of this crate (for prewarm, snapshots and [`Runtime::preload`]):
/// the general kernel (dtype × activation × rounding × PDL), the wide kernels of unfiltered silu /
/// gelu_tanh launches (f16, bf16 × PDL), the tiled kernels of filtered launches (as many as the
/// general) and the filtered kernels of the general kernel's default-rounding PDL launches with
/// the expert filter (dtype × activation × when dependents are released). Preload all of them
/// before capturing a CUDA graph.
pub fn kernel_specs() -> Vec<KernelSpec> {
    SPECS.clone()
}

/// The spec of the general kernel a call with these settings launches on `rt` (unaligned, f32,
/// gelu or activation-rounding launches, and filtered ones that [`tiled_spec_for`] does not
/// take; see [`wide_spec_for`] for the others).
pub fn spec_for<T: Float>(rt: &Runtime, act: Activation, rounding: Rounding) -> &'static KernelSpec {
    &SPECS[spec_index(T::ID, act, rounding, rt.pdl_enabled())]
}

/// The spec of the wide kernel that unfiltered 16-byte-aligned calls with these settings launch on
/// `rt`, if there is one (silu and gelu_tanh in the default rounding on f16 / bf16).
pub fn wide_spec_for<T: Float>(rt: &Runtime, act: Activation, rounding: Rounding) -> Option<&'static KernelSpec> {
    wide_index(T::ID, act, rounding, rt.pdl_enabled()).map(|i| &SPECS[i])
}

/// The spec of the tiled kernel that filtered 16-byte-aligned calls with these settings launch on
/// `rt` when a row spans more than 16 vectors (`d > 256 / size_of::<T>()`: thread rows of whole
/// warps) and the ids may be read before the wait ([`Options::ids_before_wait`]) or a tile is
/// forced ([`Options::filter_tile`]).
pub fn tiled_spec_for<T: Float>(rt: &Runtime, act: Activation, rounding: Rounding) -> &'static KernelSpec {
    &SPECS[tiled_index(T::ID, act, rounding, rt.pdl_enabled())]
}

/// The filtered kernels (dependents released after the loads, right after the wait, once the row
/// is kept) that default-rounding, expert-filtered, 16-byte-aligned calls with these settings
/// launch on `rt` instead of the general kernel, if there are: with PDL enabled only.
pub fn filtered_specs_for<T: Float>(
    rt: &Runtime,
    act: Activation,
    rounding: Rounding,
) -> Option<[&'static KernelSpec; FILTERED_RELEASES.len()]> {
    (rounding == Rounding::Once && rt.pdl_enabled()).then(|| std::array::from_fn(|release| &SPECS[filtered_index(T::ID, act, release)]))
}

/// The kernels one call may launch (the choice depends on pointers and sizes).
pub(crate) struct Kernels {
    pub(crate) general: &'static KernelSpec,
    pub(crate) wide: Option<&'static KernelSpec>,
    pub(crate) tiled: &'static KernelSpec,
    pub(crate) filtered: Option<[&'static KernelSpec; FILTERED_RELEASES.len()]>,
}

fn kernels_for<T: Float>(rt: &Runtime, act: Activation, rounding: Rounding) -> Kernels {
    Kernels {
        general: spec_for::<T>(rt, act, rounding),
        wide: wide_spec_for::<T>(rt, act, rounding),
        tiled: tiled_spec_for::<T>(rt, act, rounding),
        filtered: filtered_specs_for::<T>(rt, act, rounding),
    }
}

/// Size in bytes of the by-value parameter struct of `spec`'s kernel; the snapshot suite checks
/// it against the `.param` declaration in the PTX.
#[doc(hidden)]
pub fn params_bytes(spec: &KernelSpec) -> Option<usize> {
    std::ptr::eq(spec.source(), &SOURCE).then_some(ffi::PARAMS_BYTES)
}

fn request<T: Float>(
    op: &'static str,
    act: Activation,
    shape: Shape,
    in_len: usize,
    out_len: usize,
    exact: bool,
    opts: &Options<'_>,
) -> Request {
    Request {
        op,
        act,
        shape,
        in_len,
        out_len,
        exact,
        expert: opts.expert.map(|e| (e.ids.len(), e.step)),
        sorted: opts.sorted.map(|s| (s.sorted_token_ids.len(), s.num_tokens_post_padded.len(), s.num_valid_tokens)),
        clamp: opts.clamp_limit.map(|l| (l, effective_clamp_limit::<T>(l))),
        filter_tile: opts.filter_tile,
        ids_early: opts.ids_before_wait,
    }
}

fn check_contexts<T>(
    op: &'static str,
    rt: &Runtime,
    input: &(impl DeviceSlice<T> + ?Sized),
    out: Option<&dyn DeviceSlice<T>>,
    opts: &Options<'_>,
) -> Result<()> {
    rt.check_context(op, "input", input)?;
    if let Some(o) = out {
        rt.check_context(op, "out", o)?;
    }
    if let Some(e) = opts.expert {
        rt.check_context(op, "expert_ids", e.ids)?;
    }
    if let Some(s) = opts.sorted {
        rt.check_context(op, "sorted_token_ids", s.sorted_token_ids)?;
        rt.check_context(op, "num_tokens_post_padded", s.num_tokens_post_padded)?;
    }
    Ok(())
}

fn op_name(act: Activation, opts: &Options<'_>) -> &'static str {
    match (opts.rounding, act) {
        (Rounding::Once, a) => a.op(),
        (Rounding::Activation, Activation::Silu) => "silu_and_mul_with_activation_rounding",
        (Rounding::Activation, Activation::Gelu) => "gelu_and_mul_with_activation_rounding",
        (Rounding::Activation, Activation::GeluTanh) => "gelu_tanh_and_mul_with_activation_rounding",
    }
}

fn run<T: Float>(
    rt: &Runtime,
    act: Activation,
    input: &impl DevicePtr<T>,
    out: &mut impl DevicePtrMut<T>,
    shape: Shape,
    opts: &Options<'_>,
    exact: bool,
) -> Result<()> {
    let op = op_name(act, opts);
    let req = request::<T>(op, act, shape, input.len(), out.len(), exact, opts);
    let Some(plan) = validate(&req)? else { return Ok(()) };
    check_contexts::<T>(op, rt, input, Some(out as &dyn DeviceSlice<T>), opts)?;
    ffi::launch::<T>(rt, op, &kernels_for::<T>(rt, act, opts.rounding), &plan, input, out, opts)
}

// ---------------------------------------------------------------------------------------------
// Public API

/// `out[r·out_row_stride + i] = act(x_g) · x_u` with `x_g = input[r·in_row_stride + i]`,
/// `x_u = input[r·in_row_stride + d + i]`, default rounding, no filter.
///
/// `input` must hold `(rows-1)·in_row_stride + 2d` elements and `out`
/// `(rows-1)·out_row_stride + d`; elements of `out` between rows are left untouched.
pub fn act_and_mul<T: Float>(
    rt: &Runtime,
    act: Activation,
    input: &impl DevicePtr<T>,
    out: &mut impl DevicePtrMut<T>,
    shape: Shape,
) -> Result<()> {
    run(rt, act, input, out, shape, &Options::new(), false)
}

/// [`act_and_mul`] with [`Options`]: rounding, expert / sorted row filters, SiLU clamp. Rows the
/// filter skips are neither read nor written.
pub fn act_and_mul_with<T: Float>(
    rt: &Runtime,
    act: Activation,
    input: &impl DevicePtr<T>,
    out: &mut impl DevicePtrMut<T>,
    shape: Shape,
    opts: &Options<'_>,
) -> Result<()> {
    run(rt, act, input, out, shape, opts, false)
}

/// Allocating form of [`act_and_mul_with`]: returns a new packed `rows × d` buffer. Row filters
/// are refused (skipped rows would be uninitialised memory): pass an output buffer instead.
/// Allocates the output on the runtime's stream on every call: inside a CUDA-graph capture use the
/// out-parameter form with a buffer allocated beforehand (it allocates nothing).
pub fn act_and_mul_alloc<T: Float>(
    rt: &Runtime,
    act: Activation,
    input: &impl DevicePtr<T>,
    rows: usize,
    d: usize,
    in_row_stride: usize,
    opts: &Options<'_>,
) -> Result<CudaSlice<T>> {
    let op = op_name(act, opts);
    ensure!(!opts.filtered(), op, "the allocating form cannot filter rows (skipped rows would be uninitialised); pass an output buffer");
    let shape = Shape::strided(rows, d, in_row_stride, d);
    let n = mul(op, rows, d, "rows*d")?;
    let req = request::<T>(op, act, shape, input.len(), n, false, opts);
    let Some(plan) = validate(&req)? else {
        return rt.stream().null().map_err(|e| Error::driver("allocating an empty output", e));
    };
    check_contexts::<T>(op, rt, input, None, opts)?;
    let mut out = ffi::alloc_fully_written::<T>(rt, n)?;
    ffi::launch::<T>(rt, op, &kernels_for::<T>(rt, act, opts.rounding), &plan, input, &mut out, opts)?;
    Ok(out)
}

macro_rules! named_ops {
    ($(($act:expr, $name:literal, $plain:ident, $alloc:ident, $round:ident)),* $(,)?) => {$(
        #[doc = concat!("`out = ", $name, "(gate) · up` over packed rows: `input` holds exactly `rows·2d` elements, `out` `rows·d`.")]
        #[doc = ""]
        #[doc = "One rounding (`RN_T(act(g)·u)`), arch-default fast math. See [`act_and_mul_with`] for strides, filters and clamping."]
        pub fn $plain<T: Float>(rt: &Runtime, input: &impl DevicePtr<T>, out: &mut impl DevicePtrMut<T>, rows: usize, d: usize) -> Result<()> {
            run(rt, $act, input, out, Shape::contiguous(rows, d), &Options::new(), true)
        }

        #[doc = concat!("Allocating form of [`", stringify!($plain), "`]: `input` holds exactly `rows·2d` elements; returns `rows·d`.")]
        #[doc = ""]
        #[doc = "Allocates on every call: inside a CUDA-graph capture use the out-parameter form."]
        pub fn $alloc<T: Float>(rt: &Runtime, input: &impl DevicePtr<T>, rows: usize, d: usize) -> Result<CudaSlice<T>> {
            let op = $act.op();
            let want = mul(op, rows, mul(op, 2, d, "2*d")?, "rows*2*d")?;
            ensure!(input.len() == want, op, "input.len()={} != rows*2*d={want} (rows={rows}, d={d})", input.len());
            act_and_mul_alloc(rt, $act, input, rows, d, 2 * d, &Options::new())
        }

        #[doc = concat!("`out = RN_T(f32(RN_T(", $name, "(gate))) · up)` over packed rows, in IEEE arithmetic: bit for bit PyTorch eager's `F.", $name, "(g).to(T) * u`.")]
        pub fn $round<T: Float>(rt: &Runtime, input: &impl DevicePtr<T>, out: &mut impl DevicePtrMut<T>, rows: usize, d: usize) -> Result<()> {
            run(rt, $act, input, out, Shape::contiguous(rows, d), &Options::new().rounding(Rounding::Activation), true)
        }
    )*};
}

named_ops!(
    (Activation::Silu, "silu", silu_and_mul, silu_and_mul_alloc, silu_and_mul_with_activation_rounding),
    (Activation::Gelu, "gelu", gelu_and_mul, gelu_and_mul_alloc, gelu_and_mul_with_activation_rounding),
    (Activation::GeluTanh, "gelu_tanh", gelu_tanh_and_mul, gelu_tanh_and_mul_alloc, gelu_tanh_and_mul_with_activation_rounding),
);

#[cfg(test)]
mod tests;
