//! The fast-math policy, always expanded to explicit compiler flags.
//!
//! cudarc's `CompileOptions::use_fast_math` emits only `--fmad=true`; nvcc's `--use_fast_math`
//! means `--ftz=true --prec-div=false --prec-sqrt=false --fmad=true` *plus* mapping `expf`,
//! `sinf`, `powf`, `x/y`… to their approximate intrinsics (the compiler defines
//! `__USE_FAST_MATH__`, which the math headers test). kiln spells out every one of these, puts them
//! in the cache key and in the cache entry's metadata.

use crate::arch::Arch;

/// Floating-point code generation flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FastMath {
    /// Flush fp32 denormals to zero (`--ftz`).
    pub ftz: bool,
    /// IEEE round-to-nearest fp32 division (`--prec-div`).
    pub prec_div: bool,
    /// IEEE round-to-nearest fp32 square root (`--prec-sqrt`).
    pub prec_sqrt: bool,
    /// Contract multiply-add into FMA (`--fmad`).
    pub fmad: bool,
    /// Map libm functions to approximate intrinsics (`--use_fast_math`, defines `__USE_FAST_MATH__`).
    pub intrinsics: bool,
}

impl FastMath {
    /// IEEE behaviour: no flush, exact division and square root, FMA contraction (the compilers'
    /// default), libm functions.
    pub const PRECISE: FastMath = FastMath { ftz: false, prec_div: true, prec_sqrt: true, fmad: true, intrinsics: false };
    /// Everything nvcc's `--use_fast_math` turns on.
    pub const FAST: FastMath = FastMath { ftz: true, prec_div: false, prec_sqrt: false, fmad: true, intrinsics: true };

    /// The default policy for an architecture: fast math on, except on sm_100 and newer, where
    /// kernels must match an exact `expf` bit for bit (SGLang's rule, see DESIGN §3).
    pub fn default_for(arch: Arch) -> FastMath {
        if arch.major >= 10 { FastMath::PRECISE } else { FastMath::FAST }
    }

    /// The explicit flags, in a fixed order (identical for NVRTC and nvcc).
    pub fn flags(self) -> Vec<String> {
        let b = |v: bool| if v { "true" } else { "false" };
        let mut f = vec![
            format!("--ftz={}", b(self.ftz)),
            format!("--prec-div={}", b(self.prec_div)),
            format!("--prec-sqrt={}", b(self.prec_sqrt)),
            format!("--fmad={}", b(self.fmad)),
        ];
        if self.intrinsics {
            f.push("--use_fast_math".to_string());
        }
        f
    }

    /// A short human label for logs and metadata.
    pub fn label(self) -> &'static str {
        match self {
            FastMath::PRECISE => "precise",
            FastMath::FAST => "fast",
            _ => "custom",
        }
    }
}

/// How a kernel spec chooses its fast-math flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MathPolicy {
    /// [`FastMath::default_for`] the target architecture.
    #[default]
    ArchDefault,
    /// Always these flags (e.g. a rounding-exact kernel forces [`FastMath::PRECISE`]).
    Fixed(FastMath),
}

impl MathPolicy {
    /// The flags this policy gives on `arch`.
    pub fn resolve(self, arch: Arch) -> FastMath {
        match self {
            MathPolicy::ArchDefault => FastMath::default_for(arch),
            MathPolicy::Fixed(f) => f,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_math_is_spelled_out() {
        assert_eq!(FastMath::FAST.flags(), ["--ftz=true", "--prec-div=false", "--prec-sqrt=false", "--fmad=true", "--use_fast_math"]);
        assert_eq!(FastMath::PRECISE.flags(), ["--ftz=false", "--prec-div=true", "--prec-sqrt=true", "--fmad=true"]);
    }

    #[test]
    fn default_is_off_from_sm100() {
        assert_eq!(MathPolicy::ArchDefault.resolve(Arch::SM90A), FastMath::FAST);
        assert_eq!(MathPolicy::ArchDefault.resolve(Arch::SM100A), FastMath::PRECISE);
        assert_eq!(MathPolicy::Fixed(FastMath::PRECISE).resolve(Arch::SM90), FastMath::PRECISE);
    }
}
