//! Memory → disk → compile, with single flight per key inside a process and an optional
//! per-key lock across processes.

pub mod disk;
pub mod entry;
pub mod key;

use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use dashmap::DashMap;

use crate::arch::Arch;
use crate::compile::{self, Compiled};
use crate::env::Knobs;
use crate::error::{Error, Result};
use crate::source::KernelSpec;
use crate::telemetry::{self, Tier};
use disk::{DiskCache, Read};
use key::{CacheKey, KeyInput};

/// Compiled artifacts of this process, by cache key (shared by every `Runtime`).
static ARTIFACTS: LazyLock<DashMap<CacheKey, Arc<Compiled>>> = LazyLock::new(DashMap::new);
/// One mutex per key being fetched: N threads asking for one kernel compile it once.
static INFLIGHT: LazyLock<DashMap<CacheKey, Arc<Mutex<()>>>> = LazyLock::new(DashMap::new);

/// How long a process waits for another process compiling the same key before compiling itself.
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// A fetched kernel image.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The artifact.
    pub compiled: Arc<Compiled>,
    /// Where it came from.
    pub tier: Tier,
    /// Its cache key.
    pub key: CacheKey,
    /// Its entry file, when it was read from or written to disk.
    pub path: Option<PathBuf>,
}

/// The lookup path: process memory, then the disk cache, then the compiler.
#[derive(Debug, Clone)]
pub struct Store {
    knobs: Knobs,
    disk: Option<DiskCache>,
}

impl Store {
    /// A store configured by `knobs` (cache dir, read-only, disable…).
    pub fn new(knobs: Knobs) -> Store {
        let disk = knobs.cache_root().map(|r| DiskCache::new(r, knobs.cache_readonly));
        Store { knobs, disk }
    }

    /// The knobs in force.
    pub fn knobs(&self) -> &Knobs {
        &self.knobs
    }

    /// The disk cache, if enabled.
    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }

    /// The cache key of `spec` on `device` and its entry path (when a disk cache is enabled),
    /// without reading or compiling anything.
    pub fn locate(&self, spec: &KernelSpec, device: Arch) -> Result<(CacheKey, Option<PathBuf>)> {
        let arch = spec.target_arch(device);
        let identity = compile::compiler_identity(self.knobs.backend, self.disk.as_ref().map(|d| d.base()))?;
        let options = compile::canonical_options(spec, arch, &self.knobs);
        let key = KeyInput::for_spec(spec, arch, self.knobs.backend, &identity, &options).key();
        Ok((key, self.disk.as_ref().map(|d| d.entry_path(&identity, arch, &key))))
    }

    /// The image of `spec` for a device of architecture `device`. With `skip_disk`, the disk
    /// entry is not trusted (it was just rejected by the driver) and the kernel is recompiled.
    pub fn fetch(&self, spec: &KernelSpec, device: Arch, skip_disk: bool) -> Result<Fetched> {
        let arch = spec.target_arch(device);
        if !spec.target_set().allows(arch) {
            return Err(Error::UnsupportedArch { arch, reason: format!("{} runs only on {:?}", spec.name(), spec.target_set()) });
        }
        if !compile::compiler_present(self.knobs.backend) {
            return self.fetch_without_compiler(spec, arch);
        }
        let (key, path) = self.locate(spec, device)?;
        if !skip_disk && let Some(c) = ARTIFACTS.get(&key) {
            return Ok(Fetched { compiled: c.clone(), tier: Tier::Memory, key, path });
        }
        let gate = INFLIGHT.entry(key).or_insert_with(|| Arc::new(Mutex::new(()))).clone();
        let _single = gate.lock().unwrap_or_else(|p| p.into_inner());
        if skip_disk {
            ARTIFACTS.remove(&key);
        } else {
            if let Some(c) = ARTIFACTS.get(&key) {
                return Ok(Fetched { compiled: c.clone(), tier: Tier::Memory, key, path });
            }
            if let Some(f) = self.read_disk(&key, path.as_ref()) {
                return Ok(f);
            }
        }
        if self.knobs.disable_jit {
            return Err(Error::JitDisabled { kernel: spec.name().into(), arch, cache: self.cache_label() });
        }
        // Another process may be compiling this key: wait for it, then look again.
        let _lock = self.disk.as_ref().and_then(|d| d.lock(&key, LOCK_WAIT));
        if !skip_disk && let Some(f) = self.read_disk(&key, path.as_ref()) {
            return Ok(f);
        }
        let c = compile::compile_with(spec, device, &self.knobs)?;
        telemetry::record_compile(&c.kernel, c.arch, c.backend.name(), c.compile_ms);
        telemetry::record_tier(Tier::Compiled);
        if let (Some(d), Some(p)) = (&self.disk, &path) {
            if skip_disk {
                d.quarantine(p);
            }
            match d.write(p, &key, &c) {
                Ok(_) => {
                    if let Some(max) = self.knobs.cache_max_bytes {
                        d.gc(max);
                    }
                }
                Err(e) => telemetry::record_cache_error(&format!("cannot write {}: {e}", p.display())),
            }
        }
        let c = Arc::new(c);
        ARTIFACTS.insert(key, c.clone());
        Ok(Fetched { compiled: c, tier: Tier::Compiled, key, path })
    }

    /// Drops an entry the driver refused to load: out of memory and quarantined on disk.
    pub fn reject(&self, f: &Fetched, why: &str) {
        ARTIFACTS.remove(&f.key);
        if let (Some(d), Some(p)) = (&self.disk, &f.path) {
            telemetry::record_quarantine(&format!("{} ({why})", p.display()));
            d.quarantine(p);
        }
    }

    fn read_disk(&self, key: &CacheKey, path: Option<&PathBuf>) -> Option<Fetched> {
        let (d, p) = (self.disk.as_ref()?, path?);
        match d.read(p, key) {
            Read::Hit(c) => {
                let c: Arc<Compiled> = Arc::from(c);
                telemetry::record_tier(Tier::Disk);
                ARTIFACTS.insert(*key, c.clone());
                Some(Fetched { compiled: c, tier: Tier::Disk, key: *key, path: Some(p.clone()) })
            }
            Read::Missing => None,
            Read::Corrupt(why) => {
                telemetry::record_quarantine(&format!("{}: {why}", p.display()));
                d.quarantine(p);
                None
            }
            Read::Io(e) => {
                telemetry::record_cache_error(&format!("cannot read {}: {e}", p.display()));
                None
            }
        }
    }

    /// No compiler here (a production host after prewarm): try every toolchain that has
    /// entries in the cache.
    fn fetch_without_compiler(&self, spec: &KernelSpec, arch: Arch) -> Result<Fetched> {
        if let Some(d) = &self.disk {
            for identity in d.known_identities() {
                if !identity.starts_with(self.knobs.backend.name()) {
                    continue;
                }
                let options = compile::canonical_options(spec, arch, &self.knobs);
                let key = KeyInput::for_spec(spec, arch, self.knobs.backend, &identity, &options).key();
                if let Some(c) = ARTIFACTS.get(&key) {
                    return Ok(Fetched { compiled: c.clone(), tier: Tier::Memory, key, path: None });
                }
                let path = d.entry_path(&identity, arch, &key);
                if let Some(f) = self.read_disk(&key, Some(&path)) {
                    return Ok(f);
                }
            }
        }
        if self.knobs.disable_jit {
            return Err(Error::JitDisabled { kernel: spec.name().into(), arch, cache: self.cache_label() });
        }
        let tk = crate::probe::toolkit();
        Err(Error::unavailable(
            format!("{} (needed to compile {} for {arch})", self.knobs.backend.name(), spec.name()),
            format!("not found and the kernel is not cached in {} (searched {})", self.cache_label(), tk.searched_line()),
        ))
    }

    fn cache_label(&self) -> String {
        match &self.disk {
            Some(d) => d.base().display().to_string(),
            None => "no disk cache (KILN_CACHE_DISABLE or no cache dir)".into(),
        }
    }
}

