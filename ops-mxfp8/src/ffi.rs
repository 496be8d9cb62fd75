//! The unsafe part of the quantization kernels: the parameter struct, output allocation and the
//! launch. Every check the launch relies on is done by `quant::plan` before these run.

use kiln_runtime::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, sys};
use kiln_runtime::{Dtype, E4m3, E8m0, Error, LaunchConfig, Result, Runtime};

use crate::ffi_gemm::tensor_map_2d;
use crate::quant::{
    Dir, Experts, PARAMS_BYTES, Plan, QuantKernel, SPECS, THREADS, TILE_COLS, TILE_ROWS, TMA_SPECS, choose, spec_index, tma_index,
    tma_smem, vector_ok,
};

/// `Mxfp8Params` of `cuda/quant.cuh`, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Params {
    x: u64,
    q: u64,
    scales: u64,
    expert_offsets: u64,
    tokens_per_expert: u64,
    blockscale_offsets: u64,
    rows: i64,
    k: i64,
    x_stride: i64,
    q_stride: i64,
    scale_rows: i64,
    num_experts: i32,
    layout: i32,
}

const _: () = assert!(size_of::<Params>() == PARAMS_BYTES);

/// `Mxfp8TmaParams` of `cuda/quant.cuh`: the tensor map of x, then the common parameters.
#[repr(C, align(128))]
#[derive(Clone, Copy)]
struct TmaQuantParams {
    x_map: sys::CUtensorMap,
    p: Params,
}

const _: () = assert!(size_of::<TmaQuantParams>() == 256);

/// The tensor map of the quantizer's input: `[rows, k]` 16-bit elements with row stride
/// `x_stride`, box one tile ({256, 64}), no swizzle (the caller checked `vector_ok`: 16-byte aligned x and
/// row stride).
fn x_map(addr: u64, rows: usize, k: usize, x_stride: usize) -> Result<sys::CUtensorMap> {
    tensor_map_2d(
        addr,
        sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT16,
        [k as u64, rows as u64],
        // `quant::plan` bounded x_stride by MAX_EXTENT (i64::MAX / 16): no overflow.
        x_stride as u64 * 2,
        [TILE_COLS as u32, TILE_ROWS as u32],
        sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
    )
}

/// Device addresses of one call.
struct Addrs {
    x: u64,
    q: u64,
    scales: u64,
    meta: [u64; 3],
}

/// Allocates the outputs of the allocating quantizer (the kernel writes every element of both:
/// every row of `q`, every scale row including the blocked layout's padding rows).
pub(crate) fn alloc_outputs(rt: &Runtime, q_len: usize, scales_len: usize) -> Result<(CudaSlice<E4m3>, CudaSlice<E8m0>)> {
    let stream = rt.stream();
    // SAFETY: the memory is uninitialised; the caller (`quantize_mxfp8`) launches the quantizer over
    // a contiguous [rows, k] `q` and a dense `scales` tensor, which writes all of both before any
    // read on this stream (with rows == 0 both are empty).
    let q = unsafe { stream.alloc::<E4m3>(q_len) }.map_err(|e| Error::driver("allocating q", e))?;
    // SAFETY: as above.
    let s = unsafe { stream.alloc::<E8m0>(scales_len) }.map_err(|e| Error::driver("allocating scales", e))?;
    Ok((q, s))
}

