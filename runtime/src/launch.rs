//! The driver side: checking that libcuda exists before cudarc touches it, loading CUBIN images,
//! and launching through `cuLaunchKernelEx` with the PDL attribute. Every driver result is
//! checked; nothing here synchronises a stream.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use dashmap::DashMap;

use crate::arch::Arch;
use crate::compile::Compiled;
use crate::error::{Error, Result};
use crate::probe::DeviceInfo;
use crate::telemetry::Tier;

/// Whether libcuda can be opened. cudarc's loader panics when it cannot, so this runs first.
pub(crate) fn driver_present() -> bool {
    // SAFETY: `is_culib_present` only tries to dlopen candidate library names and closes them.
    unsafe { sys::is_culib_present() }
}

/// Every visible GPU, or why there are none.
pub(crate) fn driver_devices() -> std::result::Result<Vec<DeviceInfo>, String> {
    if !driver_present() {
        return Err("libcuda.so (the NVIDIA driver) not found by the dynamic linker".into());
    }
    cudarc::driver::result::init().map_err(|e| format!("cuInit failed: {e}"))?;
    let n = cudarc::driver::result::device::get_count().map_err(|e| format!("cuDeviceGetCount failed: {e}"))?;
    let mut out = Vec::new();
    for ordinal in 0..n.max(0) as usize {
        let dev = cudarc::driver::result::device::get(ordinal as i32).map_err(|e| format!("cuDeviceGet({ordinal}): {e}"))?;
        let attr = |a| {
            // SAFETY: `dev` is a valid device handle from cuDeviceGet after cuInit.
            unsafe { cudarc::driver::result::device::get_attribute(dev, a) }.map_err(|e| format!("cuDeviceGetAttribute: {e}"))
        };
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let sms = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let name = cudarc::driver::result::device::get_name(dev).unwrap_or_else(|_| "unknown".into());
        out.push(DeviceInfo { ordinal, name, arch: Arch::new(major as u32, minor as u32), sm_count: sms as u32 });
    }
    Ok(out)
}

/// A loaded kernel, ready to launch on its runtime's device.
#[derive(Debug)]
pub struct Kernel {
    name: String,
    function: CudaFunction,
    _module: Arc<CudaModule>,
    pdl: bool,
    tier: Tier,
    num_regs: u32,
    max_threads: u32,
    compiled: Arc<Compiled>,
    occupancy: DashMap<(u32, u32), u32>,
}

fn func_attr(f: &CudaFunction, a: sys::CUfunction_attribute) -> Result<i32> {
    let mut v = 0i32;
    // SAFETY: `f` is a live function handle (its module is kept alive by `f`), `v` a valid out-pointer.
    unsafe { sys::cuFuncGetAttribute(&mut v, a, f.cu_function()) }.result().map_err(|e| Error::driver("cuFuncGetAttribute", e))?;
    Ok(v)
}

impl Kernel {
    /// Loads a CUBIN into `ctx` and resolves its kernel.
    pub(crate) fn load(ctx: &Arc<CudaContext>, compiled: Arc<Compiled>, tier: Tier, spec_pdl: bool, dynamic_smem: u32) -> Result<Kernel> {
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin.clone()))
            .map_err(|e| Error::driver(format!("loading {} ({})", compiled.kernel, compiled.arch), e))?;
        let function = module
            .load_function(&compiled.lowered_name)
            .map_err(|e| Error::driver(format!("resolving {} in {}", compiled.lowered_name, compiled.kernel), e))?;
        if dynamic_smem > 48 * 1024 {
            // SAFETY: live function handle; the attribute takes a byte count.
            unsafe {
                sys::cuFuncSetAttribute(
                    function.cu_function(),
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    dynamic_smem as i32,
                )
            }
            .result()
            .map_err(|e| Error::driver(format!("raising the shared-memory limit of {} to {dynamic_smem} B", compiled.kernel), e))?;
        }
        let num_regs = func_attr(&function, sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NUM_REGS)? as u32;
        let max_threads = func_attr(&function, sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)? as u32;
        if spec_pdl && !compiled.pdl_waits {
            crate::telemetry::warn(&format!(
                "{} is declared PDL but its PTX has no griddepcontrol.wait; it is launched without programmatic serialization",
                compiled.kernel
            ));
        }
        Ok(Kernel {
            name: compiled.kernel.clone(),
            function,
            _module: module,
            pdl: spec_pdl && compiled.pdl_waits,
            tier,
            num_regs,
            max_threads,
            compiled,
            occupancy: DashMap::new(),
        })
    }

    /// Spec label.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether launches carry the programmatic-serialization attribute (on a device that has it).
    pub fn is_pdl(&self) -> bool {
        self.pdl
    }
    /// Where the image came from when it was loaded.
    pub fn tier(&self) -> Tier {
        self.tier
    }
    /// Registers per thread.
    pub fn num_regs(&self) -> u32 {
        self.num_regs
    }
    /// The largest block this kernel can be launched with.
    pub fn max_threads_per_block(&self) -> u32 {
        self.max_threads
    }
    /// The compiled image (CUBIN, PTX, options).
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// Resident blocks per SM for a block size and dynamic shared memory (memoised per kernel; the
    /// first query of a shape asks the driver, a host-side call that is legal during stream
    /// capture).
    pub fn blocks_per_sm(&self, block: u32, smem: u32) -> Result<u32> {
        if let Some(v) = self.occupancy.get(&(block, smem)) {
            return Ok(*v);
        }
        let v = self
            .function
            .occupancy_max_active_blocks_per_multiprocessor(block, smem as usize, None)
            .map_err(|e| Error::driver(format!("occupancy of {}", self.name), e))?;
        self.occupancy.insert((block, smem), v);
        Ok(v)
    }
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Blocks.
    pub grid: (u32, u32, u32),
    /// Threads per block.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory bytes.
    pub smem: u32,
}

