//! The on-disk cache: `<root>/v<schema>/<toolchain>/<arch>/<k0k1>/<key>.kiln`.
//!
//! Writes go to a temp file in the same directory, are fsynced and published with `link` (first
//! publisher wins, never a torn file). Reads verify the entry completely. Bad entries are moved to
//! `<root>/quarantine/`. Cross-process locks (`<root>/locks/`) only dedupe work: readers never lock.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::cache::entry;
use crate::cache::key::{CacheKey, KEY_SCHEMA};
use crate::compile::{Compiled, hex};

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, then `link`
/// (no replace). Returns `Ok(false)` if another writer published first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().ok_or_else(|| io::Error::other("path has no parent"))?;
    fs::create_dir_all(dir)?;
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = dir.join(format!(".tmp-{}-{nanos}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut f = File::options().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            // Filesystems without hard links: rename, which may replace a concurrent publisher's
            // identical entry (same key, verified on read) — harmless.
            Err(_) => fs::rename(&tmp, path).map(|()| true),
        }
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// Outcome of reading one entry.
#[derive(Debug)]
pub enum Read {
    /// A verified entry.
    Hit(Box<Compiled>),
    /// No file.
    Missing,
    /// The file exists but fails verification.
    Corrupt(String),
    /// The file could not be read.
    Io(io::Error),
}

/// A summary of one entry on disk (for `xtask cache`).
#[derive(Debug, Clone)]
pub struct EntryInfo {
    /// File path.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// Last use (mtime).
    pub used: SystemTime,
}

/// Held while compiling one key; released on drop.
pub struct KeyLock {
    _file: File,
}

/// The disk cache rooted at one directory.
#[derive(Debug, Clone)]
pub struct DiskCache {
    base: PathBuf,
    readonly: bool,
}

impl DiskCache {
    /// A cache at `base` (created lazily on first write).
    pub fn new(base: impl Into<PathBuf>, readonly: bool) -> Self {
        DiskCache { base: base.into(), readonly }
    }

    /// The root directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Whether writes are disabled.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// `<root>/v<schema>`.
    pub fn versioned(&self) -> PathBuf {
        self.base.join(format!("v{KEY_SCHEMA}"))
    }

    /// A readable, filesystem-safe directory name for a compiler identity, plus a digest so
    /// that distinct identities never share a directory.
    pub fn toolchain_dir(identity: &str) -> String {
        let words: Vec<&str> = identity.split_whitespace().take(4).collect();
        let mut s: String =
            words.join("-").chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
        s.truncate(60);
        format!("{s}-{}", &hex(&Sha256::digest(identity.as_bytes()))[..12])
    }

    /// Where the entry for `key` lives.
    pub fn entry_path(&self, identity: &str, arch: Arch, key: &CacheKey) -> PathBuf {
        let h = key.hex();
        self.versioned().join(Self::toolchain_dir(identity)).join(arch.to_string()).join(&h[..2]).join(format!("{h}.kiln"))
    }

    /// Reads and verifies one entry.
    pub fn read(&self, path: &Path, key: &CacheKey) -> Read {
        match fs::read(path) {
            Ok(bytes) => match entry::decode(&bytes, Some(key)) {
                Ok((_, c)) => {
                    if !self.readonly {
                        // Least-recently-used bookkeeping for gc; failure is irrelevant.
                        let _ = File::options().append(true).open(path).and_then(|f| f.set_modified(SystemTime::now()));
                    }
                    Read::Hit(Box::new(c))
                }
                Err(e) => Read::Corrupt(e),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Read::Missing,
            Err(e) => Read::Io(e),
        }
    }

    /// Publishes an entry (and the toolchain's identity file next to it). `Ok(false)` when another
    /// process published first or the cache is read-only.
    pub fn write(&self, path: &Path, key: &CacheKey, c: &Compiled) -> io::Result<bool> {
        if self.readonly {
            return Ok(false);
        }
        if let Some(tc) = path.parent().and_then(Path::parent).and_then(Path::parent) {
            let id = tc.join("IDENTITY");
            if !id.exists() {
                write_atomic(&id, c.compiler.as_bytes())?;
            }
        }
        write_atomic(path, &entry::encode(key, c))
    }

    /// Moves a bad entry out of the way so that it is never served again.
    pub fn quarantine(&self, path: &Path) {
        if self.readonly {
            return;
        }
        let q = self.base.join("quarantine");
        let name = format!(
            "{}-{}",
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        );
        if fs::create_dir_all(&q).and_then(|()| fs::rename(path, q.join(name))).is_err() {
            let _ = fs::remove_file(path);
        }
    }

    /// Takes the per-key cross-process lock, waiting at most `wait`. `None` when locking is
    /// impossible (read-only cache, I/O error) or timed out: the caller compiles anyway.
    pub fn lock(&self, key: &CacheKey, wait: Duration) -> Option<KeyLock> {
        if self.readonly {
            return None;
        }
        let h = key.hex();
        let path = self.base.join("locks").join(&h[..2]).join(format!("{h}.lock"));
        fs::create_dir_all(path.parent()?).ok()?;
        let file = File::options().create(true).truncate(false).write(true).open(&path).ok()?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Some(KeyLock { _file: file }),
                Err(fs::TryLockError::WouldBlock) if start.elapsed() < wait => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => return None,
            }
        }
    }

    /// Every entry file (`*.kiln`) under the versioned root.
    pub fn entries(&self) -> Vec<EntryInfo> {
        let mut out = Vec::new();
        let mut stack = vec![self.versioned()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(m) = e.metadata() else { continue };
                if m.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "kiln") {
                    out.push(EntryInfo { path: p, bytes: m.len(), used: m.modified().unwrap_or(SystemTime::UNIX_EPOCH) });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Deletes least-recently-used entries until the total is at most `max_bytes`. Returns
    /// `(entries removed, bytes left)`.
    pub fn gc(&self, max_bytes: u64) -> (usize, u64) {
        let mut es = self.entries();
        let mut total: u64 = es.iter().map(|e| e.bytes).sum();
        if total <= max_bytes || self.readonly {
            return (0, total);
        }
        es.sort_by_key(|e| e.used);
        let mut removed = 0;
        for e in es {
            if total <= max_bytes {
                break;
            }
            if fs::remove_file(&e.path).is_ok() {
                total -= e.bytes;
                removed += 1;
            }
        }
        (removed, total)
    }

    /// Verifies every entry; returns the bad ones with the reason (and quarantines them when
    /// `fix`).
    pub fn verify(&self, fix: bool) -> Vec<(PathBuf, String)> {
        let mut bad = Vec::new();
        for e in self.entries() {
            let reason = match fs::read(&e.path) {
                Ok(b) => {
                    let name_key = e.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    match entry::decode(&b, None) {
                        Ok((k, _)) if k.hex() == name_key => None,
                        Ok((k, _)) => Some(format!("file name does not match stored key {}", k.hex())),
                        Err(r) => Some(r),
                    }
                }
                Err(err) => Some(err.to_string()),
            };
            if let Some(r) = reason {
                if fix {
                    self.quarantine(&e.path);
                }
                bad.push((e.path, r));
            }
        }
        bad
    }

    /// Removes everything under the root (entries, locks, quarantine, identity memos).
    pub fn clear(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.base) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Compiler identities that have entries here (read from each toolchain's `IDENTITY`).
    pub fn known_identities(&self) -> Vec<String> {
        let mut ids = Vec::new();
        if let Ok(rd) = fs::read_dir(self.versioned()) {
            for e in rd.flatten() {
                if let Ok(s) = fs::read_to_string(e.path().join("IDENTITY")) {
                    ids.push(s.trim().to_string());
                }
            }
        }
        ids.sort();
        ids
    }
}
