//! Test tiers. T0 needs nothing (plain `#[test]`s), T1 needs NVRTC + headers, T2 a GPU.
//!
//! A test whose need is missing is listed as *ignored* (nextest and libtest show it as skipped,
//! never passed) and prints why; if run anyway (`--include-ignored`) it reports
//! `ignored, <reason>`. With `KILN_REQUIRE_NVRTC=1` (T1) or `KILN_REQUIRE_GPU=1` (T1 and T2) the
//! missing piece is a failure instead.

use std::sync::OnceLock;

use kiln_runtime::{Availability, probe};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// What a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// T1: NVRTC and the CUDA headers.
    Nvrtc,
    /// T1 with the nvcc backend (strict under `KILN_REQUIRE_NVCC=1`).
    Nvcc,
    /// T2: a GPU (and NVRTC).
    Gpu,
    /// T2 with at least this many GPUs (never strict: a one-GPU machine ignores it).
    Gpus(usize),
}

/// The machine, probed once.
pub fn availability() -> &'static Availability {
    static A: OnceLock<Availability> = OnceLock::new();
    A.get_or_init(probe)
}

fn env_on(name: &str) -> bool {
    matches!(std::env::var(name).as_deref(), Ok("1") | Ok("true") | Ok("yes") | Ok("on"))
}

/// Why `need` cannot be met here, if it cannot.
pub fn blocker(need: Need) -> Option<String> {
    let a = availability();
    let compile = a.compile_blocker().map(|e| format!("needs NVRTC: {e}"));
    match need {
        Need::Nvrtc => compile,
        Need::Nvcc => compile.or_else(|| a.nvcc.is_none().then(|| format!("needs nvcc (searched {})", a.searched.join(", ")))),
        Need::Gpu => a.gpu_blocker().map(|e| format!("needs a GPU: {e}")).or(compile),
        Need::Gpus(n) => a
            .gpu_blocker()
            .map(|e| format!("needs {n} GPUs: {e}"))
            .or_else(|| (a.devices.len() < n).then(|| format!("needs {n} GPUs, found {}", a.devices.len())))
            .or(compile),
    }
}

/// Whether a missing `need` is a failure rather than an ignore.
pub fn strict(need: Need) -> bool {
    match need {
        Need::Nvrtc => env_on("KILN_REQUIRE_NVRTC") || env_on("KILN_REQUIRE_GPU"),
        Need::Nvcc => env_on("KILN_REQUIRE_NVCC"),
        Need::Gpu => env_on("KILN_REQUIRE_GPU"),
        Need::Gpus(_) => false,
    }
}

/// A test needing `need`, running `f`.
pub fn trial(name: impl Into<String>, need: Need, f: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> Trial {
    let name = name.into();
    match blocker(need) {
        None => Trial::test(name, move || f().map_err(|e| Failed::from(format!("{e:#}")))),
        Some(why) if strict(need) => Trial::test(name, move || Err(Failed::from(format!("required but unavailable: {why}")))),
        Some(why) => Trial::ignorable_test(name, move || Ok(Completion::ignored_with(why))).with_ignored_flag(true),
    }
}

/// Runs the trials with the standard test CLI and exits. Prints, once, why ignored trials are
/// ignored.
pub fn main(trials: Vec<Trial>) -> ! {
    let args = Arguments::from_args();
    if !args.list {
        let mut seen = Vec::new();
        for need in [Need::Nvrtc, Need::Nvcc, Need::Gpu, Need::Gpus(2)] {
            if let Some(why) = blocker(need)
                && !strict(need)
                && !seen.contains(&why)
            {
                eprintln!("kiln-tests: {need:?} tests are ignored here: {why}");
                seen.push(why);
            }
        }
    }
    libtest_mimic::run(&args, trials).exit()
}
