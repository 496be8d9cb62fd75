//! T2 tests of kiln-rope on random data: every q/k element must equal the CPU bit model
//! (`kiln_rope::reference`) exactly and lie within 2 ulp of exact f64 math; V heads, row padding
//! and the memory around the view must keep their bits. Covers both styles × head_dims (64, 80,
//! 96, 128, 256 and every multiple of 8) × bf16/f16 × {full, half, quarter} rotary × YaRN on/off,
//! the issue's head shapes and token counts, positions up to 2^20 (and beyond, i64, negative),
//! strided and unaligned views (scalar path), f32 weights, the three entry points, and a PDL chain
//! behind a slow producer. `t2::rope::sanitize::*` are the cheap cases run under compute-sanitizer.

use half::{bf16, f16};
use kiln_rope::reference as cpu;
use kiln_rope::{Element, Heads, NormWeight, QkNormRope, Rope, RopeStyle, Rows, Yarn};
use kiln_runtime::cudarc::driver::CudaSlice;
use kiln_runtime::{Error, KernelSource, KernelSpec, LaunchConfig, PRELUDE};
use kiln_tests::data::{Rng, TestFloat, seed};
use kiln_tests::gpu::{download, ptr, rt, upload, zeros};
use kiln_tests::{Need, trial};
use libtest_mimic::Trial;

/// Activation types under test.
trait Act: TestFloat + Element {}
impl Act for bf16 {}
impl Act for f16 {}

const YARN: Yarn = Yarn { factor: 32.0, low: 6.0, high: 40.0, attention_factor: 1.1 };

/// One fused/apply case on a packed qkv matrix.
#[derive(Debug, Clone, Copy)]
struct Case {
    heads: Heads,
    tokens: usize,
    rope: Rope,
    /// Row padding in elements (stride = width + pad).
    pad: usize,
    /// Elements before the view (an odd count makes the base address unaligned).
    offset: usize,
    pos_i64: bool,
    weight_f32: bool,
    /// Positions are uniform in [pos_lo, pos_hi).
    pos_lo: i64,
    pos_hi: i64,
    /// Exact-math check (off for positions where f64 θ itself is inexact).
    exact: bool,
}

impl Case {
    fn new(heads: (usize, usize, usize), head_dim: usize, tokens: usize, rope: Rope) -> Case {
        let heads = Heads { nq: heads.0, nk: heads.1, nv: heads.2, head_dim };
        Case { heads, tokens, rope, pad: 0, offset: 0, pos_i64: false, weight_f32: false, pos_lo: 0, pos_hi: 1 << 20, exact: true }
    }
    fn width(&self) -> usize {
        self.heads.width().unwrap()
    }
    fn rows(&self) -> Rows {
        Rows::strided(self.tokens, self.width(), self.width() + self.pad)
    }
}

enum Positions {
    I32(CudaSlice<i32>),
    I64(CudaSlice<i64>),
}

fn positions(rng: &mut Rng, c: &Case) -> anyhow::Result<(Vec<i64>, Positions)> {
    let rt = rt()?;
    let span = (c.pos_hi - c.pos_lo) as u64;
    let host: Vec<i64> = (0..c.tokens).map(|_| c.pos_lo + rng.below(span) as i64).collect();
    let dev = if c.pos_i64 {
        Positions::I64(upload(&rt, &host)?)
    } else {
        Positions::I32(upload(&rt, &host.iter().map(|&p| p as i32).collect::<Vec<_>>())?)
    };
    Ok((host, dev))
}

/// Random activations for the whole buffer (view, padding and surroundings alike).
fn activations<T: Act>(rng: &mut Rng, n: usize) -> Vec<T> {
    rng.normals(n, 1.5).into_iter().map(<T as TestFloat>::from_f64).collect()
}

/// Bit-for-bit equality (so that −0 vs +0 and NaN payloads count).
fn same_bits<T: TestFloat>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.bits() == y.bits())
}

