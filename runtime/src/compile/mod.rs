//! Turning a [`KernelSpec`] into CUBIN + PTX for one architecture, with NVRTC (default) or nvcc.

pub mod nvcc;
pub mod nvrtc;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::env::{Backend, Knobs};
use crate::error::{Error, Result};
use crate::math::FastMath;
use crate::probe::toolkit;
use crate::ptx;
use crate::source::KernelSpec;
use crate::telemetry;

/// The C++ dialect every kernel is compiled with.
pub const CXX_STD: &str = "-std=c++17";

/// The result of compiling one spec for one architecture (or of reading it back from the cache).
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// Spec label.
    pub kernel: String,
    /// Target architecture.
    pub arch: Arch,
    /// Which compiler produced it.
    pub backend: Backend,
    /// The compiler's identity (version and build id).
    pub compiler: String,
    /// Effective options, canonical order, no paths.
    pub options: Vec<String>,
    /// Effective fast-math flags (also inside `options`).
    pub math: FastMath,
    /// The name expression.
    pub expr: String,
    /// Its lowered (mangled) name in the CUBIN.
    pub lowered_name: String,
    /// Machine code for `arch`.
    pub cubin: Vec<u8>,
    /// PTX (for snapshots and debugging; never loaded).
    pub ptx: String,
    /// Wall time of the compilation, in milliseconds.
    pub compile_ms: f64,
    /// Whether the PTX contains `griddepcontrol.wait`.
    pub pdl_waits: bool,
}

/// Architecture as the `KILN_CUDA_ARCH` macro value (`900`, `1000`).
pub fn arch_macro(arch: Arch) -> u32 {
    arch.major * 100 + arch.minor * 10
}

/// The canonical option list for `spec` on `arch` (no include paths: those are not part of what
/// the code is; the headers' contents are hashed instead).
pub fn canonical_options(spec: &KernelSpec, arch: Arch, knobs: &Knobs) -> Vec<String> {
    let mut o = vec![format!("--gpu-architecture={arch}"), CXX_STD.to_string()];
    o.extend(spec.math_policy().resolve(arch).flags());
    o.push(format!("-DKILN_CUDA_ARCH={}", arch_macro(arch)));
    for (k, v) in spec.defines() {
        o.push(format!("-D{k}={v}"));
    }
    if knobs.lineinfo {
        o.push("--generate-line-info".into());
    }
    o
}

