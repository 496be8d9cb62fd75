//! # kiln-rmsnorm
//!
//! RMSNorm for LLM inference, JIT-compiled with [`kiln_runtime`]: the HF rounding
//! ([`rms_norm_hf`]), the fp32 form and Gemma's `(1 + w)` form ([`rms_norm`] with a [`Norm`]),
//! and the fused residual add ([`fused_add_rms_norm`]), for f16 / bf16 / f32 activations, weights
//! in the activation type or f32, **every** hidden size from 1 to [`MAX_HIDDEN`], strided rows and
//! in-place forms.
//!
//! ## Semantics (per row of `hidden` elements; fp32 arithmetic, IEEE round-to-nearest)
//! - `rstd = RN(1 / RN(sqrt(RN(mean + eps))))`, `mean = RN(s / hidden)`, `s` = Σ u² summed in a
//!   fixed order (16-byte chunks accumulated with FMAs, then fixed pairwise trees; see
//!   `cuda/rmsnorm.cuh`). The order does not depend on the launch shape, so every kernel variant
//!   gives the same bits, and [`mod@reference`] reproduces them exactly on the CPU.
//! - [`Form::Hf`]: `y = RN_T(RN_T(u·rstd)·w)` (HF `LlamaRMSNorm`: cast to T before the weight).
//! - [`Form::Fp32`]: `y = RN_T((u·rstd)·w)`. [`Form::Gemma`]: `y = RN_T((u·rstd)·(1 + w))`.
//! - [`fused_add_rms_norm`]: `residual ← RN_T(x + r)` and `x ← norm(u)` where, by default
//!   ([`FusedSum::Rounded`]), `u = RN_T(x + r)` is the stored residual — bit for bit the unfused
//!   `residual += x; x = rms_norm(residual)` of an HF decoder layer. [`FusedSum::Fp32`] instead
//!   normalises the unrounded fp32 sum; with [`Form::Hf`] that is SGLang's
//!   `fused_add_rmsnorm(cast_x_before_out_mul=True)` (its `forward_native`).
//!
//! `rows == 0` returns `Ok(())` without a launch; every argument is validated first and a bad
//! one gives [`Error::InvalidArgument`] naming the values. `out` may not alias `x` except through
//! the `_inplace` / fused forms.
//!
//! ```no_run
//! use kiln_rmsnorm::{Norm, Shape, fused_add_rms_norm, rms_norm_hf};
//! use kiln_runtime::Runtime;
//! use kiln_runtime::half::bf16;
//!
//! let rt = Runtime::new(0)?;
//! rt.preload(&kiln_rmsnorm::kernel_specs())?; // before any CUDA-graph capture
//! let (tokens, hidden) = (8, 4096);
//! let x = rt.stream().clone_htod(&vec![bf16::from_f32(0.5); tokens * hidden])?;
//! let w = rt.stream().clone_htod(&vec![bf16::from_f32(1.0); hidden])?;
//! let mut y = rt.stream().alloc_zeros::<bf16>(tokens * hidden)?;
//! rms_norm_hf(&rt, &x, &w, &mut y, Shape::new(tokens, hidden), 1e-6)?;
//!
//! // Decoder layer: residual += y; y = rms_norm_hf(residual), in place, in one kernel.
//! let mut residual = rt.stream().clone_htod(&vec![bf16::from_f32(1.0); tokens * hidden])?;
//! fused_add_rms_norm(&rt, &mut y, &mut residual, &w, Shape::new(tokens, hidden), Norm::hf(1e-6))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod ffi;
mod plan;
pub mod reference;

use std::sync::LazyLock;

use half::{bf16, f16};
use kiln_runtime::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use kiln_runtime::{
    Dtype, DtypeId, Error, FastMath, KernelSource, KernelSpec, MathPolicy, PRELUDE, Result, Runtime, TemplateArg, template_expr,
};

pub use plan::MAX_HIDDEN;
#[doc(hidden)]
pub use plan::{Variant, default_variant, max_rows, variants};

use plan::{Buf, Kind, Plan, Request};

