//! kiln mxfp8 kernels (in progress).
#![deny(unsafe_code)]

use kiln_runtime::KernelSpec;

/// Every kernel instantiation of this crate (for prewarm, snapshots and preload).
pub fn kernel_specs() -> Vec<KernelSpec> {
    Vec::new()
}

/// Size in bytes of the by-value parameter struct of `spec`'s kernel; the snapshot suite checks
/// it against the `.param` declaration in the PTX.
#[doc(hidden)]
pub fn params_bytes(_spec: &KernelSpec) -> Option<usize> {
    None
}
