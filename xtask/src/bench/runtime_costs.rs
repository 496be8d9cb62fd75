//! The runtime's own costs: cold NVRTC compile per kernel, first call in a fresh process with a
//! warm disk cache, host µs per launch.

use super::Ctx;

/// Measures and records the runtime costs.
pub fn run(_c: &mut Ctx) -> anyhow::Result<()> {
    Ok(())
}

/// `xtask bench-child …`: the fresh-process half of the warm-start measurement.
pub fn child(_args: crate::Args) -> anyhow::Result<()> {
    Ok(())
}
