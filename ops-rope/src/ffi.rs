//! The kernel's parameter struct and its one unsafe launch.

use kiln_runtime::{Kernel, LaunchConfig, Result, Runtime};

/// Pairs the parameter struct has room for (`kMaxPairs`: rotary_dim ≤ 256).
pub(crate) const MAX_PAIRS: usize = 128;

/// `Params::flags` bits (`kInterleaved`, `kPosI64`, `kWeightF32`).
pub(crate) const INTERLEAVED: i32 = 1;
pub(crate) const POS_I64: i32 = 2;
pub(crate) const WEIGHT_F32: i32 = 4;

/// Mirror of `kiln_rope::Params` in `cuda/rope.cuh`, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub q: u64,
    pub k: u64,
    pub q_weight: u64,
    pub k_weight: u64,
    pub positions: u64,
    pub q_stride: i64,
    pub k_stride: i64,
    pub nq: i32,
    pub nk: i32,
    pub head_dim: i32,
    pub lanes_log2: i32,
    pub rotary_dim: i32,
    pub heads_per_cta: i32,
    pub flags: i32,
    pub eps: f32,
    pub attention_factor: f32,
    pub inv_head_dim: f32,
    pub turns: [u64; MAX_PAIRS],
}

const _: () = assert!(size_of::<Params>() == 1120);
const _: () = assert!(align_of::<Params>() == 8);

/// Launches `spec` with `params`.
///
/// The caller (lib.rs) must have validated, before calling: the head layout (head_dim a multiple
/// of 8 in 8..=256, rotary_dim even ≤ head_dim and a multiple of 16 for NeoX), that the q and k
/// buffers hold `(tokens−1)·stride + width` elements with width = heads·head_dim, positions exactly
/// `tokens` elements of the flagged type, weights exactly head_dim elements of the flagged type
/// (kNorm kernels), that the kernel is a kVec one only when q, k and both strides are 16-byte aligned,
/// and that the grid, block and `heads_per_cta` come from `plan::launch_shape` (one lane group per
/// head of a chunk, at most kMaxThreads threads, the chunks covering the q and k heads once).
pub(crate) fn launch(rt: &Runtime, kernel: &Kernel, grid: (u32, u32), block: u32, params: &Params) -> Result<()> {
    let cfg = LaunchConfig { grid: (grid.0, grid.1, 1), block: (block, 1, 1), smem: 0 };
    // SAFETY: `Params` is the kernel's single by-value parameter (same field order and types; its
    // size is asserted here and checked against the PTX `.param` by the snapshot suite). Every
    // pointer in it comes from a live cudarc buffer of the runtime's context (lib.rs checked each
    // with `Runtime::check_context`) whose guard the caller holds until this call
    // returns, and lib.rs checked the lengths, strides, alignment flag and grid listed in this
    // function's doc comment, so the kernel only touches elements inside those buffers; the launch
    // is ordered on the runtime's stream after the work that produced them.
    unsafe { rt.launch(kernel, cfg).run(params) }
}
