//! kiln's shared test kit: test tiers (T0/T1/T2) reported *ignored with their reason* when the
//! machine lacks what they need (or failed under `KILN_REQUIRE_NVRTC=1` / `KILN_REQUIRE_GPU=1`),
//! seeded random data, poisoning, ulp comparisons and GPU helpers.

pub mod data;
pub mod gpu;
pub mod prelude_kernels;
pub mod snap;
pub mod tier;

pub use tier::{Need, main, trial};

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
