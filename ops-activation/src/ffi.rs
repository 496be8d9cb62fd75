//! The kernel's by-value parameter struct, the one unsafe launch, and the allocation of outputs
//! the kernel writes completely.

use kiln_runtime::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, SyncOnDrop};
use kiln_runtime::{Error, Result, Runtime};

use crate::plan::{
    Plan, disjoint, filter_tile, filtered_fixed, first_wave_prefetch, hinted_flags, launch_config, prefetch_blocks, release_kept_flags,
    tiled_flags, tiled_geometry, vector_path, wide_allowed,
};
use crate::{Float, Kernels, Options};

/// Mirror of `kiln_act::Params` in `cuda/activation.cuh` (same order, same sizes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Params {
    input: u64,
    out: u64,
    expert_ids: u64,
    sorted_token_ids: u64,
    num_tokens_post_padded: u64,
    rows: i64,
    d: i64,
    in_stride: i64,
    out_stride: i64,
    expert_step: u32,
    num_valid_tokens: i32,
    clamp: f32,
    flags: i32,
    tile: i32,
    hint_blocks: i32,
}

/// `sizeof(kiln_act::Params)`; the T1 suite checks it against the PTX `.param` declaration.
pub(crate) const PARAMS_BYTES: usize = 96;
const _: () = assert!(std::mem::size_of::<Params>() == PARAMS_BYTES);

fn ptr_of<'a>(buf: Option<&'a dyn DevicePtr<i32>>, stream: &'a kiln_runtime::cudarc::driver::CudaStream) -> (u64, Option<SyncOnDrop<'a>>) {
    match buf {
        Some(b) => {
            let (p, guard) = b.device_ptr(stream);
            (p, Some(guard))
        }
        None => (0, None),
    }
}

