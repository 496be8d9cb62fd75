//! The runtime's own costs: cold NVRTC compile per kernel, first call in a fresh process with a
//! warm disk cache, host µs per launch. Rows: `{"op": "runtime", "metric": …, …}`.

use std::time::Instant;

use anyhow::Context;
use kiln_runtime::{KernelSource, KernelSpec, Knobs, LaunchConfig, PRELUDE, Runtime, Store, compile_with};

use super::Ctx;

/// A kernel that does (almost) nothing: measures launch costs, not the GPU.
static NOOP: KernelSource = KernelSource {
    name: "bench_noop.cuh",
    text: "#include <kiln/common.cuh>\n#include <kiln/pdl.cuh>\nstruct NoopParams { float* out; int n; };\n\
           template <bool kPdl> __global__ void bench_noop(NoopParams p) {\n  kiln::pdl_wait<kPdl>();\n  \
           if (threadIdx.x < p.n) p.out[threadIdx.x] = 1.0f;\n  kiln::pdl_launch_dependents<kPdl>();\n}\n",
    headers: &[PRELUDE],
};

#[repr(C)]
#[derive(Clone, Copy)]
struct NoopParams {
    out: u64,
    n: i32,
}

fn noop(pdl: bool) -> KernelSpec {
    KernelSpec::new(format!("bench_noop{}", if pdl { "__pdl" } else { "" }), &NOOP, format!("bench_noop<{pdl}>")).pdl(pdl)
}

/// Representative kernels for the cold-compile measurement: the noop and the first spec of each op.
fn representative() -> Vec<KernelSpec> {
    let mut v = vec![noop(true)];
    for (_, specs) in crate::prewarm::all_ops() {
        v.extend(specs.into_iter().next());
    }
    v
}

/// Measures and records the runtime costs.
pub fn run(c: &mut Ctx) -> anyhow::Result<()> {
    let arch = c.rt.arch();
    let knobs = Knobs { cache_disable: true, ..Knobs::from_env()? };
    // Cold compile: straight to the compiler, no cache (the first call also loads NVRTC).
    for spec in representative() {
        let t = Instant::now();
        let compiled = compile_with(&spec, arch, &knobs)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        c.record_raw(&format!(
            r#"{{"op": "runtime", "metric": "cold_compile_ms", "kernel": "{}", "arch": "{}", "ms": {ms:.1}, "compiler_ms": {:.1}}}"#,
            spec.name(),
            compiled.arch,
            compiled.compile_ms
        ))?;
    }
    // Warm first call in a fresh process: prewarm a private cache, then time a child process.
    let dir = std::env::temp_dir().join(format!("kiln-bench-cache-{}", std::process::id()));
    let store = Store::new(Knobs { cache_dir: Some(dir.clone()), cache_disable: false, ..Knobs::from_env()? });
    store.fetch(&noop(true), arch, false)?;
    for _ in 0..3 {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["bench-child", "first-call"])
            .env("KILN_CACHE_DIR", &dir)
            .output()
            .context("starting the child process")?;
        anyhow::ensure!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8_lossy(&out.stdout).lines().find(|l| l.contains("first_call")).unwrap_or_default().to_string();
        c.record_raw(&line)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Host time per launch. Launches are timed in batches of 100 with a (untimed) synchronisation
    // between batches, so that the driver's queue never fills: with it full, the host would wait
    // for the GPU and the number would be the GPU's time per tiny kernel, not the host's cost.
    let out = c.rt.stream().alloc_zeros::<f32>(32)?;
    let p = NoopParams { out: super::device_ptr(&c.rt, &out), n: 32 };
    for pdl in [false, true] {
        let k = c.rt.kernel(&noop(pdl))?;
        // SAFETY: NoopParams mirrors the kernel's struct; `out` holds 32 floats, n = 32.
        let us = host_us(c, || unsafe { c.rt.launch(&k, LaunchConfig::linear(1, 32)).run(&p) })?;
        c.record_raw(&format!(r#"{{"op": "runtime", "metric": "host_us_per_launch", "pdl": {pdl}, "us": {us:.2}}}"#))?;
    }
    // The same through a whole op call (validation, kernel lookup, launch): silu_and_mul, 1×(2·4096).
    let d = 4096;
    let x = c.rt.stream().alloc_zeros::<half::bf16>(2 * d)?;
    let mut y = c.rt.stream().alloc_zeros::<half::bf16>(d)?;
    let shape = kiln_activation::Shape::contiguous(1, d);
    let us = host_us(c, || kiln_activation::act_and_mul(&c.rt, kiln_activation::Activation::Silu, &x, &mut y, shape))?;
    c.record_raw(&format!(r#"{{"op": "runtime", "metric": "host_us_per_op_call", "kernel": "silu_and_mul bf16 1x8192", "us": {us:.2}}}"#))?;
    Ok(())
}

/// `xtask bench-child first-call`: the fresh-process half of the warm-start measurement. Prints
/// the time to create the runtime and the time of the first call (cache lookup, disk read,
/// module load, launch, synchronise).
pub fn child(args: crate::Args) -> anyhow::Result<()> {
    let rest = args.rest();
    anyhow::ensure!(rest.first().map(String::as_str) == Some("first-call"), "usage: bench-child first-call");
    let t = Instant::now();
    let rt = Runtime::new(0)?;
    let rt_ms = t.elapsed().as_secs_f64() * 1e3;
    let out = rt.stream().alloc_zeros::<f32>(32)?;
    rt.stream().synchronize()?;
    let p = NoopParams { out: super::device_ptr(&rt, &out), n: 32 };
    let t = Instant::now();
    let k = rt.kernel(&noop(true))?;
    // SAFETY: as in `run`.
    unsafe { rt.launch(&k, LaunchConfig::linear(1, 32)).run(&p)? };
    rt.stream().synchronize()?;
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let s = kiln_runtime::stats();
    anyhow::ensure!(s.compiled == 0 && s.nvrtc_programs == 0, "the warm start called NVRTC: {s}");
    println!(
        r#"{{"op": "runtime", "metric": "warm_first_call_ms", "first_call_ms": {first_ms:.3}, "runtime_new_ms": {rt_ms:.1}, "tier": "{:?}", "arch": "{}"}}"#,
        k.tier(),
        rt.arch()
    );
    Ok(())
}

/// Median host µs per call of `f` over 50 batches of 100 calls, synchronising between batches.
fn host_us<E>(c: &Ctx, mut f: impl FnMut() -> Result<(), E>) -> anyhow::Result<f64>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut per_batch = Vec::new();
    for b in 0..60 {
        c.rt.stream().synchronize()?;
        let t = Instant::now();
        for _ in 0..100 {
            f()?;
        }
        if b >= 10 {
            per_batch.push(t.elapsed().as_secs_f64() * 1e6 / 100.0);
        }
    }
    c.rt.stream().synchronize()?;
    per_batch.sort_by(f64::total_cmp);
    Ok(per_batch[per_batch.len() / 2])
}
