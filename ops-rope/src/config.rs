//! The op's configuration types and the element-type traits.

use half::{bf16, f16};
use kiln_runtime::Dtype;

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
    impl Sealed for f32 {}
    impl Sealed for i32 {}
    impl Sealed for i64 {}
}

/// An activation element type the kernels read and write: `bf16` or `f16`.
pub trait Element: Dtype + sealed::Sealed {
    /// Exact widening.
    fn to_f32(self) -> f32;
    /// Round to nearest, ties to even (overflow gives ±inf), as the kernels store.
    fn from_f32(v: f32) -> Self;
    /// Round to nearest, ties to even, directly from f64.
    fn from_f64(v: f64) -> Self;
    /// The 16 raw bits.
    fn bits(self) -> u16;
}

impl Element for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn from_f64(v: f64) -> Self {
        kiln_runtime::bf16_from_f64(v)
    }
    fn bits(self) -> u16 {
        self.to_bits()
    }
}

impl Element for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn from_f64(v: f64) -> Self {
        kiln_runtime::f16_from_f64(v)
    }
    fn bits(self) -> u16 {
        self.to_bits()
    }
}

/// A norm-weight element type for activations of type `T`: `T` itself or `f32`.
pub trait NormWeight<T: Element>: Dtype + sealed::Sealed {
    /// Exact widening.
    fn weight_f32(self) -> f32;
}

impl NormWeight<bf16> for bf16 {
    fn weight_f32(self) -> f32 {
        self.to_f32()
    }
}
impl NormWeight<bf16> for f32 {
    fn weight_f32(self) -> f32 {
        self
    }
}
impl NormWeight<f16> for f16 {
    fn weight_f32(self) -> f32 {
        self.to_f32()
    }
}
impl NormWeight<f16> for f32 {
    fn weight_f32(self) -> f32 {
        self
    }
}

/// A token-position element type: `i32` or `i64`.
pub trait Position: Dtype + sealed::Sealed + Into<i64> {}
impl Position for i32 {}
impl Position for i64 {}

/// Which elements of a head form the rotated pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RopeStyle {
    /// GPT-NeoX / Llama ("rotate half"): element `d < rotary_dim/2` pairs with `d + rotary_dim/2`.
    Neox,
    /// GPT-J ("interleaved"): element `2p` pairs with `2p + 1`.
    Interleaved,
}

/// YaRN frequency blending (<https://arxiv.org/abs/2309.00071>), in the formulation of SGLang and
/// Hugging Face: with `f = base^(−2p/rotary_dim)` and
/// `ramp = clamp((p − low) / (high' − low), 0, 1)` (`high' = high + 0.001` when
/// `|low − high| ≤ 1e-6`), the pair's frequency is `(f / factor)·ramp + f·(1 − ramp)`; the
/// rotated outputs are multiplied by `attention_factor` (the unrotated part is not).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    /// Context extension factor (> 0).
    pub factor: f64,
    /// Pair index where interpolation starts to take over.
    pub low: f64,
    /// Pair index from which frequencies are fully interpolated (`f / factor`).
    pub high: f64,
    /// Scale of the rotated elements ("mscale").
    pub attention_factor: f64,
}

/// Rotary position embedding settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// Pairing of the rotated elements.
    pub style: RopeStyle,
    /// Frequency base θ (e.g. 10000, 1e6); finite and > 0.
    pub base: f64,
    /// Leading elements of each head that are rotated (partial rotary when < head_dim); even,
    /// and for [`RopeStyle::Neox`] a multiple of 16.
    pub rotary_dim: usize,
    /// YaRN blending; `None` is plain RoPE.
    pub yarn: Option<Yarn>,
}

impl Rope {
    /// NeoX-style RoPE over the first `rotary_dim` elements of each head.
    pub fn neox(base: f64, rotary_dim: usize) -> Rope {
        Rope { style: RopeStyle::Neox, base, rotary_dim, yarn: None }
    }

    /// Interleaved (GPT-J) RoPE over the first `rotary_dim` elements of each head.
    pub fn interleaved(base: f64, rotary_dim: usize) -> Rope {
        Rope { style: RopeStyle::Interleaved, base, rotary_dim, yarn: None }
    }

    /// The same with YaRN blending.
    pub fn with_yarn(self, yarn: Yarn) -> Rope {
        Rope { yarn: Some(yarn), ..self }
    }

    /// The per-pair angular frequencies `f_p`, `p < rotary_dim/2`, in f64 (YaRN-blended): the
    /// angle of pair `p` at position `pos` is `pos · f_p`. The kernels receive exactly these.
    pub fn inv_frequencies(&self) -> Vec<f64> {
        (0..self.rotary_dim / 2).map(|p| self.frequency(p)).collect()
    }

    pub(crate) fn frequency(&self, p: usize) -> f64 {
        let f = self.base.powf(-((2 * p) as f64) / self.rotary_dim as f64);
        match self.yarn {
            None => f,
            Some(y) => {
                let high = if (y.low - y.high).abs() <= 1e-6 { y.high + 0.001 } else { y.high };
                let ramp = ((p as f64 - y.low) / (high - y.low)).clamp(0.0, 1.0);
                let extrapolation = 1.0 - ramp;
                (f / y.factor) * (1.0 - extrapolation) + f * extrapolation
            }
        }
    }

    /// The factor applied to rotated elements (1 without YaRN), as the kernels use it (f32).
    pub fn attention_factor(&self) -> f32 {
        self.yarn.map_or(1.0, |y| y.attention_factor as f32)
    }
}

/// Head counts of a packed `[tokens, (nq + nk + nv)·head_dim]` q/k/v row: q heads first, then k,
/// then v.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub nq: usize,
    /// Key heads.
    pub nk: usize,
    /// Value heads (never touched).
    pub nv: usize,
    /// Elements per head: a multiple of 8 in 8..=256.
    pub head_dim: usize,
}

impl Heads {
    /// `(nq + nk + nv) · head_dim`, or `None` on overflow.
    pub fn width(&self) -> Option<usize> {
        self.nq.checked_add(self.nk)?.checked_add(self.nv)?.checked_mul(self.head_dim)
    }
}

/// Settings of [`crate::fused_qk_norm_rope`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QkNormRope {
    /// Head layout of the qkv rows.
    pub heads: Heads,
    /// RMSNorm epsilon (finite, > 0), added to the mean square in f32.
    pub eps: f32,
    /// The rotation.
    pub rope: Rope,
}

/// A row-major matrix view: `tokens` rows of `width` elements, consecutive rows `stride`
/// elements apart (`stride ≥ width`; the gap is never touched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    /// Rows (tokens).
    pub tokens: usize,
    /// Elements per row.
    pub width: usize,
    /// Elements from one row's start to the next.
    pub stride: usize,
}

impl Rows {
    /// Densely packed rows.
    pub fn contiguous(tokens: usize, width: usize) -> Rows {
        Rows { tokens, width, stride: width }
    }

    /// Rows `stride` elements apart.
    pub fn strided(tokens: usize, width: usize, stride: usize) -> Rows {
        Rows { tokens, width, stride }
    }

    /// Elements a buffer must hold: `(tokens − 1)·stride + width` (0 without rows), or `None` on
    /// overflow.
    pub fn span(&self) -> Option<usize> {
        match self.tokens {
            0 => Some(0),
            t => (t - 1).checked_mul(self.stride)?.checked_add(self.width),
        }
    }
}
