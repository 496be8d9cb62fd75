//! T2 tests of kiln-mxfp8's quantization and dequantization kernels: bit-exact against
//! `kiln_mxfp8::reference` on random data with outliers and a wide dynamic range, dense and grouped
//! (uneven experts, empty ones, gaps between experts), both scale layouts, strided and misaligned
//! views (the scalar kernels), the edge rules (zeros, subnormals, NaN, ±inf, ties, saturation,
//! scale boundaries), padding scale rows, clamped bad device metadata (nothing written out of
//! bounds), a PDL chain, the round-trip error bound, the issue's shapes and argument errors.
//!
//! Every output buffer is poisoned and compared whole against the reference applied to the same
//! poisoned buffer: elements the kernel must write are checked, the others must be untouched.

use half::{bf16, f16};
use kiln_mxfp8::reference::{self as rf, Dims};
use kiln_mxfp8::{
    Experts, Mxfp8Shape, QuantKernel, ScaleLayout, dequantize_mxfp8, dequantize_mxfp8_grouped, layout, quantize_mxfp8,
    quantize_mxfp8_grouped, quantize_mxfp8_grouped_with, quantize_mxfp8_into,
};
use kiln_runtime::cudarc::driver::CudaSlice;
use kiln_runtime::{E4m3, E8m0, Error};
use kiln_tests::data::{Rng, TestFloat, seed};
use kiln_tests::gpu::{download, filled, rt, upload};
use kiln_tests::{Need, trial};
use libtest_mimic::Trial;

const BLK: ScaleLayout = ScaleLayout::Blocked128x4;
const RM: ScaleLayout = ScaleLayout::RowMajor;
/// Poison of q: an E4M3 NaN (never produced from finite inputs).
const Q_POISON: E4m3 = E4m3(0x7F);
/// Poison of the scales: 0xFF (NaN), never produced (the largest scale byte is 247).
const S_POISON: E8m0 = E8m0(0xFF);

/// The 16-bit input types.
trait Input: TestFloat {
    /// Largest magnitude the random data may take.
    const MAX: f64;
    /// Range of the random per-block exponent.
    const EXP: (f64, f64);
}
impl Input for bf16 {
    const MAX: f64 = 1e38;
    const EXP: (f64, f64) = (-135.0, 100.0);
}
impl Input for f16 {
    const MAX: f64 = 60000.0;
    const EXP: (f64, f64) = (-12.0, 8.0);
}

/// A dequantized-output poison no E4M3 × 2^k value equals (more than 4 significant bits).
fn out_poison<T: TestFloat>() -> T {
    T::from_f64(-12345.678)
}

/// Normal data, one random power-of-two magnitude per 32-block, ~1% outliers (×30…×300).
fn random_data<T: Input>(rng: &mut Rng, n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    let mut mag = 1.0;
    for i in 0..n {
        if i % 32 == 0 {
            mag = rng.range(T::EXP.0, T::EXP.1).exp2();
        }
        let mut x = rng.normal() * mag;
        if rng.below(100) == 0 {
            x *= rng.range(30.0, 300.0);
        }
        if x == 0.0 {
            x = mag;
        }
        v.push(T::from_f64(x.clamp(-T::MAX, T::MAX)));
    }
    v
}

fn widen<T: TestFloat>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f64() as f32).collect()
}

fn q_eq(a: &E4m3, b: &E4m3) -> bool {
    a.0 == b.0 || (a.0 & 0x7F == 0x7F && b.0 & 0x7F == 0x7F)
}

/// All mismatches of `got` vs `want` summarised (count, first few with `at(i)` describing i).
fn compare<T: std::fmt::Debug>(
    what: &str,
    got: &[T],
    want: &[T],
    eq: impl Fn(&T, &T) -> bool,
    at: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    anyhow::ensure!(got.len() == want.len(), "{what}: length {} vs {}", got.len(), want.len());
    let bad: Vec<usize> = (0..got.len()).filter(|&i| !eq(&got[i], &want[i])).collect();
    if bad.is_empty() {
        return Ok(());
    }
    let first: Vec<String> = bad.iter().take(6).map(|&i| format!("[{i}] {}: got {:?} want {:?}", at(i), got[i], want[i])).collect();
    anyhow::bail!("{what}: {} of {} differ; {}", bad.len(), got.len(), first.join("; "))
}

fn need(rows: usize, stride: usize, k: usize) -> usize {
    if rows == 0 { 0 } else { (rows - 1) * stride + k }
}

/// Expert metadata on the host.
#[derive(Debug, Clone)]
struct Meta {
    offsets: Vec<i32>,
    tokens: Vec<i32>,
    scale_offsets: Vec<i32>,
}

impl Meta {
    /// Experts stored back to back after `gap` unused rows each, scale rows as SGLang's callers
    /// compute them plus `extra_scale_rows` unused ones; returns the metadata, the token rows
    /// (with `tail` unused rows at the end) and the scale rows.
    fn packed(tokens: &[i32], gap: usize, tail: usize, extra_scale_rows: usize, l: ScaleLayout) -> (Meta, usize, usize) {
        let mut at = 0usize;
        let offsets = tokens
            .iter()
            .map(|&m| {
                at += gap;
                let o = at;
                at += m.max(0) as usize;
                o as i32
            })
            .collect();
        let (scale_offsets, sr) = layout::blockscale_offsets(tokens, l).unwrap();
        let extra = l.padded_rows(extra_scale_rows);
        (Meta { offsets, tokens: tokens.to_vec(), scale_offsets }, at + tail, sr + extra)
    }
    fn host(&self) -> rf::Experts<'_> {
        rf::Experts { offsets: &self.offsets, tokens: &self.tokens, scale_offsets: &self.scale_offsets }
    }
}

/// One quantization case: buffers are views at element offsets `x_off` / `q_off` / `s_off` of
/// larger poisoned allocations (odd offsets force the scalar kernel); grouped cases run `kernel`.
#[derive(Debug, Clone)]
struct QCase {
    shape: Mxfp8Shape,
    layout: ScaleLayout,
    meta: Option<Meta>,
    scale_rows: usize,
    offs: (usize, usize, usize),
    kernel: QuantKernel,
}