/// Compiles (or finds in the cache) every spec for every architecture, without a GPU: for build
/// and deploy steps. Specs that cannot run on an architecture are skipped. `progress` is called
/// once per kernel with its outcome. Returns one result per (spec, arch) tried.
///
/// ```no_run
/// use kiln_runtime::{prewarm, Arch, Knobs};
/// # let specs: Vec<kiln_runtime::KernelSpec> = vec![];
/// let report = prewarm(&specs, &[Arch::SM90, Arch::SM100], &Knobs::from_env()?, 2, |_| {})?;
/// println!("{} kernels, {} compiled", report.len(), report.iter().filter(|r| r.tier == kiln_runtime::Tier::Compiled).count());
/// # Ok::<(), kiln_runtime::Error>(())
/// ```
pub fn prewarm(
    specs: &[KernelSpec],
    archs: &[Arch],
    knobs: &Knobs,
    jobs: usize,
    progress: impl Fn(&PrewarmResult) + Sync,
) -> Result<Vec<PrewarmResult>> {
    let store = Store::new(knobs.clone());
    let work: Vec<(&KernelSpec, Arch)> =
        archs.iter().flat_map(|&a| specs.iter().filter(move |s| s.target_set().allows(s.target_arch(a))).map(move |s| (s, a))).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(work.len()));
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(spec, arch)) = work.get(i) else { break };
                    let t = std::time::Instant::now();
                    match store.fetch(spec, arch, false) {
                        Ok(f) => {
                            let r = PrewarmResult {
                                kernel: spec.name().to_string(),
                                arch: f.compiled.arch,
                                tier: f.tier,
                                ms: t.elapsed().as_secs_f64() * 1e3,
                            };
                            progress(&r);
                            results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                        }
                        Err(e) => {
                            first_err.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(results.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// One kernel of a [`prewarm`] run.
#[derive(Debug, Clone)]
pub struct PrewarmResult {
    /// Spec label.
    pub kernel: String,
    /// Target compiled for.
    pub arch: Arch,
    /// `Compiled`, or `Disk`/`Memory` if it was already cached.
    pub tier: Tier,
    /// Wall time for this kernel, ms.
    pub ms: f64,
}
