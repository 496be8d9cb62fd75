//! The self-describing cache entry file (`<key>.kiln`).
//!
//! ```text
//! magic    8 bytes  "KILNENT\0"
//! format   u32 LE   ENTRY_FORMAT
//! key      32 bytes the full cache key
//! meta     u32 LE length + UTF-8 `name=value` lines (kernel, arch, compiler, lowered name, flags…)
//! cubin    u64 LE length + bytes
//! ptx      u64 LE length + bytes
//! checksum 32 bytes SHA-256 of everything above
//! ```
//! A reader checks the magic, the format, that the stored key equals the requested one, that the
//! lengths add up to the file size exactly, and the checksum; anything else is "corrupt".

use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::cache::key::CacheKey;
use crate::compile::Compiled;
use crate::env::Backend;
use crate::math::FastMath;

/// File magic.
pub const MAGIC: &[u8; 8] = b"KILNENT\0";
/// Entry format version.
pub const ENTRY_FORMAT: u32 = 1;

/// Serialises an entry.
pub fn encode(key: &CacheKey, c: &Compiled) -> Vec<u8> {
    let m = c.math;
    let b = |v: bool| if v { '1' } else { '0' };
    let meta = format!(
        "kernel={}\narch={}\nbackend={}\ncompiler={}\nexpr={}\nlowered={}\noptions={}\nmath={}{}{}{}{}\ncompile_ms={:.3}\npdl_waits={}\ncreated={}\n",
        c.kernel,
        c.arch,
        c.backend.name(),
        c.compiler,
        c.expr,
        c.lowered_name,
        c.options.join("\u{1f}"),
        b(m.ftz),
        b(m.prec_div),
        b(m.prec_sqrt),
        b(m.fmad),
        b(m.intrinsics),
        c.compile_ms,
        c.pdl_waits as u8,
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    );
    let mut out = Vec::with_capacity(128 + meta.len() + c.cubin.len() + c.ptx.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&ENTRY_FORMAT.to_le_bytes());
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(&(c.cubin.len() as u64).to_le_bytes());
    out.extend_from_slice(&c.cubin);
    out.extend_from_slice(&(c.ptx.len() as u64).to_le_bytes());
    out.extend_from_slice(c.ptx.as_bytes());
    let sum: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("truncated")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

/// The stored key of an entry, if the header is readable (for `cache verify` and `ls`).
pub fn stored_key(bytes: &[u8]) -> Option<CacheKey> {
    if bytes.len() < 44 || &bytes[..8] != MAGIC {
        return None;
    }
    Some(CacheKey(bytes[12..44].try_into().ok()?))
}

/// Parses and verifies an entry; `Err` says what is wrong.
pub fn decode(bytes: &[u8], want: Option<&CacheKey>) -> Result<(CacheKey, Compiled), String> {
    if bytes.len() < 8 + 4 + 32 + 4 + 8 + 8 + 32 {
        return Err(format!("file too short ({} bytes)", bytes.len()));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    let mut r = Reader { b: body, pos: 0 };
    if r.take(8)? != MAGIC {
        return Err("bad magic".into());
    }
    let fmt = r.u32()?;
    if fmt != ENTRY_FORMAT {
        return Err(format!("entry format {fmt}, expected {ENTRY_FORMAT}"));
    }
    let key = CacheKey(r.take(32)?.try_into().expect("32 bytes"));
    if let Some(w) = want
        && *w != key
    {
        return Err(format!("stored key {} does not match the requested key {}", key.hex(), w.hex()));
    }
    let meta_len = r.u32()? as usize;
    let meta = std::str::from_utf8(r.take(meta_len)?).map_err(|_| "metadata is not UTF-8")?;
    let cubin_len = usize::try_from(r.u64()?).map_err(|_| "cubin length overflows")?;
    let cubin = r.take(cubin_len)?.to_vec();
    let ptx_len = usize::try_from(r.u64()?).map_err(|_| "ptx length overflows")?;
    let ptx = std::str::from_utf8(r.take(ptx_len)?).map_err(|_| "PTX is not UTF-8")?.to_string();
    if r.pos != body.len() {
        return Err(format!("{} trailing bytes", body.len() - r.pos));
    }
    let computed: [u8; 32] = Sha256::digest(body).into();
    if computed.as_slice() != sum {
        return Err("checksum mismatch".into());
    }
    let field = |name: &str| -> Result<&str, String> {
        meta.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('='))).ok_or(format!("metadata lacks {name}"))
    };
    let arch: Arch = field("arch")?.parse().map_err(|e: crate::Error| e.to_string())?;
    let backend = match field("backend")? {
        "nvrtc" => Backend::Nvrtc,
        "nvcc" => Backend::Nvcc,
        o => return Err(format!("unknown backend {o}")),
    };
    let mb: Vec<bool> = field("math")?.chars().map(|c| c == '1').collect();
    if mb.len() != 5 {
        return Err("bad math flags".into());
    }
    let options: Vec<String> = field("options")?.split('\u{1f}').filter(|s| !s.is_empty()).map(String::from).collect();
    let compiled = Compiled {
        kernel: field("kernel")?.to_string(),
        arch,
        backend,
        compiler: field("compiler")?.to_string(),
        options,
        math: FastMath { ftz: mb[0], prec_div: mb[1], prec_sqrt: mb[2], fmad: mb[3], intrinsics: mb[4] },
        expr: field("expr")?.to_string(),
        lowered_name: field("lowered")?.to_string(),
        cubin,
        ptx,
        compile_ms: field("compile_ms")?.parse().unwrap_or(0.0),
        pdl_waits: field("pdl_waits")? == "1",
    };
    if compiled.lowered_name.is_empty() || compiled.cubin.is_empty() {
        return Err("entry has no kernel".into());
    }
    Ok((key, compiled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Compiled {
        Compiled {
            kernel: "k__bf16".into(),
            arch: Arch::SM90A,
            backend: Backend::Nvrtc,
            compiler: "nvrtc 13.0 CL-1 V13.0.88 headers:00".into(),
            options: vec!["--gpu-architecture=sm_90a".into(), "-std=c++17".into()],
            math: FastMath::FAST,
            expr: "k<__nv_bfloat16, true>".into(),
            lowered_name: "_Z1kI13__nv_bfloat16Lb1EEvv".into(),
            cubin: vec![0x7f, b'E', b'L', b'F', 1, 2, 3],
            ptx: ".target sm_90a\n".into(),
            compile_ms: 12.5,
            pdl_waits: true,
        }
    }

    #[test]
    fn round_trip() {
        let key = CacheKey([7; 32]);
        let bytes = encode(&key, &sample());
        let (k, c) = decode(&bytes, Some(&key)).unwrap();
        assert_eq!(k, key);
        assert_eq!(c, sample());
        assert_eq!(stored_key(&bytes), Some(key));
    }

    #[test]
    fn every_corruption_is_caught() {
        let key = CacheKey([7; 32]);
        let bytes = encode(&key, &sample());
        // Truncation at every length.
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], Some(&key)).is_err(), "truncated to {n} accepted");
        }
        // A flipped bit anywhere.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode(&b, Some(&key)).is_err(), "bit flip at {i} accepted");
        }
        // An intact entry served for another key.
        assert!(decode(&bytes, Some(&CacheKey([8; 32]))).unwrap_err().contains("does not match"));
        // Trailing garbage.
        let mut b = bytes.clone();
        b.push(0);
        assert!(decode(&b, Some(&key)).is_err());
    }
}
