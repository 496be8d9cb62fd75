//! T2 tests of kiln-rmsnorm: every output bit-exact against `kiln_rmsnorm::reference` (which
//! reproduces the kernels' summation order and roundings), on fresh random data (seed printed on
//! failure; `KILN_TEST_SEED` replays one). Outputs are poisoned first and checked to be written
//! exactly where they should be; the gaps between strided input rows hold NaN, so a kernel that
//! read them would be caught.

use half::{bf16, f16};
use kiln_rmsnorm::reference::{self, RefFloat};
use kiln_rmsnorm::{Activation, Form, FusedSum, Norm, Shape, Variant, WeightOf, forced};
use kiln_runtime::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use kiln_runtime::{Error, LaunchConfig};
use kiln_tests::data::{Rng, TestFloat, seed};
use kiln_tests::gpu::{download, filled, ptr, rt, upload};
use kiln_tests::prelude_kernels::PdlParams;
use kiln_tests::{Need, prelude_kernels as pk, trial};
use libtest_mimic::Trial;

/// Element types the suite drives.
trait El: TestFloat + RefFloat + Activation + DeviceRepr + ValidAsZeroBits + Default + Clone + Copy + Send + Sync + 'static {}
impl<T: TestFloat + RefFloat + Activation + DeviceRepr + ValidAsZeroBits + Default + Clone + Copy + Send + Sync + 'static> El for T {}

/// The hidden sizes and row counts.
const HIDDEN: [usize; 18] = [1, 7, 32, 64, 96, 128, 255, 256, 384, 512, 1000, 2048, 3072, 4096, 5120, 8192, 8200, 16384];
const ROWS: [usize; 5] = [1, 3, 128, 1000, 8192];

fn with_seed(f: impl FnOnce(u64) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let s = seed();
    f(s).map_err(|e| e.context(format!("seed {s} (KILN_TEST_SEED={s} replays it)")))
}

/// Uniform in (-scale, scale), never exactly zero.
fn random<T: TestFloat>(rng: &mut Rng, n: usize, scale: f64) -> Vec<T> {
    (0..n)
        .map(|_| {
            let v = rng.range(-scale, scale);
            T::from_f64(if v == 0.0 { scale * 1e-3 } else { v })
        })
        .collect()
}

fn span(rows: usize, stride: usize, hidden: usize) -> usize {
    if rows == 0 { 0 } else { (rows - 1) * stride + hidden }
}

/// `rows` random rows at `stride` after `off` elements; everything else NaN.
fn rows_with_nan_gaps<T: TestFloat>(rng: &mut Rng, off: usize, rows: usize, stride: usize, hidden: usize, scale: f64) -> Vec<T> {
    let mut v = vec![T::from_f64(f64::NAN); off + span(rows, stride, hidden)];
    for r in 0..rows {
        let row = random::<T>(rng, hidden, scale);
        v[off + r * stride..][..hidden].copy_from_slice(&row);
    }
    v
}

/// Runs `f(first_row, row_count)` over row ranges on all cores and concatenates the results.
fn par_rows<T: Send>(rows: usize, f: impl Fn(usize, usize) -> Vec<T> + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get()).min(rows.max(1));
    let per = rows.div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..rows).step_by(per).map(|r0| s.spawn(move || f(r0, per.min(rows - r0)))).collect();
        hs.into_iter().flat_map(|h| h.join().expect("reference thread")).collect()
    })
}

fn ref_norm<T: El, W: El>(x: &[T], w: &[W], shape: Shape, norm: Norm) -> Vec<T> {
    par_rows(shape.rows, |r0, n| reference::rms_norm(&x[r0 * shape.x_stride..], w, Shape { rows: n, ..shape }, norm))
}