/// Compares the q/k heads of `got` with the bit model and exact math, and everything else with
/// the input. All slices cover the view (from its first element).
#[allow(clippy::too_many_arguments)]
fn check<T: Act>(
    what: &str,
    input: &[T],
    got: &[T],
    model: &[T],
    exact: Option<&[f64]>,
    rows: Rows,
    first_head: usize,
    n_heads: usize,
    head_dim: usize,
) -> anyhow::Result<()> {
    let in_heads = |i: usize| {
        let (t, c) = (i / rows.stride, i % rows.stride);
        t < rows.tokens && (first_head * head_dim..(first_head + n_heads) * head_dim).contains(&c)
    };
    let mut bad = Vec::new();
    for i in 0..got.len() {
        let want = if in_heads(i) { model[i] } else { input[i] };
        if TestFloat::bits(got[i]) != TestFloat::bits(want) {
            bad.push(i);
        }
    }
    if let Some(&i) = bad.first() {
        let (t, c) = (i / rows.stride, i % rows.stride);
        anyhow::bail!(
            "{what}: {} elements differ from the {}; first at token {t} column {c} (head {}, element {}): got {:?} want {:?} (input {:?})",
            bad.len(),
            if in_heads(i) { "bit model" } else { "input (must be untouched)" },
            c / head_dim,
            c % head_dim,
            got[i],
            if in_heads(i) { model[i] } else { input[i] },
            input[i]
        );
    }
    if let Some(exact) = exact {
        for t in 0..rows.tokens {
            for h in first_head..first_head + n_heads {
                let at = t * rows.stride + h * head_dim;
                let e = &exact[at..at + head_dim];
                let scale = e.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for d in 0..head_dim {
                    let (g, w) = (got[at + d], e[d]);
                    // Outputs that cancel below 2^-10 of their head's largest value: absolute error
                    // only (their ulp nears the f32 arithmetic's few 2^-24 of the head's scale).
                    let ok = if w.abs() < scale * 2f64.powi(-10) {
                        (g.to_f64() - w).abs() <= scale * 2f64.powi(-17)
                    } else {
                        cpu::ulps(g, w) <= 2
                    };
                    anyhow::ensure!(ok, "{what}: token {t} head {h} element {d}: got {g:?}, exact {w} ({} ulp)", cpu::ulps(g, w));
                }
            }
        }
    }
    Ok(())
}

fn fused_case<T: Act, W: NormWeight<T> + TestFloat>(c: Case, seed: u64) -> anyhow::Result<()> {
    let rt = rt()?;
    let mut rng = Rng::new(seed);
    let rows = c.rows();
    let span = rows.span().unwrap();
    let host: Vec<T> = activations(&mut rng, c.offset + span + 24);
    let hd = c.heads.head_dim;
    let qw: Vec<W> = rng.normals(hd, 0.5).into_iter().map(|v| W::from_f64(v + 1.0)).collect();
    let kw: Vec<W> = rng.normals(hd, 0.5).into_iter().map(|v| W::from_f64(v + 1.0)).collect();
    let (pos_host, pos) = positions(&mut rng, &c)?;
    let cfg = QkNormRope { heads: c.heads, eps: 1e-6, rope: c.rope };
    let mut buf = upload(&rt, &host)?;
    let (dqw, dkw) = (upload(&rt, &qw)?, upload(&rt, &kw)?);
    let mut view = buf.slice_mut(c.offset..c.offset + span);
    match &pos {
        Positions::I32(p) => kiln_rope::fused_qk_norm_rope(&rt, &mut view, rows, &dqw, &dkw, p, &cfg)?,
        Positions::I64(p) => kiln_rope::fused_qk_norm_rope(&rt, &mut view, rows, &dqw, &dkw, p, &cfg)?,
    }
    let got = download(&rt, &buf)?;
    let (qf, kf): (Vec<f32>, Vec<f32>) = (qw.iter().map(|w| w.weight_f32()).collect(), kw.iter().map(|w| w.weight_f32()).collect());
    let input = &host[c.offset..c.offset + span];
    let mut model = input.to_vec();
    cpu::fused_qk_norm_rope(&mut model, rows, &qf, &kf, &pos_host, &cfg);
    let exact = c.exact.then(|| cpu::fused_qk_norm_rope_f64(input, rows, &qf, &kf, &pos_host, &cfg));
    anyhow::ensure!(
        same_bits(&got[..c.offset], &host[..c.offset]) && same_bits(&got[c.offset + span..], &host[c.offset + span..]),
        "memory outside the view changed"
    );
    let what = format!("fused {c:?} seed {seed}");
    check(&what, input, &got[c.offset..c.offset + span], &model, exact.as_deref(), rows, 0, c.heads.nq + c.heads.nk, hd)
}

