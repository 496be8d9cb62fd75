//! Counters per cache tier, compile time totals, and kiln's log lines (`KILN_LOG`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Nothing.
    Off,
    /// Cache failures and other degradations (default).
    Warn,
    /// Plus one line per cold compile.
    Info,
    /// Plus compiler logs and cache decisions.
    Debug,
}

fn level() -> Level {
    static L: OnceLock<Level> = OnceLock::new();
    *L.get_or_init(|| match std::env::var("KILN_LOG").unwrap_or_default().to_ascii_lowercase().as_str() {
        "off" | "0" | "none" => Level::Off,
        "info" | "1" => Level::Info,
        "debug" | "trace" | "2" => Level::Debug,
        _ => Level::Warn,
    })
}

fn emit(l: Level, tag: &str, msg: &str) {
    if l <= level() {
        eprintln!("[kiln {tag}] {msg}");
    }
}

/// Logs a degradation (always shown unless `KILN_LOG=off`).
pub fn warn(msg: &str) {
    emit(Level::Warn, "warn", msg)
}
/// Logs an event worth a line (`KILN_LOG=info`).
pub fn info(msg: &str) {
    emit(Level::Info, "info", msg)
}
/// Logs detail (`KILN_LOG=debug`).
pub fn debug(msg: &str) {
    emit(Level::Debug, "debug", msg)
}

#[derive(Default)]
struct Counters {
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    compiled: AtomicU64,
    compile_us: AtomicU64,
    slowest_compile_us: AtomicU64,
    cache_errors: AtomicU64,
    quarantined: AtomicU64,
    nvrtc_programs: AtomicU64,
}

fn counters() -> &'static Counters {
    static C: OnceLock<Counters> = OnceLock::new();
    C.get_or_init(Counters::default)
}

/// Where a kernel came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Already loaded in this process.
    Memory,
    /// Read from the disk cache.
    Disk,
    /// Compiled now.
    Compiled,
}

/// A snapshot of the process-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// `kernel()` calls served from memory.
    pub memory_hits: u64,
    /// Kernels read from the disk cache.
    pub disk_hits: u64,
    /// Kernels compiled.
    pub compiled: u64,
    /// Total compile wall time, ms.
    pub compile_ms: f64,
    /// Slowest single compile, ms.
    pub slowest_compile_ms: f64,
    /// Cache read/write failures that cost a recompile.
    pub cache_errors: u64,
    /// Entries moved to quarantine (corrupt, mismatched, or rejected by the driver).
    pub quarantined: u64,
    /// NVRTC programs compiled by this process (kernels and the one-off identity probe): a warm
    /// process must show 0.
    pub nvrtc_programs: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} memory hits, {} disk hits, {} compiled in {:.0} ms (slowest {:.0} ms), {} cache errors, {} quarantined",
            self.memory_hits, self.disk_hits, self.compiled, self.compile_ms, self.slowest_compile_ms, self.cache_errors, self.quarantined
        )
    }
}

/// Process-wide counters.
pub fn stats() -> Stats {
    let c = counters();
    Stats {
        memory_hits: c.memory_hits.load(Relaxed),
        disk_hits: c.disk_hits.load(Relaxed),
        compiled: c.compiled.load(Relaxed),
        compile_ms: c.compile_us.load(Relaxed) as f64 / 1e3,
        slowest_compile_ms: c.slowest_compile_us.load(Relaxed) as f64 / 1e3,
        cache_errors: c.cache_errors.load(Relaxed),
        quarantined: c.quarantined.load(Relaxed),
        nvrtc_programs: c.nvrtc_programs.load(Relaxed),
    }
}

pub(crate) fn record_tier(t: Tier) {
    let c = counters();
    match t {
        Tier::Memory => &c.memory_hits,
        Tier::Disk => &c.disk_hits,
        Tier::Compiled => &c.compiled,
    }
    .fetch_add(1, Relaxed);
}

pub(crate) fn record_compile(kernel: &str, arch: crate::Arch, backend: &str, ms: f64) {
    let c = counters();
    let us = (ms * 1e3) as u64;
    c.compile_us.fetch_add(us, Relaxed);
    c.slowest_compile_us.fetch_max(us, Relaxed);
    info(&format!("compiled {kernel} for {arch} with {backend} in {ms:.0} ms"));
}

pub(crate) fn record_nvrtc_program() {
    counters().nvrtc_programs.fetch_add(1, Relaxed);
}

pub(crate) fn record_cache_error(msg: &str) {
    counters().cache_errors.fetch_add(1, Relaxed);
    warn(&format!("kernel cache: {msg}; recompiling"));
}

pub(crate) fn record_quarantine(msg: &str) {
    counters().quarantined.fetch_add(1, Relaxed);
    warn(&format!("kernel cache: {msg}; entry quarantined"));
}
