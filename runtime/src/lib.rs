//! # kiln-runtime
//!
//! Compiles CUDA C++ kernels at run time with NVRTC (or nvcc), keeps them in a content-hashed
//! disk cache and an in-process memo, and launches them with programmatic dependent launch.
//! The op crates (`kiln-activation`, `kiln-rmsnorm`, `kiln-rope`, `kiln-mxfp8`) build on it.
//!
//! ```no_run
//! use kiln_runtime::{KernelSource, KernelSpec, LaunchConfig, Runtime, PRELUDE};
//!
//! static SRC: KernelSource = KernelSource {
//!     name: "fill.cuh",
//!     text: r#"#include <kiln/common.cuh>
//! struct Params { float* out; long long n; float v; };
//! template <bool kPdl> __global__ void fill(Params p) {
//!   kiln::pdl_wait<kPdl>();
//!   long long i = kiln::global_thread_id();
//!   if (i < p.n) p.out[i] = p.v;
//! }"#,
//!     headers: &[PRELUDE],
//! };
//! # #[repr(C)] #[derive(Clone, Copy)] struct Params { out: u64, n: i64, v: f32 }
//! let rt = Runtime::new(0)?;
//! let spec = KernelSpec::new("fill__f32__pdl", &SRC, "fill<true>").pdl(true);
//! rt.preload(std::slice::from_ref(&spec))?;            // compile/load before any graph capture
//! let k = rt.kernel(&spec)?;                              // memo hit: no compile, no allocation
//! # let p = Params { out: 0, n: 0, v: 1.0 };
//! // SAFETY: `p` matches the kernel's parameter struct and its pointer covers `n` floats.
//! unsafe { rt.launch(&k, LaunchConfig::linear(1, 256)).run(&p)? };
//! # Ok::<(), kiln_runtime::Error>(())
//! ```
//!
//! Unsafe code lives in `compile/nvrtc.rs` (NVRTC), `launch.rs` (driver) and `dtype.rs`
//! (`DeviceRepr` for the FP8 byte types); every block states why it holds.

pub mod arch;
pub mod cache;
pub mod compile;
pub mod dtype;
pub mod env;
pub mod error;
pub mod launch;
pub mod math;
pub mod prelude;
pub mod probe;
pub mod ptx;
pub mod runtime;
pub mod source;
pub mod telemetry;

pub use arch::{Arch, Suffix, parse_arch_list};
pub use cache::{PrewarmResult, Store, prewarm};
pub use compile::{Compiled, compile, compile_with};
pub use dtype::{Dtype, DtypeId, E4m3, E8m0, TemplateArg, bf16_from_f64, f16_from_f64, f64_to_f32_odd, template_expr};
pub use env::{Backend, Knobs};
pub use error::{Error, Result};
pub use launch::{Kernel, Launch, LaunchConfig};
pub use math::{FastMath, MathPolicy};
pub use prelude::PRELUDE;
pub use probe::{Availability, probe};
pub use ptx::normalize_ptx;
pub use runtime::Runtime;
pub use source::{Header, KernelSource, KernelSpec, Targets};
pub use telemetry::{Stats, Tier, stats};

/// The cudarc version kiln is built against, re-exported so that callers use the same types.
pub use cudarc;
/// `half`, for `f16`/`bf16` element types.
pub use half;
