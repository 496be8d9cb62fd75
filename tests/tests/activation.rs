//! T2 tests of kiln-activation against its CPU reference (`kiln_activation::reference`): every
//! op × dtype × the shapes, odd widths (scalar path), strided and misaligned views, the
//! rounding form (bit for bit up to the libm interval), expert and sorted row filters (skipped
//! rows keep their poison), the SiLU clamp, the allocating and packed forms, the non-PDL variant,
//! a PDL chain and the errors. Outputs are poisoned before each run and checked to be written
//! exactly where they should. Trials named `…::sanitize::…` are small and run under
//! compute-sanitizer in the GPU CI.

use std::ops::Range;

use half::{bf16, f16};
use kiln_activation::{self as act, Activation, Options, Rounding, Shape, reference as r};
use kiln_runtime::cudarc::driver::CudaSlice;
use kiln_runtime::{DtypeId, Error, FastMath, Knobs, LaunchConfig, Runtime};
use kiln_tests::data::{Rng, TestFloat, seed};
use kiln_tests::gpu::{download, filled, ptr, rt, upload};
use kiln_tests::{Need, trial};
use libtest_mimic::Trial;

/// The element types both the op and the test kit know.
trait Elem: TestFloat + act::Float {}
impl<T: TestFloat + act::Float> Elem for T {}

/// One call: shape, strides, element offsets of the views into their buffers, options.
#[derive(Debug, Clone, Copy)]
struct Case {
    act: Activation,
    rows: usize,
    d: usize,
    in_stride: usize,
    out_stride: usize,
    in_off: usize,
    out_off: usize,
    rounding: Rounding,
    clamp: Option<f32>,
    scale: f64,
}

/// Elements after the last row of each buffer (never touched).
const TAIL: usize = 5;

impl Case {
    fn new(act: Activation, rows: usize, d: usize) -> Case {
        Case { act, rows, d, in_stride: 2 * d, out_stride: d, in_off: 0, out_off: 0, rounding: Rounding::Once, clamp: None, scale: 2.0 }
    }
    fn strided(self, in_stride: usize, out_stride: usize, in_off: usize, out_off: usize) -> Case {
        Case { in_stride, out_stride, in_off, out_off, ..self }
    }
    /// The rounding form, on N(0, 1) data: with larger values PyTorch's `1 + erf`/`1 + tanh`
    /// cancels in the tails, and the reference is then an interval more often than not.
    fn rounding(self, rounding: Rounding) -> Case {
        Case { rounding, scale: if rounding == Rounding::Activation { 1.0 } else { self.scale }, ..self }
    }
    fn shape(&self) -> Shape {
        Shape::strided(self.rows, self.d, self.in_stride, self.out_stride)
    }
    fn in_view_len(&self) -> usize {
        if self.rows == 0 { 0 } else { (self.rows - 1) * self.in_stride + 2 * self.d }
    }
    fn out_view_len(&self) -> usize {
        if self.rows == 0 { 0 } else { (self.rows - 1) * self.out_stride + self.d }
    }
    fn in_len(&self) -> usize {
        self.in_off + self.in_view_len() + TAIL
    }
    fn out_len(&self) -> usize {
        self.out_off + self.out_view_len() + TAIL
    }
    fn effective_clamp<T: Elem>(&self) -> Option<f32> {
        self.clamp.map(act::effective_clamp_limit::<T>)
    }
}

/// Host input, device input, poisoned device output.
struct Data<T: Elem> {
    host: Vec<T>,
    input: CudaSlice<T>,
    out: CudaSlice<T>,
}

fn prepare<T: Elem>(rt: &Runtime, c: &Case, rng: &mut Rng) -> anyhow::Result<Data<T>> {
    let host: Vec<T> = rng.normals(c.in_len(), c.scale).into_iter().map(T::from_f64).collect();
    Ok(Data { input: upload(rt, &host)?, out: filled(rt, c.out_len(), T::poison())?, host })
}

fn options(c: &Case) -> Options<'static> {
    let o = Options::new().rounding(c.rounding);
    match c.clamp {
        Some(l) => o.clamp_limit(l),
        None => o,
    }
}

/// Runs `c` with `opts` on views at the case's offsets.
fn launch<T: Elem>(rt: &Runtime, c: &Case, data: &mut Data<T>, opts: &Options<'_>) -> kiln_runtime::Result<()> {
    let input = data.input.slice(c.in_off..c.in_off + c.in_view_len());
    let mut out = data.out.slice_mut(c.out_off..c.out_off + c.out_view_len());
    act::act_and_mul_with(rt, c.act, &input, &mut out, c.shape(), opts)
}

/// Runs `f` over `0..n` split across threads (the f64 reference is the slow part of big shapes).
fn par<R: Send>(n: usize, f: impl Fn(Range<usize>) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(4, |p| p.get()).min(n.max(1));
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let f = &f;
        let hs: Vec<_> = (0..n).step_by(chunk).map(|a| s.spawn(move || f(a..(a + chunk).min(n)))).collect();
        hs.into_iter().map(|h| h.join().expect("reference thread panicked")).collect()
    })
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    checked: usize,
    ambiguous: usize,
}

/// Whether the default path runs with `--ftz` here (the arch-default fast-math policy).
fn flushes(rt: &Runtime) -> bool {
    FastMath::default_for(rt.arch()).ftz
}

