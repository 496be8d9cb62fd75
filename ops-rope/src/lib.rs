//! # kiln-rope
//!
//! Rotary position embedding (RoPE) for LLM attention, in place on the GPU:
//!
//! - [`fused_qk_norm_rope`]: Qwen3-style per-head RMSNorm of every q and k head of a packed
//!   `[tokens, (nq + nk + nv)·head_dim]` qkv matrix, then RoPE, in one pass; V heads are never
//!   read or written.
//! - [`apply_rope_qkv`]: RoPE alone on the q and k heads of such a packed matrix.
//! - [`apply_rope`]: RoPE alone on separate q `[tokens, nq·head_dim]` and k `[tokens, nk·head_dim]`
//!   matrices.
//!
//! All take bf16 or f16 activations ([`Element`]), i32 or i64 positions ([`Position`]), row
//! strides ([`Rows`]), NeoX or interleaved pairs, partial rotary (`rotary_dim < head_dim`: the rest
//! of the head is only normalised) and optional [`Yarn`]; the norm weights are in the activation
//! type or f32 ([`NormWeight`]). head_dim is any multiple of 8 up to 256.
//!
//! **Numerics.** Everything happens in f32 from load to store, with one rounding to the storage
//! type at the end: `x · r · w` with `r = 1/sqrt(mean(x²) + eps)` (IEEE square root and division),
//! then the rotation `(a·c − b·s, b·c + a·s)·attention_factor`. Angles stay exact at long context:
//! the host computes the pair frequencies `base^(−2p/rotary_dim)` (YaRN-blended) in f64 and
//! passes each as a 64-bit fixed-point fraction of a turn; the kernel multiplies it by the
//! integer position, so `θ = pos·f` is reduced modulo 2π exactly by integer wrap-around at any
//! position, and evaluates sin/cos of the remaining ≤ 1/8 turn with f32 polynomials (within
//! ~1e-7), once per token and pair. Every operation is an integer or IEEE-rounded f32 one, so
//! [`reference`](mod@reference) reproduces the kernel bit for bit. Against
//! exact f64 math, outputs are within 2 units in the last place of bf16/f16 at positions up to
//! 2^20 (tested); an output that cancels to below 2^-10 of its head's largest value is within
//! 2^-17 of that value instead.
//!
//! ```no_run
//! use kiln_rope::{Heads, QkNormRope, Rope, Rows, fused_qk_norm_rope};
//! use kiln_runtime::{Runtime, half::bf16};
//!
//! let rt = Runtime::new(0)?;
//! rt.preload(&kiln_rope::kernel_specs())?; // before any CUDA-graph capture
//! let heads = Heads { nq: 32, nk: 4, nv: 4, head_dim: 128 };
//! let (tokens, width) = (16, 40 * 128);
//! let stream = rt.stream();
//! let mut qkv = stream.clone_htod(&vec![bf16::from_f32(0.5); tokens * width])?;
//! let q_norm = stream.clone_htod(&vec![bf16::ONE; 128])?;
//! let k_norm = stream.clone_htod(&vec![bf16::ONE; 128])?;
//! let positions = stream.clone_htod(&(0..tokens as i32).collect::<Vec<_>>())?;
//! let cfg = QkNormRope { heads, eps: 1e-6, rope: Rope::neox(1e6, 128) };
//! fused_qk_norm_rope(&rt, &mut qkv, Rows::contiguous(tokens, width), &q_norm, &k_norm, &positions, &cfg)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]

mod config;
#[allow(unsafe_code)]
mod ffi;
mod plan;
pub mod reference;

use std::sync::LazyLock;

use kiln_runtime::cudarc::driver::{DevicePtr, DevicePtrMut};
use kiln_runtime::{DtypeId, FastMath, KernelSource, KernelSpec, MathPolicy, PRELUDE, Result, Runtime, TemplateArg, ensure, template_expr};

pub use config::{Element, Heads, NormWeight, Position, QkNormRope, Rope, RopeStyle, Rows, Yarn};