/// The kernel source (`cuda/rmsnorm.cuh`) and the device prelude.
static SOURCE: KernelSource = KernelSource { name: "rmsnorm.cuh", text: include_str!("../cuda/rmsnorm.cuh"), headers: &[PRELUDE] };

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
}

/// Activation element types: `f16`, `bf16`, `f32`.
pub trait Activation: Dtype + sealed::Sealed {}
impl Activation for f16 {}
impl Activation for bf16 {}
impl Activation for f32 {}

/// Weight element types for activations of type `T`: `T` itself or `f32`.
pub trait WeightOf<T: Activation>: Dtype + sealed::Sealed {}
impl<T: Activation> WeightOf<T> for T {}
impl WeightOf<f16> for f32 {}
impl WeightOf<bf16> for f32 {}

/// Where the rounding happens between the normalisation and the weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    /// `y = RN_T(RN_T(u·rstd)·w)`: HF `LlamaRMSNorm` (`weight * hidden.to(dtype)`), SGLang `rmsnorm_hf`.
    Hf,
    /// `y = RN_T((u·rstd)·w)` in fp32: SGLang / FlashInfer `rmsnorm`.
    Fp32,
    /// `y = RN_T((u·rstd)·(1 + w))` in fp32: Gemma's `RMSNorm`.
    Gemma,
}

/// For [`fused_add_rms_norm`]: which sum is normalised (the stored residual is `RN_T(x + r)` in
/// both cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FusedSum {
    /// The rounded sum `RN_T(x + r)`, i.e. the new residual (an HF decoder layer; identical to the
    /// unfused add followed by the norm).
    #[default]
    Rounded,
    /// The fp32 sum `x + r` before rounding (SGLang's `cast_x_before_out_mul` fused kernel).
    Fp32,
}

/// How to normalise: formula, epsilon and (fused op only) which sum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Norm {
    /// Rounding form.
    pub form: Form,
    /// Added to the mean square; must be finite and > 0 (1e-6 for Llama, 1e-5 for many others).
    pub eps: f32,
    /// Which sum [`fused_add_rms_norm`] normalises (ignored by the other functions).
    pub sum: FusedSum,
}

impl Norm {
    /// [`Form::Hf`] with `eps`.
    pub const fn hf(eps: f32) -> Norm {
        Norm { form: Form::Hf, eps, sum: FusedSum::Rounded }
    }
    /// [`Form::Fp32`] with `eps`.
    pub const fn fp32(eps: f32) -> Norm {
        Norm { form: Form::Fp32, eps, sum: FusedSum::Rounded }
    }
    /// [`Form::Gemma`] with `eps`.
    pub const fn gemma(eps: f32) -> Norm {
        Norm { form: Form::Gemma, eps, sum: FusedSum::Rounded }
    }
    /// The same, normalising the fp32 sum in the fused op ([`FusedSum::Fp32`]).
    pub const fn with_sum(self, sum: FusedSum) -> Norm {
        Norm { sum, ..self }
    }
}

/// `rows` rows of `hidden` elements; row `i` of a tensor starts at element `i * stride` of its
/// buffer (strides in elements, ≥ `hidden`; a buffer needs `(rows-1)*stride + hidden` elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Rows (tokens).
    pub rows: usize,
    /// Elements per row (the normalised dimension).
    pub hidden: usize,
    /// Row stride of the input `x` (also of `x` where it is written in place).
    pub x_stride: usize,
    /// Row stride of `out` (must equal `x_stride` in the in-place and fused forms).
    pub out_stride: usize,
    /// Row stride of `residual` (fused form).
    pub residual_stride: usize,
}

impl Shape {
    /// Contiguous rows: every stride is `hidden`.
    pub const fn new(rows: usize, hidden: usize) -> Shape {
        Shape { rows, hidden, x_stride: hidden, out_stride: hidden, residual_stride: hidden }
    }
    /// With the input's row stride (and, for in-place use, the output's: see [`Shape::with_stride`]).
    pub const fn with_x_stride(self, x_stride: usize) -> Shape {
        Shape { x_stride, ..self }
    }
    /// With the output's row stride.
    pub const fn with_out_stride(self, out_stride: usize) -> Shape {
        Shape { out_stride, ..self }
    }
    /// With the residual's row stride.
    pub const fn with_residual_stride(self, residual_stride: usize) -> Shape {
        Shape { residual_stride, ..self }
    }
    /// With one row stride for `x` and `out` (in-place and fused forms).
    pub const fn with_stride(self, stride: usize) -> Shape {
        Shape { x_stride: stride, out_stride: stride, ..self }
    }
}