/// Checks one output element; `Ok(true)` when the rounding form's reference is an interval.
fn check_element<T: Elem>(c: &Case, g: T, u: T, got: T, ftz: bool) -> Result<bool, String> {
    let clamp = c.effective_clamp::<T>();
    if c.rounding == Rounding::Once && ftz && got.to_f64() == 0.0 && r::default_path_may_flush(c.act, g, u, clamp) {
        return Ok(false);
    }
    match c.rounding {
        Rounding::Once if T::ID == DtypeId::F32 => {
            let want = r::gated_exact(c.act, g, u, clamp);
            let tol = r::default_path_rel_error(c.act, r::clamp(g.to_f32(), u.to_f32(), clamp).0);
            let v = got.to_f64();
            if (v - want).abs() <= tol * want.abs() {
                Ok(false)
            } else {
                Err(format!("got {v:e} want {want:e} (rel {:.2e} > {tol:.1e})", (v - want).abs() / want.abs()))
            }
        }
        Rounding::Once => {
            let want: T = r::gated(c.act, g, u, clamp);
            let diff = T::ulp_diff(got, want);
            if diff <= 1 {
                Ok(false)
            } else {
                Err(format!("got {got:?} ({:#x}) want {want:?} ({:#x}), {diff} ulp", got.bits(), want.bits()))
            }
        }
        Rounding::Activation => {
            let b = r::gated_with_activation_rounding(c.act, g, u, clamp);
            if r::admits(b, got) {
                Ok(b.0.bits() != b.1.bits())
            } else {
                Err(format!("got {got:?} ({:#x}) want {:?}..={:?} ({:#x}..={:#x})", got.bits(), b.0, b.1, b.0.bits(), b.1.bits()))
            }
        }
    }
}

/// Verifies the whole output buffer: rows `computed(r)` against the reference, everything else
/// (skipped rows, the gaps between rows, before the view and after it) still poisoned.
fn verify<T: Elem>(c: &Case, host: &[T], got: &[T], computed: &(dyn Fn(usize) -> bool + Sync), seed: u64) -> anyhow::Result<Tally> {
    anyhow::ensure!(got.len() == c.out_len());
    let ftz = flushes(&*rt()?);
    let what = format!("{:?} {} rows={} d={} seed={seed}", c.act, T::ID, c.rows, c.d);
    let poison = T::poison().bits();
    let results = par(got.len(), |range| {
        let mut t = Tally::default();
        let mut errors: Vec<String> = Vec::new();
        let mut bad = 0usize;
        for i in range {
            let inside = i >= c.out_off && i < c.out_off + c.out_view_len() && {
                let rel = i - c.out_off;
                rel % c.out_stride < c.d && computed(rel / c.out_stride)
            };
            if !inside {
                if got[i].bits() != poison {
                    bad += 1;
                    if errors.len() < 3 {
                        errors.push(format!("out[{i}] = {:?} written but must keep its poison", got[i]));
                    }
                }
                continue;
            }
            let rel = i - c.out_off;
            let (row, col) = (rel / c.out_stride, rel % c.out_stride);
            let base = c.in_off + row * c.in_stride;
            let (g, u) = (host[base + col], host[base + c.d + col]);
            t.checked += 1;
            match check_element(c, g, u, got[i], ftz) {
                Ok(amb) => t.ambiguous += amb as usize,
                Err(e) => {
                    bad += 1;
                    if errors.len() < 3 {
                        errors.push(format!("row {row} col {col} (gate {g:?}, up {u:?}): {e}"));
                    }
                }
            }
        }
        (t, bad, errors)
    });
    let mut total = Tally::default();
    let mut bad = 0;
    let mut errors = Vec::new();
    for (t, b, e) in results {
        total.checked += t.checked;
        total.ambiguous += t.ambiguous;
        bad += b;
        errors.extend(e);
    }
    anyhow::ensure!(bad == 0, "{what}: {bad} bad elements, e.g.\n  {}", errors.into_iter().take(5).collect::<Vec<_>>().join("\n  "));
    if c.rounding == Rounding::Activation && T::ID != DtypeId::F32 {
        // The reference is a single value except within a few f32 ulps of a rounding boundary of
        // T (and in the cancelling far tails of PyTorch's gelu formulas): a test that mostly
        // compared intervals would prove little.
        anyhow::ensure!(
            total.ambiguous * 50 <= total.checked + 50,
            "{what}: {} of {} outputs have an ambiguous reference",
            total.ambiguous,
            total.checked
        );
    }
    Ok(total)
}

/// Prepares, launches and verifies one unfiltered case.
fn run_case<T: Elem>(c: Case) -> anyhow::Result<()> {
    let rt = rt()?;
    let s = seed();
    let mut rng = Rng::new(s);
    let mut data = prepare::<T>(&rt, &c, &mut rng)?;
    launch(&rt, &c, &mut data, &options(&c))?;
    let got = download(&rt, &data.out)?;
    verify(&c, &data.host, &got, &|_| true, s)?;
    Ok(())
}

fn dtype_trials(name: &str, f: fn(DtypeId) -> anyhow::Result<()>) -> Vec<Trial> {
    [DtypeId::F16, DtypeId::Bf16, DtypeId::F32]
        .into_iter()
        .map(|dt| trial(format!("t2::activation::{name}::{dt}"), Need::Gpu, move || f(dt)))
        .collect()
}

/// Calls `run::<T>` for the dtype.
macro_rules! by_dtype {
    ($dt:expr, $f:ident $(, $arg:expr)*) => {
        match $dt {
            DtypeId::F16 => $f::<f16>($($arg),*),
            DtypeId::Bf16 => $f::<bf16>($($arg),*),
            DtypeId::F32 => $f::<f32>($($arg),*),
            other => anyhow::bail!("unsupported dtype {other}"),
        }
    };
}

