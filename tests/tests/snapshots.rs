//! T1 over every op's `kernel_specs()`: each kernel compiles for sm_90a and sm_100a (where its
//! spec allows the arch), its normalised PTX matches the snapshot, it waits on `griddepcontrol`
//! exactly when the spec enables PDL, and its by-value params struct has the size the Rust side
//! declares.

use kiln_runtime::{Arch, KernelSpec, compile, ptx};
use kiln_tests::{Need, snap, trial};

type ParamsBytes = fn(&KernelSpec) -> Option<usize>;

fn ops() -> Vec<(&'static str, Vec<KernelSpec>, ParamsBytes)> {
    vec![
        ("activation", kiln_activation::kernel_specs(), kiln_activation::params_bytes as ParamsBytes),
        ("rmsnorm", kiln_rmsnorm::kernel_specs(), kiln_rmsnorm::params_bytes),
        ("rope", kiln_rope::kernel_specs(), kiln_rope::params_bytes),
        ("mxfp8", kiln_mxfp8::kernel_specs(), kiln_mxfp8::params_bytes),
    ]
}

fn check(spec: &KernelSpec, arch: Arch, params: ParamsBytes) -> anyhow::Result<()> {
    let c = compile(spec, arch)?;
    anyhow::ensure!(c.pdl_waits == spec.is_pdl(), "griddepcontrol.wait present={} but spec pdl={}", c.pdl_waits, spec.is_pdl());
    let entries = ptx::entries(&c.ptx);
    anyhow::ensure!(entries == [c.lowered_name.clone()], "PTX entries {entries:?}, expected only {}", c.lowered_name);
    if let Some(bytes) = params(spec) {
        let declared = ptx::entry_params(&c.ptx, &c.lowered_name).unwrap_or_default();
        anyhow::ensure!(
            declared.len() == 1 && declared[0].1 as usize == bytes,
            "{}: PTX declares params {declared:?}, Rust passes one struct of {bytes} bytes",
            spec.name()
        );
    }
    snap::assert_ptx(spec, arch, &c)
}

fn main() {
    let mut trials = Vec::new();
    for (op, specs, params) in ops() {
        let mut names = std::collections::HashSet::new();
        for spec in &specs {
            assert!(names.insert(spec.name().to_string()), "{op}: duplicate spec name {}", spec.name());
        }
        for arch in [Arch::SM90A, Arch::SM100A] {
            for spec in specs.iter().filter(|s| s.target_set().allows(s.target_arch(arch))) {
                let s = spec.clone();
                trials.push(trial(format!("t1::{op}::{}", snap::snapshot_name(spec, arch)), Need::Nvrtc, move || check(&s, arch, params)));
            }
        }
    }
    kiln_tests::main(trials)
}
