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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Backend;
    use crate::math::FastMath;

    fn sample(tag: u8) -> Compiled {
        Compiled {
            kernel: format!("k{tag}"),
            arch: Arch::SM90,
            backend: Backend::Nvrtc,
            compiler: "nvrtc 13.0 CL-1 V13.0.88 headers:00".into(),
            options: vec!["--gpu-architecture=sm_90".into()],
            math: FastMath::FAST,
            expr: "k<1>".into(),
            lowered_name: "_Z1kILi1EEvv".into(),
            cubin: vec![tag; 1000],
            ptx: ".target sm_90\n".into(),
            compile_ms: 1.0,
            pdl_waits: false,
        }
    }

    #[test]
    fn publish_read_and_first_writer_wins() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path(), false);
        let key = CacheKey([1; 32]);
        let c = sample(1);
        let path = cache.entry_path(&c.compiler, c.arch, &key);
        assert!(matches!(cache.read(&path, &key), Read::Missing));
        assert!(cache.write(&path, &key, &c).unwrap());
        // A second publisher of the same key loses and changes nothing.
        assert!(!cache.write(&path, &key, &sample(2)).unwrap());
        match cache.read(&path, &key) {
            Read::Hit(got) => assert_eq!(*got, c),
            other => panic!("{other:?}"),
        }
        assert_eq!(cache.known_identities(), std::slice::from_ref(&c.compiler));
        // No temp files are left behind.
        let leftovers: Vec<_> = cache.entries().iter().map(|e| e.path.clone()).filter(|p| p != &path).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(!std::fs::read_dir(path.parent().unwrap()).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(".tmp")));
    }

    #[test]
    fn damaged_entries_are_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path(), false);
        let (ka, kb) = (CacheKey([1; 32]), CacheKey([2; 32]));
        let (pa, pb) = (cache.entry_path("id", Arch::SM90, &ka), cache.entry_path("id", Arch::SM90, &kb));
        cache.write(&pa, &ka, &sample(1)).unwrap();
        let bytes = std::fs::read(&pa).unwrap();
        // Truncated.
        std::fs::write(&pa, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(cache.read(&pa, &ka), Read::Corrupt(_)));
        // Bit flip in the CUBIN.
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 1;
        std::fs::write(&pa, &flipped).unwrap();
        assert!(matches!(cache.read(&pa, &ka), Read::Corrupt(_)));
        // A valid entry of another key copied over this one ("swapped").
        std::fs::write(&pa, &bytes).unwrap();
        std::fs::create_dir_all(pb.parent().unwrap()).unwrap();
        std::fs::copy(&pa, &pb).unwrap();
        assert!(matches!(cache.read(&pb, &kb), Read::Corrupt(r) if r.contains("does not match")));
        // verify() finds the swapped one; --fix quarantines it.
        let bad = cache.verify(true);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(!pb.exists());
        assert_eq!(std::fs::read_dir(dir.path().join("quarantine")).unwrap().count(), 1);
    }

    #[test]
    fn gc_removes_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path(), false);
        let mut paths = Vec::new();
        for i in 0..4u8 {
            let k = CacheKey([i; 32]);
            let p = cache.entry_path("id", Arch::SM90, &k);
            cache.write(&p, &k, &sample(i)).unwrap();
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64 * 100);
            File::options().append(true).open(&p).unwrap().set_modified(t).unwrap();
            paths.push(p);
        }
        // Reading entry 0 makes it the most recently used.
        assert!(matches!(cache.read(&paths[0], &CacheKey([0; 32])), Read::Hit(_)));
        let one = cache.entries()[0].bytes;
        let (removed, left) = cache.gc(2 * one);
        assert_eq!((removed, left), (2, 2 * one));
        assert!(paths[0].exists() && !paths[1].exists() && !paths[2].exists() && paths[3].exists());
    }

    #[test]
    fn read_only_cache_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path().join("ro"), true);
        let k = CacheKey([9; 32]);
        let p = cache.entry_path("id", Arch::SM90, &k);
        assert!(!cache.write(&p, &k, &sample(9)).unwrap());
        assert!(!dir.path().join("ro").exists());
        assert!(cache.lock(&k, Duration::from_millis(1)).is_none());
    }

    #[test]
    fn an_unwritable_cache_is_an_io_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        // The cache root lies below a regular file: every write fails (even as root).
        let cache = DiskCache::new(file.join("cache"), false);
        let k = CacheKey([3; 32]);
        let p = cache.entry_path("id", Arch::SM90, &k);
        assert!(cache.write(&p, &k, &sample(3)).is_err());
        assert!(matches!(cache.read(&p, &k), Read::Missing | Read::Io(_)));
        assert!(cache.lock(&k, Duration::from_millis(1)).is_none());
    }

    #[test]
    fn key_lock_excludes_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path(), false);
        let k = CacheKey([5; 32]);
        let held = cache.lock(&k, Duration::from_secs(1)).expect("first lock");
        let t = Instant::now();
        assert!(cache.lock(&k, Duration::from_millis(50)).is_none(), "second holder must time out");
        assert!(t.elapsed() >= Duration::from_millis(50));
        drop(held);
        assert!(cache.lock(&k, Duration::from_millis(50)).is_some());
    }
}