/// The kernel source: `cuda/rope.cuh` and the device prelude.
pub static SOURCE: KernelSource = KernelSource { name: "rope.cuh", text: include_str!("../cuda/rope.cuh"), headers: &[PRELUDE] };

const DTYPES: [DtypeId; 2] = [DtypeId::Bf16, DtypeId::F16];

static SPECS: LazyLock<Vec<KernelSpec>> = LazyLock::new(build_specs);

/// How a kernel reaches memory and how many CTAs it is built to keep per SM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// 16-byte vectors.
    Vec,
    /// Element-wise accesses (unaligned rows).
    Scalar,
    /// 16-byte vectors and an L2 prefetch before the PDL wait (small PDL launches only: without
    /// PDL there is no predecessor to overlap).
    VecPrefetch,
    /// 16-byte vectors, 4 CTAs per SM instead of 3 (norm + RoPE grids of
    /// [`plan::LARGE_GRID_CTAS`] or more).
    VecLarge,
}

impl Access {
    fn tag(self) -> &'static str {
        match self {
            Access::Vec => "v16",
            Access::Scalar => "scalar",
            Access::VecPrefetch => "v16_prefetch",
            Access::VecLarge => "v16_large",
        }
    }
}

/// The kernels of one dtype with the norm, in `SPECS` order: (access, PDL); without the norm the
/// first [`APPLY_MODES`] of them (no large-grid kernel).
const MODES: [(Access, bool); 7] = [
    (Access::Vec, false),
    (Access::Vec, true),
    (Access::Scalar, false),
    (Access::Scalar, true),
    (Access::VecPrefetch, true),
    (Access::VecLarge, false),
    (Access::VecLarge, true),
];
const APPLY_MODES: usize = 5;

/// The modes built for `norm`.
fn modes(norm: bool) -> &'static [(Access, bool)] {
    &MODES[..if norm { MODES.len() } else { APPLY_MODES }]
}

fn build_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for dt in DTYPES {
        for norm in [true, false] {
            for &(access, pdl) in modes(norm) {
                let op = if norm { "fused_qk_norm_rope" } else { "apply_rope" };
                let name = format!("{op}__{}__{}{}", dt.tag(), access.tag(), if pdl { "__pdl" } else { "" });
                let args = [
                    dt.into(),
                    TemplateArg::Bool(norm),
                    TemplateArg::Bool(access != Access::Scalar),
                    TemplateArg::Bool(pdl),
                    TemplateArg::Bool(access == Access::VecPrefetch),
                    TemplateArg::Int(if access == Access::VecLarge { 4 } else { 3 }),
                ];
                // Bit-reproducible arithmetic: explicit _rn intrinsics everywhere, and no flush
                // of f32 subnormals (bf16 inputs may be subnormal).
                let spec = KernelSpec::new(name, &SOURCE, template_expr("rope_kernel", &args));
                v.push(spec.pdl(pdl).math(MathPolicy::Fixed(FastMath::PRECISE)));
            }
        }
    }
    v
}

/// The kernel of a launch: `prefetch` applies to PDL vector launches only, `large` (a grid of
/// [`plan::LARGE_GRID_CTAS`] or more) to the other vector launches with the norm.
fn spec(dt: DtypeId, norm: bool, vec: bool, pdl: bool, prefetch: bool, large: bool) -> &'static KernelSpec {
    let d = DTYPES.iter().position(|&x| x == dt).expect("Element is bf16 or f16");
    let access = match (vec, prefetch && pdl, large && norm) {
        (false, _, _) => Access::Scalar,
        (true, true, _) => Access::VecPrefetch,
        (true, false, true) => Access::VecLarge,
        (true, false, false) => Access::Vec,
    };
    let m = modes(norm).iter().position(|&x| x == (access, pdl)).expect("every mode has a spec");
    &SPECS[d * (MODES.len() + APPLY_MODES) + if norm { 0 } else { MODES.len() } + m]
}

/// Every kernel instantiation of this crate (for prewarm, snapshots and preload): bf16 and f16 ×
/// {norm + RoPE, RoPE} × {16-byte vector, scalar (unaligned rows)} × {plain, PDL}, the
/// prefetching PDL vector kernels of small launches and the norm + RoPE vector kernels of large
/// grids.
pub fn kernel_specs() -> Vec<KernelSpec> {
    SPECS.clone()
}

