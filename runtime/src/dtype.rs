//! Rust element types and their C++ spelling; canonical template-argument formatting.

use std::fmt::Write as _;

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

/// Identifies an element type at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DtypeId {
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// IEEE single.
    F32,
    /// FP8 E4M3 (finite-only "fn" variant).
    E4m3,
    /// E8M0 power-of-two scale byte.
    E8m0,
    /// Unsigned byte.
    U8,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
}

impl DtypeId {
    /// The C++ type the kernels use (`__nv_bfloat16`, `__half`, …).
    pub const fn cpp(self) -> &'static str {
        match self {
            DtypeId::F16 => "__half",
            DtypeId::Bf16 => "__nv_bfloat16",
            DtypeId::F32 => "float",
            DtypeId::E4m3 => "__nv_fp8_e4m3",
            DtypeId::E8m0 => "__nv_fp8_e8m0",
            DtypeId::U8 => "unsigned char",
            DtypeId::I32 => "int",
            DtypeId::I64 => "long long",
        }
    }

    /// The short tag used in names (`bf16`, `f16`, `f32`, `e4m3`, `e8m0`, `u8`, `i32`, `i64`).
    pub const fn tag(self) -> &'static str {
        match self {
            DtypeId::F16 => "f16",
            DtypeId::Bf16 => "bf16",
            DtypeId::F32 => "f32",
            DtypeId::E4m3 => "e4m3",
            DtypeId::E8m0 => "e8m0",
            DtypeId::U8 => "u8",
            DtypeId::I32 => "i32",
            DtypeId::I64 => "i64",
        }
    }

    /// Size in bytes.
    pub const fn size(self) -> usize {
        match self {
            DtypeId::E4m3 | DtypeId::E8m0 | DtypeId::U8 => 1,
            DtypeId::F16 | DtypeId::Bf16 => 2,
            DtypeId::F32 | DtypeId::I32 => 4,
            DtypeId::I64 => 8,
        }
    }
}

impl std::fmt::Display for DtypeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.tag())
    }
}

/// A Rust element type that kernels can read and write.
pub trait Dtype: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    /// Run-time identity.
    const ID: DtypeId;
}

impl Dtype for half::f16 {
    const ID: DtypeId = DtypeId::F16;
}
impl Dtype for half::bf16 {
    const ID: DtypeId = DtypeId::Bf16;
}
impl Dtype for f32 {
    const ID: DtypeId = DtypeId::F32;
}
impl Dtype for u8 {
    const ID: DtypeId = DtypeId::U8;
}
impl Dtype for i32 {
    const ID: DtypeId = DtypeId::I32;
}
impl Dtype for i64 {
    const ID: DtypeId = DtypeId::I64;
}

/// `v` rounded to f32 *to odd*: truncated toward zero, with the last bit set when anything was
/// cut off. A second round-to-nearest-even from this f32 into any format of at most 22 significand
/// bits (bf16, f16) is then the correctly rounded result of `v` itself.
pub fn f64_to_f32_odd(v: f64) -> f32 {
    let r = v as f32;
    if r.is_nan() || f64::from(r) == v {
        return r;
    }
    let mut bits = r.to_bits();
    if f64::from(r).abs() > v.abs() {
        bits -= 1; // one step toward zero (r ≠ 0 here; an f32 overflow steps down to f32::MAX)
    }
    f32::from_bits(bits | 1)
}

/// f64 → bf16, round to nearest even, correctly rounded. (`half::bf16::from_f64` drops the low 32
/// bits of the f64 before looking for sticky bits, so a value just above a tie can round down.)
pub fn bf16_from_f64(v: f64) -> half::bf16 {
    half::bf16::from_f32(f64_to_f32_odd(v))
}

/// f64 → f16, round to nearest even, correctly rounded (see [`bf16_from_f64`]).
pub fn f16_from_f64(v: f64) -> half::f16 {
    half::f16::from_f32(f64_to_f32_odd(v))
}

/// One FP8 E4M3 ("e4m3fn": no infinities, NaN = 0x7F/0xFF, max 448) element, stored as its bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct E4m3(pub u8);

/// One E8M0 scale byte: the value `2^(bits − 127)`, 0xFF = NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct E8m0(pub u8);

// SAFETY: both are `repr(transparent)` over `u8`, which has no padding and no invalid bit patterns,
// so they can be copied to the device byte for byte and the all-zero pattern is a valid value.
unsafe impl DeviceRepr for E4m3 {}
// SAFETY: see above.
unsafe impl ValidAsZeroBits for E4m3 {}
// SAFETY: see above.
unsafe impl DeviceRepr for E8m0 {}
// SAFETY: see above.
unsafe impl ValidAsZeroBits for E8m0 {}