fn ref_fused<T: El, W: El>(x: &[T], r: &[T], w: &[W], shape: Shape, norm: Norm) -> (Vec<T>, Vec<T>) {
    let both = par_rows(shape.rows, |r0, n| {
        let (y, res) =
            reference::fused_add_rms_norm(&x[r0 * shape.x_stride..], &r[r0 * shape.residual_stride..], w, Shape { rows: n, ..shape }, norm);
        vec![(y, res)]
    });
    (both.iter().flat_map(|p| p.0.clone()).collect(), both.into_iter().flat_map(|p| p.1).collect())
}

/// `got` (a whole buffer) holds `want`'s rows at `off + r*stride`, bit for bit, and `outside`
/// (the buffer's previous content) everywhere else.
fn check_rows<T: El>(what: &str, got: &[T], outside: &[T], off: usize, stride: usize, want: &[T], hidden: usize) -> anyhow::Result<()> {
    anyhow::ensure!(got.len() == outside.len(), "{what}: buffer length {} vs {}", got.len(), outside.len());
    let rows = want.len() / hidden.max(1);
    let mut bad = 0usize;
    let mut first = None;
    for (i, (&g, &o)) in got.iter().zip(outside).enumerate() {
        let inside = i >= off && (i - off) % stride < hidden && (i - off) / stride < rows;
        let expect = if inside { want[(i - off) / stride * hidden + (i - off) % stride] } else { o };
        if g.bits() != expect.bits() && !(inside && T::ulp_diff(g, expect) == 0) {
            bad += 1;
            first.get_or_insert((i, g, expect, inside));
        }
    }
    if let Some((i, g, e, inside)) = first {
        let place = if inside { format!("row {} col {}", (i - off) / stride, (i - off) % stride) } else { "outside the rows".to_string() };
        anyhow::bail!(
            "{what}: {bad} wrong elements; first at buffer[{i}] ({place}): got {g:?} ({:#x}) want {e:?} ({:#x})",
            g.bits(),
            e.bits()
        );
    }
    Ok(())
}

/// One call of the plain op: layout, form and (optionally) a forced launch shape.
#[derive(Debug, Clone, Copy)]
struct Plain {
    rows: usize,
    hidden: usize,
    x_stride: usize,
    out_stride: usize,
    x_off: usize,
    out_off: usize,
    norm: Norm,
    force: Option<Variant>,
    in_place: bool,
}

impl Plain {
    fn new(rows: usize, hidden: usize, norm: Norm) -> Plain {
        Plain { rows, hidden, x_stride: hidden, out_stride: hidden, x_off: 0, out_off: 0, norm, force: None, in_place: false }
    }
    fn shape(&self) -> Shape {
        Shape::new(self.rows, self.hidden).with_x_stride(self.x_stride).with_out_stride(self.out_stride)
    }
}

fn run_plain<T: El, W: El + WeightOf<T>>(c: Plain, seed: u64) -> anyhow::Result<()> {
    let rt = rt()?;
    let mut rng = Rng::new(seed ^ ((c.rows as u64) << 32) ^ c.hidden as u64);
    let xh: Vec<T> = rows_with_nan_gaps(&mut rng, c.x_off, c.rows, c.x_stride, c.hidden, 3.0);
    let wh: Vec<W> = random(&mut rng, c.hidden, 2.0);
    let w = upload(&rt, &wh)?;
    let shape = c.shape();
    let want = ref_norm(&xh[c.x_off..], &wh, shape, c.norm);
    let what = format!("{c:?} {}/{}", T::ID.tag(), W::ID.tag());
    if c.in_place {
        let mut x = upload(&rt, &xh)?;
        {
            let mut xv = x.slice_mut(c.x_off..);
            kiln_rmsnorm::rms_norm_inplace(&rt, &mut xv, &w, shape, c.norm)?;
        }
        return check_rows(&what, &download(&rt, &x)?, &xh, c.x_off, c.x_stride, &want, c.hidden);
    }
    let x = upload(&rt, &xh)?;
    let poison = vec![T::poison(); c.out_off + span(c.rows, c.out_stride, c.hidden)];
    let mut out = upload(&rt, &poison)?;
    {
        let xv = x.slice(c.x_off..);
        let mut ov = out.slice_mut(c.out_off..);
        match (c.force, c.norm.form) {
            (Some(v), _) => forced::rms_norm(&rt, &xv, &w, &mut ov, shape, c.norm, v)?,
            (None, Form::Hf) => kiln_rmsnorm::rms_norm_hf(&rt, &xv, &w, &mut ov, shape, c.norm.eps)?,
            (None, _) => kiln_rmsnorm::rms_norm(&rt, &xv, &w, &mut ov, shape, c.norm)?,
        }
    }
    check_rows(&what, &download(&rt, &out)?, &poison, c.out_off, c.out_stride, &want, c.hidden)?;
    anyhow::ensure!(download(&rt, &x)?.iter().zip(&xh).all(|(a, b)| a.bits() == b.bits()), "{what}: the input changed");
    Ok(())
}