/// Size in bytes of the by-value parameter struct of `spec`'s kernel; the snapshot suite checks
/// it against the `.param` declaration in the PTX.
#[doc(hidden)]
pub fn params_bytes(spec: &KernelSpec) -> Option<usize> {
    std::ptr::eq(spec.source(), &SOURCE).then_some(size_of::<ffi::Params>())
}

const FUSED: &str = "fused_qk_norm_rope";
const APPLY_QKV: &str = "apply_rope_qkv";
const APPLY: &str = "apply_rope";

/// Checks every argument of [`fused_qk_norm_rope`] from the shapes alone.
fn check_fused(cfg: &QkNormRope, rows: Rows, qkv_len: usize, q_weight_len: usize, k_weight_len: usize, positions_len: usize) -> Result<()> {
    let h = cfg.heads;
    plan::check_rope(FUSED, &cfg.rope, h.head_dim)?;
    plan::check_heads(FUSED, h.nq, h.nk)?;
    ensure!(cfg.eps.is_finite() && cfg.eps > 0.0, FUSED, "eps={:?}: must be finite and > 0", cfg.eps);
    let width = h.width();
    ensure!(width.is_some(), FUSED, "(nq+nk+nv)*head_dim overflows: nq={} nk={} nv={} head_dim={}", h.nq, h.nk, h.nv, h.head_dim);
    plan::check_rows(FUSED, "qkv", rows, qkv_len, width.unwrap_or(0), "(nq+nk+nv)*head_dim")?;
    ensure!(q_weight_len == h.head_dim, FUSED, "q_weight.len()={q_weight_len} != head_dim={}", h.head_dim);
    ensure!(k_weight_len == h.head_dim, FUSED, "k_weight.len()={k_weight_len} != head_dim={}", h.head_dim);
    ensure!(positions_len == rows.tokens, FUSED, "positions.len()={positions_len} != tokens={}", rows.tokens);
    Ok(())
}

/// Checks every argument of [`apply_rope_qkv`] from the shapes alone.
fn check_apply_qkv(heads: Heads, rope: &Rope, rows: Rows, qkv_len: usize, positions_len: usize) -> Result<()> {
    plan::check_rope(APPLY_QKV, rope, heads.head_dim)?;
    plan::check_heads(APPLY_QKV, heads.nq, heads.nk)?;
    let width = heads.width();
    ensure!(
        width.is_some(),
        APPLY_QKV,
        "(nq+nk+nv)*head_dim overflows: nq={} nk={} nv={} head_dim={}",
        heads.nq,
        heads.nk,
        heads.nv,
        heads.head_dim
    );
    plan::check_rows(APPLY_QKV, "qkv", rows, qkv_len, width.unwrap_or(0), "(nq+nk+nv)*head_dim")?;
    ensure!(positions_len == rows.tokens, APPLY_QKV, "positions.len()={positions_len} != tokens={}", rows.tokens);
    Ok(())
}

/// Checks every argument of [`apply_rope`] from the shapes alone; returns (nq, nk).
fn check_apply(
    head_dim: usize,
    rope: &Rope,
    q_rows: Rows,
    q_len: usize,
    k_rows: Rows,
    k_len: usize,
    positions_len: usize,
) -> Result<(usize, usize)> {
    plan::check_rope(APPLY, rope, head_dim)?;
    ensure!(q_rows.width.is_multiple_of(head_dim), APPLY, "q width={} is not a multiple of head_dim={head_dim}", q_rows.width);
    ensure!(k_rows.width.is_multiple_of(head_dim), APPLY, "k width={} is not a multiple of head_dim={head_dim}", k_rows.width);
    ensure!(q_rows.tokens == k_rows.tokens, APPLY, "q has {} tokens but k has {}", q_rows.tokens, k_rows.tokens);
    let (nq, nk) = (q_rows.width / head_dim, k_rows.width / head_dim);
    plan::check_heads(APPLY, nq, nk)?;
    plan::check_rows(APPLY, "q", q_rows, q_len, q_rows.width, "nq*head_dim")?;
    plan::check_rows(APPLY, "k", k_rows, k_len, k_rows.width, "nk*head_dim")?;
    ensure!(positions_len == q_rows.tokens, APPLY, "positions.len()={positions_len} != tokens={}", q_rows.tokens);
    Ok((nq, nk))
}

