//! `cargo xtask lint`: formatting, clippy on all targets, rustdoc, and the tidy tests.

use std::process::Command;

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(crate::root());
    c
}

/// Runs every check; stops at the first failure.
pub fn main() -> anyhow::Result<()> {
    crate::run(cargo().args(["fmt", "--all", "--check"]))?;
    crate::run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    crate::run(cargo().args(["doc", "--workspace", "--no-deps"]).env("RUSTDOCFLAGS", "-D warnings"))?;
    crate::run(cargo().args(["test", "-p", "kiln-tests", "--test", "tidy"]))?;
    eprintln!("lint: ok");
    Ok(())
}
