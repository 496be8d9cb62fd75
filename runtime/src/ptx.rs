//! PTX text utilities: the snapshot normaliser and a few facts read off PTX.

/// Normalises PTX for snapshot comparison: drops the `//` banner (compiler build id, release),
/// the `.version` line (PTX ISA version follows the compiler, not the kernel), and rewrites
/// `_INTERNAL_<hash>` identifiers (they change per process) to a stable placeholder.
///
/// ```
/// let ptx = "//\n// Compiler Build ID: CL-1\n//\n\n.version 9.0\n.target sm_90\n.global .u32 _INTERNAL_4f2c_12_x_cu_abc = 1;\n";
/// assert_eq!(kiln_runtime::normalize_ptx(ptx), ".target sm_90\n.global .u32 _INTERNAL_x_cu = 1;\n");
/// ```
pub fn normalize_ptx(ptx: &str) -> String {
    let mut out = String::with_capacity(ptx.len());
    let mut in_banner = true;
    for line in ptx.lines() {
        let t = line.trim();
        if in_banner {
            if t.is_empty() || t.starts_with("//") {
                continue;
            }
            in_banner = false;
        }
        if t.starts_with(".version ") {
            continue;
        }
        out.push_str(&normalize_internal(line));
        out.push('\n');
    }
    out
}

/// `_INTERNAL_<hex>_<n>_<name>_<hex>` → `_INTERNAL_<name>`; inside a mangled name the segment is
/// length-prefixed (`_ZN50_INTERNAL_…`), and that prefix changes with the hash, so it is rewritten
/// to the new length.
fn normalize_internal(line: &str) -> String {
    const TAG: &str = "_INTERNAL_";
    if !line.contains(TAG) {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(pos) = rest.find(TAG) {
        let head = &rest[..pos];
        let digits = head.len() - head.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let prefixed_len: Option<usize> = (digits > 0).then(|| head[head.len() - digits..].parse().ok()).flatten();
        out.push_str(&head[..head.len() - digits]);
        let after = &rest[pos + TAG.len()..];
        let natural_end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        // A length-prefixed segment ends exactly where its prefix says.
        let end = match prefixed_len {
            Some(n) if n >= TAG.len() && n - TAG.len() <= natural_end => n - TAG.len(),
            _ => natural_end,
        };
        let ident = &after[..end];
        // Drop a leading hex hash and a counter, and a trailing hex hash.
        let mut parts: Vec<&str> = ident.split('_').collect();
        if parts.len() >= 2 && parts[0].chars().all(|c| c.is_ascii_hexdigit()) {
            parts.remove(0);
            if parts.first().is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())) {
                parts.remove(0);
            }
        }
        if parts.len() >= 2 && parts.last().is_some_and(|p| p.len() >= 3 && p.chars().all(|c| c.is_ascii_hexdigit())) {
            parts.pop();
        }
        let name = format!("{TAG}{}", parts.join("_"));
        if prefixed_len.is_some() {
            out.push_str(&name.len().to_string());
        }
        out.push_str(&name);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// A reviewable summary of (normalised) PTX for snapshot tests: the digest of the full text (so
/// any change shows), the target, each entry with its parameter sizes, the register, shared and
/// local declarations, and a histogram of instruction opcodes (with their modifiers, e.g.
/// `ld.global.nc.L1::no_allocate.v4.u32 ×4`). Whole-PTX snapshots of a few hundred unrolled
/// kernels run to tens of megabytes; the summary keeps what a reviewer checks (vector widths,
/// spills, `griddepcontrol`, `wgmma`) at a few kilobytes.
///
/// ```
/// let s = kiln_runtime::ptx::summary(".target sm_90\n.visible .entry k(\n.param .u64 k_param_0\n)\n{\n.reg .b32 %r<3>;\n\tadd.s32 %r1, %r2, 1;\n\tret;\n}\n");
/// assert!(s.contains("entry k params [8]") && s.contains("add.s32 1") && s.contains("local: none"));
/// ```
pub fn summary(ptx: &str) -> String {
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    let mut out = String::new();
    let digest = Sha256::digest(ptx.as_bytes());
    let _ = writeln!(out, "sha256 {}", crate::compile::hex(&digest));
    let _ = writeln!(out, "lines {}", ptx.lines().count());
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    let (mut regs, mut shared, mut local) = (Vec::new(), Vec::new(), Vec::new());
    for line in ptx.lines() {
        let t = line.trim();
        if t.starts_with(".target") {
            let _ = writeln!(out, "{t}");
        } else if t.starts_with(".reg ") {
            regs.push(t.trim_end_matches(';').trim_start_matches(".reg ").to_string());
        } else if t.contains(".shared ")
            && !t.starts_with("//")
            && (t.starts_with(".shared") || t.starts_with(".extern") || t.starts_with(".visible") || t.starts_with(".global"))
        {
            shared.push(t.trim_end_matches(';').to_string());
        } else if t.starts_with(".local ") {
            local.push(t.trim_end_matches(';').to_string());
        } else if t.is_empty()
            || t.starts_with("//")
            || t.starts_with('.')
            || t.starts_with('{')
            || t.starts_with('}')
            || t.starts_with(')')
            || t.ends_with(':')
        {
            continue;
        } else {
            let mut words = t.split_whitespace();
            let mut op = words.next().unwrap_or("");
            if op.starts_with('@') {
                op = words.next().unwrap_or("");
            }
            let op = op.trim_end_matches(';');
            if !op.is_empty() && op.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                *ops.entry(op.to_string()).or_default() += 1;
            }
        }
    }
    for e in entries(ptx) {
        let params = entry_params(ptx, &e).unwrap_or_default();
        let _ = writeln!(out, "entry {e} params {:?}", params.iter().map(|p| p.1).collect::<Vec<_>>());
    }
    let _ = writeln!(out, "regs: {}", regs.join(", "));
    let _ = writeln!(out, "shared: {}", if shared.is_empty() { "none".to_string() } else { shared.join("; ") });
    let _ = writeln!(out, "local: {}", if local.is_empty() { "none".to_string() } else { local.join("; ") });
    let _ = writeln!(out, "instructions ({} kinds, {} total):", ops.len(), ops.values().sum::<usize>());
    for (op, n) in ops {
        let _ = writeln!(out, "  {op} {n}");
    }
    out
}

