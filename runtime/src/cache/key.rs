//! The cache key: SHA-256 over a tagged, length-prefixed encoding of everything that changes the
//! compiled bytes, and nothing that does not (no absolute paths, device ordinal, PID or time).

use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::env::Backend;
use crate::source::KernelSpec;

/// Bumped when the key's encoding changes.
pub const KEY_SCHEMA: u32 = 1;
/// Bumped when kiln's code generation changes in a way the inputs below do not show (e.g. a
/// change to how options are derived).
pub const CODEGEN_EPOCH: u32 = 1;
/// What each entry holds.
pub const OUTPUT_KIND: &str = "cubin+ptx";

/// A 32-byte cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// Lower-case hex (64 chars).
    pub fn hex(&self) -> String {
        crate::compile::hex(&self.0)
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

/// Every input of the key, spelled out.
#[derive(Debug, Clone)]
pub struct KeyInput<'a> {
    /// Compiler backend.
    pub backend: Backend,
    /// Compiler identity (version + build id + toolkit header digest).
    pub compiler: &'a str,
    /// Program name handed to the compiler.
    pub program: &'a str,
    /// Exact source text.
    pub source: &'a str,
    /// Project headers `(name, text)`; sorted by name before hashing.
    pub headers: Vec<(&'a str, &'a str)>,
    /// Canonical options.
    pub options: &'a [String],
    /// Target.
    pub arch: Arch,
    /// Name expressions; sorted before hashing.
    pub exprs: Vec<&'a str>,
    /// Code-changing environment knobs `(name, value)`.
    pub env: Vec<(&'a str, String)>,
}

impl<'a> KeyInput<'a> {
    /// The inputs for `spec` compiled with `options` for `arch`.
    pub fn for_spec(spec: &'a KernelSpec, arch: Arch, backend: Backend, compiler: &'a str, options: &'a [String]) -> Self {
        KeyInput {
            backend,
            compiler,
            program: spec.source().name,
            source: spec.source().text,
            headers: spec.source().all_headers().map(|h| (h.name, h.text)).collect(),
            options,
            arch,
            exprs: vec![spec.expr()],
            env: Vec::new(),
        }
    }

    /// The digest.
    pub fn key(&self) -> CacheKey {
        let mut h = Sha256::new();
        let mut put = |tag: &str, v: &[u8]| {
            h.update((tag.len() as u32).to_le_bytes());
            h.update(tag.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v);
        };
        put("schema", &KEY_SCHEMA.to_le_bytes());
        put("epoch", &CODEGEN_EPOCH.to_le_bytes());
        put("backend", self.backend.name().as_bytes());
        put("compiler", self.compiler.as_bytes());
        put("program", self.program.as_bytes());
        put("source", self.source.as_bytes());
        let mut headers = self.headers.clone();
        headers.sort();
        put("headers", &(headers.len() as u64).to_le_bytes());
        for (n, t) in headers {
            put("header-name", n.as_bytes());
            put("header-text", t.as_bytes());
        }
        put("options", &(self.options.len() as u64).to_le_bytes());
        for o in self.options {
            put("option", o.as_bytes());
        }
        put("arch", self.arch.to_string().as_bytes());
        put("output", OUTPUT_KIND.as_bytes());
        let mut exprs = self.exprs.clone();
        exprs.sort();
        put("exprs", &(exprs.len() as u64).to_le_bytes());
        for e in exprs {
            put("expr", e.as_bytes());
        }
        let mut env = self.env.clone();
        env.sort();
        for (k, v) in env {
            put("env-name", k.as_bytes());
            put("env-value", v.as_bytes());
        }
        CacheKey(h.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> (Vec<String>, KeyInput<'static>) {
        let options = vec!["--gpu-architecture=sm_90a".to_string(), "-std=c++17".to_string(), "--fmad=true".to_string()];
        let input = KeyInput {
            backend: Backend::Nvrtc,
            compiler: "nvrtc 13.0 CL-36424714 V13.0.88 headers:0123456789abcdef",
            program: "act.cuh",
            source: "#include <kiln/common.cuh>\ntemplate <typename T> __global__ void k(T* p) {}\n",
            headers: vec![("kiln/common.cuh", "// common\n"), ("kiln/vec.cuh", "// vec\n")],
            options: &[],
            arch: Arch::SM90A,
            exprs: vec!["k<float>"],
            env: vec![],
        };
        (options, input)
    }

    /// The digest of fixed inputs is pinned: a change here is a key-schema change (bump
    /// KEY_SCHEMA or CODEGEN_EPOCH on purpose, then update the constant).
    #[test]
    fn golden_digest() {
        let (options, mut k) = base();
        k.options = &options;
        assert_eq!(k.key().hex(), GOLDEN);
    }
    const GOLDEN: &str = "44e5a7fddbb4bbe075c5d7a4df2b295fc46b6438e2d1f8c6fd7af1c775eab959";

    #[test]
    fn every_input_changes_the_key() {
        let (options, mut k) = base();
        k.options = &options;
        let reference = k.key();
        let mut variants: Vec<KeyInput<'_>> = Vec::new();
        let mut v = k.clone();
        v.headers[1] = ("kiln/vec.cuh", "// vec!\n");
        variants.push(v);
        let mut v = k.clone();
        v.headers[0] = ("kiln/commoN.cuh", "// common\n");
        variants.push(v);
        let mut v = k.clone();
        v.source = "#include <kiln/common.cuh>\ntemplate <typename T> __global__ void k(T* q) {}\n";
        variants.push(v);
        let mut v = k.clone();
        v.program = "act2.cuh";
        variants.push(v);
        let mut v = k.clone();
        v.arch = Arch::SM90;
        variants.push(v);
        let mut v = k.clone();
        v.arch = Arch::SM100A;
        variants.push(v);
        let mut v = k.clone();
        v.compiler = "nvrtc 13.0 CL-36424715 V13.0.88 headers:0123456789abcdef";
        variants.push(v);
        let mut v = k.clone();
        v.backend = Backend::Nvcc;
        variants.push(v);
        let mut v = k.clone();
        v.exprs = vec!["k<double>"];
        variants.push(v);
        let mut v = k.clone();
        v.env = vec![("KILN_LINEINFO", "1".into())];
        variants.push(v);
        let other_opts = vec!["--gpu-architecture=sm_90a".to_string(), "-std=c++17".to_string(), "--fmad=false".to_string()];
        let mut v = k.clone();
        v.options = &other_opts;
        variants.push(v);
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(v.key(), reference, "variant {i} did not change the key");
        }
        // Order of headers and expressions does not matter; equal inputs give equal keys.
        let mut v = k.clone();
        v.headers.reverse();
        assert_eq!(v.key(), reference);
        assert_eq!(k.clone().key(), reference);
    }

    #[test]
    fn length_prefixing_prevents_ambiguity() {
        let (options, mut a) = base();
        a.options = &options;
        let mut b = a.clone();
        a.headers = vec![("ab", "c")];
        b.headers = vec![("a", "bc")];
        assert_ne!(a.key(), b.key());
    }
}
