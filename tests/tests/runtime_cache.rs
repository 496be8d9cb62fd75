//! T1: the disk cache across processes — a second process hits, damaged entries are rebuilt and
//! never served, 4 processes × 4 threads compile each kernel once, read-only and unwritable
//! caches work, `KILN_DISABLE_JIT` names the missing kernel, a host without a compiler finds a
//! prewarmed entry.

use std::path::Path;
use std::process::Command;

use kiln_runtime::cache::disk::{DiskCache, Read};
use kiln_runtime::{Arch, KernelSpec, Knobs, Store, Tier, stats};
use kiln_tests::{Need, prelude_kernels as pk, trial};

const ARCH: Arch = Arch::SM90;

fn spec(salt: &str, i: usize) -> KernelSpec {
    pk::math().define("KILN_TEST_SALT", format!("{salt}_{i}"))
}

fn salt() -> String {
    format!("s{}", kiln_tests::data::seed())
}

fn store(dir: &Path) -> Store {
    Store::new(Knobs { cache_dir: Some(dir.to_path_buf()), ..Knobs::default() })
}

/// Runs this test binary as a child in role `role`; returns its RESULT line.
fn child(role: &str, envs: &[(&str, String)]) -> anyhow::Result<String> {
    let mut c = Command::new(std::env::current_exe()?);
    c.env("KILN_TEST_CHILD", role);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(out.status.success(), "child {role} failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    Ok(text.lines().filter(|l| l.starts_with("RESULT")).collect::<Vec<_>>().join("\n"))
}

fn env_of(dir: &Path, salt: &str) -> Vec<(&'static str, String)> {
    vec![("KILN_CACHE_DIR", dir.display().to_string()), ("KILN_TEST_SALT", salt.to_string())]
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace().find_map(|w| w.strip_prefix(name).and_then(|r| r.strip_prefix('='))).unwrap_or("")
}

/// Child roles.
fn child_main(role: &str) -> anyhow::Result<()> {
    let salt = std::env::var("KILN_TEST_SALT")?;
    let knobs = Knobs::from_env()?;
    match role {
        "fetch" => {
            let r = Store::new(knobs).fetch(&spec(&salt, 0), ARCH, false);
            let s = stats();
            match r {
                Ok(f) => println!(
                    "RESULT tier={:?} compiled={} nvrtc_programs={} quarantined={} cache_errors={}",
                    f.tier, s.compiled, s.nvrtc_programs, s.quarantined, s.cache_errors
                ),
                Err(e) => println!("RESULT tier=Err compiled={} err={}", s.compiled, e.to_string().replace(char::is_whitespace, "_")),
            }
        }
        "storm" => {
            let store = Store::new(knobs);
            let errors = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|s| {
                for t in 0..4usize {
                    let (store, errors, salt) = (&store, &errors, &salt);
                    s.spawn(move || {
                        for i in 0..8 {
                            let j = (i + 2 * t) % 8;
                            if store.fetch(&spec(salt, j), ARCH, false).is_err() {
                                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            println!("RESULT compiled={} errors={} quarantined={}", stats().compiled, errors.into_inner(), stats().quarantined);
        }
        other => anyhow::bail!("unknown child role {other}"),
    }
    Ok(())
}

fn second_process_hits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let salt = salt();
    let f = store(dir.path()).fetch(&spec(&salt, 0), ARCH, false)?;
    anyhow::ensure!(f.tier == Tier::Compiled);
    let r = child("fetch", &env_of(dir.path(), &salt))?;
    anyhow::ensure!(field(&r, "tier") == "Disk" && field(&r, "nvrtc_programs") == "0", "a warm process must not call NVRTC: {r}");
    Ok(())
}

fn damaged(kind: &'static str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let salt = salt();
    let st = store(dir.path());
    let f = st.fetch(&spec(&salt, 0), ARCH, false)?;
    let path = f.path.clone().expect("disk cache on");
    let bytes = std::fs::read(&path)?;
    match kind {
        "truncated" => std::fs::write(&path, &bytes[..bytes.len() - 100])?,
        "bitflip" => {
            let mut b = bytes.clone();
            let i = b.len() / 3;
            b[i] ^= 0x04;
            std::fs::write(&path, b)?;
        }
        "swapped" => {
            // The (valid) entry of another kernel under this kernel's name.
            let other = st.fetch(&spec(&salt, 1), ARCH, false)?;
            std::fs::copy(other.path.expect("disk"), &path)?;
        }
        _ => unreachable!(),
    }
    let r = child("fetch", &env_of(dir.path(), &salt))?;
    anyhow::ensure!(field(&r, "tier") == "Compiled" && field(&r, "quarantined") == "1", "{kind}: {r}");
    match DiskCache::new(dir.path(), true).read(&path, &f.key) {
        Read::Hit(c) => anyhow::ensure!(c.cubin == f.compiled.cubin, "republished entry differs"),
        other => anyhow::bail!("{kind}: entry not republished: {other:?}"),
    }
    Ok(())
}

fn storm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let salt = salt();
    let env = env_of(dir.path(), &salt);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let env = env.clone();
            std::thread::spawn(move || child("storm", &env))
        })
        .collect();
    let mut total = 0;
    for h in handles {
        let r = h.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
        anyhow::ensure!(field(&r, "errors") == "0" && field(&r, "quarantined") == "0", "{r}");
        let c: usize = field(&r, "compiled").parse()?;
        anyhow::ensure!(c <= 8, "a process compiled {c} > 8 kernels: {r}");
        total += c;
    }
    anyhow::ensure!(total == 8, "the per-key lock should make the 4 processes compile 8 kernels in all, not {total}");
    let cache = DiskCache::new(dir.path(), true);
    anyhow::ensure!(cache.entries().len() == 8, "{} entries", cache.entries().len());
    anyhow::ensure!(cache.verify(false).is_empty());
    Ok(())
}

fn read_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let salt = salt();
    let mut env = env_of(dir.path(), &salt);
    env.push(("KILN_CACHE_READONLY", "1".into()));
    let r = child("fetch", &env)?;
    anyhow::ensure!(field(&r, "tier") == "Compiled" && field(&r, "cache_errors") == "0", "{r}");
    anyhow::ensure!(DiskCache::new(dir.path(), true).entries().is_empty(), "a read-only cache was written");
    store(dir.path()).fetch(&spec(&salt, 0), ARCH, false)?;
    let r = child("fetch", &env)?;
    anyhow::ensure!(field(&r, "tier") == "Disk", "read-only cache must still be read: {r}");
    Ok(())
}

fn unwritable() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory")?;
    let r = child("fetch", &env_of(&file.join("cache"), &salt()))?;
    anyhow::ensure!(field(&r, "tier") == "Compiled" && field(&r, "cache_errors") != "0", "{r}");
    Ok(())
}

fn disable_jit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let salt = salt();
    let mut env = env_of(dir.path(), &salt);
    env.push(("KILN_DISABLE_JIT", "1".into()));
    let r = child("fetch", &env)?;
    let err = field(&r, "err");
    anyhow::ensure!(
        field(&r, "tier") == "Err" && err.contains("test_math") && err.contains("sm_90") && err.contains("KILN_DISABLE_JIT"),
        "{r}"
    );
    store(dir.path()).fetch(&spec(&salt, 0), ARCH, false)?;
    let r = child("fetch", &env)?;
    anyhow::ensure!(field(&r, "tier") == "Disk", "after prewarm the same call succeeds: {r}");
    Ok(())
}