/// The shape list, plus widths that force the scalar path.
fn shapes() -> Vec<(usize, usize)> {
    let mut v = vec![(7, 16), (83, 1024), (15, 16), (17, 4096)];
    v.extend((0..=14).step_by(2).map(|k| (1usize << k, 2048)));
    v.extend((0..=4).step_by(2).map(|k| (1usize << k, 65536)));
    v.extend([(5, 1), (9, 3), (11, 1000), (3, 14336), (6, 1001), (33, 129)]);
    v
}

fn numeric_trials() -> Vec<Trial> {
    let mut t = Vec::new();
    for act in Activation::ALL {
        for dt in [DtypeId::F16, DtypeId::Bf16, DtypeId::F32] {
            for (rows, d) in shapes() {
                let c = Case::new(act, rows, d);
                t.push(trial(format!("t2::activation::{}::{dt}::{rows}x{d}", act.op()), Need::Gpu, move || by_dtype!(dt, run_case, c)));
            }
            for (rows, d) in [(83, 1024), (7, 3), (64, 2048), (5, 14336), (9, 1001)] {
                let c = Case::new(act, rows, d).rounding(Rounding::Activation);
                t.push(trial(format!("t2::activation::{}::round::{dt}::{rows}x{d}", act.op()), Need::Gpu, move || {
                    by_dtype!(dt, run_case, c)
                }));
            }
        }
    }
    t
}

/// Strided views: padded rows that keep the vector path, and misaligned or odd strides that
/// take the scalar path; untouched padding is checked by `verify`.
fn strided<T: Elem>(act: Activation) -> anyhow::Result<()> {
    let lanes = 16 / T::ID.size();
    let cases = [
        Case::new(act, 13, 256).strided(512 + 2 * lanes, 256 + lanes, 0, 0),
        Case::new(act, 13, 256).strided(512 + 2 * lanes, 256 + lanes, lanes, 3 * lanes),
        Case::new(act, 13, 256).strided(512, 256, 1, 0),
        Case::new(act, 13, 256).strided(512, 256, 0, 1),
        Case::new(act, 9, 100).strided(203, 107, 3, 5),
        Case::new(act, 4, 2048).strided(3 * 2048, 2 * 2048, 0, 0),
    ];
    for c in cases {
        run_case::<T>(c)?;
        run_case::<T>(c.rounding(Rounding::Activation))?;
    }
    Ok(())
}

/// Gate above the limit and up beyond ±limit (values ~N(0, 6), limit ≈ 4).
fn clamp<T: Elem>() -> anyhow::Result<()> {
    for (rows, d, limit) in [(37, 512, 4.0f32), (5, 7, 3.7), (64, 2048, 0.9)] {
        let c = Case { clamp: Some(limit), scale: 6.0, ..Case::new(Activation::Silu, rows, d) };
        run_case::<T>(c)?;
        // Keeps the wide data (SiLU's reference stays sharp there).
        run_case::<T>(Case { rounding: Rounding::Activation, ..c })?;
    }
    Ok(())
}

/// Random `-1` ids (≈ 40 %) on case `c` with `expert_step` `step`; `tile` forces the tiled
/// kernel's rows per thread row (else the size rule picks the kernel); `early`: the ids may be
/// read before the PDL wait.
fn expert_filter<T: Elem>(c: Case, step: usize, tile: Option<usize>, early: bool) -> anyhow::Result<()> {
    let rt = rt()?;
    let s = seed();
    let mut rng = Rng::new(s);
    let mut data = prepare::<T>(&rt, &c, &mut rng)?;
    let n_ids = c.rows.div_ceil(step);
    let ids: Vec<i32> = (0..n_ids).map(|_| if rng.uniform() < 0.4 { -1 } else { rng.below(8) as i32 }).collect();
    let dev_ids = upload(&rt, &ids)?;
    let mut opts = options(&c).expert_filter(&dev_ids, step);
    if let Some(t) = tile {
        opts = opts.filter_tile(t);
    }
    if early {
        opts = opts.ids_before_wait();
    }
    launch(&rt, &c, &mut data, &opts)?;
    let got = download(&rt, &data.out)?;
    let kept = |r: usize| ids[r / step] != -1;
    let t = verify(&c, &data.host, &got, &kept, s)?;
    anyhow::ensure!(t.checked > 0 || ids.iter().all(|&i| i == -1), "nothing computed");
    Ok(())
}

fn all_skipped<T: Elem>() -> anyhow::Result<()> {
    let rt = rt()?;
    let s = seed();
    let c = Case::new(Activation::GeluTanh, 32, 512);
    let mut data = prepare::<T>(&rt, &c, &mut Rng::new(s))?;
    let dev_ids = upload(&rt, &[-1i32; 2])?;
    launch(&rt, &c, &mut data, &Options::new().expert_filter(&dev_ids, 16))?;
    let got = download(&rt, &data.out)?;
    verify(&c, &data.host, &got, &|_| false, s)?;
    Ok(())
}

/// No row skipped (ids ≥ 0, and other negative values, which must compute): bit-identical to
/// the unfiltered call.
fn none_skipped<T: Elem>() -> anyhow::Result<()> {
    let rt = rt()?;
    let s = seed();
    let mut rng = Rng::new(s);
    for (rows, d) in [(64, 512), (19, 77)] {
        let c = Case::new(Activation::Gelu, rows, d);
        let mut data = prepare::<T>(&rt, &c, &mut rng)?;
        let ids: Vec<i32> = (0..rows).map(|i| if i % 5 == 0 { -2 } else { rng.below(8) as i32 }).collect();
        let dev_ids = upload(&rt, &ids)?;
        launch(&rt, &c, &mut data, &Options::new().expert_filter(&dev_ids, 1))?;
        let filtered = download(&rt, &data.out)?;
        let mut plain = Data { out: filled(&rt, c.out_len(), T::poison())?, ..data };
        launch(&rt, &c, &mut plain, &Options::new())?;
        let unfiltered = download(&rt, &plain.out)?;
        anyhow::ensure!(
            filtered.iter().zip(&unfiltered).all(|(a, b)| a.bits() == b.bits()),
            "filtered (none skipped) differs from unfiltered, seed {s}"
        );
        verify(&c, &plain.host, &unfiltered, &|_| true, s)?;
    }
    Ok(())
}