/// One call of the fused op (always in place on x and residual).
#[derive(Debug, Clone, Copy)]
struct Fused {
    rows: usize,
    hidden: usize,
    x_stride: usize,
    res_stride: usize,
    norm: Norm,
    force: Option<Variant>,
}

fn run_fused<T: El, W: El + WeightOf<T>>(c: Fused, seed: u64) -> anyhow::Result<()> {
    let rt = rt()?;
    let mut rng = Rng::new(seed ^ ((c.rows as u64) << 32) ^ c.hidden as u64 ^ 0x5eed);
    let xh: Vec<T> = rows_with_nan_gaps(&mut rng, 0, c.rows, c.x_stride, c.hidden, 3.0);
    let rh: Vec<T> = rows_with_nan_gaps(&mut rng, 0, c.rows, c.res_stride, c.hidden, 3.0);
    let wh: Vec<W> = random(&mut rng, c.hidden, 2.0);
    let shape = Shape::new(c.rows, c.hidden).with_stride(c.x_stride).with_residual_stride(c.res_stride);
    let (want_y, want_r) = ref_fused(&xh, &rh, &wh, shape, c.norm);
    let (mut x, mut r, w) = (upload(&rt, &xh)?, upload(&rt, &rh)?, upload(&rt, &wh)?);
    match c.force {
        Some(v) => forced::fused_add_rms_norm(&rt, &mut x, &mut r, &w, shape, c.norm, v)?,
        None => kiln_rmsnorm::fused_add_rms_norm(&rt, &mut x, &mut r, &w, shape, c.norm)?,
    }
    let what = format!("{c:?} {}/{}", T::ID.tag(), W::ID.tag());
    check_rows(&format!("{what}: x"), &download(&rt, &x)?, &xh, 0, c.x_stride, &want_y, c.hidden)?;
    check_rows(&format!("{what}: residual"), &download(&rt, &r)?, &rh, 0, c.res_stride, &want_r, c.hidden)
}

const FORMS: [Norm; 3] = [Norm::hf(1e-6), Norm::fp32(1e-5), Norm::gemma(1e-6)];

/// The grid: every hidden size × every row count, HF form, contiguous.
fn grid<T: El>(hidden: usize) -> anyhow::Result<()> {
    with_seed(|s| ROWS.iter().try_for_each(|&rows| run_plain::<T, T>(Plain::new(rows, hidden, Norm::hf(1e-6)), s)))
}

/// Every form and weight type on a spread of sizes (including the two-pass kernel's).
fn forms<T: El, W: El + WeightOf<T>>() -> anyhow::Result<()> {
    with_seed(|s| {
        for hidden in [1, 7, 96, 255, 1000, 4096, 5120, 8200, 16392, 40000] {
            for rows in [3, 130] {
                for norm in FORMS {
                    run_plain::<T, W>(Plain::new(rows, hidden, norm), s)?;
                }
            }
        }
        Ok(())
    })
}

