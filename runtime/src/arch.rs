//! GPU architectures: `sm_90`, `sm_90a`, `sm_100a`, …

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Architecture-specific feature set suffix of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Suffix {
    /// Portable target (`sm_90`): runs on this and later compute capabilities.
    None,
    /// Arch-specific target (`sm_90a`): unlocks `wgmma`, `setmaxnreg`, `tcgen05`…; runs only on
    /// exactly this compute capability.
    A,
    /// Family-specific target (`sm_100f`).
    F,
}

/// A compilation target such as `sm_90a`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    /// Compute capability major.
    pub major: u32,
    /// Compute capability minor.
    pub minor: u32,
    /// Feature-set suffix.
    pub suffix: Suffix,
}

impl Arch {
    /// `sm_90` (H100, H200), portable.
    pub const SM90: Arch = Arch::new(9, 0);
    /// `sm_90a`: Hopper with `wgmma`.
    pub const SM90A: Arch = Arch::new(9, 0).arch_specific();
    /// `sm_100` (B200), portable.
    pub const SM100: Arch = Arch::new(10, 0);
    /// `sm_100a`: Blackwell with `tcgen05`.
    pub const SM100A: Arch = Arch::new(10, 0).arch_specific();

    /// The portable target of a compute capability.
    pub const fn new(major: u32, minor: u32) -> Arch {
        Arch { major, minor, suffix: Suffix::None }
    }

    /// The same compute capability with the arch-specific (`a`) suffix. Architectures before
    /// 9.0 have no such target and are returned unchanged.
    pub const fn arch_specific(self) -> Arch {
        if self.major >= 9 { Arch { suffix: Suffix::A, ..self } } else { self }
    }

    /// The same compute capability without suffix.
    pub const fn portable(self) -> Arch {
        Arch { suffix: Suffix::None, ..self }
    }

    /// The target a kernel is compiled for on a device of this compute capability: `sm_XYa` when
    /// the kernel uses arch-specific instructions, `sm_XY` otherwise.
    pub const fn for_kernel(self, arch_specific: bool) -> Arch {
        if arch_specific { self.arch_specific() } else { self.portable() }
    }

    /// `major * 10 + minor`, as NVRTC's supported-arch list spells it.
    pub const fn number(self) -> u32 {
        self.major * 10 + self.minor
    }

    /// Whether the device supports programmatic dependent launch (compute capability ≥ 9.0).
    pub const fn supports_pdl(self) -> bool {
        self.major >= 9
    }

    /// The `--gpu-architecture` value, e.g. `sm_90a`.
    pub fn sm_name(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.suffix {
            Suffix::None => "",
            Suffix::A => "a",
            Suffix::F => "f",
        };
        write!(f, "sm_{}{}{}", self.major, self.minor, s)
    }
}

impl FromStr for Arch {
    type Err = Error;

    /// Accepts `sm_90a`, `sm90a`, `90a`, `compute_90a` and `9.0a`.
    fn from_str(s: &str) -> Result<Arch> {
        let bad = || Error::Config(format!("cannot parse {s:?} as a GPU architecture (expected e.g. sm_90, sm_90a, sm_100a, 9.0)"));
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_prefix("sm_").or_else(|| t.strip_prefix("compute_")).or_else(|| t.strip_prefix("sm")).unwrap_or(&t);
        let (body, suffix) = match t.as_bytes().last() {
            Some(b'a') => (&t[..t.len() - 1], Suffix::A),
            Some(b'f') => (&t[..t.len() - 1], Suffix::F),
            _ => (t, Suffix::None),
        };
        let (major, minor) = if let Some((ma, mi)) = body.split_once('.') {
            (ma.parse::<u32>().map_err(|_| bad())?, mi.parse::<u32>().map_err(|_| bad())?)
        } else {
            if body.len() < 2 || !body.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let n: u32 = body.parse().map_err(|_| bad())?;
            (n / 10, n % 10)
        };
        if !(3..=20).contains(&major) || minor > 9 {
            return Err(bad());
        }
        if suffix != Suffix::None && major < 9 {
            return Err(Error::Config(format!("{s:?}: arch-specific targets exist from sm_90 on")));
        }
        Ok(Arch { major, minor, suffix })
    }
}

/// Parses a comma-separated architecture list (`sm_90a,sm_100a`).
pub fn parse_arch_list(s: &str) -> Result<Vec<Arch>> {
    s.split(',').filter(|p| !p.trim().is_empty()).map(str::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for (s, want) in [
            ("sm_90a", "sm_90a"),
            ("sm_90", "sm_90"),
            ("90a", "sm_90a"),
            ("9.0", "sm_90"),
            ("compute_100a", "sm_100a"),
            ("SM_120F", "sm_120f"),
            ("sm_103a", "sm_103a"),
        ] {
            assert_eq!(s.parse::<Arch>().unwrap().to_string(), want, "{s}");
        }
        for bad in ["", "sm_", "sm_x0", "sm_80a", "9", "sm_9.x", "1234a"] {
            assert!(bad.parse::<Arch>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn kernel_target_follows_the_spec() {
        assert_eq!(Arch::SM90.for_kernel(true), Arch::SM90A);
        assert_eq!(Arch::SM90A.for_kernel(false), Arch::SM90);
        assert_eq!(Arch::new(8, 0).for_kernel(true), Arch::new(8, 0));
        assert_eq!(Arch::SM100A.number(), 100);
        assert!(Arch::SM90.supports_pdl() && !Arch::new(8, 9).supports_pdl());
        assert_eq!(parse_arch_list("sm_90a, sm_100a").unwrap(), vec![Arch::SM90A, Arch::SM100A]);
    }
}
