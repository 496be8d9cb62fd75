//! `cargo xtask gpu-ci --pack [--peers]`: builds everything the GPU machine (no cargo, no network)
//! needs into `target/gpu-bundle/`: a nextest archive of all tests, the xtask binary (bench), the
//! `cargo-nextest` binary and `run.sh`. There: `bash target/gpu-bundle/run.sh [tests|sanitize|bench|all]`
//! with `KILN_REQUIRE_GPU=1`, logs and JUnit under `$OUT`.

use std::process::Command;

use anyhow::{Context, bail};

const PROFILE: &str = "gpu-ci";

/// Runs the packer.
pub fn main(mut args: crate::Args) -> anyhow::Result<()> {
    let pack = args.flag("pack");
    let peers = args.flag("peers");
    args.done()?;
    if !pack {
        bail!(
            "usage: cargo xtask gpu-ci --pack [--peers]   (then carry target/gpu-bundle to the GPU machine and run bash target/gpu-bundle/run.sh)"
        );
    }
    let root = crate::root();
    let dir = root.join("target").join("gpu-bundle");
    std::fs::create_dir_all(&dir)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::run(
        Command::new(&cargo)
            .current_dir(&root)
            .args(["nextest", "archive", "--workspace", "--cargo-profile", PROFILE, "--archive-file"])
            .arg(dir.join("tests.tar.zst")),
    )?;
    crate::run(Command::new(&cargo).current_dir(&root).args(["build", "-p", "xtask", "--profile", PROFILE]))?;
    std::fs::copy(root.join("target").join(PROFILE).join("xtask"), dir.join("xtask"))?;
    let nextest = which("cargo-nextest").context("cargo-nextest not found on PATH")?;
    std::fs::copy(&nextest, dir.join("cargo-nextest"))?;
    std::fs::write(dir.join("run.sh"), include_str!("gpu_ci_run.sh"))?;
    if peers {
        let shared = root.parent().map(|p| p.join("shared").join("peers").join("build.sh")).filter(|p| p.is_file());
        match shared {
            Some(b) => crate::run(Command::new("bash").arg(b).arg(root.join("target").join("peers")))?,
            None => bail!("--peers: ../shared/peers/build.sh not found"),
        }
    }
    let size: u64 = std::fs::read_dir(&dir)?.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
    println!(
        "gpu-ci: packed {} ({:.1} MiB); carry target/gpu-bundle{} and run: bash target/gpu-bundle/run.sh all",
        dir.display(),
        size as f64 / (1 << 20) as f64,
        if peers { " target/peers" } else { "" }
    );
    Ok(())
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let home_bin = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(home_bin)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
