//! PTX snapshots: compiled with NVRTC for a fixed architecture, normalised, summarised
//! (`kiln_runtime::ptx::summary`: digest of the full normalised text, entries and parameter
//! sizes, register/shared/local declarations, opcode histogram) and stored per NVRTC
//! `major.minor` under `tests/snapshots/nvrtc-<ver>/`. Whole PTX of a few hundred unrolled kernels
//! runs to tens of megabytes; the digest still makes every change visible, the histogram shows
//! what changed. `KILN_PTX_DUMP=dir` writes the full normalised PTX for inspection.

use kiln_runtime::{Arch, Compiled, KernelSpec};

/// The snapshot directory for the NVRTC in use, or why there is none.
pub fn snapshot_dir() -> Result<std::path::PathBuf, String> {
    let a = crate::tier::availability();
    let n = a.nvrtc.as_ref().map_err(|e| e.clone())?;
    Ok(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots").join(format!("nvrtc-{}.{}", n.version.0, n.version.1)))
}

/// `<op>__<tag>__<variant>@<arch>`.
pub fn snapshot_name(spec: &KernelSpec, arch: Arch) -> String {
    format!("{}@{}", spec.name(), spec.target_arch(arch))
}

/// Asserts the normalised PTX of `c` against its snapshot.
pub fn assert_ptx(spec: &KernelSpec, arch: Arch, c: &Compiled) -> anyhow::Result<()> {
    let dir = snapshot_dir().map_err(|e| anyhow::anyhow!(e))?;
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .map(|m| std::path::Path::new(&m).join("snapshots").join(dir.file_name().unwrap_or_default()))
        .unwrap_or(dir);
    let name = snapshot_name(spec, arch);
    let normalized = kiln_runtime::normalize_ptx(&c.ptx);
    if let Ok(d) = std::env::var("KILN_PTX_DUMP") {
        let _ = std::fs::create_dir_all(&d);
        let _ = std::fs::write(std::path::Path::new(&d).join(format!("{name}.ptx")), &normalized);
    }
    let text = kiln_runtime::ptx::summary(&normalized);
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(dir);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| settings.bind(|| insta::assert_snapshot!(name.as_str(), text))));
    r.map_err(|e| anyhow::anyhow!("PTX snapshot {name} differs: {}", e.downcast_ref::<String>().cloned().unwrap_or_default()))
}