impl QCase {
    fn dense(rows: usize, k: usize, layout: ScaleLayout) -> Self {
        let scale_rows = layout.padded_rows(rows);
        QCase { shape: Mxfp8Shape::contiguous(rows, k), layout, meta: None, scale_rows, offs: (0, 0, 0), kernel: QuantKernel::Auto }
    }
    fn grouped(tokens: &[i32], k: usize, layout: ScaleLayout, gap: usize) -> Self {
        let (meta, rows, scale_rows) = Meta::packed(tokens, gap, 3, 1, layout);
        QCase::of_meta(meta, rows, k, scale_rows, layout)
    }
    /// Contiguous `[rows, k]` views described by `meta`, `scale_rows` scale rows.
    fn of_meta(meta: Meta, rows: usize, k: usize, scale_rows: usize, layout: ScaleLayout) -> Self {
        QCase { shape: Mxfp8Shape::contiguous(rows, k), layout, meta: Some(meta), scale_rows, offs: (0, 0, 0), kernel: QuantKernel::Auto }
    }
    fn kernel(mut self, kernel: QuantKernel) -> Self {
        self.kernel = kernel;
        self
    }
    fn strided(mut self, x_stride: usize, q_stride: usize, offs: (usize, usize, usize)) -> Self {
        self.shape.x_stride = x_stride;
        self.shape.q_stride = q_stride;
        self.offs = offs;
        self
    }
    fn scale_len(&self) -> usize {
        self.scale_rows * (self.shape.k / 32)
    }
    fn dims(&self) -> Dims {
        let s = self.shape;
        Dims { rows: s.rows, k: s.k, x_stride: s.x_stride, q_stride: s.q_stride }
    }
    /// Describes element i of the full (guarded) q buffer.
    fn at_q(&self) -> impl Fn(usize) -> String {
        describe(self.offs.1, self.shape.q_stride)
    }
    /// Describes element i of the full (guarded) x / out buffer.
    fn at_x(&self) -> impl Fn(usize) -> String {
        describe(self.offs.0, self.shape.x_stride)
    }
}

fn describe(off: usize, stride: usize) -> impl Fn(usize) -> String {
    move |i: usize| if i < off { format!("guard {i}") } else { format!("row {} col {}", (i - off) / stride, (i - off) % stride) }
}

/// Runs the quantizer (dense `_into` or grouped) on `x` and checks q and scales bit for bit.
fn check_quant<T: Input>(c: &QCase, x_host: &[T], seed: u64) -> anyhow::Result<(Vec<E4m3>, Vec<E8m0>)> {
    let rt = rt()?;
    let s = c.shape;
    let (xn, qn, sn) = (need(s.rows, s.x_stride, s.k), need(s.rows, s.q_stride, s.k), c.scale_len());
    let (xo, qo, so) = c.offs;
    anyhow::ensure!(x_host.len() >= xo + xn);
    let x = upload(&rt, x_host)?;
    let mut q = filled(&rt, qo + qn + 29, Q_POISON)?;
    let mut sc = filled(&rt, so + sn + 13, S_POISON)?;
    {
        let xv = x.slice(xo..xo + xn);
        let mut qv = q.slice_mut(qo..qo + qn);
        let mut sv = sc.slice_mut(so..so + sn);
        match &c.meta {
            None => quantize_mxfp8_into(&rt, &xv, &mut qv, &mut sv, s, c.layout)?,
            Some(m) => {
                let (o, t, b) = (upload(&rt, &m.offsets)?, upload(&rt, &m.tokens)?, upload(&rt, &m.scale_offsets)?);
                let ex = Experts { expert_offsets: &o, tokens_per_expert: &t, blockscale_offsets: &b };
                quantize_mxfp8_grouped_with(&rt, &xv, ex, &mut qv, &mut sv, s, c.layout, c.kernel)?;
            }
        }
    }
    let (got_q, got_s) = (download(&rt, &q)?, download(&rt, &sc)?);
    let mut want_q = vec![Q_POISON; got_q.len()];
    let mut want_s = vec![S_POISON; got_s.len()];
    let xf = widen(&x_host[xo..xo + xn]);
    rf::quantize_into(
        &xf,
        c.dims(),
        c.meta.as_ref().map(Meta::host),
        c.layout,
        &mut want_q[qo..qo + qn],
        &mut want_s[so..so + sn],
        c.scale_rows,
    );
    let ctx = format!("seed {seed}, {c:?}");
    compare(&format!("q ({ctx})"), &got_q, &want_q, q_eq, c.at_q())?;
    compare(&format!("scales ({ctx})"), &got_s, &want_s, |a, b| a == b, |i| format!("byte {}", i as i64 - so as i64))?;
    Ok((got_q[qo..qo + qn].to_vec(), got_s[so..so + sn].to_vec()))
}

fn quant_case<T: Input>(c: QCase) -> anyhow::Result<()> {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let n = c.offs.0 + need(c.shape.rows, c.shape.x_stride, c.shape.k) + 7;
    let x = random_data::<T>(&mut rng, n);
    check_quant(&c, &x, seed).map(|_| ())
}

/// The allocating form: contiguous outputs, every element written (checked against the
/// reference; allocation garbage would differ).
fn quant_alloc<T: Input>(rows: usize, k: usize, x_stride: usize, l: ScaleLayout) -> anyhow::Result<()> {
    let rt = rt()?;
    let seed = seed();
    let x_host = random_data::<T>(&mut Rng::new(seed), need(rows, x_stride, k));
    let x = upload(&rt, &x_host)?;
    let (q, s) = quantize_mxfp8(&rt, &x, rows, k, x_stride, l)?;
    anyhow::ensure!(q.len() == rows * k && s.len() == l.scale_bytes(rows, k), "output sizes {} {}", q.len(), s.len());
    let xf: Vec<f32> = (0..rows).flat_map(|r| widen(&x_host[r * x_stride..r * x_stride + k])).collect();
    let (wq, ws) = rf::quantize(&xf, rows, k, l);
    compare(&format!("q (seed {seed})"), &download(&rt, &q)?, &wq, q_eq, |i| format!("row {} col {}", i / k, i % k))?;
    compare(&format!("scales (seed {seed})"), &download(&rt, &s)?, &ws, |a, b| a == b, |i| format!("byte {i}"))
}