/// Launches one of `kernels` for a validated `plan` on the runtime's stream: the wide kernel (no
/// filter code) for unfiltered vector-path launches, the tiled one for filtered vector-path
/// launches that may read the ids before the wait (or force a tile), else the general kernel
/// (or the filtered kernel: its body with the launch's flags fixed).
pub(crate) fn launch<T: Float>(
    rt: &Runtime,
    op: &'static str,
    kernels: &Kernels,
    plan: &Plan,
    input: &impl DevicePtr<T>,
    out: &mut impl DevicePtrMut<T>,
    opts: &Options<'_>,
) -> Result<()> {
    let stream = rt.stream();
    let elem = std::mem::size_of::<T>();
    let (in_len, out_len) = (input.len(), out.len());
    // The guards keep cudarc's stream ordering of each buffer until after the launch is queued.
    let (in_addr, _in_guard) = input.device_ptr(stream);
    let (out_addr, _out_guard) = out.device_ptr_mut(stream);
    let (expert_ids, _expert_guard) = ptr_of(opts.expert.map(|e| e.ids), stream);
    let (sorted_token_ids, _sorted_guard) = ptr_of(opts.sorted.map(|s| s.sorted_token_ids), stream);
    let (num_tokens_post_padded, _npp_guard) = ptr_of(opts.sorted.map(|s| s.num_tokens_post_padded), stream);
    disjoint(op, in_addr, in_len, out_addr, out_len, elem)?;
    let (mut cfg, flags) = launch_config(plan, vector_path(plan, in_addr, out_addr, elem), elem);
    let mut flags = release_kept_flags(plan, flags, &cfg);
    // The wide kernel has no filter and no element-wise path: only unfiltered vector launches.
    // Filtered vector launches that may read the ids before the wait (or force a tile) take the
    // tiled kernel (see `filter_tile`).
    let tiled = filter_tile(flags, &cfg, plan);
    let (spec, general) = match (kernels.wide, tiled) {
        (Some(w), _) if wide_allowed(flags) => (w, false),
        (_, Some(tile)) => {
            cfg = tiled_geometry(&cfg, plan.rows, tile);
            flags = tiled_flags(plan, flags);
            (kernels.tiled, false)
        }
        _ => (kernels.general, true),
    };
    flags = hinted_flags(plan, flags);
    // The general kernel's body with exactly these flags fixed at compile time, where it exists.
    let spec = match (general, kernels.filtered, filtered_fixed(flags)) {
        (true, Some(f), Some(release)) => f[release],
        _ => spec,
    };
    let kernel = rt.kernel(spec)?;
    let hint_blocks = if first_wave_prefetch(plan, flags) {
        let threads = cfg.block.0 * cfg.block.1 * cfg.block.2;
        prefetch_blocks(rt.sm_count().saturating_mul(kernel.blocks_per_sm(threads, 0)?), tiled)
    } else {
        i32::MAX
    };
    let params = Params {
        input: in_addr,
        out: out_addr,
        expert_ids,
        sorted_token_ids,
        num_tokens_post_padded,
        rows: plan.rows as i64,
        d: plan.d as i64,
        in_stride: plan.in_stride as i64,
        out_stride: plan.out_stride as i64,
        expert_step: plan.expert_step,
        num_valid_tokens: plan.num_valid_tokens,
        clamp: plan.clamp,
        flags,
        tile: tiled.unwrap_or(0) as i32,
        hint_blocks,
    };
    // SAFETY: `Params` mirrors the kernel's single parameter (size asserted above and against the
    // PTX in T1). `validate` checked that `input` holds (rows-1)·in_row_stride + 2d elements and
    // `out` (rows-1)·out_row_stride + d, that both extents fit i64, that rows ≤ i32::MAX and
    // d ≤ MAX_D (so the grid stays within the device limits), that the ids cover every row they
    // are read for (expert_ids.len()·expert_step ≥ rows with the step clamped to rows;
    // sorted_token_ids.len() ≥ rows; num_tokens_post_padded non-empty), and that every buffer
    // belongs to this runtime's context; `disjoint` checked that input and output do not
    // overlap. `launch_config` sets FLAG_VECTOR only where `vector_path` found both bases 16-byte
    // aligned and `d` and both strides multiples of the vector width; FLAG_PREFETCH is set only
    // on that path: by `launch_config` (unfiltered), `hinted_flags` (filtered, FLAG_VECTOR
    // checked) and `tiled_flags` (the tiled kernel, which `filter_tile` allows on the vector path
    // only). The bulk prefetches stay inside each row's gate and up; with a filter, ids read before
    // the wait only choose which rows are prefetched (or, with FLAG_IDS_EARLY, computed: the
    // caller's promise), with the same in-bounds indices as after the wait. The wide kernel
    // (which trusts FLAG_VECTOR and reads no ids) runs only with FLAG_VECTOR and no filter flag,
    // the filtered kernel (which takes its flags as compile-time constants) only where
    // `filtered_fixed` found the launch's flags equal to one of its instantiations' (FLAG_VECTOR
    // and FLAG_EXPERT included, no other filter flag), on the general kernel's grid,
    // and the tiled kernel (which trusts FLAG_VECTOR too, and that a warp lies in one thread row)
    // only where `filter_tile` found FLAG_VECTOR, a filter and blockDim.x ≥ 32, with
    // `tiled_geometry` covering every row with tile ≤ 32 rows per thread row. The buffers are
    // borrowed for this call and their guards live until the launch is queued on the same stream.
    unsafe { rt.launch(&kernel, cfg).run(&params) }
}

/// A device buffer of `n` elements, uninitialised.
///
/// Callers pass it straight to an unfiltered [`launch`] over exactly `n = rows·d` packed
/// elements, which writes every element before anything on the stream can read it.
pub(crate) fn alloc_fully_written<T: Float>(rt: &Runtime, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: uninitialised device memory is only unsafe to read; the caller's kernel (no row
    // filter, validated) writes all `n` elements first, and on any error the buffer is dropped
    // unread.
    unsafe { rt.stream().alloc::<T>(n) }.map_err(|e| Error::driver("allocating the activation output", e))
}
