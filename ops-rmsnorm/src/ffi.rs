//! The kernels' by-value parameter struct, the one unsafe launch and the allocation of outputs the
//! kernels write completely.

use kiln_runtime::cudarc::driver::{CudaSlice, DeviceRepr};
use kiln_runtime::{Error, Kernel, LaunchConfig, Result, Runtime};

use crate::plan::Plan;

/// Mirrors `rmsnorm::Params` in `cuda/rmsnorm.cuh` field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub x: u64,
    pub out: u64,
    pub residual: u64,
    pub weight: u64,
    pub rows: i64,
    pub x_stride: i64,
    pub out_stride: i64,
    pub res_stride: i64,
    pub hidden: i32,
    pub chunks: i32,
    pub log2_group: i32,
    pub iters_log2: i32,
    pub eps: f32,
    pub form: i32,
    pub flags: i32,
    pub rows_per_thread: i32,
    pub inv_hidden: f32,
}

pub(crate) const PARAMS_BYTES: usize = 104;
const _: () = assert!(size_of::<Params>() == PARAMS_BYTES);

/// Launches `kernel` (an instantiation of `rmsnorm_rows` / `rmsnorm_rows_stream` for the
/// call's element types, chosen by `lib.rs` from the spec table) with the validated `plan`.
pub(crate) fn launch(rt: &Runtime, kernel: &Kernel, plan: &Plan, params: &Params) -> Result<()> {
    let cfg = LaunchConfig::linear(plan.grid, plan.block);
    // SAFETY: `Params` is `#[repr(C)]` and mirrors the kernel's single parameter (size asserted
    // above and checked against the PTX by the T1 snapshot suite). `plan::plan` validated, before
    // this call: x / out / residual hold at least (rows-1)*stride+hidden elements of T at their
    // strides (stride >= hidden), weight holds exactly hidden elements of W, every pointer is
    // aligned to its element (and to 16 bytes with every stride a multiple of 16 bytes when
    // `plan.vec` is set), hidden <= MAX_HIDDEN, rows <= i32::MAX; the grid covers `rows` rows with
    // the row-to-thread mapping the kernel derives from the same `log2_group`, `block` and
    // `iters_log2`. Every pointer comes from a `device_ptr(_mut)` guard that the caller keeps alive
    // until this call returns, and the buffers outlive the launch (they are borrowed by the
    // caller and freed in stream order). When out == x (in place) each thread reads all the
    // elements it writes before writing them.
    unsafe { rt.launch(kernel, cfg).run(params) }
}

/// An uninitialised buffer of `n` elements for an output the kernel writes completely.
pub(crate) fn alloc_output<T: DeviceRepr>(rt: &Runtime, n: usize) -> Result<CudaSlice<T>> {
    if n == 0 {
        return rt.stream().null().map_err(|e| Error::driver("allocating an empty output", e));
    }
    // SAFETY: the only caller (`rms_norm_alloc`) launches a kernel that writes each of the
    // `n = rows * hidden` elements (contiguous rows, out_stride = hidden) before anyone reads them.
    unsafe { rt.stream().alloc::<T>(n) }.map_err(|e| Error::driver(format!("allocating {n} output elements"), e))
}