/// One dequantization case: random q codes (NaN codes included) and scale bytes (0 and 0xFF
/// included), compared bit for bit (NaN as NaN) with the reference's f32 product rounded to T.
fn dequant_case<T: TestFloat>(c: QCase) -> anyhow::Result<()> {
    let rt = rt()?;
    let seed = seed();
    let mut rng = Rng::new(seed);
    let s = c.shape;
    let (xn, qn, sn) = (need(s.rows, s.x_stride, s.k), need(s.rows, s.q_stride, s.k), c.scale_len());
    let (xo, qo, so) = c.offs;
    let q_host: Vec<E4m3> = (0..qo + qn).map(|_| E4m3(rng.below(256) as u8)).collect();
    // Mostly moderate scales so that the values are not all 0/inf in 16-bit outputs.
    let s_host: Vec<E8m0> =
        (0..so + sn).map(|_| E8m0(if rng.below(8) == 0 { rng.below(256) as u8 } else { (rng.below(40) + 107) as u8 })).collect();
    let (q, sc) = (upload(&rt, &q_host)?, upload(&rt, &s_host)?);
    let mut out = filled(&rt, xo + xn + 11, out_poison::<T>())?;
    {
        let (qv, sv) = (q.slice(qo..qo + qn), sc.slice(so..so + sn));
        let mut ov = out.slice_mut(xo..xo + xn);
        match &c.meta {
            None => dequantize_mxfp8(&rt, &qv, &sv, &mut ov, s, c.layout)?,
            Some(m) => {
                let (o, t, b) = (upload(&rt, &m.offsets)?, upload(&rt, &m.tokens)?, upload(&rt, &m.scale_offsets)?);
                let ex = Experts { expert_offsets: &o, tokens_per_expert: &t, blockscale_offsets: &b };
                dequantize_mxfp8_grouped(&rt, &qv, &sv, ex, &mut ov, s, c.layout)?;
            }
        }
    }
    let got = download(&rt, &out)?;
    // The reference writes f32 values over a marker (a NaN payload it never produces), so the
    // elements it leaves alone are known.
    const MARK: u32 = 0x7fbf_0001;
    let mut want_f = vec![f32::from_bits(MARK); xn];
    rf::dequantize_into(&q_host[qo..], &s_host[so..], c.dims(), c.meta.as_ref().map(Meta::host), c.layout, c.scale_rows, &mut want_f);
    let mut want = vec![out_poison::<T>(); got.len()];
    for (w, f) in want[xo..].iter_mut().zip(&want_f) {
        if f.to_bits() != MARK {
            *w = T::from_f64(*f as f64);
        }
    }
    let eq = |a: &T, b: &T| a.bits() == b.bits() || (a.to_f64().is_nan() && b.to_f64().is_nan());
    compare(&format!("out (seed {seed}, {c:?})"), &got, &want, eq, c.at_x())
}

/// GPU quantize → GPU dequantize (f32): |y − x| ≤ max(|x|·2^-4, 2^(e−10)) for every element.
fn round_trip<T: Input>(tokens: &[i32], k: usize, l: ScaleLayout) -> anyhow::Result<()> {
    let rt = rt()?;
    let seed = seed();
    let c = QCase::grouped(tokens, k, l, 1);
    let n = c.shape.rows * k;
    let x_host = random_data::<T>(&mut Rng::new(seed), n);
    let (q, s) = check_quant(&c, &x_host, seed)?;
    let m = c.meta.as_ref().expect("grouped");
    let (o, t, b) = (upload(&rt, &m.offsets)?, upload(&rt, &m.tokens)?, upload(&rt, &m.scale_offsets)?);
    let (qd, sd) = (upload(&rt, &q)?, upload(&rt, &s)?);
    let mut y = filled(&rt, n, f32::NAN)?;
    let ex = Experts { expert_offsets: &o, tokens_per_expert: &t, blockscale_offsets: &b };
    dequantize_mxfp8_grouped(&rt, &qd, &sd, ex, &mut y, c.shape, l)?;
    let y = download(&rt, &y)?;
    let nkb = k / 32;
    for (g, e) in rf::clamp_experts(Some(m.host()), c.shape.rows, c.scale_rows, l).iter().enumerate() {
        for r in 0..e.rows {
            for col in 0..k {
                let i = (e.row0 + r) * k + col;
                let sb = s[l.offset(e.srow0 + r, col / 32, nkb)].0 as i32 - 127;
                let (xv, yv) = (x_host[i].to_f64(), y[i] as f64);
                let bound = (xv.abs() * 2f64.powi(-4)).max(2f64.powi(sb - 10));
                anyhow::ensure!((xv - yv).abs() <= bound, "seed {seed}: expert {g} row {r} col {col}: {xv} → {yv} (scale 2^{sb})");
            }
        }
    }
    Ok(())
}