/// Checks `arch` against what the compiler supports.
fn check_arch(arch: Arch, backend: Backend) -> Result<()> {
    if backend == Backend::Nvrtc {
        let info = nvrtc::info()?;
        if !info.supported_archs.is_empty() && !info.supported_archs.contains(&arch.number()) {
            return Err(Error::UnsupportedArch {
                arch,
                reason: format!(
                    "NVRTC {}.{} ({}) cannot target it; it supports {}",
                    info.version.0,
                    info.version.1,
                    info.path.display(),
                    info.supported_archs.iter().map(|a| format!("sm_{a}")).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Compiles `spec` for the device architecture `device` (the spec decides between `sm_XY` and
/// `sm_XYa`) with the backend chosen by `KILN_COMPILER`. Needs no GPU and touches no cache: use
/// it in build steps and snapshot tests, or [`prewarm`](crate::prewarm) to fill a cache.
///
/// ```no_run
/// # use kiln_runtime::{compile, Arch, KernelSource, KernelSpec, PRELUDE};
/// static SRC: KernelSource = KernelSource { name: "k.cuh", text: "template <int N> __global__ void k(float* x) { x[N] = 1; }", headers: &[PRELUDE] };
/// let c = compile(&KernelSpec::new("k__4", &SRC, "k<4>"), Arch::SM90)?;
/// assert!(c.ptx.contains(".entry"));
/// # Ok::<(), kiln_runtime::Error>(())
/// ```
pub fn compile(spec: &KernelSpec, device: Arch) -> Result<Compiled> {
    compile_with(spec, device, &Knobs::from_env()?)
}

/// [`compile`] with explicit knobs (backend, line info) instead of the environment.
pub fn compile_with(spec: &KernelSpec, device: Arch, knobs: &Knobs) -> Result<Compiled> {
    let arch = spec.target_arch(device);
    check_arch(arch, knobs.backend)?;
    if !spec.target_set().allows(arch) {
        return Err(Error::UnsupportedArch { arch, reason: format!("{} runs only on {:?}", spec.name(), spec.target_set()) });
    }
    let tk = toolkit();
    let include = tk
        .include
        .clone()
        .ok_or_else(|| Error::unavailable("CUDA headers", format!("cuda_bf16.h/cuda_fp8.h not found (searched {})", tk.searched_line())))?;
    let options = canonical_options(spec, arch, knobs);
    let compiler = compiler_identity(knobs.backend, None)?;
    let headers: Vec<(&str, &str)> = spec.source().all_headers().map(|h| (h.name, h.text)).collect();
    let start = Instant::now();
    let (ptx, cubin, lowered) =
        match knobs.backend {
            Backend::Nvrtc => {
                let mut full = options.clone();
                full.push(format!("--include-path={}", include.display()));
                let out = nvrtc::compile(spec.source().name, spec.source().text, &headers, &full, &[spec.expr().to_string()])?
                    .map_err(|log| Error::Compile { kernel: spec.name().into(), arch, options: options.clone(), log })?;
                if !out.log.is_empty() {
                    telemetry::debug(&format!("NVRTC log for {}:\n{}", spec.name(), out.log));
                }
                (out.ptx, out.cubin, out.lowered.into_iter().next().unwrap_or_default())
            }
            Backend::Nvcc => {
                let nvcc_path = tk.nvcc.clone().ok_or_else(|| {
                    Error::unavailable("nvcc", format!("KILN_COMPILER=nvcc but no bin/nvcc found (searched {})", tk.searched_line()))
                })?;
                let out = nvcc::compile(&nvcc_path, spec, &headers, &options, &include, knobs.nvcc_timeout)?
                    .map_err(|log| Error::Compile { kernel: spec.name().into(), arch, options: options.clone(), log })?;
                (out.ptx, out.cubin, out.lowered)
            }
        };
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let pdl_waits = ptx::has_pdl_wait(&ptx);
    Ok(Compiled {
        kernel: spec.name().to_string(),
        arch,
        backend: knobs.backend,
        compiler,
        options,
        math: spec.math_policy().resolve(arch),
        expr: spec.expr().to_string(),
        lowered_name: lowered,
        cubin,
        ptx,
        compile_ms,
        pdl_waits,
    })
}

/// Toolkit headers whose text the kernels see; their contents enter the compiler identity.
const TOOLKIT_HEADERS: [&str; 10] = [
    "cuda_fp16.h",
    "cuda_fp16.hpp",
    "cuda_bf16.h",
    "cuda_bf16.hpp",
    "cuda_fp8.h",
    "cuda_fp8.hpp",
    "cuda_fp6.h",
    "cuda_fp4.h",
    "cuda.h",
    "cuda_runtime_api.h",
];

fn file_stamp(h: &mut Sha256, p: &Path) {
    h.update(p.to_string_lossy().as_bytes());
    if let Ok(m) = std::fs::metadata(p) {
        h.update(m.len().to_le_bytes());
        if let Ok(t) = m.modified()
            && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
        {
            h.update(d.as_nanos().to_le_bytes());
        }
    }
}

/// A cheap fingerprint of the compiler files (paths, sizes, mtimes): names the identity memo.
fn toolchain_stamp(backend: Backend) -> String {
    let tk = toolkit();
    let mut h = Sha256::new();
    h.update(format!("{backend:?}").as_bytes());
    let files: Vec<std::path::PathBuf> = match backend {
        Backend::Nvrtc => tk.nvrtc.iter().chain(tk.nvrtc_builtins.iter()).cloned().collect(),
        Backend::Nvcc => tk.nvcc.iter().cloned().collect(),
    };
    for f in files {
        file_stamp(&mut h, &std::fs::canonicalize(&f).unwrap_or(f));
    }
    if let Some(inc) = &tk.include {
        for name in TOOLKIT_HEADERS {
            file_stamp(&mut h, &inc.join(name));
        }
    }
    hex(&h.finalize()[..12])
}

fn toolkit_headers_digest() -> String {
    let mut h = Sha256::new();
    if let Some(inc) = &toolkit().include {
        for name in TOOLKIT_HEADERS {
            h.update(name.as_bytes());
            match std::fs::read(inc.join(name)) {
                Ok(b) => {
                    h.update((b.len() as u64).to_le_bytes());
                    h.update(&b);
                }
                Err(_) => h.update(b"absent"),
            }
        }
    }
    hex(&h.finalize()[..8])
}

/// Lower-case hex.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn measure_identity(backend: Backend) -> Result<String> {
    let headers = toolkit_headers_digest();
    match backend {
        Backend::Nvrtc => {
            let info = nvrtc::info()?;
            let arch = if info.supported_archs.contains(&90) || info.supported_archs.is_empty() { 90 } else { info.supported_archs[0] };
            let out = nvrtc::compile(
                "kiln_identity.cu",
                "__global__ void kiln_identity() {}\n",
                &[],
                &[format!("--gpu-architecture=sm_{arch}")],
                &[],
            )?
            .map_err(|log| Error::unavailable("NVRTC", format!("cannot compile an empty kernel: {log}")))?;
            let banner = ptx::banner_identity(&out.ptx);
            Ok(format!("nvrtc {}.{} {banner} headers:{headers}", info.version.0, info.version.1))
        }
        Backend::Nvcc => {
            let tk = toolkit();
            let path = tk.nvcc.as_ref().ok_or_else(|| Error::unavailable("nvcc", "not found"))?;
            let v = crate::probe::run_with_timeout(std::process::Command::new(path).arg("--version"), std::time::Duration::from_secs(30))
                .ok_or_else(|| Error::unavailable("nvcc", format!("{} --version failed", path.display())))?;
            let lines: Vec<&str> = v.lines().filter(|l| l.contains("release") || l.starts_with("Build")).collect();
            Ok(format!("nvcc {} headers:{headers}", lines.join(" ")))
        }
    }
}

/// The compiler's identity (`nvrtc 13.0 CL-36424714 V13.0.88 headers:…`): version, build id and a
/// digest of the toolkit headers the kernels include. Measured once per toolchain (it costs one
/// tiny compile) and remembered in `<cache>/toolchains/` keyed by the files' paths, sizes and
/// mtimes, so a warm process never calls the compiler.
pub(crate) fn compiler_identity(backend: Backend, cache_root: Option<&Path>) -> Result<String> {
    static IDS: [OnceLock<std::result::Result<String, String>>; 2] = [OnceLock::new(), OnceLock::new()];
    static STAMPS: [OnceLock<String>; 2] = [OnceLock::new(), OnceLock::new()];
    let memo =
        cache_root.map(|r| r.join("toolchains").join(format!("{}.id", STAMPS[backend as usize].get_or_init(|| toolchain_stamp(backend)))));
    let id = IDS[backend as usize]
        .get_or_init(|| {
            if let Some(m) = &memo
                && let Ok(s) = std::fs::read_to_string(m)
                && !s.trim().is_empty()
            {
                return Ok(s.trim().to_string());
            }
            measure_identity(backend).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| Error::unavailable(format!("{backend:?} compiler"), e))?;
    // Every cache this process uses learns the identity, so its next process needs no compiler call.
    if let Some(m) = &memo
        && !m.exists()
    {
        let _ = crate::cache::disk::write_atomic(m, id.as_bytes());
    }
    Ok(id)
}

/// Whether the configured compiler can be reached (cheap: file discovery only).
pub(crate) fn compiler_present(backend: Backend) -> bool {
    let tk = toolkit();
    match backend {
        Backend::Nvrtc => tk.nvrtc.is_some() && tk.include.is_some(),
        Backend::Nvcc => tk.nvcc.is_some() && tk.include.is_some(),
    }
}
