//! `cargo xtask prewarm [--arch sm_90a,sm_100a] [--ops a,b] [--cache-dir D] [--check] [--jobs N]`:
//! compiles every `kernel_specs()` entry of the selected ops for each arch into the kernel cache,
//! with NVRTC and no GPU. `--check` compiles nothing and fails if any kernel is missing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::bail;
use kiln_runtime::{Arch, KernelSpec, Knobs, Tier, parse_arch_list};

/// Every op crate's specs, by op name.
pub fn all_ops() -> Vec<(&'static str, Vec<KernelSpec>)> {
    vec![
        ("activation", kiln_activation::kernel_specs()),
        ("rmsnorm", kiln_rmsnorm::kernel_specs()),
        ("rope", kiln_rope::kernel_specs()),
        ("mxfp8", kiln_mxfp8::kernel_specs()),
    ]
}

/// The default architecture list: the GPUs present, else sm_90a and sm_100a.
fn default_archs() -> Vec<Arch> {
    let a = kiln_runtime::probe();
    let mut v: Vec<Arch> = a.devices.iter().map(|d| d.arch.arch_specific()).collect();
    v.sort();
    v.dedup();
    if v.is_empty() { vec![Arch::SM90A, Arch::SM100A] } else { v }
}

/// Runs prewarm.
pub fn main(mut args: crate::Args) -> anyhow::Result<()> {
    // First: kiln discovers the toolkit once per process, so KILN_CUDA_HOME must be set before
    // anything (the default arch list's probe included) looks.
    crate::bootstrap::ensure_nvrtc()?;
    let archs = match args.value("arch")? {
        Some(a) => parse_arch_list(&a)?,
        None => default_archs(),
    };
    let ops = args.list("ops")?;
    let cache_dir = args.value("cache-dir")?;
    let check = args.flag("check");
    let jobs: usize = match args.value("jobs")? {
        Some(j) => j.parse()?,
        None => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    args.done()?;
    let mut knobs = Knobs::from_env()?;
    if let Some(d) = cache_dir {
        knobs.cache_dir = Some(d.into());
        knobs.cache_disable = false;
    }
    if check {
        knobs.disable_jit = true;
    }
    let known: Vec<&str> = all_ops().iter().map(|(n, _)| *n).collect();
    for o in &ops {
        if !known.contains(&o.as_str()) {
            bail!("unknown op {o:?} (known: {})", known.join(", "));
        }
    }
    let specs: Vec<KernelSpec> =
        all_ops().into_iter().filter(|(n, _)| ops.is_empty() || ops.iter().any(|o| o == n)).flat_map(|(_, s)| s).collect();
    let total: usize = archs.iter().map(|&a| specs.iter().filter(|s| s.target_set().allows(s.target_arch(a))).count()).sum();
    println!(
        "prewarm: {} kernels × {} archs ({}) = {total} builds, cache {}, {jobs} jobs",
        specs.len(),
        archs.len(),
        archs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
        knobs.cache_root().map_or("disabled".into(), |p| p.display().to_string())
    );
    let start = Instant::now();
    let done = AtomicUsize::new(0);
    let results = kiln_runtime::prewarm(&specs, &archs, &knobs, jobs, |r| {
        let i = done.fetch_add(1, Ordering::Relaxed) + 1;
        let what = match r.tier {
            Tier::Compiled => "compiled",
            Tier::Disk | Tier::Memory => "cached",
        };
        println!("[{i:>4}/{total}] {:<56} {:<8} {what:<8} {:>7.0} ms", r.kernel, r.arch.to_string(), r.ms);
    });
    let results = match results {
        Ok(r) => r,
        Err(e) if check => bail!("prewarm --check: the cache is incomplete: {e}"),
        Err(e) => return Err(e.into()),
    };
    let compiled: Vec<_> = results.iter().filter(|r| r.tier == Tier::Compiled).collect();
    let slowest = compiled.iter().max_by(|a, b| a.ms.total_cmp(&b.ms));
    println!(
        "prewarm: {} builds: {} compiled, {} already cached; {:.1} s total{}",
        results.len(),
        compiled.len(),
        results.len() - compiled.len(),
        start.elapsed().as_secs_f64(),
        slowest.map_or(String::new(), |s| format!(", slowest {} ({}) {:.0} ms", s.kernel, s.arch, s.ms))
    );
    Ok(())
}
