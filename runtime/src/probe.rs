//! Finding the CUDA pieces (driver, NVRTC, headers, nvcc) without ever panicking.
//!
//! cudarc's loaders panic when a library is missing and find NVRTC only by soname; kiln looks
//! for the exact files first, in this order, and reports where it looked:
//! `KILN_CUDA_HOME`, `CUDA_HOME`, `CUDA_PATH`, `/usr/local/cuda`, then the `nvidia/cu13` folder of
//! Python's PyPI wheels (`nvidia-cuda-nvrtc`, `nvidia-cuda-runtime`; `lib/` and `lib64/` layouts).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::arch::Arch;

/// The files kiln found for compiling kernels.
#[derive(Debug, Clone, Default)]
pub struct Toolkit {
    /// `libnvrtc.so.13` (absolute path).
    pub nvrtc: Option<PathBuf>,
    /// `libnvrtc-builtins.so.13.*` next to it (NVRTC dlopens it by soname at compile time).
    pub nvrtc_builtins: Option<PathBuf>,
    /// The directory holding `cuda_bf16.h`, `cuda_fp8.h`, …
    pub include: Option<PathBuf>,
    /// `bin/nvcc`, for the optional nvcc backend.
    pub nvcc: Option<PathBuf>,
    /// Every place looked at, in order, for error messages.
    pub searched: Vec<String>,
}

impl Toolkit {
    /// The search trail as one line.
    pub fn searched_line(&self) -> String {
        self.searched.join(", ")
    }
}

/// The toolkit, discovered once per process.
pub fn toolkit() -> &'static Toolkit {
    static TK: OnceLock<Toolkit> = OnceLock::new();
    TK.get_or_init(discover)
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Candidate roots, most explicit first.
fn candidate_roots() -> Vec<(String, PathBuf)> {
    let mut roots = Vec::new();
    for var in ["KILN_CUDA_HOME", "CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = env_path(var) {
            roots.push((format!("${var}={}", p.display()), p));
        }
    }
    roots.push(("/usr/local/cuda".into(), PathBuf::from("/usr/local/cuda")));
    roots
}

/// `site-packages/nvidia/cu13` folders of the Python environments we can see: an active
/// virtualenv, then whatever `python3` reports (user and system site).
fn python_wheel_roots() -> Vec<(String, PathBuf)> {
    let mut sites: Vec<PathBuf> = Vec::new();
    if let Some(venv) = env_path("VIRTUAL_ENV") {
        sites.extend(glob_site_packages(&venv));
    }
    if let Some(out) = run_with_timeout(
        Command::new(std::env::var_os("KILN_PYTHON").unwrap_or_else(|| "python3".into()))
            .args(["-c", "import site,sys\nfor p in site.getsitepackages()+[site.getusersitepackages()]: print(p)"]),
        Duration::from_secs(5),
    ) {
        sites.extend(out.lines().map(|l| PathBuf::from(l.trim())).filter(|p| !p.as_os_str().is_empty()));
    }
    let mut roots = Vec::new();
    for s in sites {
        let p = s.join("nvidia").join("cu13");
        let label = format!("python wheels {}", p.display());
        if !roots.iter().any(|(_, q)| q == &p) {
            roots.push((label, p));
        }
    }
    roots
}

fn glob_site_packages(prefix: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for lib in ["lib", "lib64"] {
        if let Ok(rd) = std::fs::read_dir(prefix.join(lib)) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("python3") {
                    v.push(e.path().join("site-packages"));
                }
            }
        }
    }
    v.sort();
    v
}

/// Runs a command, returning its stdout when it exits 0 within `timeout`.
pub(crate) fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Option<String> {
    use std::process::Stdio;
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
    let start = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut s = String::new();
                use std::io::Read;
                child.stdout.take()?.read_to_string(&mut s).ok()?;
                return status.success().then_some(s);
            }
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

const LIB_DIRS: [&str; 4] = ["lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"];
const INCLUDE_DIRS: [&str; 3] = ["include", "targets/x86_64-linux/include", "targets/sbsa-linux/include"];

fn find_in_root(root: &Path, tk: &mut Toolkit) {
    if tk.nvrtc.is_none() {
        'dirs: for d in LIB_DIRS {
            let dir = root.join(d);
            for name in ["libnvrtc.so.13", "libnvrtc.so"] {
                let p = dir.join(name);
                if p.is_file() {
                    tk.nvrtc = Some(p);
                    tk.nvrtc_builtins = find_builtins(&dir);
                    break 'dirs;
                }
            }
        }
    }
    if tk.include.is_none() {
        for d in INCLUDE_DIRS {
            let dir = root.join(d);
            if dir.join("cuda_bf16.h").is_file() && dir.join("cuda_fp8.h").is_file() {
                tk.include = Some(dir);
                break;
            }
        }
    }
    if tk.nvcc.is_none() {
        let p = root.join("bin").join("nvcc");
        if p.is_file() {
            tk.nvcc = Some(p);
        }
    }
}

fn find_builtins(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.starts_with("libnvrtc-builtins.so.") && !n.contains(".alt.")
        })
        .collect();
    found.sort();
    found.pop()
}

