//! `cargo xtask bench`: CUDA-graph replay timing of each op over the peers' shapes, input sets
//! rotated so that ≥ 256 MiB is touched per replay (nothing served from the 50 MB L2), median of
//! many replays, JSON lines `{op, shape, impl: "kiln", us, gbps}` (GEMMs add `tflops`) in the
//! format of `../shared/peers/`. Also the runtime's own costs (cold compile, warm first call in
//! a fresh process, host µs per launch).

pub mod activation;
pub mod floor;
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
/// Fewest kernel launches per timed graph replay.
pub const MIN_CALLS: usize = 16;
/// Target duration of one timed replay (ms).
pub const REPLAY_MS: f64 = 4.0;
/// Most launches per graph.
pub const MAX_CALLS: usize = 8192;

/// The benchmark context: a runtime, options and the rows written so far.
pub struct Ctx {
    /// The runtime on GPU 0 (event tracking off: one stream, ordered by construction).
    pub rt: Arc<Runtime>,
    /// Fewer shapes and replays.
    pub quick: bool,
    /// KILN_BENCH_EAGER=1: one plain launch per shape, no timing (for profilers).
    pub eager: bool,
    /// KILN_BENCH_ONLY=a,b: time only the rows whose `"{op} {shape}"` contains one of these
    /// substrings (for A/B runs on the device); unset: every row.
    only: Vec<String>,
    /// Bytes each replay touches at least: [`L2_FLUSH_BYTES`], or `KILN_BENCH_FLUSH_MIB` MiB
    /// (to see whether a timing depends on lines that L2 keeps across the rotation).
    flush_bytes: usize,
    out: Option<std::fs::File>,
}

impl Ctx {
    /// A context on GPU 0 writing rows to `out` (and stdout).
    pub fn new(quick: bool, out: Option<&std::path::Path>) -> anyhow::Result<Ctx> {
        let rt = Runtime::new(0)?;
        // SAFETY: the bench uses one stream only (the runtime's), so work is ordered without
        // cudarc's per-buffer events; no buffer exists yet.
        unsafe { rt.context().disable_event_tracking() };
        let out = out.map(std::fs::File::create).transpose().context("creating the output file")?;
        let eager = std::env::var_os("KILN_BENCH_EAGER").is_some_and(|v| v == "1");
        let only = std::env::var("KILN_BENCH_ONLY")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let flush_bytes = match std::env::var("KILN_BENCH_FLUSH_MIB") {
            Ok(v) => v
                .parse::<usize>()
                .ok()
                .filter(|&m| m > 0)
                .and_then(|m| m.checked_mul(1 << 20))
                .with_context(|| format!("KILN_BENCH_FLUSH_MIB={v:?} (must be a positive number of MiB)"))?,
            Err(_) => L2_FLUSH_BYTES,
        };
        Ok(Ctx { rt, quick, out, eager, only, flush_bytes })
    }

    /// How many input sets of `bytes` make one replay touch at least the flush bytes (1..=64).
    pub fn sets_for(&self, bytes: usize) -> usize {
        self.flush_bytes.div_ceil(bytes.max(1)).clamp(1, 64)
    }

    /// Whether the row `op` / `shape` is to be timed (see `KILN_BENCH_ONLY`).
    pub fn wants(&self, op: &str, shape: &str) -> bool {
        let row = format!("{op} {shape}");
        self.only.is_empty() || self.only.iter().any(|s| row.contains(s.as_str()))
    }

