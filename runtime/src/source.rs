//! Kernel sources (CUDA C++ text embedded in the binary) and kernel specs (one instantiation).

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::math::MathPolicy;

/// A header handed to the compiler from memory, under the name kernels `#include` it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Include name, e.g. `kiln/vec.cuh`.
    pub name: &'static str,
    /// Its text.
    pub text: &'static str,
}

/// A CUDA C++ translation unit and every project header it may include.
///
/// ```
/// use kiln_runtime::{KernelSource, PRELUDE};
/// static SRC: KernelSource = KernelSource {
///     name: "scale.cuh",
///     text: "#include <kiln/common.cuh>\ntemplate <typename T> __global__ void scale(T* x) {}",
///     headers: &[PRELUDE],
/// };
/// assert!(SRC.all_headers().any(|h| h.name == "kiln/common.cuh"));
/// ```
#[derive(Debug)]
pub struct KernelSource {
    /// Program name (also the file name used in compiler messages), e.g. `activation.cuh`.
    pub name: &'static str,
    /// The translation unit's text.
    pub text: &'static str,
    /// Header groups: usually [`crate::PRELUDE`] plus the op's own headers.
    pub headers: &'static [&'static [Header]],
}

impl KernelSource {
    /// Every header, group by group.
    pub fn all_headers(&self) -> impl Iterator<Item = &'static Header> + '_ {
        self.headers.iter().flat_map(|g| g.iter())
    }
}

/// Where a kernel may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Targets {
    /// Any compute capability from this one on.
    AtLeast(u32, u32),
    /// Only devices whose compute capability major equals this (e.g. `wgmma` kernels: 9).
    Major(u32),
}

impl Targets {
    /// Whether a device of this architecture can run the kernel.
    pub fn allows(self, arch: Arch) -> bool {
        match self {
            Targets::AtLeast(ma, mi) => (arch.major, arch.minor) >= (ma, mi),
            Targets::Major(m) => arch.major == m,
        }
    }
}

/// One kernel instantiation: a source, a template name expression and its compile settings.
///
/// Specs are built once (op crates keep them in a `LazyLock` table) and looked up by their
/// fingerprint, so that a launch needs no string formatting, hashing of text or allocation.
///
/// ```
/// use kiln_runtime::{KernelSource, KernelSpec, PRELUDE};
/// static SRC: KernelSource = KernelSource { name: "k.cuh", text: "template <bool P> __global__ void k() {}", headers: &[PRELUDE] };
/// let spec = KernelSpec::new("k__pdl", &SRC, "k<true>").pdl(true);
/// assert_eq!(spec.expr(), "k<true>");
/// assert_ne!(spec.fingerprint(), KernelSpec::new("k", &SRC, "k<false>").fingerprint());
/// ```
#[derive(Debug, Clone)]
pub struct KernelSpec {
    name: String,
    source: &'static KernelSource,
    expr: String,
    defines: Vec<(String, String)>,
    math: MathPolicy,
    pdl: bool,
    arch_specific: bool,
    targets: Targets,
    dynamic_smem: u32,
    fingerprint: OnceLock<[u8; 32]>,
}

impl KernelSpec {
    /// A spec named `name` (`<op>__<tag>__<variant>`, used for logs and snapshots) that
    /// instantiates `expr` (e.g. `act_and_mul<__nv_bfloat16, 0, true>`) from `source`.
    pub fn new(name: impl Into<String>, source: &'static KernelSource, expr: impl Into<String>) -> Self {
        KernelSpec {
            name: name.into(),
            source,
            expr: expr.into(),
            defines: Vec::new(),
            math: MathPolicy::ArchDefault,
            pdl: false,
            arch_specific: false,
            targets: Targets::AtLeast(7, 0),
            dynamic_smem: 0,
            fingerprint: OnceLock::new(),
        }
    }

    /// Adds `-D<key>=<value>`.
    pub fn define(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.defines.push((key.into(), value.into()));
        self.defines.sort();
        self.fingerprint = OnceLock::new();
        self
    }

    /// Sets the fast-math policy (default: [`MathPolicy::ArchDefault`]).
    pub fn math(mut self, m: MathPolicy) -> Self {
        self.math = m;
        self.fingerprint = OnceLock::new();
        self
    }

    /// Declares that the kernel waits with `kiln::pdl_wait` and may be launched with programmatic
    /// stream serialization. The name expression must select the PDL variant accordingly.
    pub fn pdl(mut self, on: bool) -> Self {
        self.pdl = on;
        self.fingerprint = OnceLock::new();
        self
    }

    /// Compile for `sm_XYa` (arch-specific instructions such as `wgmma`, `tcgen05`).
    pub fn arch_specific(mut self, on: bool) -> Self {
        self.arch_specific = on;
        self.fingerprint = OnceLock::new();
        self
    }

    /// Restricts the devices the kernel can run on.
    pub fn targets(mut self, t: Targets) -> Self {
        self.targets = t;
        self.fingerprint = OnceLock::new();
        self
    }

    /// Dynamic shared memory the kernel needs; above 48 KiB the loader raises the kernel's limit.
    pub fn dynamic_smem(mut self, bytes: u32) -> Self {
        self.dynamic_smem = bytes;
        self.fingerprint = OnceLock::new();
        self
    }

    /// Label, e.g. `silu_and_mul__bf16__pdl`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The source.
    pub fn source(&self) -> &'static KernelSource {
        self.source
    }
    /// The name expression.
    pub fn expr(&self) -> &str {
        &self.expr
    }
    /// Sorted `-D` definitions.
    pub fn defines(&self) -> &[(String, String)] {
        &self.defines
    }
    /// Fast-math policy.
    pub fn math_policy(&self) -> MathPolicy {
        self.math
    }
    /// Whether the kernel is a PDL kernel.
    pub fn is_pdl(&self) -> bool {
        self.pdl
    }
    /// Whether the kernel needs the `a` target.
    pub fn is_arch_specific(&self) -> bool {
        self.arch_specific
    }
    /// Devices it can run on.
    pub fn target_set(&self) -> Targets {
        self.targets
    }
    /// Dynamic shared memory bytes.
    pub fn dynamic_smem_bytes(&self) -> u32 {
        self.dynamic_smem
    }

    /// The target this spec compiles for on a device of architecture `device`.
    pub fn target_arch(&self, device: Arch) -> Arch {
        device.for_kernel(self.arch_specific)
    }

    /// A digest of everything in the spec (source and header texts included), computed once.
    /// It identifies the spec in memory; the disk cache key adds the compiler, arch and flags.
    pub fn fingerprint(&self) -> [u8; 32] {
        *self.fingerprint.get_or_init(|| {
            let mut h = Sha256::new();
            let mut put = |tag: &str, v: &[u8]| {
                h.update(tag.as_bytes());
                h.update((v.len() as u64).to_le_bytes());
                h.update(v);
            };
            put("name", self.name.as_bytes());
            put("program", self.source.name.as_bytes());
            put("source", self.source.text.as_bytes());
            for hd in self.source.all_headers() {
                put("header", hd.name.as_bytes());
                put("text", hd.text.as_bytes());
            }
            put("expr", self.expr.as_bytes());
            for (k, v) in &self.defines {
                put("define", format!("{k}={v}").as_bytes());
            }
            put("math", format!("{:?}", self.math).as_bytes());
            put("pdl", &[self.pdl as u8]);
            put("arch_specific", &[self.arch_specific as u8]);
            put("targets", format!("{:?}", self.targets).as_bytes());
            put("smem", &self.dynamic_smem.to_le_bytes());
            h.finalize().into()
        })
    }
}