/// Strided rows (aligned and odd strides), misaligned views (scalar path), in place.
fn layouts<T: El>(hidden_list: &[usize], rows_list: &[usize]) -> anyhow::Result<()> {
    with_seed(|s| {
        let v = 16 / size_of::<T>();
        for &hidden in hidden_list {
            let aligned = hidden.div_ceil(v) * v;
            for &rows in rows_list {
                let base = Plain::new(rows, hidden, Norm::hf(1e-6));
                for c in [
                    Plain { x_stride: aligned + v, out_stride: aligned + 2 * v, ..base },
                    Plain { x_stride: hidden + 3, out_stride: hidden + 5, ..base },
                    Plain { x_off: 1, out_off: 3, ..base },
                    Plain { x_off: v, out_off: 2 * v, x_stride: aligned + v, out_stride: aligned + v, norm: Norm::gemma(1e-5), ..base },
                    Plain { in_place: true, x_stride: aligned + v, out_stride: aligned + v, norm: Norm::fp32(1e-6), ..base },
                    Plain { in_place: true, x_off: 1, x_stride: hidden + 1, out_stride: hidden + 1, ..base },
                ] {
                    run_plain::<T, T>(c, s)?;
                }
            }
        }
        Ok(())
    })
}

/// The fused op over the sizes, both sums and every form, contiguous and strided.
fn fused<T: El, W: El + WeightOf<T>>(hidden: usize) -> anyhow::Result<()> {
    with_seed(|s| {
        for rows in [1, 3, 128, 1000] {
            for (i, norm) in FORMS.into_iter().enumerate() {
                for sum in [FusedSum::Rounded, FusedSum::Fp32] {
                    let strided = (i + rows) % 2 == 1;
                    let (x_stride, res_stride) = if strided { (hidden + 8, hidden + 3) } else { (hidden, hidden) };
                    run_fused::<T, W>(Fused { rows, hidden, x_stride, res_stride, norm: norm.with_sum(sum), force: None }, s)?;
                }
            }
        }
        Ok(())
    })
}

/// Every launch shape (threads per row, chunks and rows per thread, 16-byte or element-wise
/// accesses) gives the reference's bits, so they agree with each other; plain and fused.
fn variants<T: El>(hidden: usize, rows: usize) -> anyhow::Result<()> {
    with_seed(|s| {
        let chunks = hidden.div_ceil(16 / size_of::<T>());
        let plain = kiln_rmsnorm::variants(chunks, false);
        anyhow::ensure!(plain.len() >= 2, "only {} variants for {hidden}", plain.len());
        for v in plain {
            run_plain::<T, T>(Plain { force: Some(v), ..Plain::new(rows, hidden, Norm::hf(1e-6)) }, s)?;
        }
        for v in kiln_rmsnorm::variants(chunks, true) {
            let norm = Norm::gemma(1e-5).with_sum(FusedSum::Fp32);
            run_fused::<T, T>(Fused { rows, hidden, x_stride: hidden, res_stride: hidden, norm, force: Some(v) }, s)?;
        }
        Ok(())
    })
}