    /// Median µs per call of `f(i)` over `sets` input sets, timed as triton's `do_bench_cudagraph`
    /// (the peers' timer) does: the calls, cycling over the sets, are captured into one CUDA
    /// graph long enough that its own launch is amortised — first [`MIN_CALLS`] to estimate the
    /// time per call, then enough calls for about [`REPLAY_MS`] per replay (at most
    /// [`MAX_CALLS`]) — and the replays are timed with (timing) events.
    pub fn time(&self, sets: usize, mut f: impl FnMut(usize) -> kiln_runtime::Result<()>) -> anyhow::Result<f64> {
        let stream = self.rt.stream();
        if self.eager {
            // Profiling mode (KILN_BENCH_EAGER=1, for ncu): exactly one plain launch per shape, so
            // that launch i of a kernel under `ncu --launch-skip i` is shape i; no timing.
            f(0)?;
            stream.synchronize()?;
            return Ok(f64::NAN);
        }
        let sets = sets.max(1);
        for i in 0..sets {
            f(i)?;
        }
        stream.synchronize()?;
        let estimate = self.replay(sets, sets * MIN_CALLS.div_ceil(sets), 3, &mut f)?;
        let want = ((REPLAY_MS * 1e3 / estimate.max(1e-3)) as usize).clamp(MIN_CALLS, MAX_CALLS);
        let reps = if self.quick { 10 } else { 25 };
        self.replay(sets, sets * want.div_ceil(sets), reps, &mut f)
    }

    /// Captures `calls` calls into a graph, replays it `reps` times (after 2 untimed replays) and
    /// returns the median µs per call.
    fn replay(&self, sets: usize, calls: usize, reps: usize, f: &mut impl FnMut(usize) -> kiln_runtime::Result<()>) -> anyhow::Result<f64> {
        let stream = self.rt.stream();
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let captured: kiln_runtime::Result<()> = (0..calls).try_for_each(|i| f(i % sets));
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0))?;
        captured?;
        let graph = graph.context("empty capture")?;
        for _ in 0..2 {
            graph.launch()?;
        }
        stream.synchronize()?;
        let ctx = self.rt.context();
        // `new_event(None)` would make non-timing events (CU_EVENT_DISABLE_TIMING).
        let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (start, end) = (ctx.new_event(timing)?, ctx.new_event(timing)?);
        let mut ms = Vec::with_capacity(reps);
        for _ in 0..reps {
            start.record(stream)?;
            graph.launch()?;
            end.record(stream)?;
            end.synchronize()?;
            ms.push(start.elapsed_ms(&end)? as f64);
        }
        ms.sort_by(f64::total_cmp);
        Ok(ms[ms.len() / 2] * 1e3 / calls as f64)
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

/// A 16-byte-vector copy kernel: the bandwidth ceiling the op ratios are read against (the
/// copy engine behind `cuMemcpyDtoD` reaches only ~80% of what SM loads/stores reach).
static COPY: kiln_runtime::KernelSource = kiln_runtime::KernelSource {
    name: "bench_copy.cuh",
    text: "#include <kiln/vec.cuh>\nstruct CopyParams { const uint4* in; uint4* out; long long n; };\n\
           template <int kUnroll> __global__ void bench_copy(CopyParams p) {\n  \
           const long long stride = (long long)gridDim.x * blockDim.x;\n  \
           for (long long i = kiln::global_thread_id(); i < p.n; i += stride * kUnroll) {\n    uint4 v[kUnroll];\n#pragma unroll\n    \
           for (int u = 0; u < kUnroll; ++u) if (i + u * stride < p.n) v[u] = __ldcs(p.in + i + u * stride);\n#pragma unroll\n    \
           for (int u = 0; u < kUnroll; ++u) if (i + u * stride < p.n) __stcs(p.out + i + u * stride, v[u]);\n  }\n}\n",
    headers: &[kiln_runtime::PRELUDE],
};

#[repr(C)]
#[derive(Clone, Copy)]
struct CopyParams {
    input: u64,
    out: u64,
    n: i64,
}