/// Whether the PTX waits on a programmatic dependency (`griddepcontrol.wait`).
pub fn has_pdl_wait(ptx: &str) -> bool {
    ptx.contains("griddepcontrol.wait")
}

/// `CL-… V13.0.88` from the PTX banner (the compiler's build id and release).
pub fn banner_identity(ptx: &str) -> String {
    let mut parts = Vec::new();
    for line in ptx.lines().take(12) {
        let l = line.trim_start_matches('/').trim();
        if let Some(id) = l.strip_prefix("Compiler Build ID:") {
            parts.push(id.trim().to_string());
        } else if l.starts_with("Cuda compilation tools")
            && let Some(v) = l.rsplit(',').next()
        {
            parts.push(v.trim().to_string());
        }
    }
    if parts.is_empty() { "unknown-build".into() } else { parts.join(" ") }
}

/// The `.entry` names in the PTX, in order.
pub fn entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            let t = l.trim();
            let rest =
                t.strip_prefix(".visible .entry ").or_else(|| t.strip_prefix(".weak .entry ")).or_else(|| t.strip_prefix(".entry "))?;
            Some(rest.split(['(', ' ']).next()?.to_string())
        })
        .collect()
}

/// The declared parameters of kernel `entry`: `(alignment, bytes)` per parameter, e.g. a 48-byte
/// struct passed by value reads `.param .align 8 .b8 k_param_0[48]` → `(8, 48)`.
pub fn entry_params(ptx: &str, entry: &str) -> Option<Vec<(u32, u32)>> {
    let start = ptx.lines().position(|l| {
        let t = l.trim();
        t.contains(".entry ") && t.split(".entry ").nth(1).is_some_and(|r| r.split(['(', ' ']).next() == Some(entry))
    })?;
    let mut params = Vec::new();
    for line in ptx.lines().skip(start + 1) {
        let t = line.trim().trim_end_matches(',');
        if t.starts_with(')') {
            break;
        }
        if let Some(p) = t.strip_prefix(".param ") {
            params.push(param_size(p));
        }
    }
    Some(params)
}