const PAIRS: [(DtypeId, DtypeId); 5] = [
    (DtypeId::F16, DtypeId::F16),
    (DtypeId::F16, DtypeId::F32),
    (DtypeId::Bf16, DtypeId::Bf16),
    (DtypeId::Bf16, DtypeId::F32),
    (DtypeId::F32, DtypeId::F32),
];

fn pair_index(t: DtypeId, w: DtypeId) -> usize {
    PAIRS.iter().position(|&p| p == (t, w)).expect("WeightOf admits only the pairs of PAIRS")
}

/// Kernel slots per dtype pair: the unfused kernels, then the fused ones.
const SLOTS: usize = Kind::PLAIN.len() + Kind::FUSED.len();

fn spec_index(pair: usize, kind: Kind, fused: bool, pdl: bool) -> usize {
    let slot = if fused { Kind::PLAIN.len() + kind.index() } else { kind.index() };
    (pair * SLOTS + slot) * 2 + pdl as usize
}

fn make_spec(t: DtypeId, w: DtypeId, kind: Kind, fused: bool, pdl: bool) -> KernelSpec {
    let tag = if t == w { t.tag().to_string() } else { format!("{}_w{}", t.tag(), w.tag()) };
    let (variant, expr) = match (kind.warp_form(), kind.shape()) {
        (Some(form), _) => {
            let name = ["hf", "fp32", "gemma"][form as usize];
            (format!("warp_{name}"), template_expr("rmsnorm::rmsnorm_warp_rows", &[t.into(), w.into(), TemplateArg::Int(form), pdl.into()]))
        }
        (None, None) => {
            ("stream".to_string(), template_expr("rmsnorm::rmsnorm_rows_stream", &[t.into(), w.into(), fused.into(), pdl.into()]))
        }
        (None, Some((k, r))) => {
            let (late, plain) = (kind == Kind::Rows1Late, kind.is_plain());
            let mut args = vec![t.into(), w.into(), TemplateArg::Int(k.into()), TemplateArg::Int(r.into()), fused.into(), pdl.into()];
            if late || plain {
                args.push(late.into());
            }
            if plain {
                args.push(true.into());
            }
            let suffix = if late {
                "_late"
            } else if plain {
                "_plain"
            } else {
                ""
            };
            let variant = format!("k{k}{}{suffix}", if r == 1 { String::new() } else { format!("x{r}") });
            (variant, template_expr("rmsnorm::rmsnorm_rows", &args))
        }
    };
    let name = format!("rmsnorm__{tag}__{}{variant}{}", if fused { "fused_" } else { "" }, if pdl { "__pdl" } else { "" });
    // Exact IEEE arithmetic everywhere (no flush to zero): the CPU reference reproduces it bit for bit.
    KernelSpec::new(name, &SOURCE, expr).pdl(pdl).math(MathPolicy::Fixed(FastMath::PRECISE))
}

static SPECS: LazyLock<Vec<KernelSpec>> = LazyLock::new(|| {
    let mut v = Vec::with_capacity(PAIRS.len() * SLOTS * 2);
    for &(t, w) in &PAIRS {
        for (fused, kinds) in [(false, &Kind::PLAIN[..]), (true, &Kind::FUSED[..])] {
            for &kind in kinds {
                for pdl in [false, true] {
                    v.push(make_spec(t, w, kind, fused, pdl));
                }
            }
        }
    }
    v
});