/// Hand-made blocks for every edge rule, as rows of k = 128 (4 blocks per row).
fn edge_blocks<T: Input>() -> Vec<[f64; 32]> {
    let p = |e: i32| 2f64.powi(e);
    let is_bf16 = T::MAX > 1e5;
    let ramp = |scale: f64| -> [f64; 32] { std::array::from_fn(|i| (i as f64 - 15.5) * scale) };
    let mut v: Vec<[f64; 32]> = Vec::new();
    v.push([0.0; 32]);
    let mut z = [0.0; 32];
    z[5] = -0.0;
    v.push(z);
    // Tiny amax: subnormal inputs (scale byte 0 for bf16; f16 subnormals are normal f32s).
    let mut t = [0.0; 32];
    let tiny = if is_bf16 { -133 } else { -24 };
    for (i, x) in t.iter_mut().enumerate() {
        *x = p(tiny + (i % 7) as i32) * if i % 2 == 0 { 1.0 } else { -1.0 };
    }
    v.push(t);
    // NaN, ±inf in otherwise normal blocks; blocks of only NaN / only inf.
    let mut b = ramp(0.25);
    b[0] = f64::NAN;
    b[31] = f64::NAN;
    v.push(b);
    let mut b = ramp(0.25);
    b[3] = f64::INFINITY;
    b[9] = f64::NEG_INFINITY;
    v.push(b);
    v.push([f64::NAN; 32]);
    v.push(std::array::from_fn(|i| if i % 2 == 0 { f64::INFINITY } else { f64::NEG_INFINITY }));
    let mut b = [f64::NAN; 32];
    b[7] = 1.5;
    b[8] = f64::INFINITY;
    v.push(b);
    // amax exactly 448·2^k (no saturation at 448), ties around it.
    let mut b = [0.0; 32];
    let ties = [448.0, 1.0625, 1.1875, -1.0625, p(-10), 3.0 * p(-10), -p(-12), 240.0, 232.0, 248.0, 13.0, 0.5];
    b[..ties.len()].copy_from_slice(&ties);
    v.push(b);
    let mut b2 = b;
    b2.iter_mut().for_each(|x| *x *= p(-6));
    v.push(b2);
    // amax / 448 just above a power of two, and a power-of-two amax.
    let mut b = ramp(1.0);
    b[0] = 450.0;
    b[1] = 448.0;
    v.push(b);
    let mut b = ramp(1.0 / 64.0);
    b[20] = -1.0;
    v.push(b);
    let mut b = ramp(1.0 / 64.0);
    b[20] = 1.7578125;
    v.push(b);
    // Saturation at the format's top: f16 65504, bf16's largest values (e = 120).
    let mut b = ramp(100.0);
    b[2] = if is_bf16 { 3.3895313892515355e38 } else { 65504.0 };
    b[3] = -b[2];
    v.push(b);
    if is_bf16 {
        let mut b = ramp(p(-126));
        b[0] = 1.75 * p(-119); // the smallest amax that still needs no clamp
        v.push(b);
        let mut b = ramp(p(-126));
        b[0] = 1.7578125 * p(-119);
        v.push(b);
    }
    while !v.len().is_multiple_of(4) {
        v.push(ramp(3.0));
    }
    v
}

fn edges<T: Input>(l: ScaleLayout) -> anyhow::Result<()> {
    let blocks = edge_blocks::<T>();
    let (rows, k) = (blocks.len() / 4, 128);
    let x: Vec<T> = (0..rows * k).map(|i| T::from_f64(blocks[(i / 128) * 4 + (i % 128) / 32][i % 32])).collect();
    let c = QCase::dense(rows, k, l);
    // q poison that is not a NaN code here, since NaN inputs legitimately give NaN codes.
    let (q, s) = {
        let rt = rt()?;
        let xd = upload(&rt, &x)?;
        let mut q = filled(&rt, rows * k, E4m3(0x55))?;
        let mut s = filled(&rt, l.scale_bytes(rows, k), S_POISON)?;
        quantize_mxfp8_into(&rt, &xd, &mut q, &mut s, c.shape, l)?;
        (download(&rt, &q)?, download(&rt, &s)?)
    };
    let (wq, ws) = rf::quantize(&widen(&x), rows, k, l);
    compare("edge q", &q, &wq, q_eq, |i| format!("block {} element {}", i / 32, i % 32))?;
    compare("edge scales", &s, &ws, |a, b| a == b, |i| format!("byte {i}"))?;
    // The rules, stated directly on the GPU's output.
    let nkb = k / 32;
    let scale = |b: usize| s[l.offset(b / 4, b % 4, nkb)];
    anyhow::ensure!(scale(0) == E8m0(0) && scale(1) == E8m0(0), "all-zero blocks get scale byte 0");
    anyhow::ensure!(q[..64].iter().enumerate().all(|(i, v)| v.0 == if i == 37 { 0x80 } else { 0 }), "zeros stay (signed) zeros");
    for (b, blk) in blocks.iter().enumerate() {
        for (i, &xv) in blk.iter().enumerate() {
            let code = q[b * 32 + i].0;
            let xt = T::from_f64(xv).to_f64();
            if xt.is_nan() {
                anyhow::ensure!(code & 0x7F == 0x7F, "block {b}[{i}]: NaN → {code:#x}");
            } else if xt.is_infinite() {
                anyhow::ensure!(code == if xt > 0.0 { 0x7E } else { 0xFE }, "block {b}[{i}]: {xt} → {code:#x}");
            } else {
                anyhow::ensure!(code & 0x7F != 0x7F, "block {b}[{i}]: finite {xt} → NaN");
            }
        }
        // Replacing the non-finite elements by zeros changes neither the scale nor the others.
        let clean: Vec<f32> = blk.iter().map(|&v| T::from_f64(v).to_f64() as f32).map(|v| if v.is_finite() { v } else { 0.0 }).collect();
        let mut cq = [E4m3(0); 32];
        let cs = rf::quantize_block(&clean, &mut cq);
        anyhow::ensure!(scale(b) == cs, "block {b}: scale {:?} vs {:?} without the non-finite elements", scale(b), cs);
        for i in (0..32).filter(|&i| T::from_f64(blk[i]).to_f64().is_finite()) {
            anyhow::ensure!(q[b * 32 + i] == cq[i], "block {b}[{i}] changed by the block's NaN/inf");
        }
    }
    // Dequantize the edge tensor on the GPU (f32 and T) and compare with the reference.
    let rt = rt()?;
    let (qd, sd) = (upload(&rt, &q)?, upload(&rt, &s)?);
    let want = rf::dequantize(&q, &s, rows, k, l);
    let mut y = filled(&rt, rows * k, out_poison::<f32>())?;
    dequantize_mxfp8(&rt, &qd, &sd, &mut y, c.shape, l)?;
    let y = download(&rt, &y)?;
    let same = |a: &f32, b: &f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    compare("edge dequantized (f32)", &y, &want, same, |i| format!("block {} element {}", i / 32, i % 32))?;
    let mut yt = filled(&rt, rows * k, out_poison::<T>())?;
    dequantize_mxfp8(&rt, &qd, &sd, &mut yt, c.shape, l)?;
    let want_t: Vec<T> = want.iter().map(|&v| T::from_f64(v as f64)).collect();
    let same_t = |a: &T, b: &T| a.bits() == b.bits() || (a.to_f64().is_nan() && b.to_f64().is_nan());
    compare("edge dequantized (T)", &download(&rt, &yt)?, &want_t, same_t, |i| format!("element {i}"))
}