impl E4m3 {
    /// Largest finite magnitude.
    pub const MAX: f32 = 448.0;

    /// Exact value (0x7F / 0xFF are NaN).
    pub fn to_f32(self) -> f32 {
        let sign = if self.0 & 0x80 != 0 { -1.0f32 } else { 1.0 };
        let e = (self.0 >> 3) & 0xF;
        let m = (self.0 & 7) as f32;
        if e == 0xF && self.0 & 7 == 7 {
            return f32::NAN;
        }
        if e == 0 { sign * m * (2.0f32).powi(-9) } else { sign * (1.0 + m / 8.0) * (2.0f32).powi(e as i32 - 7) }
    }

    /// Round to nearest even with saturation to ±448 (also for ±inf); NaN becomes 0x7F. This is
    /// the CPU model of `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)`.
    pub fn from_f32_sat(x: f32) -> E4m3 {
        if x.is_nan() {
            return E4m3(0x7F);
        }
        let s: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
        let a = (x as f64).abs();
        if a >= 448.0 {
            return E4m3(s | 0x7E);
        }
        let code = if a < 2f64.powi(-6) {
            // Subnormals: multiples of 2^-9 (q = 8 is the smallest normal, encoded the same way).
            (a * 512.0).round_ties_even() as u8
        } else {
            let mut e = a.log2().floor() as i32;
            // Guard against log2 rounding at exact powers of two.
            if 2f64.powi(e) > a {
                e -= 1;
            } else if 2f64.powi(e + 1) <= a {
                e += 1;
            }
            let mut q = ((a / 2f64.powi(e) - 1.0) * 8.0).round_ties_even() as i32;
            if q == 8 {
                e += 1;
                q = 0;
            }
            (((e + 7) as u8) << 3) | q as u8
        };
        E4m3(s | code.min(0x7E))
    }
}

impl E8m0 {
    /// `2^(bits − 127)`; 0xFF is NaN; 0x00 is 2^-127 (an f32 subnormal).
    pub fn to_f32(self) -> f32 {
        match self.0 {
            0xFF => f32::NAN,
            0 => f32::from_bits(0x0040_0000),
            e => f32::from_bits((e as u32) << 23),
        }
    }
}

impl Dtype for E4m3 {
    const ID: DtypeId = DtypeId::E4m3;
}
impl Dtype for E8m0 {
    const ID: DtypeId = DtypeId::E8m0;
}

/// A value usable as a C++ template argument, formatted canonically (so that equal instantiations
/// have equal name expressions and therefore equal cache keys).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TemplateArg {
    /// A type, e.g. `__nv_bfloat16`.
    Type(String),
    /// `true` / `false`.
    Bool(bool),
    /// A signed integer, printed in decimal (`-3`).
    Int(i64),
    /// An unsigned integer, printed in decimal with a `u` suffix only when it exceeds `i64`.
    UInt(u64),
    /// An identifier or enumerator, e.g. `kiln::Act::Silu`.
    Ident(String),
}

impl TemplateArg {
    fn render(&self, out: &mut String) {
        match self {
            TemplateArg::Type(t) | TemplateArg::Ident(t) => out.push_str(t),
            TemplateArg::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            TemplateArg::Int(i) => {
                let _ = write!(out, "{i}");
            }
            TemplateArg::UInt(u) if *u > i64::MAX as u64 => {
                let _ = write!(out, "{u}ull");
            }
            TemplateArg::UInt(u) => {
                let _ = write!(out, "{u}");
            }
        }
    }
}

impl From<bool> for TemplateArg {
    fn from(b: bool) -> Self {
        TemplateArg::Bool(b)
    }
}
impl From<DtypeId> for TemplateArg {
    fn from(d: DtypeId) -> Self {
        TemplateArg::Type(d.cpp().to_string())
    }
}
macro_rules! int_arg {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for TemplateArg {
            fn from(i: $t) -> Self { TemplateArg::$v(i as _) }
        }
    )*};
}
int_arg!(i32 => Int, i64 => Int, u32 => UInt, u64 => UInt, usize => UInt);

