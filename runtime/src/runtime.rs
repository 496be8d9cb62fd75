//! [`Runtime`]: one CUDA device, its kernels (memoised per device) and a stream.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaStream, DeviceSlice};
use dashmap::DashMap;

use crate::arch::Arch;
use crate::cache::Store;
use crate::env::Knobs;
use crate::error::{Error, Result};
use crate::launch::{Kernel, Launch, LaunchConfig};
use crate::source::KernelSpec;
use crate::telemetry::{self, Tier};

/// One device: context, default stream, kernels loaded on it, and the cache store.
///
/// Create one per GPU (kernels are memoised per runtime, the disk cache and compiled images are
/// shared by every runtime of the process).
pub struct Runtime {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    device_arch: Arch,
    name: String,
    sm_count: u32,
    pdl: bool,
    store: Store,
    kernels: DashMap<[u8; 32], Arc<Kernel>>,
    loading: DashMap<[u8; 32], Arc<Mutex<()>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("device", &self.ctx.ordinal()).field("name", &self.name).field("arch", &self.device_arch).finish()
    }
}

impl Runtime {
    /// A runtime on GPU `device` (its primary context, a new stream), configured from the
    /// environment. Fails with [`Error::Unavailable`] when there is no driver or no such GPU.
    pub fn new(device: usize) -> Result<Arc<Runtime>> {
        Self::with_knobs(device, Knobs::from_env()?)
    }

    /// Like [`Runtime::new`] with explicit knobs (tests, embedding applications).
    pub fn with_knobs(device: usize, knobs: Knobs) -> Result<Arc<Runtime>> {
        let devices = crate::launch::driver_devices().map_err(|e| Error::unavailable("CUDA driver", e))?;
        if device >= devices.len() {
            return Err(Error::unavailable(format!("GPU {device}"), format!("the driver reports {} device(s)", devices.len())));
        }
        let ctx = CudaContext::new(device).map_err(|e| Error::driver(format!("creating a context on GPU {device}"), e))?;
        let stream = ctx.new_stream().map_err(|e| Error::driver("creating a stream", e))?;
        Self::from_stream(stream, knobs)
    }

    /// A runtime over an existing stream (and its context), e.g. one owned by candle or your
    /// engine. Kernels launch on that stream unless [`Launch::on`] says otherwise.
    pub fn from_stream(stream: Arc<CudaStream>, knobs: Knobs) -> Result<Arc<Runtime>> {
        let ctx = stream.context().clone();
        let (major, minor) = ctx.compute_capability().map_err(|e| Error::driver("reading the compute capability", e))?;
        let detected = Arch::new(major as u32, minor as u32);
        let device_arch = knobs.arch.map(Arch::portable).unwrap_or(detected);
        let name = ctx.name().unwrap_or_else(|_| "unknown".into());
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| Error::driver("reading the SM count", e))? as u32;
        Ok(Arc::new(Runtime {
            pdl: knobs.pdl && detected.supports_pdl(),
            store: Store::new(knobs),
            ctx,
            stream,
            device_arch,
            name,
            sm_count,
            kernels: DashMap::new(),
            loading: DashMap::new(),
        }))
    }

    /// The device's architecture (portable form, e.g. `sm_90`; kernels that need it compile for
    /// `sm_90a`). `KILN_ARCH` overrides the detected one.
    pub fn arch(&self) -> Arch {
        self.device_arch
    }
    /// The runtime's stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// `Err` naming `op`, `name` and both devices unless `buf` lives in this runtime's CUDA
    /// context: a kernel given another device's pointer faults (and poisons the context) or
    /// reads the wrong memory. Every op checks each buffer it is given.
    pub fn check_context<T>(&self, op: &'static str, name: &str, buf: &(impl DeviceSlice<T> + ?Sized)) -> Result<()> {
        let theirs = buf.stream().context();
        if theirs.cu_ctx() == self.ctx.cu_ctx() {
            return Ok(());
        }
        Err(Error::invalid(
            op,
            format!("{name} lives on GPU {} (another CUDA context), the runtime on GPU {}", theirs.ordinal(), self.ctx.ordinal()),
        ))
    }
    /// Device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }
    /// Device name.
    pub fn device_name(&self) -> &str {
        &self.name
    }
    /// Streaming multiprocessors on the device.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }
    /// Whether PDL kernels are launched with programmatic stream serialization here.
    pub fn pdl_enabled(&self) -> bool {
        self.pdl
    }
    /// The cache store (knobs, disk cache).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The kernel for `spec`, loaded on this device: from memory, else the disk cache, else
    /// compiled. After [`Runtime::preload`] of the same spec this does no compile, no I/O and no
    /// allocation (a hash-map lookup).
    pub fn kernel(&self, spec: &KernelSpec) -> Result<Arc<Kernel>> {
        let fp = spec.fingerprint();
        if let Some(k) = self.kernels.get(&fp) {
            telemetry::record_tier(Tier::Memory);
            return Ok(k.clone());
        }
        let gate = self.loading.entry(fp).or_insert_with(|| Arc::new(Mutex::new(()))).clone();
        let _one = gate.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = self.kernels.get(&fp) {
            return Ok(k.clone());
        }
        let fetched = self.store.fetch(spec, self.device_arch, false)?;
        let kernel = match Kernel::load(&self.ctx, fetched.compiled.clone(), fetched.tier, spec.is_pdl(), spec.dynamic_smem_bytes()) {
            Ok(k) => k,
            Err(e) if fetched.tier != Tier::Compiled => {
                // A cached image the driver refuses (corrupt beyond the checksum's reach, or
                // built by an incompatible toolchain): quarantine it and compile once more.
                self.store.reject(&fetched, &e.to_string());
                let again = self.store.fetch(spec, self.device_arch, true)?;
                Kernel::load(&self.ctx, again.compiled.clone(), again.tier, spec.is_pdl(), spec.dynamic_smem_bytes())?
            }
            Err(e) => return Err(e),
        };
        let k = Arc::new(kernel);
        self.kernels.insert(fp, k.clone());
        Ok(k)
    }

    /// Compiles (in parallel) and loads every spec, so that later [`Runtime::kernel`] calls —
    /// e.g. inside a CUDA-graph capture — do no compile, I/O or allocation. Specs that cannot run
    /// on this device are skipped.
    pub fn preload(&self, specs: &[KernelSpec]) -> Result<()> {
        let todo: Vec<&KernelSpec> = specs
            .iter()
            .filter(|s| s.target_set().allows(s.target_arch(self.device_arch)) && !self.kernels.contains_key(&s.fingerprint()))
            .collect();
        let jobs = std::thread::available_parallelism().map_or(2, |n| n.get()).min(todo.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let err: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..jobs {
                s.spawn(|| {
                    while let Some(spec) = todo.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        if let Err(e) = self.store.fetch(spec, self.device_arch, false) {
                            err.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        }
                    }
                });
            }
        });
        if let Some(e) = err.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        for spec in todo {
            self.kernel(spec)?;
        }
        Ok(())
    }

    /// Starts a launch of `kernel` on this runtime's stream.
    pub fn launch<'a>(&'a self, kernel: &'a Kernel, cfg: LaunchConfig) -> Launch<'a> {
        Launch { kernel, cfg, stream: &self.stream, pdl_allowed: self.pdl }
    }

    /// Number of kernels loaded on this device.
    pub fn loaded_kernels(&self) -> usize {
        self.kernels.len()
    }
}