/// Bad device metadata: every expert is clamped as documented, nothing lands outside the views
/// (guards on both sides of q and of the scales stay poisoned).
fn bad_metadata(l: ScaleLayout, kernel: QuantKernel) -> anyhow::Result<()> {
    let (rows, k, scale_rows) = (400usize, 256usize, 512usize);
    let blocked = l == BLK;
    // (offset, tokens, scale offset): valid; clamped to the token rows; negative offset; negative
    // count; i32::MAX tokens clamped to the scale rows; a scale offset not a multiple of 128
    // (skipped when blocked, valid row-major); negative scale offset; scale offset at the end;
    // valid; scale offset far past the end; offset i32::MAX. The clamped experts do not overlap.
    let e: [(i32, i32, i32); 11] = [
        (0, 9, 0),
        (390, 50, 128),
        (-5, 3, 0),
        (10, -7, 0),
        (20, i32::MAX, 384),
        (150, 5, 64),
        (160, 5, -128),
        (170, 5, 512),
        (200, 90, 256),
        (300, 5, 2_000_000_000),
        (i32::MAX, 5, 0),
    ];
    let meta = Meta {
        offsets: e.iter().map(|t| t.0).collect(),
        tokens: e.iter().map(|t| t.1).collect(),
        scale_offsets: e.iter().map(|t| t.2).collect(),
    };
    let clamped = rf::clamp_experts(Some(meta.host()), rows, scale_rows, l);
    let got: Vec<usize> = clamped.iter().map(|c| c.rows).collect();
    let want = [9, 10, 0, 0, 128, if blocked { 0 } else { 5 }, 0, 0, 90, 0, 0];
    anyhow::ensure!(got == want, "clamped rows {got:?}, expected {want:?}");
    // Guards before and after the q and scale views.
    let c = QCase { offs: (0, 64, 512), ..QCase::of_meta(meta, rows, k, scale_rows, l).kernel(kernel) };
    let seed = seed();
    let x = random_data::<bf16>(&mut Rng::new(seed), rows * k);
    check_quant(&c, &x, seed)?;
    if kernel != QuantKernel::Auto {
        return Ok(());
    }
    dequant_case::<bf16>(c)
}

/// Experts listed in any order (nothing may assume the metadata ascends): `tokens` stored back to
/// back after a gap row each, then listed in the order `order` gives.
fn permuted(tokens: &[i32], order: &[usize], k: usize, l: ScaleLayout, kernel: QuantKernel) -> anyhow::Result<()> {
    let (meta, rows, scale_rows) = Meta::packed(tokens, 1, 3, 1, l);
    let pick = |v: &[i32]| order.iter().map(|&g| v[g]).collect::<Vec<i32>>();
    let meta = Meta { offsets: pick(&meta.offsets), tokens: pick(&meta.tokens), scale_offsets: pick(&meta.scale_offsets) };
    quant_case::<bf16>(QCase::of_meta(meta, rows, k, scale_rows, l).kernel(kernel))
}

/// Experts covering only the first rows of a much taller x (a buffer sized for the worst case):
/// rows past the last expert are neither read into results nor written.
fn tall_x(l: ScaleLayout, kernel: QuantKernel) -> anyhow::Result<()> {
    let (meta, _, scale_rows) = Meta::packed(&[40, 0, 61], 0, 0, 0, l);
    quant_case::<bf16>(QCase::of_meta(meta, 3000, 256, scale_rows, l).kernel(kernel))
}

