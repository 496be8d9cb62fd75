//! Environment knobs, read once into a [`Knobs`] value.
//!
//! | knob | effect | changes code? |
//! | --- | --- | --- |
//! | `KILN_CACHE_DIR` | cache root (default `dirs::cache_dir()/kiln`) | no |
//! | `KILN_CACHE_DISABLE` | no disk cache at all | no |
//! | `KILN_CACHE_READONLY` | read the disk cache, never write it | no |
//! | `KILN_CACHE_MAX_BYTES` | after a write, delete least-recently-used entries above this size | no |
//! | `KILN_DISABLE_JIT` | a cache miss is an error naming the kernel and arch | no |
//! | `KILN_ARCH` | compile for this architecture instead of the device's | yes (in key via arch) |
//! | `KILN_COMPILER` | `nvrtc` (default) or `nvcc` | yes (backend in key) |
//! | `KILN_NVCC_TIMEOUT` | seconds before an nvcc run is killed (default 300) | no |
//! | `KILN_LINEINFO` | compile with `--generate-line-info` | yes (option in key) |
//! | `KILN_PDL` | `0` launches every kernel without programmatic stream serialization | no |
//! | `KILN_LOG` | `off`, `warn` (default), `info`, `debug` | no |
//! | `KILN_CUDA_HOME` | where to look first for NVRTC, headers and nvcc; `none` disables the search (a host with only a prewarmed cache) | no (compiler identity is) |

use std::path::PathBuf;
use std::time::Duration;

use crate::arch::Arch;
use crate::error::{Error, Result};

/// Which compiler turns CUDA C++ into CUBIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// NVRTC (default): in-process, no files.
    Nvrtc = 0,
    /// `nvcc -cubin` in a subprocess, same flags.
    Nvcc = 1,
}

impl Backend {
    /// `nvrtc` / `nvcc`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nvrtc => "nvrtc",
            Backend::Nvcc => "nvcc",
        }
    }
}

/// Every environment knob kiln reads.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// `KILN_CACHE_DIR`.
    pub cache_dir: Option<PathBuf>,
    /// `KILN_CACHE_DISABLE`.
    pub cache_disable: bool,
    /// `KILN_CACHE_READONLY`.
    pub cache_readonly: bool,
    /// `KILN_CACHE_MAX_BYTES`.
    pub cache_max_bytes: Option<u64>,
    /// `KILN_DISABLE_JIT`.
    pub disable_jit: bool,
    /// `KILN_ARCH`.
    pub arch: Option<Arch>,
    /// `KILN_COMPILER`.
    pub backend: Backend,
    /// `KILN_NVCC_TIMEOUT`.
    pub nvcc_timeout: Duration,
    /// `KILN_LINEINFO`.
    pub lineinfo: bool,
    /// `KILN_PDL` (default on).
    pub pdl: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            cache_dir: None,
            cache_disable: false,
            cache_readonly: false,
            cache_max_bytes: None,
            disable_jit: false,
            arch: None,
            backend: Backend::Nvrtc,
            nvcc_timeout: Duration::from_secs(300),
            lineinfo: false,
            pdl: true,
        }
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Parses a boolean knob: `1/true/yes/on` or `0/false/no/off`.
pub fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::Config(format!("{name}={v:?}: expected 1/0, true/false, yes/no or on/off"))),
    }
}

fn flag(name: &str, default: bool) -> Result<bool> {
    var(name).map_or(Ok(default), |v| parse_bool(name, &v))
}

impl Knobs {
    /// Reads every knob; a malformed value is an [`Error::Config`] naming it.
    pub fn from_env() -> Result<Knobs> {
        let backend = match var("KILN_COMPILER").as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("nvrtc") => Backend::Nvrtc,
            Some("nvcc") => Backend::Nvcc,
            Some(o) => return Err(Error::Config(format!("KILN_COMPILER={o:?}: expected nvrtc or nvcc"))),
        };
        let cache_max_bytes = match var("KILN_CACHE_MAX_BYTES") {
            None => None,
            Some(v) => Some(
                parse_size(&v)
                    .ok_or_else(|| Error::Config(format!("KILN_CACHE_MAX_BYTES={v:?}: expected bytes, e.g. 2000000000 or 2G")))?,
            ),
        };
        let nvcc_timeout = match var("KILN_NVCC_TIMEOUT") {
            None => Duration::from_secs(300),
            Some(v) => Duration::from_secs(v.parse().map_err(|_| Error::Config(format!("KILN_NVCC_TIMEOUT={v:?}: expected seconds")))?),
        };
        Ok(Knobs {
            cache_dir: var("KILN_CACHE_DIR").map(PathBuf::from),
            cache_disable: flag("KILN_CACHE_DISABLE", false)?,
            cache_readonly: flag("KILN_CACHE_READONLY", false)?,
            cache_max_bytes,
            disable_jit: flag("KILN_DISABLE_JIT", false)?,
            arch: var("KILN_ARCH").map(|v| v.parse()).transpose()?,
            backend,
            nvcc_timeout,
            lineinfo: flag("KILN_LINEINFO", false)?,
            pdl: flag("KILN_PDL", true)?,
        })
    }

    /// The cache root: `KILN_CACHE_DIR`, else `dirs::cache_dir()/kiln`, else `None` (no cache).
    pub fn cache_root(&self) -> Option<PathBuf> {
        if self.cache_disable {
            return None;
        }
        self.cache_dir.clone().or_else(|| dirs::cache_dir().map(|d| d.join("kiln")))
    }
}

/// Parses `123`, `64K`, `512M`, `2G` (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_bools() {
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("77"), Some(77));
        assert_eq!(parse_size("x"), None);
        assert!(parse_bool("K", "on").unwrap());
        assert!(!parse_bool("K", "0").unwrap());
        assert!(parse_bool("K", "maybe").is_err());
    }
}
