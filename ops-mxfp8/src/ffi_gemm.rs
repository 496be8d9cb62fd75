//! The unsafe part of the grouped GEMM: the parameter structs, the TMA tensor maps and the launch.
//! Every check the launch relies on is done by `gemm::plan` before `launch` runs.

use std::ffi::c_void;
use std::mem::MaybeUninit;

use kiln_runtime::cudarc::driver::sys;
use kiln_runtime::{Error, LaunchConfig, Result, Runtime};

use crate::gemm::{ARGS_BYTES, GemmPlan, SPECS, TMA_PARAMS_BYTES, spec_index};

/// `mxfp8::gemm::GemmArgs` of `cuda/gemm_common.cuh`, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct GemmArgs {
    weights: u64,
    weight_scales: u64,
    tokens: u64,
    token_scales: u64,
    expert_offsets: u64,
    tokens_per_expert: u64,
    blockscale_offsets: u64,
    out: u64,
    rows: i64,
    scale_rows: i64,
    experts: i32,
    n: i32,
    k: i32,
    unused: i32,
}

/// `mxfp8::gemm::TmaParams`: two tensor maps (128-byte aligned, as CUDA 13 declares them) and the
/// problem.
#[repr(C)]
#[derive(Clone, Copy)]
struct TmaParams {
    tokens_map: sys::CUtensorMap,
    weights_map: sys::CUtensorMap,
    args: GemmArgs,
}

const _: () = assert!(size_of::<GemmArgs>() == ARGS_BYTES);
const _: () = assert!(size_of::<TmaParams>() == TMA_PARAMS_BYTES);
const _: () = assert!(align_of::<TmaParams>() == 128);

/// Device addresses of one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GemmPtrs {
    pub weights: u64,
    pub weight_scales: u64,
    pub tokens: u64,
    pub token_scales: u64,
    /// `[expert_offsets, tokens_per_expert, blockscale_offsets]`.
    pub meta: [u64; 3],
    pub out: u64,
}

/// A 2-D tensor map over a row-major tensor at `addr` of `dims` = [columns, rows] elements of
/// `dtype` with `row_bytes` between rows, box `boxes` = [columns, rows], `swizzle`; out-of-bounds
/// elements read as 0. The callers' plans checked the encoding's preconditions (16-byte aligned
/// `addr` and `row_bytes`, dims ≥ 1); a violation comes back as an error code, which is returned.
pub(crate) fn tensor_map_2d(
    addr: u64,
    dtype: sys::CUtensorMapDataType,
    dims: [u64; 2],
    row_bytes: u64,
    boxes: [u32; 2],
    swizzle: sys::CUtensorMapSwizzle,
) -> Result<sys::CUtensorMap> {
    let strides: [u64; 1] = [row_bytes];
    let elem: [u32; 2] = [1, 1];
    let mut map = MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: `map` is writable storage of the right type; the arrays have rank (2) entries (rank −
    // 1 for the strides) and outlive the call; the other preconditions are checked by the driver
    // (see above).
    let rc = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            dtype,
            2,
            addr as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzle,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    rc.result()
        .map_err(|e| Error::driver(format!("cuTensorMapEncodeTiled({dtype:?}, dims {dims:?}, row bytes {row_bytes}, box {boxes:?})"), e))?;
    // SAFETY: a successful cuTensorMapEncodeTiled wrote the whole map (and it started zeroed).
    Ok(unsafe { map.assume_init() })
}

/// The map of a row-major `[rows, k]` byte tensor (`gemm::plan` checked: 16-byte aligned, k a
/// multiple of 128, rows ≥ 1), box {128, box_rows}, 128-byte swizzle (the layout the
/// wgmma/tcgen05 descriptors name).
fn tensor_map(addr: u64, rows: usize, k: usize, box_rows: u32) -> Result<sys::CUtensorMap> {
    tensor_map_2d(
        addr,
        sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
        [k as u64, rows as u64],
        k as u64,
        [128, box_rows],
        sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
    )
}

/// Launches the kernel of a validated `plan`.
pub(crate) fn launch(rt: &Runtime, plan: &GemmPlan, p: &GemmPtrs) -> Result<()> {
    let kernel = rt.kernel(&SPECS[spec_index(plan.kernel, plan.dtype, rt.pdl_enabled())])?;
    let s = plan.shape;
    let args = GemmArgs {
        weights: p.weights,
        weight_scales: p.weight_scales,
        tokens: p.tokens,
        token_scales: p.token_scales,
        expert_offsets: p.meta[0],
        tokens_per_expert: p.meta[1],
        blockscale_offsets: p.meta[2],
        out: p.out,
        rows: s.rows as i64,
        scale_rows: plan.scale_rows as i64,
        experts: s.experts as i32,
        n: s.n as i32,
        k: s.k as i32,
        unused: 0,
    };
    let threads = plan.kernel.threads();
    if plan.kernel.uses_tma() {
        let params = TmaParams {
            tokens_map: tensor_map(p.tokens, s.rows, s.k, plan.kernel.token_tile() as u32)?,
            weights_map: tensor_map(p.weights, s.experts * s.n, s.k, 128)?,
            args,
        };
        let cfg = LaunchConfig::linear(rt.sm_count().max(1), threads).with_smem(plan.smem);
        // SAFETY: `TmaParams` mirrors the kernel's parameter (size and alignment asserted above,
        // size against the PTX in T1). `gemm::plan` checked: the weights hold experts·n·k bytes
        // and their scales experts·n·k/32; tokens hold rows·k bytes and out rows·n elements of the
        // spec's dtype; the token scales are scale_rows·k/32 bytes with scale_rows a multiple of
        // 128; k and n are multiples of 128, experts ≤ 1024, experts·n, k and rows ≤ i32::MAX (so
        // the int32 fields hold them); the metadata buffers hold `experts` int32 each (their
        // contents are clamped on the device so that every access stays inside those bounds, whole
        // 128-row scale atoms included); every buffer lives in the runtime's context; the operand
        // pointers are 16-byte aligned, out 4-byte aligned; the tensor maps describe
        // exactly the tokens and weights buffers; the dynamic shared memory is the kernel's own
        // formula for `experts` (the kernel traps if it gets less). The caller holds the buffers'
        // guards until this returns and the kernel runs on the runtime's stream, which orders it
        // before any later use of them.
        unsafe { rt.launch(&kernel, cfg).run(&params) }
    } else {
        let resident = rt.sm_count() * kernel.blocks_per_sm(threads, plan.smem)?.max(1);
        let cfg = LaunchConfig::linear(resident.max(1), threads).with_smem(plan.smem);
        // SAFETY: `GemmArgs` mirrors the kernel's parameter (size asserted above and against the
        // PTX in T1); the bounds, alignment and shared-memory facts are those listed for the TMA
        // kernels above (checked by `gemm::plan`), and the same guards and stream ordering hold.
        unsafe { rt.launch(&kernel, cfg).run(&args) }
    }
}