/// Block-aligned MoE layout: rows past `num_tokens_post_padded`, padding sentinels
/// (`sorted_token_ids[r] >= num_valid_tokens`) and `-1` experts are skipped.
fn sorted_filter<T: Elem>(
    blocks: usize,
    block: usize,
    d: usize,
    with_experts: bool,
    tile: Option<usize>,
    early: bool,
) -> anyhow::Result<()> {
    let rt = rt()?;
    let s = seed();
    let mut rng = Rng::new(s);
    let rows = blocks * block;
    let c = Case::new(Activation::Silu, rows, d);
    let mut data = prepare::<T>(&rt, &c, &mut rng)?;
    let num_valid = 3 * rows / 4;
    let npp = (rows - block / 2) as i32; // a partial last block is past the end
    let sorted: Vec<i32> = (0..rows)
        .map(|_| match rng.below(10) {
            0 => num_valid as i32,     // the sentinel
            1 => num_valid as i32 + 7, // beyond it
            2 => -3,                   // negative ids compute
            _ => rng.below(num_valid as u64) as i32,
        })
        .collect();
    let experts: Vec<i32> = (0..blocks).map(|b| if b % 3 == 1 { -1 } else { b as i32 }).collect();
    let (dev_sorted, dev_npp, dev_experts) = (upload(&rt, &sorted)?, upload(&rt, &[npp])?, upload(&rt, &experts)?);
    let mut opts = Options::new().sorted_filter(&dev_sorted, &dev_npp, num_valid);
    if with_experts {
        opts = opts.expert_filter(&dev_experts, block);
    }
    if let Some(t) = tile {
        opts = opts.filter_tile(t);
    }
    if early {
        opts = opts.ids_before_wait();
    }
    launch(&rt, &c, &mut data, &opts)?;
    let got = download(&rt, &data.out)?;
    let kept = |r: usize| (r as i32) < npp && sorted[r] < num_valid as i32 && !(with_experts && experts[r / block] == -1);
    let t = verify(&c, &data.host, &got, &kept, s)?;
    anyhow::ensure!(t.checked > 0, "nothing computed");
    Ok(())
}

/// The packed forms (`silu_and_mul`, …) and the allocating forms equal `act_and_mul` bit for bit.
fn packed_and_allocating<T: Elem>() -> anyhow::Result<()> {
    let rt = rt()?;
    let s = seed();
    let mut rng = Rng::new(s);
    type Packed<T> = fn(&Runtime, &CudaSlice<T>, &mut CudaSlice<T>, usize, usize) -> kiln_runtime::Result<()>;
    type Alloc<T> = fn(&Runtime, &CudaSlice<T>, usize, usize) -> kiln_runtime::Result<CudaSlice<T>>;
    type Forms<T> = [(Activation, Packed<T>, Packed<T>, Alloc<T>); 3];
    let forms: Forms<T> = [
        (Activation::Silu, act::silu_and_mul, act::silu_and_mul_with_activation_rounding, act::silu_and_mul_alloc),
        (Activation::Gelu, act::gelu_and_mul, act::gelu_and_mul_with_activation_rounding, act::gelu_and_mul_alloc),
        (Activation::GeluTanh, act::gelu_tanh_and_mul, act::gelu_tanh_and_mul_with_activation_rounding, act::gelu_tanh_and_mul_alloc),
    ];
    for (activation, plain, rounded, alloc) in forms {
        for (rows, d) in [(21, 1024), (6, 33)] {
            let c = Case::new(activation, rows, d);
            let host: Vec<T> = rng.normals(rows * 2 * d, 1.0).into_iter().map(T::from_f64).collect();
            let input = upload(&rt, &host)?;
            let mut a = filled(&rt, rows * d, T::poison())?;
            plain(&rt, &input, &mut a, rows, d)?;
            let b = alloc(&rt, &input, rows, d)?;
            let mut general = filled(&rt, rows * d, T::poison())?;
            act::act_and_mul(&rt, activation, &input, &mut general, Shape::contiguous(rows, d))?;
            let (a, b, g) = (download(&rt, &a)?, download(&rt, &b)?, download(&rt, &general)?);
            anyhow::ensure!(a.iter().zip(&g).all(|(x, y)| x.bits() == y.bits()), "{activation:?}: packed != act_and_mul");
            anyhow::ensure!(b.iter().zip(&g).all(|(x, y)| x.bits() == y.bits()), "{activation:?}: alloc != act_and_mul");
            verify(&c, &host, &padded(g), &|_| true, s)?;
            let mut rr = filled(&rt, rows * d, T::poison())?;
            rounded(&rt, &input, &mut rr, rows, d)?;
            verify(&c.rounding(Rounding::Activation), &host, &padded(download(&rt, &rr)?), &|_| true, s)?;
        }
    }
    Ok(())
}

/// A packed output as `verify` expects it: followed by TAIL poisoned elements.
fn padded<T: Elem>(mut v: Vec<T>) -> Vec<T> {
    v.extend(std::iter::repeat_n(T::poison(), TAIL));
    v
}

