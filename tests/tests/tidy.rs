//! Tidy checks, written as tests (T0): repository rules that code review would otherwise have to
//! remember.

use std::path::{Path, PathBuf};

use kiln_runtime::KernelSource;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if !(name.starts_with('.') || name == "target" || name == "snapshots") {
                files(&p, ext, out);
            }
        } else if name.ends_with(ext) {
            out.push(p);
        }
    }
}

fn sources() -> Vec<&'static KernelSource> {
    let mut v: Vec<&'static KernelSource> = vec![&kiln_tests::prelude_kernels::SOURCE];
    for specs in [kiln_activation::kernel_specs(), kiln_rmsnorm::kernel_specs(), kiln_rope::kernel_specs(), kiln_mxfp8::kernel_specs()] {
        for s in specs {
            if !v.iter().any(|x| std::ptr::eq(*x, s.source())) {
                v.push(s.source());
            }
        }
    }
    v
}

#[test]
fn every_cuh_is_registered_by_a_kernel_source() {
    let mut cuh = Vec::new();
    files(&root(), ".cuh", &mut cuh);
    assert!(cuh.len() >= 7, "found only {cuh:?}");
    let srcs = sources();
    let mut texts: Vec<&str> = kiln_runtime::PRELUDE.iter().map(|h| h.text).collect();
    for s in &srcs {
        texts.push(s.text);
        texts.extend(s.all_headers().map(|h| h.text));
    }
    for f in cuh {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(texts.contains(&text.as_str()), "{} is not the text of any KernelSource or header", f.display());
    }
}

#[test]
fn cuh_files_are_device_only_and_documented() {
    let mut cuh = Vec::new();
    files(&root(), ".cuh", &mut cuh);
    let allowed_system = ["cuda_fp16.h", "cuda_bf16.h", "cuda_fp8.h"];
    for f in cuh {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.starts_with("//"), "{} must start with a comment stating the op's math, layout and launch shape", f.display());
        let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
        assert!(
            !code.contains("cudaGridDependencySynchronize"),
            "{}: use kiln::pdl_wait (NVRTC has no cudaGridDependencySynchronize)",
            f.display()
        );
        for line in text.lines().filter(|l| l.trim_start().starts_with("#include")) {
            let inc = line.trim_start().trim_start_matches("#include").trim();
            let name = inc.trim_matches(|c| c == '<' || c == '>' || c == '"');
            let ok = allowed_system.contains(&name) || name.starts_with("kiln/") || name.ends_with(".cuh");
            assert!(ok, "{}: host or unknown header {inc}", f.display());
        }
    }
}

#[test]
fn every_ignore_has_a_reason() {
    let mut rs = Vec::new();
    files(&root(), ".rs", &mut rs);
    for f in rs {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            let bare = ["#[ignore]", "#[ignore ]"].contains(&t);
            assert!(!bare, "{}:{}: #[ignore] without a reason (write #[ignore = \"why\"])", f.display(), i + 1);
        }
    }
}

#[test]
fn unsafe_lives_in_named_files() {
    let allowed = ["runtime/src/compile/nvrtc.rs", "runtime/src/launch.rs", "runtime/src/dtype.rs", "/src/ffi.rs", "xtask/src/", "tests/"];
    let mut rs = Vec::new();
    for d in ["runtime", "ops-activation", "ops-rmsnorm", "ops-rope", "ops-mxfp8"] {
        files(&root().join(d), ".rs", &mut rs);
    }
    for f in rs {
        let rel = f.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/");
        let ffi_file = rel.contains("/src/ffi") && rel.ends_with(".rs");
        if ffi_file || allowed.iter().any(|a| rel.contains(a)) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !(code.contains("unsafe {") || code.contains("unsafe fn") || code.contains("unsafe impl")),
                "{rel}:{}: unsafe outside the FFI files",
                i + 1
            );
        }
    }
}