impl LaunchConfig {
    /// A 1-D launch.
    pub fn linear(grid: u32, block: u32) -> Self {
        LaunchConfig { grid: (grid, 1, 1), block: (block, 1, 1), smem: 0 }
    }

    /// Adds dynamic shared memory.
    pub fn with_smem(self, smem: u32) -> Self {
        LaunchConfig { smem, ..self }
    }

    fn validate(&self, k: &Kernel) -> Result<()> {
        let (gx, gy, gz) = self.grid;
        let (bx, by, bz) = self.block;
        let threads = bx as u64 * by as u64 * bz as u64;
        crate::ensure!(gx >= 1 && gy >= 1 && gz >= 1, "launch", "{}: empty grid {:?}", k.name, self.grid);
        crate::ensure!(
            gy <= 65535 && gz <= 65535 && gx <= i32::MAX as u32,
            "launch",
            "{}: grid {:?} exceeds the device limits",
            k.name,
            self.grid
        );
        crate::ensure!(
            threads >= 1 && threads <= k.max_threads as u64,
            "launch",
            "{}: block {:?} = {threads} threads, kernel allows 1..={}",
            k.name,
            self.block,
            k.max_threads
        );
        Ok(())
    }
}

/// One launch being configured; finish with [`Launch::run`].
#[must_use = "a Launch does nothing until run"]
pub struct Launch<'a> {
    pub(crate) kernel: &'a Kernel,
    pub(crate) cfg: LaunchConfig,
    pub(crate) stream: &'a CudaStream,
    pub(crate) pdl_allowed: bool,
}

impl<'a> Launch<'a> {
    /// Launches on `stream` instead of the runtime's stream (same context required).
    pub fn on(mut self, stream: &'a CudaStream) -> Self {
        self.stream = stream;
        self
    }

    /// Disables programmatic dependent launch for this launch.
    pub fn without_pdl(mut self) -> Self {
        self.pdl_allowed = false;
        self
    }

    /// Whether this launch will carry the PDL attribute.
    pub fn uses_pdl(&self) -> bool {
        self.pdl_allowed && self.kernel.pdl
    }

    /// Launches with one by-value parameter (the op's `#[repr(C)]` params struct).
    ///
    /// # Safety
    /// `P` must be exactly the kernel's single parameter type (same size and layout), every
    /// device pointer in it must be valid for the accesses the kernel makes for this
    /// configuration, and those buffers must stay alive until the kernel has finished.
    pub unsafe fn run<P: Copy>(self, params: &P) -> Result<()> {
        self.cfg.validate(self.kernel)?;
        let ctx = self.stream.context();
        ctx.bind_to_thread().map_err(|e| Error::driver("binding the context", e))?;
        let (g, b) = (self.cfg.grid, self.cfg.block);
        let mut args = [params as *const P as *mut c_void];
        let function = self.kernel.function.cu_function();
        let result = if self.uses_pdl() {
            let mut attr = sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value: sys::CUlaunchAttributeValue { programmaticStreamSerializationAllowed: 1 },
            };
            let cfg = sys::CUlaunchConfig {
                gridDimX: g.0,
                gridDimY: g.1,
                gridDimZ: g.2,
                blockDimX: b.0,
                blockDimY: b.1,
                blockDimZ: b.2,
                sharedMemBytes: self.cfg.smem,
                hStream: self.stream.cu_stream(),
                attrs: &mut attr,
                numAttrs: 1,
            };
            // SAFETY: `cfg` and `attr` live across the call; `args` holds one pointer to `params`,
            // which the caller guarantees is the kernel's parameter type; the function belongs to
            // the stream's context (kernels are loaded per runtime); the caller guarantees the
            // pointers inside `params` (see # Safety).
            unsafe { sys::cuLaunchKernelEx(&cfg, function, args.as_mut_ptr(), std::ptr::null_mut()) }
        } else {
            // SAFETY: as above, without attributes (the plain call costs the host a little less).
            unsafe {
                sys::cuLaunchKernel(
                    function,
                    g.0,
                    g.1,
                    g.2,
                    b.0,
                    b.1,
                    b.2,
                    self.cfg.smem,
                    self.stream.cu_stream(),
                    args.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            }
        };
        result.result().map_err(|e| Error::driver(format!("launching {} with {:?}", self.kernel.name, self.cfg), e))
    }
}