/// The non-PDL kernels (a runtime on the same stream with `KILN_PDL=0`) give the same bits.
fn without_pdl<T: Elem>() -> anyhow::Result<()> {
    let rt = rt()?;
    let plain_rt = Runtime::from_stream(rt.stream().clone(), Knobs { pdl: false, ..Knobs::from_env()? })?;
    anyhow::ensure!(!plain_rt.pdl_enabled());
    let s = seed();
    let mut rng = Rng::new(s);
    let ids: Vec<i32> = (0..29).map(|_| if rng.uniform() < 0.4 { -1 } else { 1 }).collect();
    let dev_ids = upload(&rt, &ids)?;
    for act_kind in Activation::ALL {
        for rounding in [Rounding::Once, Rounding::Activation] {
            // Unfiltered (general / wide kernels), then filtered on the tiled kernel (tile 3, ids
            // before the wait: a no-op without PDL).
            for filtered in [false, true] {
                let c = Case::new(act_kind, 29, if filtered { 1024 } else { 520 }).rounding(rounding);
                let opts = if filtered { options(&c).expert_filter(&dev_ids, 1).filter_tile(3).ids_before_wait() } else { options(&c) };
                let mut data = prepare::<T>(&rt, &c, &mut rng)?;
                launch(&rt, &c, &mut data, &opts)?;
                let with = download(&rt, &data.out)?;
                let mut again = Data { out: filled(&rt, c.out_len(), T::poison())?, ..data };
                launch(&plain_rt, &c, &mut again, &opts)?;
                let without = download(&rt, &again.out)?;
                anyhow::ensure!(
                    with.iter().zip(&without).all(|(a, b)| a.bits() == b.bits()),
                    "{act_kind:?} {rounding:?} filtered={filtered}: PDL and non-PDL kernels differ"
                );
                verify(&c, &again.host, &without, &|r| !filtered || ids[r] != -1, s)?;
            }
        }
    }
    Ok(())
}

/// Two PDL launches back to back, the second consuming the first's output (poisoned before
/// each round): without its `griddepcontrol.wait` the second would read poison. `filtered`: the
/// consumer skips about half its rows by ids uploaded beforehand — kept rows exact, skipped rows
/// keep their poison. Its first wave prefetches rows of y into L2 while the producer may still
/// write them: the kept rows when it reads the ids before its wait (`early`,
/// [`Options::ids_before_wait`]), else the rows the ids peeked before the wait hint at. `tile`
/// forces the tiled kernel ([`Options::filter_tile`]).
fn pdl_chain<T: Elem>(rows: usize, d: usize, rounds: usize, filtered: bool, early: bool, tile: Option<usize>) -> anyhow::Result<()> {
    let rt = rt()?;
    anyhow::ensure!(rt.pdl_enabled(), "PDL must be enabled on cc >= 9.0 (KILN_PDL unset)");
    let s = seed();
    let mut rng = Rng::new(s);
    // x: rows × 2·(2d) → y: rows × 2d (silu) → z: rows × d (gelu_tanh, reads y as its input).
    let first = Case::new(Activation::Silu, rows, 2 * d);
    let second = Case::new(Activation::GeluTanh, rows, d);
    let host_x: Vec<T> = rng.normals(first.in_len(), 2.0).into_iter().map(T::from_f64).collect();
    let x = upload(&rt, &host_x)?;
    for round in 0..rounds {
        let ids: Vec<i32> = (0..rows).map(|_| if filtered && rng.uniform() < 0.5 { -1 } else { 0 }).collect();
        let dev_ids = upload(&rt, &ids)?;
        let mut y = filled(&rt, rows * 2 * d, T::poison())?;
        let mut z = filled(&rt, rows * d, T::poison())?;
        rt.stream().synchronize()?;
        act::act_and_mul(&rt, Activation::Silu, &x.slice(..first.in_view_len()), &mut y, Shape::contiguous(rows, 2 * d))?;
        let opts = if filtered { Options::new().expert_filter(&dev_ids, 1) } else { Options::new() };
        let opts = if early { opts.ids_before_wait() } else { opts };
        let opts = if let Some(t) = tile { opts.filter_tile(t) } else { opts };
        act::act_and_mul_with(&rt, Activation::GeluTanh, &y, &mut z, Shape::contiguous(rows, d), &opts)?;
        let (host_y, host_z) = (download(&rt, &y)?, download(&rt, &z)?);
        verify(&first, &host_x, &padded(host_y.clone()), &|_| true, s).map_err(|e| e.context(format!("round {round}: producer")))?;
        verify(&second, &host_y, &padded(host_z), &|r| ids[r] != -1, s).map_err(|e| e.context(format!("round {round}: consumer")))?;
    }
    Ok(())
}