fn discover() -> Toolkit {
    let mut tk = Toolkit::default();
    if std::env::var("KILN_CUDA_HOME").as_deref() == Ok("none") {
        // Explicitly no toolkit: behave like a production host that only has a prewarmed cache.
        tk.searched.push("$KILN_CUDA_HOME=none (toolkit search disabled)".into());
        return tk;
    }
    for (label, root) in candidate_roots() {
        tk.searched.push(label);
        find_in_root(&root, &mut tk);
    }
    if tk.nvrtc.is_none() || tk.include.is_none() {
        for (label, root) in python_wheel_roots() {
            tk.searched.push(label);
            find_in_root(&root, &mut tk);
        }
    }
    if tk.nvcc.is_none()
        && let Some(p) = env_path("KILN_NVCC")
    {
        tk.searched.push(format!("$KILN_NVCC={}", p.display()));
        if p.is_file() {
            tk.nvcc = Some(p);
        }
    }
    tk
}

/// What the NVRTC library says about itself.
#[derive(Debug, Clone)]
pub struct NvrtcInfo {
    /// Library path.
    pub path: PathBuf,
    /// `(major, minor)` from `nvrtcVersion`.
    pub version: (i32, i32),
    /// Architectures this NVRTC can target (`nvrtcGetSupportedArchs`), as `major*10+minor`.
    pub supported_archs: Vec<u32>,
}

/// One visible GPU.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Ordinal.
    pub ordinal: usize,
    /// Marketing name.
    pub name: String,
    /// Compute capability as a portable arch.
    pub arch: Arch,
    /// Number of SMs.
    pub sm_count: u32,
}

/// Everything [`probe`] found; each piece is `Ok` or the reason it is missing.
#[derive(Debug, Clone)]
pub struct Availability {
    /// The CUDA driver library (`libcuda.so`) loads and initialises.
    pub driver: Result<(), String>,
    /// NVRTC loads, with its version.
    pub nvrtc: Result<NvrtcInfo, String>,
    /// CUDA headers (for `cuda_bf16.h`, `cuda_fp8.h`).
    pub headers: Result<PathBuf, String>,
    /// nvcc, if any.
    pub nvcc: Option<PathBuf>,
    /// GPUs (empty when the driver is missing or sees none).
    pub devices: Vec<DeviceInfo>,
    /// Where kiln looked.
    pub searched: Vec<String>,
}

impl Availability {
    /// Kernels can be compiled here (NVRTC and headers present).
    pub fn can_compile(&self) -> bool {
        self.nvrtc.is_ok() && self.headers.is_ok()
    }

    /// At least one GPU is usable.
    pub fn has_gpu(&self) -> bool {
        self.driver.is_ok() && !self.devices.is_empty()
    }

    /// Why compiling is impossible, if it is.
    pub fn compile_blocker(&self) -> Option<String> {
        match (&self.nvrtc, &self.headers) {
            (Err(e), _) | (Ok(_), Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Why GPU work is impossible, if it is.
    pub fn gpu_blocker(&self) -> Option<String> {
        match &self.driver {
            Err(e) => Some(e.clone()),
            Ok(()) if self.devices.is_empty() => Some("the CUDA driver reports no GPU".into()),
            Ok(()) => None,
        }
    }
}

impl std::fmt::Display for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.driver {
            Ok(()) => writeln!(f, "driver:  ok, {} device(s)", self.devices.len())?,
            Err(e) => writeln!(f, "driver:  missing ({e})")?,
        }
        for d in &self.devices {
            writeln!(f, "  gpu {}: {} ({}, {} SMs)", d.ordinal, d.name, d.arch, d.sm_count)?;
        }
        match &self.nvrtc {
            Ok(n) => writeln!(f, "nvrtc:   {}.{} at {}", n.version.0, n.version.1, n.path.display())?,
            Err(e) => writeln!(f, "nvrtc:   missing ({e})")?,
        }
        match &self.headers {
            Ok(p) => writeln!(f, "headers: {}", p.display())?,
            Err(e) => writeln!(f, "headers: missing ({e})")?,
        }
        match &self.nvcc {
            Some(p) => writeln!(f, "nvcc:    {}", p.display())?,
            None => writeln!(f, "nvcc:    not found")?,
        }
        write!(f, "searched: {}", self.searched.join(", "))
    }
}

/// Reports which CUDA pieces are present. Never panics and never fails: each missing piece is an
/// `Err(reason)` naming where kiln looked.
pub fn probe() -> Availability {
    let tk = toolkit();
    let nvrtc = crate::compile::nvrtc::info().map_err(|e| e.to_string());
    let headers = tk.include.clone().ok_or_else(|| format!("cuda_bf16.h/cuda_fp8.h not found (searched {})", tk.searched_line()));
    let (driver, devices) = match crate::launch::driver_devices() {
        Ok(d) => (Ok(()), d),
        Err(e) => (Err(e), Vec::new()),
    };
    Availability { driver, nvrtc, headers, nvcc: tk.nvcc.clone(), devices, searched: tk.searched.clone() }
}
