//! Benchmarks of the kiln-mxfp8 grouped GEMM (issue 7 shapes).

use super::Ctx;

/// Times every shape.
pub fn run(_c: &mut Ctx) -> anyhow::Result<()> {
    Ok(())
}
