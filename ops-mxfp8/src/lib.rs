//! # kiln-mxfp8
//!
//! MXFP8 for MoE layers on Hopper (sm_90) and Blackwell (sm_100): FP8 E4M3 elements with one E8M0
//! power-of-two scale per 32 consecutive elements of a row.
//!
//! **Quantization** ([`quantize_mxfp8`], [`quantize_mxfp8_into`], [`quantize_mxfp8_grouped`]) and
//! **dequantization** ([`dequantize_mxfp8`], [`dequantize_mxfp8_grouped`]) of bf16/f16 tensors,
//! dense or grouped by expert with the expert metadata kept on the device (no host sync), scales
//! in the cuBLAS/CUTLASS 128×4 blocked layout or row-major ([`ScaleLayout`]). On sm_90+ the
//! quantizer streams aligned inputs through TMA into a shared-memory ring; elsewhere it loads
//! into registers ([`QuantKernel`], [`quantize_mxfp8_grouped_with`]; same results).
//!
//! **Grouped GEMM** ([`grouped_gemm_mxfp8`], [`grouped_gemm_workspace_size`]): the MoE expert
//! GEMM on MXFP8 weights and tokens (blocked scales, the quantizer's grouped layout), bf16/f16
//! out, metadata on the device; wgmma kernels on sm_90, a tcgen05 block-scaled kernel for sm_100
//! that has not yet run on hardware; its CPU reference is [`gemm_reference`].
//!
//! ## Numerics
//! - Scale (RCEIL, exact): `e = ceil(log2(amax / 448))` clamped to `[−127, 127]`, scale byte
//!   `e + 127`, computed with integer arithmetic on amax's bits; `amax` is the largest |x| over the
//!   block's **finite** elements.
//! - Elements: `q = RN_sat_e4m3(x · 2^-e)`, `2^-e` built exactly; finite elements never saturate.
//! - All-zero blocks (and blocks of nothing but NaN/±inf, and any amax ≤ 448·2^-127): scale byte
//!   0 (2^-127), elements exact or ±0, never NaN. Subnormal inputs are kept (no flush to zero).
//! - NaN elements become an E4M3 NaN and ±inf become ±448 (saturation); neither changes the scale
//!   or the other elements of the block.
//! - Padding scale rows of the blocked layout (`m .. round_up(m, 128)` of each expert) are written
//!   with byte 0, the scale of an all-zero row.
//! - Dequantization: `RN_T(e4m3(q) · 2^(s − 127))`, the product in f32.
//!
//! Where this differs from SGLang's SM100 kernel (`sf = amax · rcp.approx(448)`, `cvt.rp` to
//! E8M0, `q = x · rcp.approx.ftz(scale)`): kiln takes the ceiling of the exact quotient and
//! multiplies by the exact power of two, so it never rounds the scale up one step because of the
//! approximate reciprocal (an amax within an ulp of `448·2^k`); amax ≤ ~5e-36 gets scale 2^-127
//! and exact elements where SGLang's flushed reciprocal is +inf (zeros → NaN, values → ±448); an
//! inf element leaves the block intact where SGLang zeroes it; NaN is never part of the scale in
//! either; and padding rows are written (SGLang leaves stale bytes).
//!
//! ```no_run
//! use kiln_mxfp8::{Experts, Mxfp8Shape, ScaleLayout, layout, quantize_mxfp8_grouped};
//! use kiln_runtime::{E4m3, E8m0, Runtime, half::bf16};
//!
//! let rt = Runtime::new(0)?;
//! rt.preload(&kiln_mxfp8::kernel_specs())?; // before any CUDA-graph capture
//! let stream = rt.stream();
//! let (k, tokens) = (7168usize, [3i32, 0, 130, 7]);
//! let rows: usize = tokens.iter().map(|&m| m as usize).sum();
//! let (scale_offsets, scale_rows) = layout::blockscale_offsets(&tokens, ScaleLayout::Blocked128x4)?;
//! let x = stream.clone_htod(&vec![bf16::from_f32(1.5); rows * k]).unwrap();
//! let offsets = stream.clone_htod(&layout::expert_offsets(&tokens)?).unwrap();
//! let counts = stream.clone_htod(&tokens).unwrap();
//! let scale_offsets = stream.clone_htod(&scale_offsets).unwrap();
//! let mut q = stream.alloc_zeros::<E4m3>(rows * k).unwrap();
//! let mut scales = stream.alloc_zeros::<E8m0>(scale_rows * k / 32).unwrap();
//! let experts = Experts { expert_offsets: &offsets, tokens_per_expert: &counts, blockscale_offsets: &scale_offsets };
//! quantize_mxfp8_grouped(&rt, &x, experts, &mut q, &mut scales, Mxfp8Shape::contiguous(rows, k), ScaleLayout::Blocked128x4)?;
//! # Ok::<(), kiln_runtime::Error>(())
//! ```
//!
//! Modules: [`layout`] (block size, scale layouts and their byte offsets — shared with the GEMM),
//! [`reference`](mod@reference) (the CPU model of every kernel, bit for bit).
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod ffi;
#[allow(unsafe_code)]
mod ffi_gemm;
mod gemm;
pub mod gemm_reference;
pub mod layout;
mod quant;
pub mod reference;

use kiln_runtime::{Error, KernelSpec, Result};

/// The product of `factors` (named values) as a buffer length, or an `Err` of `op` naming the
/// product, its exact value and the factors when it overflows `usize`.
pub(crate) fn checked_len(op: &'static str, expr: &str, factors: &[(&str, usize)]) -> Result<usize> {
    factors.iter().try_fold(1usize, |acc, &(_, f)| acc.checked_mul(f)).ok_or_else(|| {
        let exact = factors
            .iter()
            .try_fold(1u128, |acc, &(_, f)| acc.checked_mul(f as u128))
            .map_or_else(|| "more than u128::MAX".to_string(), |v| v.to_string());
        let named = factors.iter().map(|(name, v)| format!("{name}={v}")).collect::<Vec<_>>().join(", ");
        Error::invalid(op, format!("{expr}={exact} overflows usize ({named})"))
    })
}

pub use gemm::{
    DECODE_MAX_TOKENS_PER_EXPERT, GemmKernel, GemmOutput, GroupedGemmShape, Mxfp8Operand, grouped_gemm_kernel, grouped_gemm_mxfp8,
    grouped_gemm_mxfp8_with, grouped_gemm_workspace_size,
};
pub use layout::ScaleLayout;
pub use quant::{
    Experts, HEADERS, MAX_EXPERTS, Mxfp8Shape, QuantKernel, dequantize_mxfp8, dequantize_mxfp8_grouped, quantize_mxfp8,
    quantize_mxfp8_grouped, quantize_mxfp8_grouped_with, quantize_mxfp8_into,
};

/// Every kernel instantiation of this crate (for prewarm, snapshots and preload).
pub fn kernel_specs() -> Vec<KernelSpec> {
    let mut v = quant::SPECS.to_vec();
    v.extend(quant::TMA_SPECS.iter().cloned());
    v.extend(gemm::SPECS.iter().cloned());
    v
}

/// Size in bytes of the by-value parameter struct of `spec`'s kernel; the snapshot suite checks
/// it against the `.param` declaration in the PTX.
#[doc(hidden)]
pub fn params_bytes(spec: &KernelSpec) -> Option<usize> {
    if quant::SPECS.iter().any(|s| s.fingerprint() == spec.fingerprint()) {
        return Some(quant::PARAMS_BYTES);
    }
    gemm::params_bytes(spec)
}
