//! GPU helpers for T2 tests: one shared runtime, uploads and downloads.

use std::sync::{Arc, OnceLock};

use kiln_runtime::Runtime;
use kiln_runtime::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

/// The process's runtime on GPU 0 (created on first use).
pub fn rt() -> anyhow::Result<Arc<Runtime>> {
    static RT: OnceLock<std::result::Result<Arc<Runtime>, String>> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = Runtime::new(0).map_err(|e| e.to_string())?;
        // SAFETY: tests use the runtime's one stream for every copy and launch (a trial that makes
        // a stream of its own keeps its buffers on it), so work is ordered without cudarc's
        // per-buffer events; no buffer of this context exists yet.
        unsafe { rt.context().disable_event_tracking() };
        Ok(rt)
    })
    .clone()
    .map_err(|e: String| anyhow::anyhow!(e))
}

/// Copies host data to a new device buffer on the runtime's stream.
pub fn upload<T: DeviceRepr>(rt: &Runtime, v: &[T]) -> anyhow::Result<CudaSlice<T>> {
    Ok(rt.stream().clone_htod(v)?)
}

/// A device buffer of `n` elements, all set to `fill`.
pub fn filled<T: DeviceRepr + Clone>(rt: &Runtime, n: usize, fill: T) -> anyhow::Result<CudaSlice<T>> {
    upload(rt, &vec![fill; n])
}

/// A zeroed device buffer.
pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(rt: &Runtime, n: usize) -> anyhow::Result<CudaSlice<T>> {
    Ok(rt.stream().alloc_zeros(n)?)
}

/// Copies a device buffer back (synchronises the stream).
pub fn download<T: DeviceRepr + Default + Clone>(rt: &Runtime, s: &CudaSlice<T>) -> anyhow::Result<Vec<T>> {
    Ok(rt.stream().clone_dtoh(s)?)
}

/// Device address of a buffer, for `#[repr(C)]` params structs in tests.
pub fn ptr<T>(rt: &Runtime, s: &CudaSlice<T>) -> u64 {
    use kiln_runtime::cudarc::driver::DevicePtr;
    let (p, _sync) = s.device_ptr(rt.stream());
    p
}