fn param_size(decl: &str) -> (u32, u32) {
    // `.align 8 .b8 name[48]` or `.u64 name` / `.b32 name`.
    let toks: Vec<&str> = decl.split_whitespace().collect();
    let mut align = 0;
    let mut elem = 0;
    let mut count = 1;
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i];
        if t == ".align" {
            align = toks.get(i + 1).and_then(|a| a.parse().ok()).unwrap_or(0);
            i += 2;
            continue;
        }
        if let Some(bits) =
            t.strip_prefix(".b").or_else(|| t.strip_prefix(".u")).or_else(|| t.strip_prefix(".s")).or_else(|| t.strip_prefix(".f"))
            && let Ok(b) = bits.parse::<u32>()
        {
            elem = b / 8;
        }
        if let (Some(l), Some(r)) = (t.find('['), t.find(']')) {
            count = t.get(l + 1..r).and_then(|n| n.parse().ok()).unwrap_or(1);
        }
        i += 1;
    }
    (if align == 0 { elem } else { align }, elem.saturating_mul(count))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTX: &str = "//\n// Generated by NVIDIA NVVM Compiler\n//\n// Compiler Build ID: CL-36424714\n// Cuda compilation tools, release 13.0, V13.0.88\n// Based on NVVM 7.0.1\n//\n\n.version 9.0\n.target sm_90a\n.address_size 64\n\n\t// .globl\t_Z1kv\n.weak .entry _Z1kI6Params(\n\t.param .align 8 .b8 _Z1kI6Params_param_0[48]\n)\n{\n\tgriddepcontrol.wait;\n\tret;\n}\n.visible .entry _Z2k2v(\n\t.param .u64 _Z2k2v_param_0,\n\t.param .u32 _Z2k2v_param_1\n)\n{\n}\n";

    #[test]
    fn malformed_param_declarations_do_not_panic() {
        assert_eq!(param_size(".b8 x]3["), (1, 1));
        assert_eq!(param_size(".align 8 .b8 x[4294967295]"), (8, u32::MAX));
        assert_eq!(param_size(".b64 x[4294967295]"), (8, u32::MAX));
    }

    #[test]
    fn normaliser_drops_banner_and_version() {
        let n = normalize_ptx(PTX);
        assert!(n.starts_with(".target sm_90a\n"), "{n}");
        assert!(!n.contains("Build ID") && !n.contains(".version"));
        assert!(n.contains("// .globl"), "comments after the banner stay");
    }

    #[test]
    fn internal_hashes_are_stable() {
        assert_eq!(
            normalize_internal("ld.global.u32 %r1, [_INTERNAL_ab12cd_34_kernel_cu_deadbeef];"),
            "ld.global.u32 %r1, [_INTERNAL_kernel_cu];"
        );
    }

    #[test]
    fn facts() {
        assert!(has_pdl_wait(PTX));
        assert_eq!(banner_identity(PTX), "CL-36424714 V13.0.88");
        assert_eq!(entries(PTX), ["_Z1kI6Params", "_Z2k2v"]);
        assert_eq!(entry_params(PTX, "_Z1kI6Params").unwrap(), [(8, 48)]);
        assert_eq!(entry_params(PTX, "_Z2k2v").unwrap(), [(8, 8), (4, 4)]);
        assert!(entry_params(PTX, "nope").is_none());
    }
}
