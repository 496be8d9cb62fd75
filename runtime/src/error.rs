//! The one error type of kiln.

use crate::arch::Arch;

/// Result alias used throughout kiln.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in kiln, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A piece of the CUDA stack (driver, NVRTC, headers, nvcc, a GPU) is missing.
    #[error("{what} is unavailable: {detail}")]
    Unavailable {
        /// What is missing, e.g. "libnvrtc".
        what: String,
        /// Where kiln looked and what it found.
        detail: String,
    },
    /// The compiler rejected a kernel.
    #[error("compiling {kernel} for {arch} failed (options: {}):\n{log}", options.join(" "))]
    Compile {
        /// Kernel label (the spec's name).
        kernel: String,
        /// Target architecture.
        arch: Arch,
        /// Effective compiler options.
        options: Vec<String>,
        /// The compiler's log.
        log: String,
    },
    /// `KILN_DISABLE_JIT` is set and the kernel is not in the cache.
    #[error(
        "{kernel} for {arch} is not in the kernel cache ({cache}) and KILN_DISABLE_JIT forbids compiling it; run `cargo xtask prewarm` (or kiln_runtime::prewarm) first"
    )]
    JitDisabled {
        /// Kernel label.
        kernel: String,
        /// Target architecture.
        arch: Arch,
        /// Where kiln looked.
        cache: String,
    },
    /// An argument failed validation before any launch.
    #[error("{op}: {reason}")]
    InvalidArgument {
        /// The operation that rejected its input.
        op: &'static str,
        /// What is wrong, with the values.
        reason: String,
    },
    /// The architecture is not supported for this kernel or by this compiler.
    #[error("unsupported architecture {arch}: {reason}")]
    UnsupportedArch {
        /// The architecture in question.
        arch: Arch,
        /// Why.
        reason: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver error in {context}: {source}")]
    Driver {
        /// What kiln was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },
    /// A configuration value (environment knob, parse input) is malformed.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An I/O error on an explicit cache operation (never raised on the kernel lookup path:
    /// there a cache failure costs a recompile and a warning).
    #[error("cache I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { op, reason: reason.into() }
    }

    /// Shorthand for [`Error::Driver`].
    pub fn driver(context: impl Into<String>, source: cudarc::driver::DriverError) -> Self {
        Error::Driver { context: context.into(), source }
    }

    /// Shorthand for [`Error::Unavailable`].
    pub fn unavailable(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Unavailable { what: what.into(), detail: detail.into() }
    }
}

/// `ensure!(cond, op, "fmt", args)`: return [`Error::InvalidArgument`] unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $op:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::Error::InvalidArgument { op: $op, reason: format!($($fmt)+) });
        }
    };
}
