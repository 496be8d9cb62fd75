//! `cargo xtask cache ls|stats|verify [--fix]|gc [--max-bytes N]|clear [--cache-dir D]`.

use anyhow::{Context, bail};
use kiln_runtime::Knobs;
use kiln_runtime::cache::disk::DiskCache;

/// Dispatches the cache subcommands.
pub fn main(mut args: crate::Args) -> anyhow::Result<()> {
    let dir = args.value("cache-dir")?;
    let fix = args.flag("fix");
    let max = args.value("max-bytes")?;
    let rest = args.rest();
    let sub = rest.first().map(String::as_str).unwrap_or("stats");
    let knobs = Knobs::from_env()?;
    let root = dir.map(std::path::PathBuf::from).or_else(|| knobs.cache_root()).context("no cache directory (KILN_CACHE_DISABLE?)")?;
    let cache = DiskCache::new(&root, false);
    match sub {
        "ls" => {
            for e in cache.entries() {
                println!("{:>9}  {}", e.bytes, e.path.strip_prefix(&root).unwrap_or(&e.path).display());
            }
        }
        "stats" => {
            let es = cache.entries();
            let total: u64 = es.iter().map(|e| e.bytes).sum();
            println!(
                "{}: {} entries, {:.1} MiB, toolchains: {:?}",
                root.display(),
                es.len(),
                total as f64 / (1 << 20) as f64,
                cache.known_identities()
            );
        }
        "verify" => {
            let bad = cache.verify(fix);
            for (p, why) in &bad {
                println!("bad: {} ({why}){}", p.display(), if fix { " — quarantined" } else { "" });
            }
            println!("verify: {} entries, {} bad", cache.entries().len() + if fix { bad.len() } else { 0 }, bad.len());
            if !bad.is_empty() && !fix {
                bail!("{} corrupt entries (run with --fix to quarantine them)", bad.len());
            }
        }
        "gc" => {
            let max = match max.or(knobs.cache_max_bytes.map(|m| m.to_string())) {
                Some(m) => kiln_runtime::env::parse_size(&m).with_context(|| format!("--max-bytes {m:?}"))?,
                None => bail!("gc needs --max-bytes N (or KILN_CACHE_MAX_BYTES)"),
            };
            let (removed, left) = cache.gc(max);
            println!("gc: removed {removed} entries, {left} bytes left");
        }
        "clear" => {
            cache.clear()?;
            println!("cleared {}", root.display());
        }
        other => bail!("unknown cache command {other:?} (ls, stats, verify, gc, clear)"),
    }
    Ok(())
}