/// Whether 16-byte vector accesses are valid: both base addresses and both row strides aligned.
fn vectorizable<T>(q: u64, k: u64, q_stride: usize, k_stride: usize) -> bool {
    let e = size_of::<T>();
    q.is_multiple_of(16) && k.is_multiple_of(16) && (q_stride * e).is_multiple_of(16) && (k_stride * e).is_multiple_of(16)
}

/// Device addresses of one launch.
struct Ptrs {
    q: u64,
    k: u64,
    q_stride: usize,
    k_stride: usize,
    q_weight: u64,
    k_weight: u64,
    positions: u64,
}

/// Fills the planned parameters with the addresses and type flags and launches.
fn finish<T: Element, P: Position>(rt: &Runtime, mut plan: plan::Plan, norm: bool, weight_f32: bool, ptrs: Ptrs) -> Result<()> {
    let p = &mut plan.params;
    p.q = ptrs.q;
    p.k = ptrs.k;
    p.q_stride = ptrs.q_stride as i64;
    p.k_stride = ptrs.k_stride as i64;
    p.q_weight = ptrs.q_weight;
    p.k_weight = ptrs.k_weight;
    p.positions = ptrs.positions;
    if P::ID == DtypeId::I64 {
        p.flags |= ffi::POS_I64;
    }
    if weight_f32 {
        p.flags |= ffi::WEIGHT_F32;
    }
    let vec = vectorizable::<T>(ptrs.q, ptrs.k, ptrs.q_stride, ptrs.k_stride);
    let head_bytes = (p.nq + p.nk) as usize * p.head_dim as usize * size_of::<T>();
    let prefetch = (plan.grid.0 as usize).saturating_mul(head_bytes) <= plan::PREFETCH_MAX_BYTES;
    let large = plan::large_grid(plan.grid);
    let kernel = rt.kernel(spec(T::ID, norm, vec, rt.pdl_enabled(), prefetch, large))?;
    ffi::launch(rt, &kernel, plan.grid, plan.block, &plan.params)
}

/// Per-head RMSNorm of the q and k heads of `qkv`, then RoPE, in place; V heads untouched.
///
/// `qkv` holds `rows.tokens` rows of `(nq + nk + nv)·head_dim` elements (`rows.width` must say so),
/// `rows.stride` elements apart; in each row the q heads come first, then k, then v. Each q head is
/// normalised with `q_weight` (`head_dim` elements), each k head with `k_weight`, then its first
/// `rotary_dim` elements are rotated by the angles of `positions[token]` (see the crate docs for
/// the exact arithmetic, and [`reference::fused_qk_norm_rope`] for a bit-exact CPU model).
///
/// Errors (before any launch) name the offending values: a qkv width other than
/// (nq+nk+nv)·head_dim, a stride below the width, a buffer too short for its rows, weights not of
/// head_dim elements, positions not of `tokens` elements, head_dim not a multiple of 8 in 8..=256,
/// rotary_dim odd, zero, above head_dim or (NeoX) not a multiple of 16, a non-finite or
/// non-positive eps or base, a non-finite or non-positive YaRN factor. With no tokens (or no q/k
/// heads) it returns `Ok` without launching.
pub fn fused_qk_norm_rope<T: Element, W: NormWeight<T>, P: Position>(
    rt: &Runtime,
    qkv: &mut impl DevicePtrMut<T>,
    rows: Rows,
    q_weight: &impl DevicePtr<W>,
    k_weight: &impl DevicePtr<W>,
    positions: &impl DevicePtr<P>,
    cfg: &QkNormRope,
) -> Result<()> {
    check_fused(cfg, rows, qkv.len(), q_weight.len(), k_weight.len(), positions.len())?;
    rt.check_context(FUSED, "qkv", qkv)?;
    rt.check_context(FUSED, "q_weight", q_weight)?;
    rt.check_context(FUSED, "k_weight", k_weight)?;
    rt.check_context(FUSED, "positions", positions)?;
    let h = cfg.heads;
    let Some(plan) = plan::plan(rows.tokens, h.nq, h.nk, h.head_dim, &cfg.rope, cfg.eps) else {
        return Ok(());
    };
    let stream = rt.stream();
    let (base, _qkv) = qkv.device_ptr_mut(stream);
    let (q_weight, _qw) = q_weight.device_ptr(stream);
    let (k_weight, _kw) = k_weight.device_ptr(stream);
    let (positions, _pos) = positions.device_ptr(stream);
    let k = base + (h.nq * h.head_dim * size_of::<T>()) as u64;
    let ptrs = Ptrs { q: base, k, q_stride: rows.stride, k_stride: rows.stride, q_weight, k_weight, positions };
    finish::<T, P>(rt, plan, true, W::ID == DtypeId::F32, ptrs)
}