/// quantize → dequantize → quantize → dequantize, each PDL launch consuming its predecessor's
/// output (and the last one overwriting the buffer its predecessor reads).
fn pdl_chain(l: ScaleLayout, grouped: bool) -> anyhow::Result<()> {
    let rt = rt()?;
    anyhow::ensure!(rt.pdl_enabled(), "PDL must be enabled on cc >= 9.0 (KILN_PDL unset)");
    let seed = seed();
    let mut rng = Rng::new(seed);
    let k = 2048;
    let c = if grouped { QCase::grouped(&[700, 0, 1, 1500, 33, 900], k, l, 0) } else { QCase::dense(4096, k, l) };
    let (rows, sn) = (c.shape.rows, c.scale_len());
    let meta = c.meta.clone().unwrap_or(Meta { offsets: vec![0], tokens: vec![rows as i32], scale_offsets: vec![0] });
    let (o, t, b) = (upload(&rt, &meta.offsets)?, upload(&rt, &meta.tokens)?, upload(&rt, &meta.scale_offsets)?);
    let ex = Experts { expert_offsets: &o, tokens_per_expert: &t, blockscale_offsets: &b };
    for round in 0..3 {
        let x_host = random_data::<bf16>(&mut rng, rows * k);
        let x = upload(&rt, &x_host)?;
        let (mut q1, mut q2) = (filled(&rt, rows * k, Q_POISON)?, filled(&rt, rows * k, Q_POISON)?);
        let (mut s1, mut s2) = (filled(&rt, sn, S_POISON)?, filled(&rt, sn, S_POISON)?);
        let mut y: CudaSlice<bf16> = filled(&rt, rows * k, out_poison::<bf16>())?;
        rt.stream().synchronize()?;
        if grouped {
            quantize_mxfp8_grouped(&rt, &x, ex, &mut q1, &mut s1, c.shape, l)?;
            dequantize_mxfp8_grouped(&rt, &q1, &s1, ex, &mut y, c.shape, l)?;
            quantize_mxfp8_grouped(&rt, &y, ex, &mut q2, &mut s2, c.shape, l)?;
            dequantize_mxfp8_grouped(&rt, &q2, &s2, ex, &mut y, c.shape, l)?;
        } else {
            quantize_mxfp8_into(&rt, &x, &mut q1, &mut s1, c.shape, l)?;
            dequantize_mxfp8(&rt, &q1, &s1, &mut y, c.shape, l)?;
            quantize_mxfp8_into(&rt, &y, &mut q2, &mut s2, c.shape, l)?;
            dequantize_mxfp8(&rt, &q2, &s2, &mut y, c.shape, l)?;
        }
        let (g1, h1, g2, h2, gy) = (download(&rt, &q1)?, download(&rt, &s1)?, download(&rt, &q2)?, download(&rt, &s2)?, download(&rt, &y)?);
        let d = c.dims();
        let (mut w1, mut v1) = (vec![Q_POISON; rows * k], vec![S_POISON; sn]);
        rf::quantize_into(&widen(&x_host), d, Some(meta.host()), l, &mut w1, &mut v1, c.scale_rows);
        let mut y1 = vec![out_poison::<bf16>().to_f64() as f32; rows * k];
        rf::dequantize_into(&w1, &v1, d, Some(meta.host()), l, c.scale_rows, &mut y1);
        let y1: Vec<f32> = y1.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let (mut w2, mut v2) = (vec![Q_POISON; rows * k], vec![S_POISON; sn]);
        rf::quantize_into(&y1, d, Some(meta.host()), l, &mut w2, &mut v2, c.scale_rows);
        let mut y2 = y1.clone();
        rf::dequantize_into(&w2, &v2, d, Some(meta.host()), l, c.scale_rows, &mut y2);
        let y2: Vec<bf16> = y2.iter().map(|&v| bf16::from_f32(v)).collect();
        let at = |i: usize| format!("row {} col {}", i / k, i % k);
        let ctx = format!("seed {seed}, round {round}");
        compare(&format!("q1 ({ctx})"), &g1, &w1, q_eq, at)?;
        compare(&format!("s1 ({ctx})"), &h1, &v1, |a, b| a == b, |i| format!("byte {i}"))?;
        compare(&format!("q2 = Q(D(q1)) ({ctx})"), &g2, &w2, q_eq, at)?;
        compare(&format!("s2 ({ctx})"), &h2, &v2, |a, b| a == b, |i| format!("byte {i}"))?;
        compare(&format!("y = D(q2) ({ctx})"), &gy, &y2, |a, b| a.to_bits() == b.to_bits(), at)?;
    }
    Ok(())
}

fn expect_invalid(r: kiln_runtime::Result<()>, needle: &str) -> anyhow::Result<()> {
    match r {
        Err(Error::InvalidArgument { reason, .. }) if reason.contains(needle) => Ok(()),
        other => anyhow::bail!("expected InvalidArgument containing {needle:?}, got {other:?}"),
    }
}

/// Argument errors name their values; empty work succeeds and writes nothing.
fn errors_and_empty() -> anyhow::Result<()> {
    let rt = rt()?;
    let x = filled(&rt, 4 * 256, bf16::from_f32(1.0))?;
    let xf = filled(&rt, 4 * 256, 1.0f32)?;
    let mut q = filled(&rt, 4 * 256, Q_POISON)?;
    let mut s = filled(&rt, 1024, S_POISON)?;
    let sh = Mxfp8Shape::contiguous(4, 256);
    expect_invalid(quantize_mxfp8_into(&rt, &x, &mut q, &mut s, Mxfp8Shape::contiguous(4, 96), BLK), "k=96 is not a multiple of 128")?;
    expect_invalid(quantize_mxfp8_into(&rt, &x, &mut q, &mut s, Mxfp8Shape::contiguous(4, 250), RM), "k=250 is not a multiple of 32")?;
    expect_invalid(quantize_mxfp8_into(&rt, &xf, &mut q, &mut s, sh, BLK), "unsupported dtype f32")?;
    expect_invalid(
        quantize_mxfp8_into(&rt, &x, &mut q, &mut s, Mxfp8Shape::contiguous(5, 256), RM),
        "x.len()=1024 < (rows-1)*x_stride+k=1280",
    )?;
    expect_invalid(quantize_mxfp8_into(&rt, &x, &mut q.slice_mut(0..1000), &mut s, sh, RM), "q.len()=1000")?;
    expect_invalid(quantize_mxfp8_into(&rt, &x, &mut q, &mut s.slice_mut(0..100), sh, BLK), "scales.len()=100 < 1024")?;
    let (m2, m3) = (upload(&rt, &[0i32, 2])?, upload(&rt, &[0i32, 2, 3])?);
    let bad = Experts { expert_offsets: &m2, tokens_per_expert: &m3, blockscale_offsets: &m2 };
    expect_invalid(quantize_mxfp8_grouped(&rt, &x, bad, &mut q, &mut s, sh, BLK), "tokens_per_expert.len()=3")?;
    let ok = Experts { expert_offsets: &m2, tokens_per_expert: &m2, blockscale_offsets: &m2 };
    expect_invalid(
        quantize_mxfp8_grouped(&rt, &x, ok, &mut q, &mut s.slice_mut(0..1000), sh, BLK),
        "scales.len()=1000 is not a whole number",
    )?;
    // A TMA kernel named for an x view that is not 16-byte aligned.
    let (zero, two) = (upload(&rt, &[0i32])?, upload(&rt, &[2i32])?);
    let ex1 = Experts { expert_offsets: &zero, tokens_per_expert: &two, blockscale_offsets: &zero };
    expect_invalid(
        quantize_mxfp8_grouped_with(
            &rt,
            &x.slice(1..3 * 256 + 1),
            ex1,
            &mut q,
            &mut s,
            Mxfp8Shape::contiguous(3, 256),
            BLK,
            QuantKernel::Tma4,
        ),
        "kernel tma4 needs",
    )?;
    let mut y = filled(&rt, 4 * 256, 0.0f32)?;
    expect_invalid(dequantize_mxfp8(&rt, &q, &s, &mut y.slice_mut(0..1000), sh, RM), "out.len()=1000")?;
    let mut yi = filled(&rt, 4 * 256, 0i32)?;
    expect_invalid(dequantize_mxfp8(&rt, &q, &s, &mut yi, sh, RM), "unsupported dtype i32")?;
    // Empty work: no launch, nothing written.
    quantize_mxfp8_into(&rt, &x, &mut q, &mut s, Mxfp8Shape::contiguous(0, 256), BLK)?;
    let (qe, se) = quantize_mxfp8(&rt, &x, 0, 256, 256, BLK)?;
    anyhow::ensure!(qe.is_empty() && se.is_empty());
    let none = upload(&rt, &[0i32; 0])?;
    let empty = Experts { expert_offsets: &none, tokens_per_expert: &none, blockscale_offsets: &none };
    quantize_mxfp8_grouped(&rt, &x, empty, &mut q, &mut s, sh, BLK)?;
    // Experts that all have zero tokens: the kernel runs and writes nothing.
    let zeros = upload(&rt, &[0i32; 5])?;
    let idle = Experts { expert_offsets: &zeros, tokens_per_expert: &zeros, blockscale_offsets: &zeros };
    quantize_mxfp8_grouped(&rt, &x, idle, &mut q, &mut s, sh, BLK)?;
    dequantize_mxfp8_grouped(&rt, &q, &s, idle, &mut y, sh, BLK)?;
    anyhow::ensure!(download(&rt, &q)?.iter().all(|v| *v == Q_POISON), "q written by empty work");
    anyhow::ensure!(download(&rt, &s)?.iter().all(|v| *v == S_POISON), "scales written by empty work");
    anyhow::ensure!(download(&rt, &y)?.iter().all(|v| *v == 0.0), "out written by empty work");
    Ok(())
}