fn launch(rt: &Runtime, plan: &Plan, a: &Addrs, choice: QuantKernel) -> Result<()> {
    let vec = vector_ok(plan, a.x, a.q);
    let tma = choose(plan, choice, vec, rt.arch().major >= 9, rt.sm_count() as usize)?;
    let (kernel, smem) = match tma {
        Some(stages) => (rt.kernel(&TMA_SPECS[tma_index(plan.dtype, stages, rt.pdl_enabled())])?, tma_smem(stages, plan.num_experts)),
        None => (rt.kernel(&SPECS[spec_index(plan.dir, plan.dtype, vec, rt.pdl_enabled())])?, plan.smem),
    };
    let resident = rt.sm_count() as usize * kernel.blocks_per_sm(THREADS, smem)?.max(1) as usize;
    let grid = resident.min(plan.tiles).max(1) as u32;
    let p = Params {
        x: a.x,
        q: a.q,
        scales: a.scales,
        expert_offsets: a.meta[0],
        tokens_per_expert: a.meta[1],
        blockscale_offsets: a.meta[2],
        rows: plan.shape.rows as i64,
        k: plan.shape.k as i64,
        x_stride: plan.shape.x_stride as i64,
        q_stride: plan.shape.q_stride as i64,
        scale_rows: plan.scale_rows as i64,
        num_experts: plan.num_experts.max(1) as i32,
        layout: plan.layout.device_code(),
    };
    if tma.is_some() {
        let tp = TmaQuantParams { x_map: x_map(a.x, plan.shape.rows, plan.shape.k, plan.shape.x_stride)?, p };
        // SAFETY: as below, plus: `choose` picked this kernel only for the quantizer on sm_90+ with
        // `vector_ok` (16-byte aligned x and x row stride), the tensor map describes exactly x's
        // [rows, k] elements, and the shared memory is `tma_smem` for this stage count and table
        // (the spec raised the kernel's limit to the 1024-expert size).
        return unsafe { rt.launch(&kernel, LaunchConfig::linear(grid, THREADS).with_smem(smem)).run(&tp) };
    }
    // SAFETY: `Params` mirrors `Mxfp8Params` (size asserted above and against the PTX in T1).
    // `quant::plan` checked: the dtype is one the kernel is instantiated for; x/out hold
    // (rows-1)*x_stride+k elements and q (rows-1)*q_stride+k bytes, both strides and extents at
    // most MAX_EXTENT (i64::MAX / 16, so the kernel's 64-bit offsets, 8-row steps and byte offsets
    // cannot overflow); every buffer lives in the runtime's context; k is a multiple of 32 (128 when
    // blocked); the dense scale tensor holds padded_rows(rows)*k/32 bytes, a grouped one exactly
    // scale_rows*k/32 (whole 128-row groups when blocked); rows ≤ i32::MAX; the three metadata
    // buffers hold num_experts ≤ 1024 int32 each (null in the dense form), and their contents are
    // clamped on the device to these bounds; the shared memory covers the expert table (24 bytes
    // per expert). The vectorised kernel is chosen only when `vector_ok` found every pointer and
    // stride aligned. The caller keeps the buffers' guards alive until this returns, and the
    // kernel runs on the runtime's stream, which orders it before any later use of them.
    unsafe { rt.launch(&kernel, LaunchConfig::linear(grid, THREADS).with_smem(smem)).run(&p) }
}

/// Launches the quantizer of a validated `plan`.
pub(crate) fn quantize<T: Dtype, M: DevicePtr<i32>>(
    rt: &Runtime,
    plan: &Plan,
    x: &impl DevicePtr<T>,
    q: &mut impl DevicePtrMut<E4m3>,
    scales: &mut impl DevicePtrMut<E8m0>,
    experts: Option<Experts<'_, M>>,
    choice: QuantKernel,
) -> Result<()> {
    debug_assert_eq!(plan.dir, Dir::Quantize);
    let op = plan.dir.op();
    rt.check_context(op, "x", x)?;
    rt.check_context(op, "q", &*q)?;
    rt.check_context(op, "scales", &*scales)?;
    check_meta_contexts(rt, op, experts.as_ref())?;
    let s = rt.stream();
    let guards =
        experts.as_ref().map(|e| (e.expert_offsets.device_ptr(s), e.tokens_per_expert.device_ptr(s), e.blockscale_offsets.device_ptr(s)));
    let meta = guards.as_ref().map_or([0; 3], |(a, b, c)| [a.0, b.0, c.0]);
    let (x, _gx) = x.device_ptr(s);
    let (q, _gq) = q.device_ptr_mut(s);
    let (scales, _gs) = scales.device_ptr_mut(s);
    launch(rt, plan, &Addrs { x, q, scales, meta }, choice)
}

/// Launches the dequantizer of a validated `plan`.
pub(crate) fn dequantize<T: Dtype, M: DevicePtr<i32>>(
    rt: &Runtime,
    plan: &Plan,
    q: &impl DevicePtr<E4m3>,
    scales: &impl DevicePtr<E8m0>,
    out: &mut impl DevicePtrMut<T>,
    experts: Option<Experts<'_, M>>,
) -> Result<()> {
    debug_assert_eq!(plan.dir, Dir::Dequantize);
    let op = plan.dir.op();
    rt.check_context(op, "q", q)?;
    rt.check_context(op, "scales", scales)?;
    rt.check_context(op, "out", &*out)?;
    check_meta_contexts(rt, op, experts.as_ref())?;
    let s = rt.stream();
    let guards =
        experts.as_ref().map(|e| (e.expert_offsets.device_ptr(s), e.tokens_per_expert.device_ptr(s), e.blockscale_offsets.device_ptr(s)));
    let meta = guards.as_ref().map_or([0; 3], |(a, b, c)| [a.0, b.0, c.0]);
    let (q, _gq) = q.device_ptr(s);
    let (scales, _gs) = scales.device_ptr(s);
    let (x, _gx) = out.device_ptr_mut(s);
    launch(rt, plan, &Addrs { x, q, scales, meta }, QuantKernel::Registers)
}

/// The expert metadata must live in the runtime's context too (see `Runtime::check_context`).
pub(crate) fn check_meta_contexts<M: DevicePtr<i32>>(rt: &Runtime, op: &'static str, experts: Option<&Experts<'_, M>>) -> Result<()> {
    if let Some(e) = experts {
        rt.check_context(op, "expert_offsets", e.expert_offsets)?;
        rt.check_context(op, "tokens_per_expert", e.tokens_per_expert)?;
        rt.check_context(op, "blockscale_offsets", e.blockscale_offsets)?;
    }
    Ok(())
}