/// Every kernel instantiation of this crate: (f16, f16 / f32 weight), (bf16, bf16 / f32 weight),
/// (f32, f32) × {unfused: rows with 1, 2, 4 chunks a thread, 4 rows × 1 chunk, 2 rows × 2 chunks,
/// two-pass, 1 chunk with the late PDL trigger, the 2 / 4 / 2×2 kinds with plain x loads, a warp
/// per row for each form; fused: the one-row kinds and two-pass} × {PDL, no PDL}.
pub fn kernel_specs() -> Vec<KernelSpec> {
    SPECS.clone()
}

/// Size in bytes of the by-value parameter struct of `spec`'s kernel; the snapshot suite checks
/// it against the `.param` declaration in the PTX.
#[doc(hidden)]
pub fn params_bytes(spec: &KernelSpec) -> Option<usize> {
    std::ptr::eq(spec.source(), &SOURCE).then_some(ffi::PARAMS_BYTES)
}

/// Validates, then launches on `rt`'s stream. Pointers are taken from guards the callers keep
/// alive across this call.
fn execute<T: Activation, W: WeightOf<T>>(rt: &Runtime, req: &Request, ptrs: [u64; 4]) -> Result<()> {
    let Some(plan) = plan::plan(req)? else { return Ok(()) };
    let spec = &SPECS[spec_index(pair_index(T::ID, W::ID), plan.kind, req.residual.is_some(), rt.pdl_enabled())];
    let kernel = rt.kernel(spec)?;
    let [x, out, residual, weight] = ptrs;
    let params = params(req, &plan, x, out, residual, weight);
    ffi::launch(rt, &kernel, &plan, &params)
}

/// Vector-path launches reading at most PREFETCH_MAX_BYTES of rows, rows of at most
/// PREFETCH_MAX_ROW_BYTES, or at least PREFETCH_MIN_LARGE_BYTES, warm L2 with their rows before
/// the PDL wait (flag `kFlagPrefetch`): the CTAs resident before the predecessor ends then start
/// from L2. Measured on the H100 (S4-3): up to 4 MiB 3–20 % faster (1×4096 1.60 → 1.54 µs,
/// 512×128 1.49 → 1.19); beyond, 0.5–1 % faster with rows of 128 and 4096 bf16; with rows of
/// 8192 bf16 2–5 % slower at 512 and 2048 rows (8–32 MiB) but faster at 8192 and 16384 rows
/// (128–256 MiB; S4-13, against no prefetch in one call: 92.1 → 91.5 µs, 181.6 → 180.5, fused
/// 16384×8192 367.1 → 363.8).
const PREFETCH_MAX_BYTES: usize = 4 << 20;
const PREFETCH_MAX_ROW_BYTES: usize = 8 << 10;
const PREFETCH_MIN_LARGE_BYTES: usize = 128 << 20;

/// Whether a vector-path launch warms L2 with its rows before the PDL wait.
fn prefetch_rows(rows: usize, hidden: usize, elem: usize, fused: bool) -> bool {
    let row_bytes = hidden.saturating_mul(elem);
    let input_bytes = rows.saturating_mul(row_bytes).saturating_mul(if fused { 2 } else { 1 });
    input_bytes <= PREFETCH_MAX_BYTES || row_bytes <= PREFETCH_MAX_ROW_BYTES || input_bytes >= PREFETCH_MIN_LARGE_BYTES
}

fn params(req: &Request, plan: &Plan, x: u64, out: u64, residual: u64, weight: u64) -> ffi::Params {
    let s = req.shape;
    let fused = req.residual.is_some();
    let prefetch = plan.vec && prefetch_rows(s.rows, s.hidden, req.elem, fused);
    let flags = plan.vec as i32 | (((fused && req.norm.sum == FusedSum::Fp32) as i32) << 1) | ((prefetch as i32) << 2);
    ffi::Params {
        x,
        out,
        residual,
        weight,
        rows: s.rows as i64,
        x_stride: s.x_stride as i64,
        out_stride: s.out_stride as i64,
        res_stride: s.residual_stride as i64,
        hidden: s.hidden as i32,
        chunks: plan.chunks as i32,
        log2_group: plan.log2_group as i32,
        iters_log2: plan.iters_log2 as i32,
        eps: req.norm.eps,
        form: match req.norm.form {
            Form::Hf => 0,
            Form::Fp32 => 1,
            Form::Gemma => 2,
        },
        flags,
        rows_per_thread: plan.rows_per_thread as i32,
        inv_hidden: if s.hidden.is_power_of_two() { 1.0 / s.hidden as f32 } else { 0.0 },
    }
}

