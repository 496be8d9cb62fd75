//! Makes NVRTC and the CUDA headers available on a machine without CUDA: the pinned PyPI wheels
//! (`nvidia-cuda-nvrtc==13.0.88`, `nvidia-cuda-runtime==13.0.96`) in a project-local venv
//! (`.venv-nvrtc/`), exported to kiln as `KILN_CUDA_HOME`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The pinned wheels.
pub const WHEELS: [&str; 2] = ["nvidia-cuda-nvrtc==13.0.88", "nvidia-cuda-runtime==13.0.96"];

fn has_toolkit(root: &Path) -> bool {
    ["lib64", "lib"].iter().any(|l| root.join(l).join("libnvrtc.so.13").is_file() || root.join(l).join("libnvrtc.so").is_file())
        && root.join("include").join("cuda_bf16.h").is_file()
}

fn venv_cu13(venv: &Path) -> Option<PathBuf> {
    for lib in ["lib", "lib64"] {
        let rd = std::fs::read_dir(venv.join(lib)).ok()?;
        for e in rd.flatten() {
            let p = e.path().join("site-packages").join("nvidia").join("cu13");
            if has_toolkit(&p) {
                return Some(p);
            }
        }
    }
    let t = venv.join("site").join("nvidia").join("cu13");
    has_toolkit(&t).then_some(t)
}

/// Ensures kiln can find NVRTC; installs the pinned wheels if nothing is found. Sets
/// `KILN_CUDA_HOME` for this process and its children when it used the venv.
pub fn ensure_nvrtc() -> anyhow::Result<()> {
    for var in ["KILN_CUDA_HOME", "CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var)
            && has_toolkit(Path::new(&v))
        {
            return Ok(());
        }
    }
    if has_toolkit(Path::new("/usr/local/cuda")) {
        return Ok(());
    }
    let venv = crate::root().join(".venv-nvrtc");
    let cu13 = match venv_cu13(&venv) {
        Some(p) => p,
        None => {
            eprintln!("xtask: no NVRTC found; installing {} into {}", WHEELS.join(" "), venv.display());
            let python = std::env::var("KILN_PYTHON").unwrap_or_else(|_| "python3".into());
            let made_venv = venv.join("bin").join("python").is_file()
                || Command::new(&python).args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success());
            let mut pip = if made_venv {
                let mut c = Command::new(venv.join("bin").join("python"));
                c.args(["-m", "pip", "install"]);
                c
            } else {
                // No venv module: a plain target directory works just as well for shared libraries.
                let mut c = Command::new(&python);
                c.args(["-m", "pip", "install", "--target"]).arg(venv.join("site"));
                c
            };
            pip.args(["--disable-pip-version-check", "--quiet"]).args(WHEELS);
            crate::run(&mut pip).context("installing the NVRTC wheels (needs PyPI)")?;
            match venv_cu13(&venv) {
                Some(p) => p,
                None => bail!("installed {} but found no nvidia/cu13 with libnvrtc and headers under {}", WHEELS.join(" "), venv.display()),
            }
        }
    };
    // SAFETY: called at start-up from the main thread before any other thread exists, so nothing
    // reads the environment concurrently.
    unsafe { std::env::set_var("KILN_CUDA_HOME", &cu13) };
    Ok(())
}