/// Device-to-device copies of 32 MiB to 1 GiB (a 32 MiB copy moves 64 MiB, like an op reading 32
/// MiB and writing 32 MiB), with a vector-copy kernel (what `torch.copy_` does
/// too) and with cuMemcpyDtoDAsync: the bandwidth ceilings the ops are compared with.
pub fn copy(c: &mut Ctx) -> anyhow::Result<()> {
    let total = 1usize << 30;
    let stream = c.rt.stream().clone();
    let src = stream.alloc_zeros::<u8>(total)?;
    let mut dst = stream.alloc_zeros::<u8>(total)?;
    let spec = kiln_runtime::KernelSpec::new("bench_copy", &COPY, "bench_copy<4>");
    let k = c.rt.kernel(&spec)?;
    let grid = c.rt.sm_count() * 8;
    // Each size reads `bytes` and writes `bytes`, rotating through the 1 GiB buffers so that
    // nothing is served from L2: the ceiling for the ops of the same size.
    let sizes: &[(usize, &str)] = if c.quick {
        &[(total, "1GiB")]
    } else {
        &[(32 << 20, "32MiB"), (64 << 20, "64MiB"), (128 << 20, "128MiB"), (256 << 20, "256MiB"), (total, "1GiB")]
    };
    let (s0, d0) = (device_ptr(&c.rt, &src), device_ptr(&c.rt, &dst));
    for &(bytes, name) in sizes {
        if !c.wants("copy", name) {
            continue;
        }
        let sets = total / bytes;
        let us = c.time(sets, |i| {
            let off = (i * bytes) as u64;
            let p = CopyParams { input: s0 + off, out: d0 + off, n: (bytes / 16) as i64 };
            // SAFETY: CopyParams mirrors the kernel's struct; both ranges hold n 16-byte vectors
            // inside the 1 GiB buffers (i < total / bytes).
            unsafe { c.rt.launch(&k, kiln_runtime::LaunchConfig::linear(grid, 256)).run(&p) }
        })?;
        c.record("copy", name, us, (2 * bytes) as f64, None)?;
        // The driver's device-to-device copy (what the peers' README calls copy bandwidth).
        let us = c.time(sets, |i| {
            let (a, b) = (i * bytes, (i + 1) * bytes);
            stream.memcpy_dtod(&src.slice(a..b), &mut dst.slice_mut(a..b)).map_err(|e| kiln_runtime::Error::driver("cuMemcpyDtoDAsync", e))
        })?;
        c.record("copy.memcpy", name, us, (2 * bytes) as f64, None)?;
    }
    Ok(())
}

/// Runs the selected benchmarks. A failing group is reported and the others still run.
pub fn run(ops: &[String], quick: bool, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut c = Ctx::new(quick, out)?;
    type Group = fn(&mut Ctx) -> anyhow::Result<()>;
    // (group, the --ops names that select it): `mxfp8` runs both halves of issue 6/7.
    let groups: [(&str, &[&str], Group); 8] = [
        ("copy", &[], copy),
        ("runtime", &["runtime"], runtime_costs::run),
        ("activation", &["activation"], activation::run),
        ("rmsnorm", &["rmsnorm"], rmsnorm::run),
        ("rope", &["rope"], rope::run),
        ("mxfp8-quant", &["mxfp8", "mxfp8-quant"], mxfp8::run),
        ("mxfp8-gemm", &["mxfp8", "mxfp8-gemm"], mxfp8_gemm::run),
        ("floor", &["floor"], floor::run),
    ];
    let mut failed = Vec::new();
    for (name, selectors, g) in groups {
        // `copy` always runs; `floor` (240 micro-kernel variants) only when asked for by name;
        // the others when named or when no --ops is given.
        let named = ops.iter().any(|o| selectors.contains(&o.as_str()));
        let selected = match name {
            "copy" => true,
            "floor" => named,
            _ => ops.is_empty() || named,
        };
        if !selected {
            continue;
        }
        if let Err(e) = g(&mut c) {
            eprintln!("bench {name}: FAILED: {e:#}");
            c.record_raw(&format!(r#"{{"op": "{name}", "error": "{}"}}"#, format!("{e:#}").replace('"', "'")))?;
            failed.push(name);
        }
    }
    anyhow::ensure!(failed.is_empty(), "benchmark groups failed: {failed:?}");
    Ok(())
}