/// Uneven expert sizes of a grouped call: `experts` counts summing to `rows`, about a quarter of
/// the experts empty, the rest random.
fn uneven_split(rng: &mut Rng, rows: usize, experts: usize) -> Vec<i32> {
    let w: Vec<f64> = (0..experts).map(|_| if rng.below(4) == 0 { 0.0 } else { rng.range(0.2, 3.0) }).collect();
    let sum: f64 = w.iter().sum();
    let mut t: Vec<i32> = w.iter().map(|x| (x / sum * rows as f64).floor() as i32).collect();
    let left = rows as i32 - t.iter().sum::<i32>();
    let last = t.iter().rposition(|&m| m > 0).unwrap_or(0);
    t[last] += left;
    t
}

fn issue_shape(rows: usize, k: usize, experts: usize) -> anyhow::Result<()> {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let tokens = uneven_split(&mut rng, rows, experts);
    let c = QCase::grouped(&tokens, k, BLK, 0);
    let x = random_data::<bf16>(&mut rng, c.shape.rows * k);
    check_quant(&c, &x, seed).map(|_| ())
}

fn add<T: Input>(v: &mut Vec<Trial>, tag: &str) {
    for l in [BLK, RM] {
        let lt = l.tag();
        let k3 = if l == BLK { 384 } else { 96 };
        let dense = [(1usize, 128usize), (7, 256), (129, k3), (300, 7168), (64, if l == BLK { 2048 } else { 2080 })];
        for (rows, k) in dense {
            v.push(trial(format!("t2::mxfp8::quantize::{tag}::{lt}::dense_{rows}x{k}"), Need::Gpu, move || {
                quant_case::<T>(QCase::dense(rows, k, l))
            }));
        }
        v.push(trial(format!("t2::mxfp8::quantize::{tag}::{lt}::alloc"), Need::Gpu, move || quant_alloc::<T>(130, 256, 264, l)));
        // Aligned strides (vector kernel) and odd strides / offsets (scalar kernel).
        v.push(trial(format!("t2::mxfp8::quantize::{tag}::{lt}::strided_vec"), Need::Gpu, move || {
            quant_case::<T>(QCase::dense(77, 256, l).strided(256 + 24, 256 + 40, (8, 16, 3)))
        }));
        v.push(trial(format!("t2::mxfp8::quantize::{tag}::{lt}::strided_scalar"), Need::Gpu, move || {
            quant_case::<T>(QCase::dense(77, 256, l).strided(256 + 3, 256 + 5, (1, 3, 1)))
        }));
        let tokens = [0, 1, 7, 129, 0, 300, 64, 128, 2, 0];
        v.push(trial(format!("t2::mxfp8::grouped::{tag}::{lt}::uneven"), Need::Gpu, move || {
            quant_case::<T>(QCase::grouped(&tokens, 512, l, 2))
        }));
        v.push(trial(format!("t2::mxfp8::grouped::{tag}::{lt}::uneven_scalar"), Need::Gpu, move || {
            quant_case::<T>(QCase::grouped(&tokens, 512, l, 2).strided(512 + 1, 512 + 7, (3, 5, 1)))
        }));
        v.push(trial(format!("t2::mxfp8::grouped::{tag}::{lt}::many_experts"), Need::Gpu, move || {
            // 1024 experts (4 per thread in the table build), most tiny, a gap row before each.
            let tokens: Vec<i32> = (0..1024).map(|g| [0, 1, 3, 0, 17, 2, 0, 130][g % 8]).collect();
            quant_case::<T>(QCase::grouped(&tokens, 256, l, 1))
        }));
        // Every kernel on the same uneven experts (Auto picks by size; these force each one).
        for kernel in [QuantKernel::Registers, QuantKernel::Tma2, QuantKernel::Tma4] {
            v.push(trial(format!("t2::mxfp8::kernel::{tag}::{lt}::{kernel:?}"), Need::Gpu, move || {
                quant_case::<T>(QCase::grouped(&tokens, 768, l, 2).kernel(kernel))
            }));
        }
        v.push(trial(format!("t2::mxfp8::round_trip::{tag}::{lt}"), Need::Gpu, move || round_trip::<T>(&[5, 0, 200, 77], 1024, l)));
        v.push(trial(format!("t2::mxfp8::edges::{tag}::{lt}"), Need::Gpu, move || edges::<T>(l)));
    }
}