fn request<T: Activation, W: WeightOf<T>>(rt: &Runtime, op: &'static str, shape: Shape, norm: Norm, force: Option<Variant>) -> Request {
    let none = Buf { ptr: 0, len: 0 };
    Request {
        op,
        elem: size_of::<T>(),
        weight_elem: size_of::<W>(),
        shape,
        norm,
        x: none,
        out: None,
        residual: None,
        weight: none,
        force,
        sms: rt.sm_count() as usize,
    }
}

/// `out = norm(x)` for `shape.rows` rows; `norm.form` chooses the rounding (see [`Form`]).
///
/// `x` rows at `shape.x_stride`, `out` rows at `shape.out_stride`, `weight` of exactly
/// `shape.hidden` elements.
pub fn rms_norm<T: Activation, W: WeightOf<T>>(
    rt: &Runtime,
    x: &impl DevicePtr<T>,
    weight: &impl DevicePtr<W>,
    out: &mut impl DevicePtrMut<T>,
    shape: Shape,
    norm: Norm,
) -> Result<()> {
    launch_separate(rt, "rms_norm", x, weight, out, shape, norm, None)
}

/// HF `LlamaRMSNorm`: `out = RN_T(RN_T(x·rstd)·w)` (= [`rms_norm`] with [`Norm::hf`]).
pub fn rms_norm_hf<T: Activation, W: WeightOf<T>>(
    rt: &Runtime,
    x: &impl DevicePtr<T>,
    weight: &impl DevicePtr<W>,
    out: &mut impl DevicePtrMut<T>,
    shape: Shape,
    eps: f32,
) -> Result<()> {
    launch_separate(rt, "rms_norm_hf", x, weight, out, shape, Norm::hf(eps), None)
}

/// `x = norm(x)` in place (rows at `shape.x_stride`; `shape.out_stride` must equal it).
pub fn rms_norm_inplace<T: Activation, W: WeightOf<T>>(
    rt: &Runtime,
    x: &mut impl DevicePtrMut<T>,
    weight: &impl DevicePtr<W>,
    shape: Shape,
    norm: Norm,
) -> Result<()> {
    const OP: &str = "rms_norm_inplace";
    rt.check_context(OP, "x", x)?;
    rt.check_context(OP, "weight", weight)?;
    let mut req = request::<T, W>(rt, OP, shape, norm, None);
    req.x = Buf { ptr: 0, len: x.len() };
    req.weight = Buf { ptr: 0, len: weight.len() };
    let stream = rt.stream();
    let (xp, _gx) = x.device_ptr_mut(stream);
    let (wp, _gw) = weight.device_ptr(stream);
    req.x.ptr = xp;
    req.weight.ptr = wp;
    execute::<T, W>(rt, &req, [xp, xp, 0, wp])
}

/// Allocating form: a new contiguous `rows × hidden` buffer holding `norm(x)`
/// (`shape.out_stride` must be `hidden`).
/// Allocates the output on the runtime's stream on every call: inside a CUDA-graph capture use the
/// out-parameter form with a buffer allocated beforehand (it allocates nothing).
pub fn rms_norm_alloc<T: Activation, W: WeightOf<T>>(
    rt: &Runtime,
    x: &impl DevicePtr<T>,
    weight: &impl DevicePtr<W>,
    shape: Shape,
    norm: Norm,
) -> Result<CudaSlice<T>> {
    const OP: &str = "rms_norm_alloc";
    kiln_runtime::ensure!(
        shape.out_stride == shape.hidden,
        OP,
        "the output is contiguous: out_stride={} != hidden={}",
        shape.out_stride,
        shape.hidden
    );
    let n = shape
        .rows
        .checked_mul(shape.hidden)
        .ok_or_else(|| Error::invalid(OP, format!("rows={} * hidden={} overflows", shape.rows, shape.hidden)))?;
    // Validate before allocating (the launch validates again, with the real output).
    let mut req = request::<T, W>(rt, OP, shape, norm, None);
    req.x = Buf { ptr: 0, len: x.len() };
    req.out = Some(Buf { ptr: 0, len: n });
    req.weight = Buf { ptr: 0, len: weight.len() };
    plan::plan(&req)?;
    rt.check_context(OP, "x", x)?;
    rt.check_context(OP, "weight", weight)?;
    let mut out = ffi::alloc_output::<T>(rt, n)?;
    launch_separate(rt, OP, x, weight, &mut out, shape, norm, None)?;
    Ok(out)
}