/// The ids themselves come from the predecessor: a slow PDL producer (it releases its dependents
/// at once, then spins ~10 ms) overwrites ids that skip or keep each row at random with new ones.
/// The default consumer (ids read after its wait, as issue 3 asks) must compute exactly the rows
/// the new ids keep; rows kept only by the old ids keep their poison. The control shows that the
/// setup can catch an early read: the same launch with `ids_before_wait` (which a caller may only
/// use when the predecessor does not write the ids) follows the old ids and fails the check.
fn ids_from_predecessor<T: Elem>(rows: usize, d: usize, step: usize) -> anyhow::Result<()> {
    // A stream of its own: trials of one process run on parallel threads, and work another trial
    // queued between the writer and the activation on a shared stream would wait for the writer
    // (the control would then read the new ids). Every buffer of this trial lives on this stream.
    let shared = rt()?;
    let rt = Runtime::from_stream(shared.context().new_stream()?, Knobs::from_env()?)?;
    anyhow::ensure!(rt.pdl_enabled(), "PDL must be enabled on cc >= 9.0 (KILN_PDL unset)");
    let s = seed();
    let mut rng = Rng::new(s);
    let c = Case::new(Activation::Silu, rows, d);
    let host_x: Vec<T> = rng.normals(c.in_len(), 2.0).into_iter().map(T::from_f64).collect();
    let x = upload(&rt, &host_x)?;
    let n_ids = rows.div_ceil(step);
    let writer = rt.kernel(&kiln_tests::prelude_kernels::pdl_id_writer())?;
    // Loaded up front: a compilation between the writer's launch and the activation's would let
    // the writer finish first (the control then reads the new ids too).
    rt.preload(&[
        act::spec_for::<T>(&rt, Activation::Silu, Rounding::Once).clone(),
        act::tiled_spec_for::<T>(&rt, Activation::Silu, Rounding::Once).clone(),
    ])?;
    for round in 0..4 {
        let control = round == 3;
        let draw = |rng: &mut Rng| (0..n_ids).map(|_| if rng.uniform() < 0.5 { -1 } else { 3 }).collect::<Vec<i32>>();
        let (old, new) = (draw(&mut rng), draw(&mut rng));
        let (dev_ids, src) = (upload(&rt, &old)?, upload(&rt, &new)?);
        let mut out = filled(&rt, rows * d, T::poison())?;
        rt.stream().synchronize()?;
        let p =
            kiln_tests::prelude_kernels::IdWriterParams { src: ptr(&rt, &src), dst: ptr(&rt, &dev_ids), n: n_ids as i64, spin: 20_000_000 };
        // SAFETY: IdWriterParams mirrors the kernel's; `src` and `dev_ids` hold n_ids ids.
        unsafe { rt.launch(&writer, LaunchConfig::linear((n_ids as u32).div_ceil(256), 256)).run(&p)? };
        let opts = Options::new().expert_filter(&dev_ids, step);
        let opts = if control { opts.ids_before_wait() } else { opts };
        act::act_and_mul_with(&rt, Activation::Silu, &x, &mut out, c.shape(), &opts)?;
        let got = download(&rt, &out)?;
        let checked = verify(&c, &host_x, &padded(got), &|r| new[r / step] != -1, s);
        match (control, checked) {
            (false, r) => r.map(|_| ()).map_err(|e| e.context(format!("round {round}")))?,
            (true, Ok(_)) => anyhow::bail!("control: ids read before the wait matched the new ids (the producer finished first?)"),
            (true, Err(_)) => {}
        }
    }
    Ok(())
}

/// With [`Options::ids_before_wait`] the warps whose rows are all skipped leave before the PDL
/// wait, but block 0 always waits, so the PDL chain stays transitive: a slow producer (it
/// releases its dependents at once, then spins ~2 ms before writing `data`) → an activation that
/// skips every row → a PDL consumer of `data`. The consumer waits only for the activation; if
/// that grid could complete before the producer, the consumer would read stale `data`. Also
/// checks that the activation wrote nothing. (A control build in which every block left early
/// also passed on the H100, S9-2: that GPU does not complete such a grid ahead of its
/// predecessor either; block 0's wait keeps the property where the hardware might.)
fn skipped_grid_keeps_the_chain() -> anyhow::Result<()> {
    use kiln_tests::prelude_kernels::{self as pk, PdlParams};
    let rt = rt()?;
    anyhow::ensure!(rt.pdl_enabled(), "PDL must be enabled on cc >= 9.0 (KILN_PDL unset)");
    let s = seed();
    let c = Case::new(Activation::Silu, 4096, 1024);
    let mut act_data = prepare::<bf16>(&rt, &c, &mut Rng::new(s))?;
    let dev_ids = upload(&rt, &vec![-1i32; c.rows])?;
    let n = 1 << 16;
    let data = filled(&rt, n, 0.0f32)?;
    let out = filled(&rt, n, f32::NAN)?;
    let (prod, cons) = (rt.kernel(&pk::pdl_producer())?, rt.kernel(&pk::pdl_consumer(true))?);
    // Loaded up front: a compilation between the producer's launch and the activation's would
    // let the producer finish first.
    rt.preload(&[act::tiled_spec_for::<bf16>(&rt, Activation::Silu, Rounding::Once).clone()])?;
    let opts = Options::new().expert_filter(&dev_ids, 1).ids_before_wait();
    for round in 0..3 {
        let value = 1000.0 * (round + 1) as f32;
        let p = PdlParams { data: ptr(&rt, &data), out: ptr(&rt, &out), n: n as i64, spin: 4_000_000, value };
        let cfg = LaunchConfig::linear((n as u32).div_ceil(256), 256);
        // SAFETY: PdlParams mirrors the kernels'; `data` and `out` hold n floats.
        unsafe { rt.launch(&prod, cfg).run(&p)? };
        launch(&rt, &c, &mut act_data, &opts)?;
        // SAFETY: as above.
        unsafe { rt.launch(&cons, cfg).run(&p)? };
        p.check_consumer_out(&download(&rt, &out)?).map_err(|e| e.context(format!("round {round}")))?;
    }
    verify(&c, &act_data.host, &download(&rt, &act_data.out)?, &|_| false, s)?;
    Ok(())
}

fn expect_invalid(what: &str, r: kiln_runtime::Result<()>, needle: &str) -> anyhow::Result<()> {
    match r {
        Err(Error::InvalidArgument { reason, .. }) if reason.contains(needle) => Ok(()),
        other => anyhow::bail!("{what}: expected InvalidArgument containing {needle:?}, got {other:?}"),
    }
}