fn without_compiler() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let salt = salt();
    let mut env = env_of(dir.path(), &salt);
    env.push(("KILN_CUDA_HOME", "none".into()));
    let r = child("fetch", &env)?;
    anyhow::ensure!(field(&r, "tier") == "Err" && field(&r, "err").contains("not_cached"), "no compiler and no entry: {r}");
    store(dir.path()).fetch(&spec(&salt, 0), ARCH, false)?;
    let r = child("fetch", &env)?;
    anyhow::ensure!(field(&r, "tier") == "Disk" && field(&r, "compiled") == "0", "prewarmed entry found without a compiler: {r}");
    Ok(())
}

fn distinct_keys() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let st = store(dir.path());
    let salt = salt();
    let a = st.locate(&spec(&salt, 0), Arch::SM90)?;
    let b = st.locate(&spec(&salt, 0), Arch::SM100)?;
    let c = st.locate(&spec(&salt, 0).define("EXTRA", "1"), Arch::SM90)?;
    let d = st.locate(&spec(&salt, 0).math(kiln_runtime::MathPolicy::Fixed(kiln_runtime::FastMath::PRECISE)), Arch::SM90)?;
    let keys = [a.0, b.0, c.0, d.0];
    for i in 0..4 {
        for j in i + 1..4 {
            anyhow::ensure!(keys[i] != keys[j], "keys {i} and {j} collide");
        }
    }
    anyhow::ensure!(a.0 == st.locate(&spec(&salt, 0), Arch::SM90)?.0, "keys are deterministic");
    Ok(())
}

fn main() {
    if let Ok(role) = std::env::var("KILN_TEST_CHILD") {
        if let Err(e) = child_main(&role) {
            eprintln!("child {role}: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let mut trials = vec![
        trial("t1::cache::second_process_gets_a_hit", Need::Nvrtc, second_process_hits),
        trial("t1::cache::four_processes_four_threads_compile_once", Need::Nvrtc, storm),
        trial("t1::cache::read_only_cache_is_read_never_written", Need::Nvrtc, read_only),
        trial("t1::cache::unwritable_cache_warns_and_compiles", Need::Nvrtc, unwritable),
        trial("t1::cache::disable_jit_miss_names_kernel_and_arch", Need::Nvrtc, disable_jit),
        trial("t1::cache::no_compiler_uses_prewarmed_entry", Need::Nvrtc, without_compiler),
        trial("t1::cache::arch_define_and_math_change_the_key", Need::Nvrtc, distinct_keys),
    ];
    for kind in ["truncated", "bitflip", "swapped"] {
        trials.push(trial(format!("t1::cache::{kind}_entry_is_rebuilt_not_served"), Need::Nvrtc, move || damaged(kind)));
    }
    kiln_tests::main(trials)
}