/// The constructed inputs of the T0 reference tests, on the GPU: HF rounding and the fp32
/// multiply give different bf16 results, and so do the two fused sums.
fn discriminators() -> anyhow::Result<()> {
    let rt = rt()?;
    let b = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
    let (x, w) = (upload(&rt, &b(&[1.0, 1.0]))?, upload(&rt, &b(&[1.0078125, 1.0078125]))?);
    for (norm, want) in [(Norm::hf(0.7852), 0.7578125f32), (Norm::fp32(0.7852), 0.75390625)] {
        let mut y = filled(&rt, 2, bf16::poison())?;
        kiln_rmsnorm::rms_norm(&rt, &x, &w, &mut y, Shape::new(1, 2), norm)?;
        let got = download(&rt, &y)?;
        anyhow::ensure!(got == b(&[want, want]), "{norm:?}: got {got:?}, want {want}");
    }
    for (sum, want) in [(FusedSum::Rounded, 0.50390625f32), (FusedSum::Fp32, 0.5)] {
        let (mut x, mut r, w) = (upload(&rt, &b(&[1.0]))?, upload(&rt, &b(&[3.0 * 2f32.powi(-9)]))?, upload(&rt, &b(&[1.0]))?);
        kiln_rmsnorm::fused_add_rms_norm(&rt, &mut x, &mut r, &w, Shape::new(1, 1), Norm::hf(3.01).with_sum(sum))?;
        let (gx, gr) = (download(&rt, &x)?, download(&rt, &r)?);
        anyhow::ensure!(gx == b(&[want]) && gr == b(&[1.0078125]), "{sum:?}: x {gx:?} residual {gr:?}");
    }
    Ok(())
}

/// rows == 0 launches nothing; bad arguments are errors naming the values, with nothing written.
fn empty_and_errors() -> anyhow::Result<()> {
    let rt = rt()?;
    let x = upload(&rt, &[bf16::from_f32(1.0); 64])?;
    let w = upload(&rt, &[bf16::from_f32(1.0); 64])?;
    let w63 = upload(&rt, &[bf16::from_f32(1.0); 63])?;
    let mut out = filled(&rt, 64, bf16::poison())?;
    kiln_rmsnorm::rms_norm_hf(&rt, &x, &w, &mut out, Shape::new(0, 64), 1e-6)?;
    let e = kiln_rmsnorm::rms_norm_hf(&rt, &x, &w63, &mut out, Shape::new(1, 64), 1e-6).unwrap_err();
    anyhow::ensure!(matches!(&e, Error::InvalidArgument { op: "rms_norm_hf", reason } if reason == "weight.len()=63 != hidden=64"), "{e}");
    let e = kiln_rmsnorm::rms_norm(&rt, &x, &w, &mut out, Shape::new(1, 64), Norm::fp32(f32::NAN)).unwrap_err();
    anyhow::ensure!(e.to_string() == "rms_norm: eps=NaN must be finite and > 0", "{e}");
    let e = kiln_rmsnorm::rms_norm_hf(&rt, &x, &w, &mut out, Shape::new(2, 64), 1e-6).unwrap_err();
    anyhow::ensure!(e.to_string().contains("x.len()=64 < (rows-1)*x_stride+hidden=128"), "{e}");
    let mut res = filled(&rt, 64, bf16::poison())?;
    let mut xm = x.clone();
    let e =
        kiln_rmsnorm::fused_add_rms_norm(&rt, &mut xm, &mut res, &w, Shape::new(1, 64).with_out_stride(80), Norm::hf(1e-6)).unwrap_err();
    anyhow::ensure!(e.to_string().contains("in place: out_stride=80 != x_stride=64"), "{e}");
    anyhow::ensure!(download(&rt, &out)?.iter().all(|v| v.bits() == bf16::poison().bits()), "an error or an empty call wrote the output");
    anyhow::ensure!(download(&rt, &res)?.iter().all(|v| v.bits() == bf16::poison().bits()), "an error wrote the residual");
    let empty = kiln_rmsnorm::rms_norm_alloc(&rt, &x, &w, Shape::new(0, 64), Norm::hf(1e-6))?;
    anyhow::ensure!(empty.len() == 0);
    Ok(())
}