/// Bad input is an `Err` naming the values, and nothing is launched (the output keeps its poison).
fn errors() -> anyhow::Result<()> {
    let rt = rt()?;
    let (rows, d) = (8usize, 64usize);
    let input = upload(&rt, &vec![bf16::from_f32(1.5); rows * 2 * d + 1])?;
    let mut out = filled(&rt, rows * d, bf16::poison())?;
    let ids = upload(&rt, &[0i32; 3])?;
    let packed = input.slice(..rows * 2 * d);
    expect_invalid("odd width", act::silu_and_mul(&rt, &input, &mut out, rows, d), "input.len()=1025 != rows*2*d=1024")?;
    expect_invalid(
        "d mismatch",
        act::silu_and_mul(&rt, &packed, &mut out.slice_mut(..rows * d - 1), rows, d),
        "out.len()=511 != rows*d=512",
    )?;
    let shape = Shape::contiguous(rows, d);
    expect_invalid(
        "step 0",
        act::act_and_mul_with(&rt, Activation::Silu, &packed, &mut out, shape, &Options::new().expert_filter(&ids, 0)),
        "expert_step=0",
    )?;
    expect_invalid(
        "short ids",
        act::act_and_mul_with(&rt, Activation::Silu, &packed, &mut out, shape, &Options::new().expert_filter(&ids, 2)),
        "expert_ids.len()=3 * expert_step=2 < rows=8",
    )?;
    expect_invalid(
        "short sorted ids",
        act::act_and_mul_with(&rt, Activation::Silu, &packed, &mut out, shape, &Options::new().sorted_filter(&ids, &ids, 4)),
        "sorted_token_ids.len()=3 < rows=8",
    )?;
    expect_invalid(
        "gelu clamp",
        act::act_and_mul_with(&rt, Activation::Gelu, &packed, &mut out, shape, &Options::new().clamp_limit(4.0)),
        "SiLU only",
    )?;
    expect_invalid(
        "stride",
        act::act_and_mul(&rt, Activation::Silu, &packed, &mut out, Shape::strided(rows, d, 2 * d - 1, d)),
        "in_row_stride=127 < 2*d=128",
    )?;
    expect_invalid(
        "coverage",
        act::act_and_mul(&rt, Activation::Silu, &packed, &mut out, Shape::strided(rows, d, 2 * d, d + 1)),
        "out.len()=512 < (rows-1)*out_row_stride+d=519",
    )?;
    match act::act_and_mul_alloc(&rt, Activation::Silu, &packed, rows, d, 2 * d, &Options::new().expert_filter(&ids, 4)) {
        Err(Error::InvalidArgument { reason, .. }) if reason.contains("allocating form") => {}
        other => anyhow::bail!("alloc with filter: {:?}", other.map(|_| ())),
    }
    // Nothing to do: Ok, no launch (a launch of an empty grid would be an error).
    act::act_and_mul(&rt, Activation::Silu, &packed.slice(..0), &mut out.slice_mut(..0), Shape::contiguous(0, d))?;
    act::silu_and_mul(&rt, &packed.slice(..0), &mut out.slice_mut(..0), 0, d)?;
    anyhow::ensure!(act::silu_and_mul_alloc(&rt, &packed.slice(..0), 0, d)?.len() == 0);
    let got = download(&rt, &out)?;
    anyhow::ensure!(got.iter().all(|v| v.bits() == bf16::poison().bits()), "a rejected call wrote the output");
    Ok(())
}

fn silu(rows: usize, d: usize) -> Case {
    Case::new(Activation::Silu, rows, d)
}