/// Fused residual add and norm, in place: `residual ← RN_T(x + residual)`, `x ← norm(u)` with
/// `u` chosen by `norm.sum` ([`FusedSum::Rounded`]: the new residual, as an HF decoder layer).
///
/// `x` rows at `shape.x_stride` (= `shape.out_stride`), residual rows at
/// `shape.residual_stride`.
pub fn fused_add_rms_norm<T: Activation, W: WeightOf<T>>(
    rt: &Runtime,
    x: &mut impl DevicePtrMut<T>,
    residual: &mut impl DevicePtrMut<T>,
    weight: &impl DevicePtr<W>,
    shape: Shape,
    norm: Norm,
) -> Result<()> {
    launch_fused(rt, "fused_add_rms_norm", x, residual, weight, shape, norm, None)
}

#[allow(clippy::too_many_arguments)]
fn launch_separate<T: Activation, W: WeightOf<T>>(
    rt: &Runtime,
    op: &'static str,
    x: &impl DevicePtr<T>,
    weight: &impl DevicePtr<W>,
    out: &mut impl DevicePtrMut<T>,
    shape: Shape,
    norm: Norm,
    force: Option<Variant>,
) -> Result<()> {
    rt.check_context(op, "x", x)?;
    rt.check_context(op, "weight", weight)?;
    rt.check_context(op, "out", out)?;
    let mut req = request::<T, W>(rt, op, shape, norm, force);
    let out_len = out.len();
    let stream = rt.stream();
    let (xp, _gx) = x.device_ptr(stream);
    let (wp, _gw) = weight.device_ptr(stream);
    let (outp, _go) = out.device_ptr_mut(stream);
    req.x = Buf { ptr: xp, len: x.len() };
    req.weight = Buf { ptr: wp, len: weight.len() };
    req.out = Some(Buf { ptr: outp, len: out_len });
    execute::<T, W>(rt, &req, [xp, outp, 0, wp])
}

#[allow(clippy::too_many_arguments)]
fn launch_fused<T: Activation, W: WeightOf<T>>(
    rt: &Runtime,
    op: &'static str,
    x: &mut impl DevicePtrMut<T>,
    residual: &mut impl DevicePtrMut<T>,
    weight: &impl DevicePtr<W>,
    shape: Shape,
    norm: Norm,
    force: Option<Variant>,
) -> Result<()> {
    rt.check_context(op, "x", x)?;
    rt.check_context(op, "residual", residual)?;
    rt.check_context(op, "weight", weight)?;
    let mut req = request::<T, W>(rt, op, shape, norm, force);
    let (x_len, r_len) = (x.len(), residual.len());
    let stream = rt.stream();
    let (xp, _gx) = x.device_ptr_mut(stream);
    let (rp, _gr) = residual.device_ptr_mut(stream);
    let (wp, _gw) = weight.device_ptr(stream);
    req.x = Buf { ptr: xp, len: x_len };
    req.residual = Some(Buf { ptr: rp, len: r_len });
    req.weight = Buf { ptr: wp, len: weight.len() };
    execute::<T, W>(rt, &req, [xp, xp, rp, wp])
}

/// Test hooks: the same operations with a forced launch shape ([`Variant`], from [`variants`]).
/// Every variant must give the same bits; T2 tests compare them.
#[doc(hidden)]
pub mod forced {
    use super::*;