fn add_dequant<T: TestFloat>(v: &mut Vec<Trial>, tag: &str) {
    for l in [BLK, RM] {
        let lt = l.tag();
        let k = if l == BLK { 384 } else { 160 };
        v.push(trial(format!("t2::mxfp8::dequantize::{tag}::{lt}::dense"), Need::Gpu, move || dequant_case::<T>(QCase::dense(131, k, l))));
        v.push(trial(format!("t2::mxfp8::dequantize::{tag}::{lt}::strided_vec"), Need::Gpu, move || {
            dequant_case::<T>(QCase::dense(70, 256, l).strided(256 + 8, 256 + 8, (8, 8, 4)))
        }));
        v.push(trial(format!("t2::mxfp8::dequantize::{tag}::{lt}::strided_scalar"), Need::Gpu, move || {
            dequant_case::<T>(QCase::dense(70, 256, l).strided(256 + 1, 256 + 3, (1, 1, 1)))
        }));
        v.push(trial(format!("t2::mxfp8::dequantize::{tag}::{lt}::grouped"), Need::Gpu, move || {
            dequant_case::<T>(QCase::grouped(&[3, 0, 140, 1, 64], 256, l, 1))
        }));
    }
}

fn main() {
    let mut v = Vec::new();
    add::<bf16>(&mut v, "bf16");
    add::<f16>(&mut v, "f16");
    add_dequant::<bf16>(&mut v, "bf16");
    add_dequant::<f16>(&mut v, "f16");
    add_dequant::<f32>(&mut v, "f32");
    for (rows, k, e) in [(128usize, 7168usize, 8usize), (4096, 7168, 32), (16384, 7168, 64), (32768, 2048, 64)] {
        v.push(trial(format!("t2::mxfp8::grouped::shape::{rows}x{k}_e{e}"), Need::Gpu, move || issue_shape(rows, k, e)));
    }
    for l in [BLK, RM] {
        let lt = l.tag();
        v.push(trial(format!("t2::mxfp8::pdl_chain::{lt}::dense"), Need::Gpu, move || pdl_chain(l, false)));
        v.push(trial(format!("t2::mxfp8::pdl_chain::{lt}::grouped"), Need::Gpu, move || pdl_chain(l, true)));
        v.push(trial(format!("t2::mxfp8::sanitize::bad_metadata::{lt}"), Need::Gpu, move || bad_metadata(l, QuantKernel::Auto)));
        v.push(trial(format!("t2::mxfp8::sanitize::grouped::{lt}"), Need::Gpu, move || {
            quant_case::<bf16>(QCase::grouped(&[0, 5, 130, 0, 1], 256, l, 1))
        }));
        v.push(trial(format!("t2::mxfp8::sanitize::tma4::{lt}"), Need::Gpu, move || {
            quant_case::<bf16>(QCase::grouped(&[0, 5, 130, 0, 1], 256, l, 1).kernel(QuantKernel::Tma4))
        }));
        v.push(trial(format!("t2::mxfp8::sanitize::registers::{lt}"), Need::Gpu, move || {
            quant_case::<bf16>(QCase::grouped(&[0, 5, 130, 0, 1], 256, l, 1).kernel(QuantKernel::Registers))
        }));
        v.push(trial(format!("t2::mxfp8::sanitize::scalar::{lt}"), Need::Gpu, move || {
            quant_case::<f16>(QCase::grouped(&[2, 0, 40], 128, l, 1).strided(128 + 1, 128 + 3, (1, 1, 1)))
        }));
        v.push(trial(format!("t2::mxfp8::sanitize::dequantize::{lt}"), Need::Gpu, move || {
            dequant_case::<bf16>(QCase::grouped(&[2, 0, 70], 256, l, 1))
        }));
    }
    v.push(trial("t2::mxfp8::sanitize::errors_and_empty", Need::Gpu, errors_and_empty));
    // The TMA kernels on experts out of order (also 1024 of them), on bad metadata (clamped, out
    // of order) and on an x taller than its experts.
    for l in [BLK, RM] {
        let lt = l.tag();
        for kernel in [QuantKernel::Tma2, QuantKernel::Tma4] {
            v.push(trial(format!("t2::mxfp8::order::{lt}::{kernel:?}::reversed"), Need::Gpu, move || {
                let tokens = [3, 0, 200, 64, 1, 0, 130, 77];
                let order: Vec<usize> = (0..tokens.len()).rev().collect();
                permuted(&tokens, &order, 512, l, kernel)
            }));
            v.push(trial(format!("t2::mxfp8::order::{lt}::{kernel:?}::shuffled_1024"), Need::Gpu, move || {
                let tokens: Vec<i32> = (0..1024).map(|g| [0, 1, 3, 0, 17, 2, 0, 130][g % 8]).collect();
                let order: Vec<usize> = (0..1024).map(|g| (g * 389 + 17) % 1024).collect();
                permuted(&tokens, &order, 256, l, kernel)
            }));
            v.push(trial(format!("t2::mxfp8::order::{lt}::{kernel:?}::bad_metadata"), Need::Gpu, move || bad_metadata(l, kernel)));
            v.push(trial(format!("t2::mxfp8::order::{lt}::{kernel:?}::tall_x"), Need::Gpu, move || tall_x(l, kernel)));
        }
        v.push(trial(format!("t2::mxfp8::sanitize::tma2_order::{lt}"), Need::Gpu, move || {
            bad_metadata(l, QuantKernel::Tma2)?;
            tall_x(l, QuantKernel::Tma2)
        }));
    }
    kiln_tests::main(v)
}