fn apply_qkv_case<T: Act>(c: Case, seed: u64) -> anyhow::Result<()> {
    let rt = rt()?;
    let mut rng = Rng::new(seed);
    let rows = c.rows();
    let span = rows.span().unwrap();
    let host: Vec<T> = activations(&mut rng, c.offset + span + 8);
    let (pos_host, pos) = positions(&mut rng, &c)?;
    let mut buf = upload(&rt, &host)?;
    let mut view = buf.slice_mut(c.offset..c.offset + span);
    match &pos {
        Positions::I32(p) => kiln_rope::apply_rope_qkv(&rt, &mut view, rows, p, c.heads, &c.rope)?,
        Positions::I64(p) => kiln_rope::apply_rope_qkv(&rt, &mut view, rows, p, c.heads, &c.rope)?,
    }
    let got = download(&rt, &buf)?;
    let input = &host[c.offset..c.offset + span];
    let (nq, nk, hd) = (c.heads.nq, c.heads.nk, c.heads.head_dim);
    let mut model = input.to_vec();
    cpu::apply_rope_rows(&mut model, rows, 0, nq + nk, hd, &pos_host, &c.rope);
    let exact = c.exact.then(|| cpu::apply_rope_rows_f64(input, rows, 0, nq + nk, hd, &pos_host, &c.rope));
    anyhow::ensure!(
        same_bits(&got[..c.offset], &host[..c.offset]) && same_bits(&got[c.offset + span..], &host[c.offset + span..]),
        "memory outside the view changed"
    );
    check(
        &format!("apply_rope_qkv {c:?} seed {seed}"),
        input,
        &got[c.offset..c.offset + span],
        &model,
        exact.as_deref(),
        rows,
        0,
        nq + nk,
        hd,
    )
}

/// Separate q and k matrices with their own strides (k padded by an odd count: scalar path for k
/// and, through the shared flag, for q).
fn apply_separate<T: Act>(tokens: usize, nq: usize, nk: usize, head_dim: usize, rope: Rope, k_pad: usize, seed: u64) -> anyhow::Result<()> {
    let rt = rt()?;
    let mut rng = Rng::new(seed);
    let (qr, kr) = (Rows::strided(tokens, nq * head_dim, nq * head_dim + 8), Rows::strided(tokens, nk * head_dim, nk * head_dim + k_pad));
    let (qs, ks) = (qr.span().unwrap(), kr.span().unwrap());
    let (qh, kh): (Vec<T>, Vec<T>) = (activations(&mut rng, qs), activations(&mut rng, ks));
    let c = Case { pos_i64: true, ..Case::new((nq, nk, 0), head_dim, tokens, rope) };
    let (pos_host, pos) = positions(&mut rng, &c)?;
    let Positions::I64(pos) = pos else { unreachable!() };
    let (mut q, mut k) = (upload(&rt, &qh)?, upload(&rt, &kh)?);
    kiln_rope::apply_rope(&rt, &mut q, qr, &mut k, kr, &pos, head_dim, &rope)?;
    let (gq, gk) = (download(&rt, &q)?, download(&rt, &k)?);
    for (name, input, got, rows, n) in [("q", &qh, &gq, qr, nq), ("k", &kh, &gk, kr, nk)] {
        let mut model = input.clone();
        cpu::apply_rope_rows(&mut model, rows, 0, n, head_dim, &pos_host, &rope);
        let exact = cpu::apply_rope_rows_f64(input, rows, 0, n, head_dim, &pos_host, &rope);
        check(&format!("apply_rope {name} seed {seed}"), input, got, &model, Some(&exact), rows, 0, n, head_dim)?;
    }
    Ok(())
}