fn main() {
    let mut t = numeric_trials();
    for act_kind in Activation::ALL {
        let name = format!("{}::strided", act_kind.op());
        t.extend(
            [DtypeId::F16, DtypeId::Bf16, DtypeId::F32]
                .map(|dt| trial(format!("t2::activation::{name}::{dt}"), Need::Gpu, move || by_dtype!(dt, strided, act_kind))),
        );
    }
    t.extend(dtype_trials("silu_and_mul::clamp", |dt| by_dtype!(dt, clamp)));
    t.extend(dtype_trials("filter::random_step1", |dt| by_dtype!(dt, expert_filter, silu(83, 1024), 1, None, false)));
    t.extend(dtype_trials("filter::random_step16_scalar", |dt| {
        by_dtype!(dt, expert_filter, silu(256, 2048).strided(4096, 2048, 1, 0), 16, None, false)
    }));
    // ≥ 2048 blocks (f16 / bf16 1024×4096: exactly 2048): dependents released once a row is kept.
    t.extend(dtype_trials("filter::random_large", |dt| by_dtype!(dt, expert_filter, silu(1024, 4096), 1, None, false)));
    t.extend(dtype_trials("filter::general_forced", |dt| by_dtype!(dt, expert_filter, silu(1024, 4096), 1, Some(1), false)));
    t.extend(dtype_trials("filter::many_blocks", |dt| by_dtype!(dt, expert_filter, silu(4099, 2048), 1, None, false)));
    // The tiled kernel forced with odd tiles, strides, steps, every activation and the rounding
    // form (the size rule picks it with the ids before the wait only).
    t.extend(dtype_trials("filter::tiled2_many_blocks", |dt| by_dtype!(dt, expert_filter, silu(4099, 2048), 1, Some(2), false)));
    t.extend(dtype_trials("filter::tiled3_step5_strided", |dt| {
        by_dtype!(dt, expert_filter, Case::new(Activation::GeluTanh, 203, 512).strided(1040, 520, 8, 8), 5, Some(3), false)
    }));
    t.extend(dtype_trials("filter::tiled32_gelu", |dt| {
        by_dtype!(dt, expert_filter, Case::new(Activation::Gelu, 1000, 256), 1, Some(32), false)
    }));
    t.extend(dtype_trials("filter::tiled7_rounding", |dt| {
        by_dtype!(dt, expert_filter, silu(301, 768).rounding(Rounding::Activation), 2, Some(7), false)
    }));
    // Ids read before the PDL wait (tiled kernel, tile 1 with the kept rows prefetched; tile 2
    // by size), and a chain whose consumer reads its ids early and its input after the wait.
    t.extend(dtype_trials("filter::ids_before_wait", |dt| by_dtype!(dt, expert_filter, silu(83, 1024), 1, None, true)));
    t.extend(dtype_trials("filter::ids_before_wait_large", |dt| by_dtype!(dt, expert_filter, silu(4099, 2048), 3, None, true)));
    t.extend(dtype_trials("filter::sorted_ids_before_wait", |dt| by_dtype!(dt, sorted_filter, 24, 16, 512, true, None, true)));
    t.extend(dtype_trials("filter::pdl_chain_ids_before_wait", |dt| by_dtype!(dt, pdl_chain, 512, 1024, 3, true, true, None)));
    // The ids after the wait: the consumer's first wave prefetches the rows its ids hint at while
    // the producer may still write them (general kernel, then the tiled one).
    t.extend(dtype_trials("filter::pdl_chain", |dt| by_dtype!(dt, pdl_chain, 512, 1024, 3, true, false, None)));
    t.extend(dtype_trials("filter::pdl_chain_tiled", |dt| by_dtype!(dt, pdl_chain, 4096, 2048, 2, true, false, Some(2))));
    // A consumer of 4096 blocks: skipped blocks exit without releasing the dependents.
    t.extend(dtype_trials("filter::pdl_chain_many_blocks", |dt| by_dtype!(dt, pdl_chain, 4096, 2048, 2, true, false, None)));
    // Ids written by the predecessor (a few blocks; ≥ 2048 blocks, released once kept).
    t.extend(dtype_trials("filter::ids_from_predecessor", |dt| by_dtype!(dt, ids_from_predecessor, 300, 1024, 1)));
    t.extend(dtype_trials("filter::ids_from_predecessor_large", |dt| by_dtype!(dt, ids_from_predecessor, 4099, 4096, 2)));
    t.push(trial("t2::activation::filter::skipped_grid_keeps_the_chain", Need::Gpu, skipped_grid_keeps_the_chain));
    t.extend(dtype_trials("filter::sorted_tiled5", |dt| by_dtype!(dt, sorted_filter, 24, 16, 512, true, Some(5), false)));
    t.extend(dtype_trials("filter::all_skipped", |dt| by_dtype!(dt, all_skipped)));
    t.extend(dtype_trials("filter::none_skipped", |dt| by_dtype!(dt, none_skipped)));
    t.extend(dtype_trials("filter::sorted", |dt| by_dtype!(dt, sorted_filter, 24, 16, 512, true, None, false)));
    t.extend(dtype_trials("filter::sorted_only", |dt| by_dtype!(dt, sorted_filter, 10, 64, 100, false, None, false)));
    t.extend(dtype_trials("packed_and_allocating", |dt| by_dtype!(dt, packed_and_allocating)));
    t.extend(dtype_trials("without_pdl", |dt| by_dtype!(dt, without_pdl)));
    t.extend(dtype_trials("pdl_chain", |dt| by_dtype!(dt, pdl_chain, 4096, 2048, 3, false, false, None)));
    t.push(trial("t2::activation::errors", Need::Gpu, errors));
    // Small and cheap: the GPU CI runs exactly these under compute-sanitizer memcheck/racecheck.
    type Check = fn() -> anyhow::Result<()>;
    let sanitize: [(&str, Check); 13] = [
        ("vector_bf16", || run_case::<bf16>(Case::new(Activation::Silu, 17, 4096))),
        ("scalar_f16", || run_case::<f16>(Case::new(Activation::Gelu, 9, 3))),
        ("strided_f32", || run_case::<f32>(Case::new(Activation::GeluTanh, 9, 100).strided(203, 107, 3, 5))),
        ("rounding_f16", || run_case::<f16>(Case::new(Activation::Silu, 7, 1001).rounding(Rounding::Activation))),
        ("expert_filter", || expert_filter::<bf16>(Case::new(Activation::Silu, 33, 256).strided(512, 256, 1, 0), 4, None, false)),
        ("tiled_filter", || expert_filter::<bf16>(Case::new(Activation::Silu, 45, 1024), 1, Some(4), true)),
        // The ids after the wait: the first wave peeks at them as prefetch hints (hinted_flags).
        ("tiled_filter_hints", || expert_filter::<bf16>(Case::new(Activation::Silu, 45, 1024), 1, Some(4), false)),
        // Thread rows of one warp (eight per block): each thread row's first warp peeks.
        ("tiled_filter_hints_narrow", || expert_filter::<bf16>(Case::new(Activation::Silu, 70, 256), 1, Some(4), false)),
        ("sorted_filter", || sorted_filter::<bf16>(6, 16, 72, true, None, false)),
        ("pdl_chain", || pdl_chain::<bf16>(16, 256, 1, false, false, None)),
        // Filtered, ids after the wait: the general kernel's hinted prefetch of the producer's rows.
        ("pdl_chain_filtered", || pdl_chain::<bf16>(64, 256, 1, true, false, None)),
        // A consumer of 2048 blocks (eight one-warp thread rows each): released once kept.
        ("pdl_chain_filtered_many_blocks", || pdl_chain::<bf16>(16384, 256, 1, true, false, None)),
        ("errors", errors),
    ];
    t.extend(sanitize.map(|(name, f)| trial(format!("t2::activation::sanitize::{name}"), Need::Gpu, f)));
    kiln_tests::main(t)
}