/// The canonical name expression `name<a, b, c>` (or `name` with no arguments).
pub fn template_expr(name: &str, args: &[TemplateArg]) -> String {
    let mut s = String::with_capacity(name.len() + 16 * args.len());
    s.push_str(name);
    if !args.is_empty() {
        s.push('<');
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            a.render(&mut s);
        }
        s.push('>');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f64_rounding_is_correct_near_ties() {
        // 65.25 is a bf16 tie (65.0 | 65.5); anything above it must round up.
        let v = f64::from(-65.25002f32);
        assert_eq!(bf16_from_f64(v).to_f32(), -65.5);
        assert_eq!(bf16_from_f64(-65.25).to_f32(), -65.0); // exact tie: to even
        // Ties of f16 with a sticky bit far below: 1 + 2^-11 + 2^-40 must round up.
        assert_eq!(f16_from_f64(1.0 + 2f64.powi(-11) + 2f64.powi(-40)).to_f32(), 1.0 + 2f32.powi(-10));
        assert_eq!(f16_from_f64(1.0 + 2f64.powi(-11)).to_f32(), 1.0);
        assert_eq!(f16_from_f64(1.0 + 2f64.powi(-11) - 2f64.powi(-40)).to_f32(), 1.0);
        assert_eq!(bf16_from_f64(1e300).to_f32(), f32::INFINITY);
        assert_eq!(bf16_from_f64(-1e-300).to_bits(), 0x8000);
        assert!(bf16_from_f64(f64::NAN).is_nan());
        // Against the nearest of the two neighbours, on values around many ties.
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..20000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let lo = half::bf16::from_bits((x & 0x7f7e) as u16);
            let hi = half::bf16::from_bits(lo.to_bits() + 1);
            let (l, h) = (f64::from(lo.to_f32()), f64::from(hi.to_f32()));
            let t = (x >> 16) as f64 / 2f64.powi(48); // position in [0, 1)
            let v = l + (h - l) * (0.5 + (t - 0.5) * 2f64.powi(-((x >> 60) as i32 * 3)));
            let want = if v - l < h - v || (v - l == h - v && lo.to_bits().is_multiple_of(2)) { lo } else { hi };
            assert_eq!(bf16_from_f64(v), want, "{v:e}");
        }
    }

    #[test]
    fn cpp_spelling() {
        assert_eq!(<half::bf16 as Dtype>::ID.cpp(), "__nv_bfloat16");
        assert_eq!(<half::f16 as Dtype>::ID.cpp(), "__half");
        assert_eq!(<f32 as Dtype>::ID.cpp(), "float");
        assert_eq!(<E4m3 as Dtype>::ID.cpp(), "__nv_fp8_e4m3");
        assert_eq!(<i64 as Dtype>::ID.tag(), "i64");
        assert_eq!(DtypeId::E8m0.size(), 1);
    }

    #[test]
    fn e4m3_codec() {
        for b in 0u8..=255 {
            let v = E4m3(b).to_f32();
            if v.is_nan() {
                assert!(b & 0x7F == 0x7F);
                continue;
            }
            // Every finite code round-trips (±0 keep their sign).
            assert_eq!(E4m3::from_f32_sat(v), E4m3(b), "code {b:#x} = {v}");
        }
        assert_eq!(E4m3::from_f32_sat(448.0).to_f32(), 448.0);
        assert_eq!(E4m3::from_f32_sat(1e9).to_f32(), 448.0);
        assert_eq!(E4m3::from_f32_sat(f32::NEG_INFINITY).to_f32(), -448.0);
        // Ties go to even: 1.0625 lies halfway between 1.0 (m=0) and 1.125 (m=1).
        assert_eq!(E4m3::from_f32_sat(1.0625).to_f32(), 1.0);
        assert_eq!(E4m3::from_f32_sat(1.1875).to_f32(), 1.25);
        // Smallest subnormal is 2^-9; half of it rounds to zero (even).
        assert_eq!(E4m3::from_f32_sat(2f32.powi(-10)).to_f32(), 0.0);
        assert_eq!(E4m3::from_f32_sat(3.0 * 2f32.powi(-10)).to_f32(), 2f32.powi(-8));
        assert_eq!(E8m0(127).to_f32(), 1.0);
        assert_eq!(E8m0(0).to_f32(), 2f32.powi(-127));
        assert!(E8m0(255).to_f32().is_nan());
    }

    #[test]
    fn canonical_template_arguments() {
        let e = template_expr(
            "k",
            &[DtypeId::Bf16.into(), true.into(), 128u32.into(), (-3i32).into(), TemplateArg::Ident("kiln::Act::Silu".into())],
        );
        assert_eq!(e, "k<__nv_bfloat16, true, 128, -3, kiln::Act::Silu>");
        assert_eq!(template_expr("k", &[]), "k");
        assert_eq!(template_expr("k", &[u64::MAX.into()]), "k<18446744073709551615ull>");
    }
}
