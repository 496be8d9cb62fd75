//! Benchmarks of kiln-mxfp8 (shapes from the issue and `../shared/peers/bench_peers.py`).

use super::Ctx;

/// Times every shape.
pub fn run(_c: &mut Ctx) -> anyhow::Result<()> {
    Ok(())
}