/// RoPE alone on the q and k heads of a packed `qkv` matrix (layout as in
/// [`fused_qk_norm_rope`]), in place; V heads untouched. Same errors, less those about the norm.
pub fn apply_rope_qkv<T: Element, P: Position>(
    rt: &Runtime,
    qkv: &mut impl DevicePtrMut<T>,
    rows: Rows,
    positions: &impl DevicePtr<P>,
    heads: Heads,
    rope: &Rope,
) -> Result<()> {
    check_apply_qkv(heads, rope, rows, qkv.len(), positions.len())?;
    rt.check_context(APPLY_QKV, "qkv", qkv)?;
    rt.check_context(APPLY_QKV, "positions", positions)?;
    let Some(plan) = plan::plan(rows.tokens, heads.nq, heads.nk, heads.head_dim, rope, 1.0) else {
        return Ok(());
    };
    let stream = rt.stream();
    let (base, _qkv) = qkv.device_ptr_mut(stream);
    let (positions, _pos) = positions.device_ptr(stream);
    let k = base + (heads.nq * heads.head_dim * size_of::<T>()) as u64;
    let ptrs = Ptrs { q: base, k, q_stride: rows.stride, k_stride: rows.stride, q_weight: 0, k_weight: 0, positions };
    finish::<T, P>(rt, plan, false, false, ptrs)
}

/// RoPE alone on a query matrix `q` (`q_rows.width = nq·head_dim`) and a key matrix `k`
/// (`k_rows.width = nk·head_dim`), each with its own row stride, in place. Both must have the same
/// number of tokens, and `positions` one entry per token. Either may have no heads (width 0).
#[allow(clippy::too_many_arguments)]
pub fn apply_rope<T: Element, P: Position>(
    rt: &Runtime,
    q: &mut impl DevicePtrMut<T>,
    q_rows: Rows,
    k: &mut impl DevicePtrMut<T>,
    k_rows: Rows,
    positions: &impl DevicePtr<P>,
    head_dim: usize,
    rope: &Rope,
) -> Result<()> {
    let (nq, nk) = check_apply(head_dim, rope, q_rows, q.len(), k_rows, k.len(), positions.len())?;
    rt.check_context(APPLY, "q", q)?;
    rt.check_context(APPLY, "k", k)?;
    rt.check_context(APPLY, "positions", positions)?;
    let Some(plan) = plan::plan(q_rows.tokens, nq, nk, head_dim, rope, 1.0) else {
        return Ok(());
    };
    let stream = rt.stream();
    let (q, _q) = q.device_ptr_mut(stream);
    let (k, _k) = k.device_ptr_mut(stream);
    let (positions, _pos) = positions.device_ptr(stream);
    let ptrs = Ptrs { q, k, q_stride: q_rows.stride, k_stride: k_rows.stride, q_weight: 0, k_weight: 0, positions };
    finish::<T, P>(rt, plan, false, false, ptrs)
}

#[cfg(test)]
mod tests;