fn alloc() -> anyhow::Result<()> {
    with_seed(|s| {
        let rt = rt()?;
        let mut rng = Rng::new(s);
        let (rows, hidden) = (33, 1000);
        let (xh, wh): (Vec<f16>, Vec<f32>) = (random(&mut rng, rows * hidden, 3.0), random(&mut rng, hidden, 2.0));
        let (x, w) = (upload(&rt, &xh)?, upload(&rt, &wh)?);
        let y = kiln_rmsnorm::rms_norm_alloc(&rt, &x, &w, Shape::new(rows, hidden), Norm::gemma(1e-6))?;
        let want = ref_norm(&xh, &wh, Shape::new(rows, hidden), Norm::gemma(1e-6));
        check_rows("alloc", &download(&rt, &y)?, &want, 0, hidden, &want, hidden)
    })
}

/// A slow producer (spins, then writes x) followed by PDL launches: rms_norm reads x, a fused
/// op reads that output, an in-place norm reads the fused op's. Without the waits, the early
/// launched consumers would read stale data. At 2048 rows (32 MiB of f32 rows) the unfused
/// launches take the plain-load kernels (`Kind::plain_loads`), at 512 rows the `no_allocate` ones.
fn pdl_chain(rows: usize, hidden: usize) -> anyhow::Result<()> {
    with_seed(|s| {
        let rt = rt()?;
        anyhow::ensure!(rt.pdl_enabled(), "PDL must be enabled on cc >= 9.0 (KILN_PDL unset)");
        let n = rows * hidden;
        let shape = Shape::new(rows, hidden);
        let mut rng = Rng::new(s);
        let (w1, w2): (Vec<f32>, Vec<f32>) = (random(&mut rng, hidden, 2.0), random(&mut rng, hidden, 2.0));
        let rh: Vec<f32> = random(&mut rng, n, 1.0);
        let (w1d, w2d) = (upload(&rt, &w1)?, upload(&rt, &w2)?);
        let prod = rt.kernel(&pk::pdl_producer())?;
        for round in 0..3 {
            let value = -1000.0 * (round + 1) as f32;
            let data: CudaSlice<f32> = filled(&rt, n, f32::NAN)?;
            let mut y: CudaSlice<f32> = filled(&rt, n, f32::NAN)?;
            let mut res = upload(&rt, &rh)?;
            let p = PdlParams { data: ptr(&rt, &data), out: 0, n: n as i64, spin: 4_000_000, value };
            // SAFETY: PdlParams mirrors the producer's struct; `data` holds n floats (it does not use `out`).
            unsafe { rt.launch(&prod, LaunchConfig::linear((n as u32).div_ceil(256), 256)).run(&p)? };
            kiln_rmsnorm::rms_norm(&rt, &data, &w1d, &mut y, shape, Norm::fp32(1e-6))?;
            kiln_rmsnorm::fused_add_rms_norm(&rt, &mut y, &mut res, &w2d, shape, Norm::gemma(1e-6))?;
            kiln_rmsnorm::rms_norm_inplace(&rt, &mut y, &w1d, shape, Norm::hf(1e-6))?;
            let xh: Vec<f32> = (0..n).map(|i| value + i as f32).collect();
            let y1 = ref_norm(&xh, &w1, shape, Norm::fp32(1e-6));
            let (y2, r2) = ref_fused(&y1, &rh, &w2, shape, Norm::gemma(1e-6));
            let y3 = ref_norm(&y2, &w1, shape, Norm::hf(1e-6));
            check_rows(&format!("round {round}: y"), &download(&rt, &y)?, &y3, 0, hidden, &y3, hidden)?;
            check_rows(&format!("round {round}: residual"), &download(&rt, &res)?, &r2, 0, hidden, &r2, hidden)?;
        }
        Ok(())
    })
}

