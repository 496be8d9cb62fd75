//! `cargo xtask bench`: CUDA-graph replay timing of each op over the peers' shapes, input sets
//! rotated so that ≥ 256 MiB is touched per replay (nothing served from the 50 MB L2), median of
//! many replays, JSON lines `{op, shape, impl: "kiln", us, gbps}` (GEMMs add `tflops`) in the
//! format of `../shared/peers/`. Also the runtime's own costs (cold compile, warm first call in
//! a fresh process, host µs per launch).

pub mod activation;
pub mod mxfp8;
pub mod mxfp8_gemm;
pub mod rmsnorm;
pub mod rope;
pub mod runtime_costs;

use std::io::Write;
use std::sync::Arc;

use anyhow::Context as _;
use kiln_runtime::Runtime;
use kiln_runtime::cudarc::driver::sys;

/// Bytes each replay should touch at least.
pub const L2_FLUSH_BYTES: usize = 256 << 20;

/// The benchmark context: a runtime, options and the rows written so far.
pub struct Ctx {
    /// The runtime on GPU 0 (event tracking off: one stream, ordered by construction).
    pub rt: Arc<Runtime>,
    /// Fewer shapes and replays.
    pub quick: bool,
    out: Option<std::fs::File>,
}

/// How many input sets make one replay touch at least [`L2_FLUSH_BYTES`] (1..=64).
pub fn sets_for(bytes: usize) -> usize {
    L2_FLUSH_BYTES.div_ceil(bytes.max(1)).clamp(1, 64)
}

impl Ctx {
    /// A context on GPU 0 writing rows to `out` (and stdout).
    pub fn new(quick: bool, out: Option<&std::path::Path>) -> anyhow::Result<Ctx> {
        let rt = Runtime::new(0)?;
        // SAFETY: the bench uses one stream only (the runtime's), so work is ordered without
        // cudarc's per-buffer events; no buffer exists yet.
        unsafe { rt.context().disable_event_tracking() };
        let out = out.map(std::fs::File::create).transpose().context("creating the output file")?;
        Ok(Ctx { rt, quick, out })
    }

    /// Median µs per call of `f(i)` over `sets` input sets: the calls are captured once into a
    /// CUDA graph which is replayed many times, each replay timed with events.
    pub fn time(&self, sets: usize, mut f: impl FnMut(usize) -> kiln_runtime::Result<()>) -> anyhow::Result<f64> {
        let stream = self.rt.stream();
        for i in 0..sets {
            f(i)?;
        }
        stream.synchronize()?;
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let captured: kiln_runtime::Result<()> = (0..sets).try_for_each(&mut f);
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0))?;
        captured?;
        let graph = graph.context("empty capture")?;
        for _ in 0..3 {
            graph.launch()?;
        }
        stream.synchronize()?;
        let ctx = self.rt.context();
        let (start, end) = (ctx.new_event(None)?, ctx.new_event(None)?);
        let reps = if self.quick { 15 } else { 40 };
        let mut ms = Vec::with_capacity(reps);
        for _ in 0..reps {
            start.record(stream)?;
            graph.launch()?;
            end.record(stream)?;
            end.synchronize()?;
            ms.push(start.elapsed_ms(&end)? as f64);
        }
        ms.sort_by(f64::total_cmp);
        Ok(ms[ms.len() / 2] * 1e3 / sets as f64)
    }

    /// Prints and stores one row. `bytes`: each input read once plus each output written once.
    pub fn record(&mut self, op: &str, shape: &str, us: f64, bytes: f64, flops: Option<f64>) -> anyhow::Result<()> {
        let gbps = bytes / (us * 1e-6) / 1e9;
        let mut line = format!(r#"{{"op": "{op}", "shape": "{shape}", "impl": "kiln", "us": {us:.2}, "gbps": {gbps:.1}"#);
        if let Some(f) = flops {
            line.push_str(&format!(r#", "tflops": {:.1}"#, f / (us * 1e-6) / 1e12));
        }
        line.push('}');
        println!("{line}");
        if let Some(o) = &mut self.out {
            writeln!(o, "{line}")?;
        }
        Ok(())
    }

    /// Writes a free-form JSON line (runtime costs).
    pub fn record_raw(&mut self, line: &str) -> anyhow::Result<()> {
        println!("{line}");
        if let Some(o) = &mut self.out {
            writeln!(o, "{line}")?;
        }
        Ok(())
    }
}

/// The device address of a buffer (for `#[repr(C)]` params in benchmarks).
pub fn device_ptr<T>(rt: &Runtime, s: &kiln_runtime::cudarc::driver::CudaSlice<T>) -> u64 {
    use kiln_runtime::cudarc::driver::DevicePtr;
    let (p, _sync) = s.device_ptr(rt.stream());
    p
}

/// Device-to-device copy of 1 GiB: the bandwidth ceiling the op ratios are read against.
pub fn copy(c: &mut Ctx) -> anyhow::Result<()> {
    let n = 1usize << 29;
    let stream = c.rt.stream().clone();
    let src = stream.alloc_zeros::<u16>(n)?;
    let mut dst = stream.alloc_zeros::<u16>(n)?;
    let us = c.time(1, |_| stream.memcpy_dtod(&src, &mut dst).map_err(|e| kiln_runtime::Error::driver("memcpy", e)))?;
    c.record("copy", "1GiB", us, (4 * n) as f64, None)
}

/// Runs the selected benchmarks.
pub fn run(ops: &[String], quick: bool, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut c = Ctx::new(quick, out)?;
    let want = |o: &str| ops.is_empty() || ops.iter().any(|x| x == o);
    copy(&mut c)?;
    if want("runtime") {
        runtime_costs::run(&mut c)?;
    }
    if want("activation") {
        activation::run(&mut c)?;
    }
    if want("rmsnorm") {
        rmsnorm::run(&mut c)?;
    }
    if want("rope") {
        rope::run(&mut c)?;
    }
    if want("mxfp8") {
        mxfp8::run(&mut c)?;
        mxfp8_gemm::run(&mut c)?;
    }
    Ok(())
}
