//! T1: the prelude compiles for sm_90a and sm_100a with NVRTC (and nvcc where present); PTX
//! snapshots; PDL waits exactly where the spec says; compile errors carry the log.

use kiln_runtime::{Arch, Backend, Error, FastMath, KernelSource, KernelSpec, Knobs, MathPolicy, PRELUDE, compile, compile_with};
use kiln_tests::{Need, prelude_kernels, snap, trial};

const ARCHS: [Arch; 2] = [Arch::SM90A, Arch::SM100A];

static BROKEN: KernelSource = KernelSource {
    name: "broken.cuh",
    text: "#include <kiln/common.cuh>\ntemplate <typename T> __global__ void broken(T* p) { p[0] = undefined_name; }\n",
    headers: &[PRELUDE],
};

fn main() {
    let mut trials = Vec::new();
    for spec in prelude_kernels::all() {
        for arch in ARCHS {
            let s = spec.clone();
            trials.push(trial(format!("t1::prelude::{}", snap::snapshot_name(&spec, arch)), Need::Nvrtc, move || {
                let c = compile(&s, arch)?;
                anyhow::ensure!(c.lowered_name.starts_with("_Z") || c.lowered_name == s.expr(), "lowered name {}", c.lowered_name);
                anyhow::ensure!(!c.cubin.is_empty(), "no CUBIN");
                anyhow::ensure!(c.pdl_waits == s.is_pdl(), "griddepcontrol.wait present={} but spec pdl={}", c.pdl_waits, s.is_pdl());
                anyhow::ensure!(c.arch == arch.for_kernel(s.is_arch_specific()));
                snap::assert_ptx(&s, arch, &c)
            }));
        }
    }
    trials.push(trial("t1::compile_error_carries_the_log", Need::Nvrtc, || {
        let spec = KernelSpec::new("broken__f32", &BROKEN, "broken<float>");
        match compile(&spec, Arch::SM90) {
            Err(Error::Compile { kernel, arch, options, log }) => {
                anyhow::ensure!(kernel == "broken__f32" && arch == Arch::SM90);
                anyhow::ensure!(log.contains("undefined_name"), "log: {log}");
                anyhow::ensure!(options.iter().any(|o| o == "--gpu-architecture=sm_90"), "{options:?}");
                Ok(())
            }
            other => anyhow::bail!("expected a compile error, got {other:?}"),
        }
    }));
    trials.push(trial("t1::unsupported_arch_is_a_clear_error", Need::Nvrtc, || {
        let spec = prelude_kernels::math();
        match compile(&spec, Arch::new(3, 5)) {
            Err(Error::UnsupportedArch { arch, reason }) => {
                anyhow::ensure!(arch == Arch::new(3, 5) && reason.contains("sm_90"), "{reason}");
                Ok(())
            }
            other => anyhow::bail!("expected UnsupportedArch, got {other:?}"),
        }
    }));
    trials.push(trial("t1::fast_math_flags_are_explicit", Need::Nvrtc, || {
        let fast = compile(&prelude_kernels::math(), Arch::SM90)?;
        anyhow::ensure!(
            fast.math == FastMath::FAST
                && fast.options.iter().any(|o| o == "--use_fast_math")
                && fast.options.iter().any(|o| o == "--ftz=true")
        );
        let precise = compile(&prelude_kernels::math().math(MathPolicy::Fixed(FastMath::PRECISE)), Arch::SM90)?;
        anyhow::ensure!(precise.options.iter().any(|o| o == "--prec-div=true") && !precise.options.iter().any(|o| o == "--use_fast_math"));
        let blackwell = compile(&prelude_kernels::math(), Arch::SM100)?;
        anyhow::ensure!(blackwell.math == FastMath::PRECISE, "sm_100 defaults to precise math");
        Ok(())
    }));
    for arch in ARCHS {
        trials.push(trial(format!("t1::nvcc_backend_matches_nvrtc@{arch}"), Need::Nvcc, move || {
            let knobs = Knobs { backend: Backend::Nvcc, ..Knobs::default() };
            for spec in [prelude_kernels::vec_copy(kiln_runtime::DtypeId::Bf16, 8, true), prelude_kernels::reduce(4)] {
                let n = compile_with(&spec, arch, &knobs)?;
                let r = compile(&spec, arch)?;
                anyhow::ensure!(n.backend == Backend::Nvcc && !n.cubin.is_empty());
                anyhow::ensure!(n.lowered_name == r.lowered_name, "nvcc entry {} vs nvrtc {}", n.lowered_name, r.lowered_name);
                anyhow::ensure!(n.pdl_waits == spec.is_pdl());
                anyhow::ensure!(n.compiler.starts_with("nvcc"), "{}", n.compiler);
            }
            Ok(())
        }));
    }
    kiln_tests::main(trials)
}