fn main() {
    let g = Need::Gpu;
    let mut t: Vec<Trial> = Vec::new();
    // Small and cheap: the GPU CI also runs these under compute-sanitizer memcheck and racecheck.
    t.push(trial("t2::rmsnorm::sanitize::plain_small_sizes", g, || {
        with_seed(|s| [1, 7, 128, 1000, 4096].iter().try_for_each(|&h| run_plain::<bf16, bf16>(Plain::new(3, h, Norm::hf(1e-6)), s)))
    }));
    t.push(trial("t2::rmsnorm::sanitize::layouts", g, || layouts::<f16>(&[7, 200, 4096], &[1, 3])));
    t.push(trial("t2::rmsnorm::sanitize::fused_strided", g, || {
        with_seed(|s| {
            [(5, 300, 304, 303), (2, 4100, 4100, 4111)].iter().try_for_each(|&(rows, hidden, x_stride, res_stride)| {
                run_fused::<bf16, f32>(Fused { rows, hidden, x_stride, res_stride, norm: Norm::hf(1e-6), force: None }, s)
            })
        })
    }));
    t.push(trial("t2::rmsnorm::sanitize::variants_520", g, || variants::<bf16>(520, 3)));
    t.push(trial("t2::rmsnorm::sanitize::two_pass", g, || with_seed(|s| run_plain::<f32, f32>(Plain::new(2, 20000, Norm::fp32(1e-6)), s))));
    t.push(trial("t2::rmsnorm::discriminators", g, discriminators));
    t.push(trial("t2::rmsnorm::empty_and_errors", g, empty_and_errors));
    t.push(trial("t2::rmsnorm::alloc", g, alloc));
    t.push(trial("t2::rmsnorm::pdl_chain_slow_producer", g, || pdl_chain(512, 4096)));
    t.push(trial("t2::rmsnorm::pdl_chain_slow_producer_plain_loads", g, || pdl_chain(2048, 4096)));
    // f32 rows of 128 (32 chunks): the unfused launches run the warp-per-row kernel.
    t.push(trial("t2::rmsnorm::pdl_chain_slow_producer_warp_rows", g, || pdl_chain(9, 128)));
    for h in HIDDEN {
        t.push(trial(format!("t2::rmsnorm::grid::bf16::h{h}"), g, move || grid::<bf16>(h)));
        t.push(trial(format!("t2::rmsnorm::grid::f16::h{h}"), g, move || grid::<f16>(h)));
        t.push(trial(format!("t2::rmsnorm::fused::bf16::h{h}"), g, move || fused::<bf16, bf16>(h)));
        t.push(trial(format!("t2::rmsnorm::fused::f16_wf32::h{h}"), g, move || fused::<f16, f32>(h)));
    }
    t.push(trial("t2::rmsnorm::forms::bf16", g, forms::<bf16, bf16>));
    t.push(trial("t2::rmsnorm::forms::bf16_wf32", g, forms::<bf16, f32>));
    t.push(trial("t2::rmsnorm::forms::f16", g, forms::<f16, f16>));
    t.push(trial("t2::rmsnorm::forms::f16_wf32", g, forms::<f16, f32>));
    t.push(trial("t2::rmsnorm::forms::f32", g, forms::<f32, f32>));
    t.push(trial("t2::rmsnorm::layouts::bf16", g, || layouts::<bf16>(&[1, 7, 128, 1000, 4096, 8200, 20000], &[1, 5, 77])));
    t.push(trial("t2::rmsnorm::layouts::f32", g, || layouts::<f32>(&[3, 128, 1001, 8192], &[1, 5, 77])));
    t.push(trial("t2::rmsnorm::fused::f32::h5000", g, || fused::<f32, f32>(5000)));
    t.push(trial("t2::rmsnorm::fused::bf16::h40000", g, || fused::<bf16, bf16>(40000)));
    for h in [1, 7, 64, 100, 256, 1000, 2056, 4096, 8200, 16384, 20000] {
        t.push(trial(format!("t2::rmsnorm::variants::bf16::h{h}"), g, move || variants::<bf16>(h, 37)));
    }
    for h in [3, 128, 1000, 4100, 9000] {
        t.push(trial(format!("t2::rmsnorm::variants::f32::h{h}"), g, move || variants::<f32>(h, 37)));
    }
    kiln_tests::main(t)
}