/// Runs a fused case with the weight type and activation type picked at run time.
fn fused_dyn(dtype: &str, c: Case, seed: u64) -> anyhow::Result<()> {
    match (dtype, c.weight_f32) {
        ("bf16", false) => fused_case::<bf16, bf16>(c, seed),
        ("bf16", true) => fused_case::<bf16, f32>(c, seed),
        ("f16", false) => fused_case::<f16, f16>(c, seed),
        _ => fused_case::<f16, f32>(c, seed),
    }
}

/// Seed of one trial: the run's seed mixed with the trial's name (printed in failures).
fn seed_for(name: &str) -> u64 {
    name.bytes().fold(seed(), |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn gpu(name: String, f: impl FnOnce(u64) -> anyhow::Result<()> + Send + 'static) -> Trial {
    let s = seed_for(&name);
    trial(name, Need::Gpu, move || f(s))
}

const HEADS: [(usize, usize, usize); 4] = [(32, 4, 4), (64, 8, 8), (16, 2, 2), (40, 8, 8)];

/// The issue's matrix: dtype × style × head_dim × rotary fraction × YaRN, with token counts,
/// head shapes, strides, alignment, position and weight types varied across the cases.
fn matrix(trials: &mut Vec<Trial>) {
    let mut idx = 0usize;
    for dtype in ["bf16", "f16"] {
        for style in [RopeStyle::Neox, RopeStyle::Interleaved] {
            for hd in [64, 128, 256, 80, 96] {
                for (frac, div) in [("full", 1), ("half", 2), ("quarter", 4)] {
                    for yarn in [false, true] {
                        idx += 1;
                        let rot = hd / div;
                        let mut rope = Rope { style, base: [1e4, 1e6, 5e5][idx % 3], rotary_dim: rot, yarn: None };
                        if yarn {
                            rope = rope.with_yarn(YARN);
                        }
                        let s = if style == RopeStyle::Neox { "neox" } else { "interleaved" };
                        let name = format!("t2::rope::fused::{dtype}::{s}::hd{hd}::{frac}{}", if yarn { "::yarn" } else { "" });
                        if style == RopeStyle::Neox && !rot.is_multiple_of(16) {
                            // Not representable by the lane split: must be refused before any launch.
                            trials.push(gpu(name + "::rejected", move |_| refused(hd, rope)));
                            continue;
                        }
                        let mut c = Case::new(HEADS[idx % 4], hd, [1, 7, 128][idx % 3], rope);
                        c.pos_i64 = idx % 2 == 1;
                        c.weight_f32 = idx.is_multiple_of(3);
                        c.pad = [0, 8, 3, 0, 16][idx % 5];
                        c.offset = if idx.is_multiple_of(7) { 1 } else { 0 };
                        trials.push(gpu(name, move |s| fused_dyn(dtype, c, s)));
                    }
                }
            }
        }
    }
}

/// A NeoX rotary_dim that is no multiple of 16 is an `InvalidArgument`, and nothing is launched.
fn refused(hd: usize, rope: Rope) -> anyhow::Result<()> {
    let rt = rt()?;
    let c = Case::new((2, 1, 1), hd, 3, rope);
    let host: Vec<bf16> = activations(&mut Rng::new(1), c.rows().span().unwrap());
    let mut buf = upload(&rt, &host)?;
    let w = upload(&rt, &vec![bf16::ONE; hd])?;
    let pos = upload(&rt, &[1i32, 2, 3])?;
    let cfg = QkNormRope { heads: c.heads, eps: 1e-6, rope };
    match kiln_rope::fused_qk_norm_rope(&rt, &mut buf, c.rows(), &w, &w, &pos, &cfg) {
        Err(Error::InvalidArgument { reason, .. }) if reason.contains(&format!("rotary_dim={}", rope.rotary_dim)) => {}
        other => anyhow::bail!("expected a rotary_dim rejection, got {other:?}"),
    }
    anyhow::ensure!(same_bits(&download(&rt, &buf)?, &host), "a rejected call changed qkv");
    Ok(())
}

fn big_and_special(trials: &mut Vec<Trial>) {
    let full = |hd| Rope::neox(1e6, hd);
    // The issue's 4096-token cases.
    let c = Case::new((32, 4, 4), 128, 4096, full(128));
    trials.push(gpu("t2::rope::fused::bf16::t4096::q32_k4_v4".into(), move |s| fused_dyn("bf16", c, s)));
    let c =
        Case { pos_i64: true, weight_f32: true, pad: 8, ..Case::new((64, 8, 8), 128, 4096, Rope::interleaved(1e4, 64).with_yarn(YARN)) };
    trials.push(gpu("t2::rope::fused::f16::t4096::q64_k8_v8::interleaved_half_yarn".into(), move |s| fused_dyn("f16", c, s)));
    let c = Case { pad: 3, ..Case::new((16, 2, 2), 256, 4096, Rope::neox(5e5, 64)) };
    trials.push(gpu("t2::rope::fused::bf16::t4096::q16_k2_v2::hd256_quarter_unaligned".into(), move |s| fused_dyn("bf16", c, s)));
    let c = Case::new((40, 8, 8), 128, 4096, Rope::neox(1e6, 128).with_yarn(YARN));
    trials.push(gpu("t2::rope::apply_qkv::bf16::t4096::q40_k8_v8".into(), move |s| apply_qkv_case::<bf16>(c, s)));
    // Every head_dim the lane split allows (1..32 lanes, including non-powers of two).
    for hd in (8..=256usize).step_by(8) {
        let rope = if hd.is_multiple_of(16) { Rope::neox(1e4, hd) } else { Rope::interleaved(1e4, hd - 2) };
        let c = Case { pad: hd % 24, ..Case::new((3, 2, 1), hd, 5, rope) };
        trials.push(gpu(format!("t2::rope::fused::bf16::every_head_dim::hd{hd}"), move |s| fused_dyn("bf16", c, s)));
    }
    // Positions right at 2^20 and around it, i32 and i64.
    for i64p in [false, true] {
        let c = Case { pos_i64: i64p, pos_lo: (1 << 20) - 64, pos_hi: (1 << 20) + 1, ..Case::new((8, 2, 2), 128, 128, full(128)) };
        trials.push(gpu(format!("t2::rope::fused::bf16::positions_near_2pow20::{}", if i64p { "i64" } else { "i32" }), move |s| {
            fused_dyn("bf16", c, s)
        }));
    }
    // Beyond the accuracy range (±2^40, i64): still bit-identical to the model.
    let c = Case { pos_i64: true, pos_lo: -(1 << 40), pos_hi: 1 << 40, exact: false, ..Case::new((4, 2, 2), 64, 64, full(64)) };
    trials.push(gpu("t2::rope::fused::f16::huge_and_negative_positions".into(), move |s| fused_dyn("f16", c, s)));
    // Only q heads, only k heads, no heads, no tokens.
    let c = Case::new((5, 0, 3), 128, 9, full(128));
    trials.push(gpu("t2::rope::fused::bf16::q_only".into(), move |s| fused_dyn("bf16", c, s)));
    let c = Case::new((0, 3, 3), 64, 9, Rope::interleaved(1e4, 32));
    trials.push(gpu("t2::rope::apply_qkv::f16::k_only".into(), move |s| apply_qkv_case::<f16>(c, s)));
    let c = Case::new((0, 0, 4), 64, 9, full(64));
    trials.push(gpu("t2::rope::fused::bf16::v_only_is_untouched".into(), move |s| fused_dyn("bf16", c, s)));
    let c = Case::new((4, 2, 2), 64, 0, full(64));
    trials.push(gpu("t2::rope::fused::bf16::no_tokens".into(), move |s| fused_dyn("bf16", c, s)));
    // Many heads: several head chunks per token (grid.y > 1).
    let c = Case::new((300, 60, 4), 64, 3, Rope::interleaved(1e4, 64));
    trials.push(gpu("t2::rope::fused::f16::head_chunks".into(), move |s| fused_dyn("f16", c, s)));
    for (dt, pad) in [("bf16", 5usize), ("f16", 0)] {
        trials.push(gpu(format!("t2::rope::apply::{dt}::separate_q_k_kpad{pad}"), move |s| match dt {
            "bf16" => apply_separate::<bf16>(37, 12, 3, 128, Rope::neox(1e6, 64).with_yarn(YARN), pad, s),
            _ => apply_separate::<f16>(37, 6, 2, 256, Rope::interleaved(1e4, 256), pad, s),
        }));
    }
    trials.push(gpu("t2::rope::apply::bf16::k_without_heads".into(), |s| apply_separate::<bf16>(4, 2, 0, 64, Rope::neox(1e4, 64), 0, s)));
}

/// Small cases for compute-sanitizer (memcheck, racecheck): vector and scalar paths, both styles,
/// partial rotary, YaRN, f32 weights, three entry points, non-power-of-two lanes, both launch
/// bounds (small and large grids).
fn sanitize(trials: &mut Vec<Trial>) {
    let c = Case::new((4, 2, 2), 128, 3, Rope::neox(1e6, 128));
    trials.push(gpu("t2::rope::sanitize::fused_bf16_neox".into(), move |s| fused_dyn("bf16", c, s)));
    let c = Case {
        offset: 1,
        pad: 3,
        weight_f32: true,
        pos_i64: true,
        ..Case::new((3, 1, 1), 64, 5, Rope::interleaved(1e4, 16).with_yarn(YARN))
    };
    trials.push(gpu("t2::rope::sanitize::fused_f16_interleaved_partial_unaligned".into(), move |s| fused_dyn("f16", c, s)));
    let c = Case { pad: 8, ..Case::new((2, 1, 1), 80, 4, Rope::neox(1e4, 80)) };
    trials.push(gpu("t2::rope::sanitize::fused_bf16_hd80".into(), move |s| fused_dyn("bf16", c, s)));
    let c = Case::new((2, 2, 1), 256, 2, Rope::neox(1e6, 128));
    trials.push(gpu("t2::rope::sanitize::apply_qkv_f16_hd256_half".into(), move |s| apply_qkv_case::<f16>(c, s)));
    trials.push(gpu("t2::rope::sanitize::apply_separate_bf16".into(), |s| apply_separate::<bf16>(3, 4, 1, 64, Rope::neox(1e4, 32), 3, s)));
    // 1024 CTAs: the kernel built for 4 CTAs per SM (plan::LARGE_GRID_CTAS), both styles.
    let c = Case { weight_f32: true, ..Case::new((2, 1, 1), 64, 1024, Rope::neox(1e4, 64)) };
    trials.push(gpu("t2::rope::sanitize::fused_bf16_large_grid".into(), move |s| fused_dyn("bf16", c, s)));
    let c = Case { pos_i64: true, ..Case::new((1, 1, 2), 128, 1024, Rope::interleaved(1e6, 64).with_yarn(YARN)) };
    trials.push(gpu("t2::rope::sanitize::fused_f16_large_grid_interleaved".into(), move |s| fused_dyn("f16", c, s)));
}

/// A slow producer that writes the positions (kernel source of this test only).
static SPIN: KernelSource = KernelSource {
    name: "rope_test_spin.cuh",
    text: r#"#include <kiln/common.cuh>
struct SpinParams { int* positions; long long n; long long spin; long long scale; };
// Lets its dependents launch at once, then spins, then writes positions[i] = i·scale mod 2^20.
template <bool kEarly>
__global__ void rope_test_spin_positions(SpinParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (kEarly) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  const long long t0 = clock64();
  while (clock64() - t0 < p.spin) {}
  for (long long i = kiln::global_thread_id(); i < p.n; i += (long long)gridDim.x * blockDim.x)
    p.positions[i] = (int)((i * p.scale) % 1048576);
}
"#,
    headers: &[PRELUDE],
};

#[repr(C)]
#[derive(Clone, Copy)]
struct SpinParams {
    positions: u64,
    n: i64,
    spin: i64,
    scale: i64,
}

/// Slow producer → fused_qk_norm_rope (PDL) → apply_rope_qkv (PDL), all on one stream: the first
/// consumer must wait for the positions, the second for the first's output.
fn pdl_chain() -> anyhow::Result<()> {
    let rt = rt()?;
    anyhow::ensure!(rt.pdl_enabled(), "PDL must be enabled on cc >= 9.0");
    let s = seed_for("pdl_chain");
    let mut rng = Rng::new(s);
    let heads = Heads { nq: 16, nk: 2, nv: 2, head_dim: 128 };
    let tokens = 512;
    let rows = Rows::contiguous(tokens, heads.width().unwrap());
    let host: Vec<bf16> = activations(&mut rng, rows.span().unwrap());
    let w: Vec<bf16> = rng.normals(128, 0.3).into_iter().map(|v| bf16::from_f64(v + 1.0)).collect();
    let (dw, mut qkv) = (upload(&rt, &w)?, upload(&rt, &host)?);
    let pos: CudaSlice<i32> = zeros(&rt, tokens)?;
    let fused = QkNormRope { heads, eps: 1e-6, rope: Rope::neox(1e6, 128) };
    let second = Rope::interleaved(1e4, 64).with_yarn(YARN);
    let spin = rt.kernel(&KernelSpec::new("rope_test_spin_positions", &SPIN, "rope_test_spin_positions<true>"))?;
    for round in 0..3i64 {
        let scale = 7919 + 2 * round;
        let p = SpinParams { positions: ptr(&rt, &pos), n: tokens as i64, spin: 4_000_000, scale };
        // SAFETY: SpinParams mirrors the kernel's struct; `pos` holds `tokens` ints.
        unsafe { rt.launch(&spin, LaunchConfig::linear(2, 128)).run(&p)? };
        kiln_rope::fused_qk_norm_rope(&rt, &mut qkv, rows, &dw, &dw, &pos, &fused)?;
        kiln_rope::apply_rope_qkv(&rt, &mut qkv, rows, &pos, heads, &second)?;
        let got = download(&rt, &qkv)?;
        let positions: Vec<i64> = (0..tokens as i64).map(|i| (i * scale) % (1 << 20)).collect();
        let mut model = host.clone();
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        cpu::fused_qk_norm_rope(&mut model, rows, &wf, &wf, &positions, &fused);
        cpu::apply_rope_rows(&mut model, rows, 0, 18, 128, &positions, &second);
        let bad = got.iter().zip(&model).filter(|(g, m)| g.to_bits() != m.to_bits()).count();
        anyhow::ensure!(bad == 0, "round {round}: {bad} elements differ from the model (a consumer ran ahead of its producer?), seed {s}");
        // The next round starts from these values again.
        if round < 2 {
            qkv = upload(&rt, &host)?;
        }
    }
    Ok(())
}

fn main() {
    let mut trials = Vec::new();
    matrix(&mut trials);
    big_and_special(&mut trials);
    sanitize(&mut trials);
    trials.push(trial("t2::rope::pdl_chain", Need::Gpu, pdl_chain));
    kiln_tests::main(trials)
}
