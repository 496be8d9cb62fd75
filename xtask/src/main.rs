//! `cargo xtask <command>`: kiln's developer and CI commands.
//!
//! | command | what it does |
//! | --- | --- |
//! | `prewarm [--arch sm_90a,sm_100a] [--ops a,b] [--cache-dir D] [--check] [--jobs N]` | compile every kernel of the selected ops into the cache (no GPU needed) |
//! | `test [args…]` | the test suite with NVRTC required (installs the pinned NVRTC wheels into `.venv-nvrtc/` if needed) |
//! | `lint` | fmt check, clippy `-D warnings`, rustdoc `-D warnings`, tidy tests |
//! | `gpu-ci --pack [--peers]` | build the GPU-machine bundle in `target/gpu-bundle/` (`bash target/gpu-bundle/run.sh` there) |
//! | `bench [--ops …] [--out F.jsonl] [--quick]` | time the ops on GPU 0 (JSON lines) |
//! | `cubin [--ops …] [--filter S] [--arch sm_90a] [--out D]` | compile specs (no cache) and write their CUBIN and PTX to D (for `cuobjdump --dump-sass`) |
//! | `cache ls\|stats\|verify [--fix]\|gc [--max-bytes N]\|clear [--cache-dir D]` | inspect and maintain the kernel cache |
//! | `probe` | what CUDA pieces this machine has |

pub mod bench;
mod bootstrap;
mod cache_cmd;
mod gpu_ci;
mod lint;
mod prewarm;

use anyhow::{Context, bail};

/// Minimal flag parsing: `--name value`, `--flag`, positionals.
pub struct Args {
    items: Vec<String>,
}

impl Args {
    fn new(items: Vec<String>) -> Self {
        Args { items }
    }
    /// Removes and returns `--name value` (also `--name=value`).
    pub fn value(&mut self, name: &str) -> anyhow::Result<Option<String>> {
        let flag = format!("--{name}");
        if let Some(i) = self.items.iter().position(|a| a == &flag) {
            if i + 1 >= self.items.len() {
                bail!("{flag} needs a value");
            }
            let v = self.items.remove(i + 1);
            self.items.remove(i);
            return Ok(Some(v));
        }
        let pre = format!("{flag}=");
        if let Some(i) = self.items.iter().position(|a| a.starts_with(&pre)) {
            return Ok(Some(self.items.remove(i)[pre.len()..].to_string()));
        }
        Ok(None)
    }
    /// Removes and returns whether `--name` is present.
    pub fn flag(&mut self, name: &str) -> bool {
        let flag = format!("--{name}");
        match self.items.iter().position(|a| a == &flag) {
            Some(i) => {
                self.items.remove(i);
                true
            }
            None => false,
        }
    }
    /// A comma-separated list value.
    pub fn list(&mut self, name: &str) -> anyhow::Result<Vec<String>> {
        Ok(self.value(name)?.map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()).unwrap_or_default())
    }
    /// What is left.
    pub fn rest(self) -> Vec<String> {
        self.items
    }
    /// Fails on leftover arguments.
    pub fn done(self) -> anyhow::Result<()> {
        if !self.items.is_empty() {
            bail!("unexpected arguments: {:?}", self.items);
        }
        Ok(())
    }
}

/// The workspace root.
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        bail!("usage: cargo xtask <prewarm|test|lint|gpu-ci|bench|cache|probe> [options]  (see xtask/src/main.rs)");
    }
    let cmd = argv.remove(0);
    let mut args = Args::new(argv);
    match cmd.as_str() {
        "prewarm" => prewarm::main(args),
        "test" => {
            bootstrap::ensure_nvrtc()?;
            let mut c = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            let rest = args.rest();
            c.current_dir(root()).arg("test");
            if !rest.iter().any(|a| a == "-p" || a == "--package" || a.starts_with("--package=")) {
                c.arg("--workspace");
            }
            c.args(rest).env("KILN_REQUIRE_NVRTC", "1");
            run(&mut c)
        }
        "lint" => {
            args.done()?;
            lint::main()
        }
        "gpu-ci" => gpu_ci::main(args),
        "bench" => {
            let ops = args.list("ops")?;
            let out = args.value("out")?;
            let quick = args.flag("quick");
            args.done()?;
            bench::run(&ops, quick, out.as_deref().map(std::path::Path::new))
        }
        "bench-child" => bench::runtime_costs::child(args),
        "cubin" => {
            let ops = args.list("ops")?;
            let filter = args.value("filter")?.unwrap_or_default();
            let arch = args.value("arch")?.unwrap_or_else(|| "sm_90a".into());
            let out = std::path::PathBuf::from(args.value("out")?.unwrap_or_else(|| "target/cubin".into()));
            args.done()?;
            bootstrap::ensure_nvrtc()?;
            dump_cubins(&ops, &filter, &arch, &out)
        }
        "cache" => cache_cmd::main(args),
        "probe" => {
            args.done()?;
            println!("{}", kiln_runtime::probe());
            Ok(())
        }
        other => bail!("unknown command {other:?}"),
    }
}

/// `cubin`: compiles the selected specs (no cache) and writes `<out>/<spec>@<arch>.cubin` and `.ptx`,
/// for `cuobjdump --dump-sass` / `-res-usage` (SASS facts for docs/PERF.md).
fn dump_cubins(ops: &[String], filter: &str, arch: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let arch: kiln_runtime::Arch = arch.parse()?;
    let knobs = kiln_runtime::Knobs { cache_disable: true, ..kiln_runtime::Knobs::from_env()? };
    std::fs::create_dir_all(out)?;
    for (op, specs) in prewarm::all_ops() {
        if !ops.is_empty() && !ops.iter().any(|o| o == op) {
            continue;
        }
        for spec in specs.iter().filter(|s| s.name().contains(filter) && s.target_set().allows(s.target_arch(arch))) {
            let c = kiln_runtime::compile_with(spec, arch, &knobs)?;
            let stem = out.join(format!("{}@{}", spec.name(), c.arch));
            std::fs::write(stem.with_extension("cubin"), &c.cubin)?;
            std::fs::write(stem.with_extension("ptx"), &c.ptx)?;
            println!("{} ({})", stem.display(), c.lowered_name);
        }
    }
    Ok(())
}