    /// [`rms_norm`] with launch shape `v`.
    pub fn rms_norm<T: Activation, W: WeightOf<T>>(
        rt: &Runtime,
        x: &impl DevicePtr<T>,
        weight: &impl DevicePtr<W>,
        out: &mut impl DevicePtrMut<T>,
        shape: Shape,
        norm: Norm,
        v: Variant,
    ) -> Result<()> {
        launch_separate(rt, "rms_norm", x, weight, out, shape, norm, Some(v))
    }

    /// [`fused_add_rms_norm`] with launch shape `v`.
    pub fn fused_add_rms_norm<T: Activation, W: WeightOf<T>>(
        rt: &Runtime,
        x: &mut impl DevicePtrMut<T>,
        residual: &mut impl DevicePtrMut<T>,
        weight: &impl DevicePtr<W>,
        shape: Shape,
        norm: Norm,
        v: Variant,
    ) -> Result<()> {
        launch_fused(rt, "fused_add_rms_norm", x, residual, weight, shape, norm, Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_policy() {
        assert!(prefetch_rows(1, 128, 2, false));
        assert!(prefetch_rows(1024, 2048, 2, false), "4 MiB");
        assert!(prefetch_rows(1024, 2048, 2, true), "8 MiB fused, but rows of 4 KiB");
        assert!(prefetch_rows(65536, 4096, 2, false), "rows of 8 KiB");
        assert!(!prefetch_rows(512, 8192, 2, false), "8 MiB of 16 KiB rows");
        assert!(!prefetch_rows(2048, 8192, 2, false), "32 MiB of 16 KiB rows");
        assert!(prefetch_rows(8192, 8192, 2, false), "128 MiB");
        assert!(prefetch_rows(4096, 8192, 2, true), "128 MiB fused");
        assert!(prefetch_rows(128, 8192, 2, false), "2 MiB");
        assert!(prefetch_rows(usize::MAX, usize::MAX, 4, true), "saturating: large");
    }

    #[test]
    fn spec_table_is_indexed_consistently() {
        let specs = kernel_specs();
        assert_eq!(specs.len(), 170);
        for (pi, &(t, w)) in PAIRS.iter().enumerate() {
            for (fused, kinds) in [(false, &Kind::PLAIN[..]), (true, &Kind::FUSED[..])] {
                for &kind in kinds {
                    for pdl in [false, true] {
                        let s = &specs[spec_index(pi, kind, fused, pdl)];
                        assert_eq!(s.name(), make_spec(t, w, kind, fused, pdl).name());
                        assert_eq!(s.is_pdl(), pdl);
                    }
                }
            }
        }
        let names: std::collections::HashSet<_> = specs.iter().map(|s| s.name().to_string()).collect();
        assert_eq!(names.len(), specs.len());
        let s = &specs[spec_index(3, Kind::Rows2, false, true)];
        assert_eq!((s.name(), s.expr()), ("rmsnorm__bf16_wf32__k2__pdl", "rmsnorm::rmsnorm_rows<__nv_bfloat16, float, 2, 1, false, true>"));
        let s = &specs[spec_index(2, Kind::Rows1x4, false, false)];
        assert_eq!(
            (s.name(), s.expr()),
            ("rmsnorm__bf16__k1x4", "rmsnorm::rmsnorm_rows<__nv_bfloat16, __nv_bfloat16, 1, 4, false, false>")
        );
        let s = &specs[spec_index(0, Kind::Stream, true, false)];
        assert_eq!((s.name(), s.expr()), ("rmsnorm__f16__fused_stream", "rmsnorm::rmsnorm_rows_stream<__half, __half, true, false>"));
        assert_eq!(pair_index(DtypeId::F32, DtypeId::F32), 4);
        assert!(params_bytes(&specs[0]) == Some(104));
        let s = &specs[spec_index(2, Kind::Rows1Late, false, true)];
        assert_eq!(
            (s.name(), s.expr()),
            ("rmsnorm__bf16__k1_late__pdl", "rmsnorm::rmsnorm_rows<__nv_bfloat16, __nv_bfloat16, 1, 1, false, true, true>")
        );
    }
}
