//! Tests of kiln-mxfp8's grouped MXFP8 GEMM.
//!
//! T1: the SM90 wgmma PTX contains `wgmma.mma_async … e4m3.e4m3`, the mma.sync PTX the e4m3
//! `mma.sync … m16n8k32`, the SM100 PTX `tcgen05.mma … block_scale`.
//!
//! T2 (one H100): random N(0,1) bf16 data quantized with the RCEIL rule (the CPU model of the
//! kiln quantizer, and in the PDL chain the kiln quant kernel itself) for every SM90 kernel
//! (mma.sync / wgmma × prefill / decode) and the automatic choice: experts of 0, 1, 7, 129, 512,
//! 2048 tokens, E ∈ {1, 8, 64}, the (N, K) pairs, gaps between experts, padding scale rows
//! filled with 0xFF (never read for stored outputs: no NaN may appear), clamped bad metadata,
//! views, both output dtypes. Every output is poisoned first: rows of an expert must be fully
//! written (finite), other rows untouched. Sampled outputs (full rows plus random columns) are
//! compared with the exact f64 product of the dequantized operands (‖out − ref‖/‖ref‖ ≤ 2e-3 and
//! an element-wise bound) and, per expert with ≥ 1024 samples, with SGLang's calc_diff against
//! the unquantized product (< 1e-3). calc_diff measures the quantization itself (its expectation
//! for RCEIL MXFP8 on N(0,1) data is ≈ 6–8e-4 whatever the kernel does); over a few hundred
//! outputs its sampling spread crosses 1e-3 (run 16: 1.017e-3 over 128 outputs of one token), so
//! small experts are held to the two bounds against the exact product only.

use half::{bf16, f16};
use kiln_mxfp8::gemm_reference::{GemmOperands, RowOwner, calc_diff, relative_error, row_owners};
use kiln_mxfp8::layout::{ATOM_ROWS, BLOCK, blocked_offset};
use kiln_mxfp8::reference::{self as rf, quantize_block};
use kiln_mxfp8::{
    Experts, GemmKernel, GemmOutput, GroupedGemmShape, Mxfp8Operand, Mxfp8Shape, ScaleLayout, grouped_gemm_mxfp8, grouped_gemm_mxfp8_with,
    grouped_gemm_workspace_size, quantize_mxfp8_grouped,
};
use kiln_runtime::cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use kiln_runtime::{Arch, E4m3, E8m0, Error, compile};
use kiln_tests::data::{Rng, TestFloat, seed};
use kiln_tests::gpu::{download, filled, rt, upload};
use kiln_tests::{Need, trial};
use libtest_mimic::Trial;

/// The kernels that run on sm_90.
const SM90: [GemmKernel; 4] = [GemmKernel::MmaPrefill, GemmKernel::MmaDecode, GemmKernel::WgmmaPrefill, GemmKernel::WgmmaDecode];

// ---- data ---------------------------------------------------------------------------------------

/// Runs `f(chunk_index, chunk)` over `chunk`-sized pieces of `v` on all cores.
fn par_chunks<T: Send>(v: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let pieces: Vec<(usize, &mut [T])> = v.chunks_mut(chunk.max(1)).enumerate().collect();
    let per = pieces.len().div_ceil(threads).max(1);
    let mut groups: Vec<Vec<(usize, &mut [T])>> = Vec::new();
    let mut it = pieces.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per).collect());
    }
    std::thread::scope(|s| {
        for g in groups {
            let f = &f;
            s.spawn(move || {
                for (i, c) in g {
                    f(i, c);
                }
            });
        }
    });
}

/// Maps `f` over `0..n` on all cores.
fn par_map<R: Send + Default + Clone>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let mut out = vec![R::default(); n];
    par_chunks(&mut out, 64, |c, chunk| {
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = f(c * 64 + i);
        }
    });
    out
}

/// `rows × k` N(0,1) values rounded to bf16; row r is a pure function of (seed, tag, r).
fn source(seed: u64, tag: u64, rows: usize, k: usize) -> Vec<bf16> {
    let mut v = vec![bf16::ZERO; rows * k];
    par_chunks(&mut v, k, |r, row| {
        let mut rng = Rng::new(seed ^ tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (r as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
        for x in row.iter_mut() {
            *x = bf16::from_f64(rng.normal());
        }
    });
    v
}

const WEIGHT_TAG: u64 = 1;
const TOKEN_TAG: u64 = 2;

/// Quantizes `[rows, k]` values with the RCEIL rule of the kiln quantizer: elements `[rows, k]`
/// and row-major scales `[rows, k/32]`.
fn quantize_rows(x: &[bf16], k: usize) -> (Vec<E4m3>, Vec<E8m0>) {
    let nkb = k / BLOCK;
    let rows = x.len() / k;
    // One buffer per row holding its k elements then its k/32 scales, split afterwards.
    let mut both = vec![0u8; rows * (k + nkb)];
    par_chunks(&mut both, k + nkb, |r, row| {
        let xf: Vec<f32> = x[r * k..(r + 1) * k].iter().map(|v| v.to_f32()).collect();
        let mut q = [E4m3(0); BLOCK];
        for kb in 0..nkb {
            let s = quantize_block(&xf[kb * BLOCK..(kb + 1) * BLOCK], &mut q);
            for (i, e) in q.iter().enumerate() {
                row[kb * BLOCK + i] = e.0;
            }
            row[k + kb] = s.0;
        }
    });
    let mut q = Vec::with_capacity(rows * k);
    let mut s = Vec::with_capacity(rows * nkb);
    for row in both.chunks(k + nkb) {
        q.extend(row[..k].iter().map(|&b| E4m3(b)));
        s.extend(row[k..].iter().map(|&b| E8m0(b)));
    }
    (q, s)
}

/// A test problem: experts of `counts` tokens, `gap` unused token rows before each expert and
/// `tail` after the last; scale rows as SGLang's callers compute them, padding rows 0xFF.
#[derive(Debug, Clone)]
struct Case {
    n: usize,
    k: usize,
    counts: Vec<i32>,
    gap: usize,
    tail: usize,
}

impl Case {
    fn new(n: usize, k: usize, counts: &[i32]) -> Case {
        Case { n, k, counts: counts.to_vec(), gap: 0, tail: 0 }
    }
    fn gaps(mut self, gap: usize, tail: usize) -> Case {
        self.gap = gap;
        self.tail = tail;
        self
    }
    fn experts(&self) -> usize {
        self.counts.len()
    }
}

/// Host data of a case (everything the GEMM reads) and its metadata.
struct Data {
    case: Case,
    seed: u64,
    /// Unquantized weights `[E·N, K]` and tokens `[T, K]`.
    wf: Vec<bf16>,
    xf: Vec<bf16>,
    rows: usize,
    scale_rows: usize,
    offsets: Vec<i32>,
    bso: Vec<i32>,
    wq: Vec<E4m3>,
    ws: Vec<E8m0>,
    xq: Vec<E4m3>,
    xs: Vec<E8m0>,
}

impl Data {
    fn new(case: Case, seed: u64) -> Data {
        let (n, k, e) = (case.n, case.k, case.experts());
        let nkb = k / BLOCK;
        let mut at = 0usize;
        let offsets: Vec<i32> = case
            .counts
            .iter()
            .map(|&m| {
                at += case.gap;
                let o = at;
                at += m.max(0) as usize;
                o as i32
            })
            .collect();
        let rows = at + case.tail;
        let (bso, scale_rows) = kiln_mxfp8::layout::blockscale_offsets(&case.counts, ScaleLayout::Blocked128x4).unwrap();
        // At least one 128-row group (also when no expert has tokens), plus one unused group.
        let scale_rows = scale_rows + ATOM_ROWS;
        let wf = source(seed, WEIGHT_TAG, e * n, k);
        let xf = source(seed, TOKEN_TAG, rows, k);
        let (wq, w_rm) = quantize_rows(&wf, k);
        let (xq, x_rm) = quantize_rows(&xf, k);
        let mut ws = vec![E8m0(0); e * n * nkb];
        for r in 0..e * n {
            for kb in 0..nkb {
                ws[blocked_offset(r, kb, nkb)] = w_rm[r * nkb + kb];
            }
        }
        // Token scales: every byte 0xFF (NaN) except the experts' real rows.
        let mut xs = vec![E8m0(0xFF); scale_rows * nkb];
        for g in 0..e {
            for r in 0..case.counts[g].max(0) as usize {
                let t = offsets[g] as usize + r;
                for kb in 0..nkb {
                    xs[blocked_offset(bso[g] as usize + r, kb, nkb)] = x_rm[t * nkb + kb];
                }
            }
        }
        Data { case, seed, wf, xf, rows, scale_rows, offsets, bso, wq, ws, xq, xs }
    }

    fn shape(&self) -> GroupedGemmShape {
        GroupedGemmShape { experts: self.case.experts(), n: self.case.n, k: self.case.k, rows: self.rows }
    }

    fn operands(&self) -> GemmOperands<'_> {
        GemmOperands {
            weights: &self.wq,
            weight_scales: &self.ws,
            tokens: &self.xq,
            token_scales: &self.xs,
            n: self.case.n,
            k: self.case.k,
        }
    }

    fn host_experts(&self) -> rf::Experts<'_> {
        rf::Experts { offsets: &self.offsets, tokens: &self.case.counts, scale_offsets: &self.bso }
    }
}

/// The device copy of a case.
struct Dev {
    wq: CudaSlice<E4m3>,
    ws: CudaSlice<E8m0>,
    xq: CudaSlice<E4m3>,
    xs: CudaSlice<E8m0>,
    offsets: CudaSlice<i32>,
    counts: CudaSlice<i32>,
    bso: CudaSlice<i32>,
    workspace: CudaSlice<u8>,
}

impl Dev {
    fn new(d: &Data) -> anyhow::Result<Dev> {
        let rt = rt()?;
        Ok(Dev {
            wq: upload(&rt, &d.wq)?,
            ws: upload(&rt, &d.ws)?,
            xq: upload(&rt, &d.xq)?,
            xs: upload(&rt, &d.xs)?,
            offsets: upload(&rt, &d.offsets)?,
            counts: upload(&rt, &d.case.counts)?,
            bso: upload(&rt, &d.bso)?,
            workspace: filled(&rt, grouped_gemm_workspace_size(&d.shape()).max(16), 0u8)?,
        })
    }

    /// Runs the GEMM (kernel pinned or automatic) into a poisoned output and downloads it.
    fn run<T: GemmOutput + TestFloat>(&mut self, d: &Data, kernel: Option<GemmKernel>) -> anyhow::Result<Vec<T>> {
        let rt = rt()?;
        let mut out = filled(&rt, d.rows * d.case.n, T::poison())?;
        let w = Mxfp8Operand { data: &self.wq, scales: &self.ws };
        let x = Mxfp8Operand { data: &self.xq, scales: &self.xs };
        let ex = Experts { expert_offsets: &self.offsets, tokens_per_expert: &self.counts, blockscale_offsets: &self.bso };
        grouped_gemm_mxfp8_with(&rt, w, x, ex, &mut out, &mut self.workspace, d.shape(), kernel)?;
        download(&rt, &out)
    }
}

// ---- checks -------------------------------------------------------------------------------------

/// One checked output element.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    row: usize,
    col: usize,
    expert: usize,
    /// Exact product of the dequantized operands.
    exact: f64,
    /// Product of the unquantized (bf16) operands.
    unquantized: f64,
}

/// The reference of a case: who owns each row, and the sampled elements.
struct Refs {
    owners: Vec<Option<RowOwner>>,
    samples: Vec<Sample>,
    exact_only: bool,
}

impl Refs {
    /// Samples: per expert, every row when it has ≤ 24, else tile edges and random rows; for each
    /// sampled row the tile-edge columns and 40 random ones, and every column of its first row
    /// (every weight tile of the expert).
    fn new(d: &Data) -> Refs {
        let (n, k) = (d.case.n, d.case.k);
        let owners = row_owners(d.host_experts(), d.rows, d.scale_rows);
        let mut rng = Rng::new(d.seed ^ 0x5151);
        let mut picks: Vec<(usize, usize)> = Vec::new();
        let mut rows_of: Vec<Vec<usize>> = vec![Vec::new(); d.case.experts()];
        for (row, o) in owners.iter().enumerate() {
            if let Some(o) = o {
                rows_of[o.expert].push(row);
            }
        }
        for rows in rows_of.iter().filter(|r| !r.is_empty()) {
            let m = rows.len();
            let mut local: Vec<usize> = if m <= 24 {
                (0..m).collect()
            } else {
                let mut v: Vec<usize> = [0, 1, 63, 64, 127, 128, m - 2, m - 1].into_iter().filter(|&r| r < m).collect();
                while v.len() < 24 {
                    v.push(rng.below(m as u64) as usize);
                }
                v
            };
            local.sort_unstable();
            local.dedup();
            let mut cols: Vec<usize> = vec![0, 1, 63, 64, 127, 128, n - 2, n - 1];
            for _ in 0..40 {
                cols.push(rng.below(n as u64) as usize);
            }
            cols.retain(|&c| c < n);
            cols.sort_unstable();
            cols.dedup();
            for (i, &r) in local.iter().enumerate() {
                if i == 0 {
                    picks.extend((0..n).map(|c| (rows[r], c)));
                } else {
                    picks.extend(cols.iter().map(|&c| (rows[r], c)));
                }
            }
        }
        let ops = d.operands();
        let samples = par_map(picks.len(), |i| {
            let (row, col) = picks[i];
            let o = owners[row].expect("sampled rows are owned");
            let w = &d.wf[(o.expert * n + col) * k..(o.expert * n + col + 1) * k];
            let x = &d.xf[row * k..(row + 1) * k];
            let unquantized = w.iter().zip(x).map(|(&a, &b)| a.to_f64() * b.to_f64()).sum();
            Sample { row, col, expert: o.expert, exact: ops.dot(o.expert, col, row, o.scale_row), unquantized }
        });
        Refs { owners, samples, exact_only: false }
    }
}

/// Fewest samples of an expert for the calc_diff bound (a statistic of the quantization: see the
/// module doc).
const CALC_DIFF_SAMPLES: usize = 1024;

/// Checks a GEMM output against the reference: coverage (owned rows finite, others untouched),
/// relative error of the samples ≤ 2e-3, an element-wise bound, calc_diff < 1e-3 per expert with
/// at least CALC_DIFF_SAMPLES samples (unless `r.exact_only`: metadata that pairs tokens with
/// other tokens' scales).
fn check_output<T: TestFloat>(what: &str, d: &Data, r: &Refs, got: &[T]) -> anyhow::Result<()> {
    let n = d.case.n;
    anyhow::ensure!(got.len() == d.rows * n, "{what}: output length {} != {}", got.len(), d.rows * n);
    let poison = T::poison().bits();
    for (row, owner) in r.owners.iter().enumerate() {
        let line = &got[row * n..(row + 1) * n];
        match owner {
            None => {
                if let Some(c) = line.iter().position(|v| v.bits() != poison) {
                    anyhow::bail!("{what}: row {row} belongs to no expert but column {c} was written ({:?})", line[c]);
                }
            }
            Some(o) => {
                if let Some(c) = line.iter().position(|v| !v.to_f64().is_finite()) {
                    anyhow::bail!(
                        "{what}: row {row} (expert {}) column {c} is {:?} (bits {:#x}; poison {poison:#x} = not written)",
                        o.expert,
                        line[c],
                        line[c].bits()
                    );
                }
            }
        }
    }
    let vals: Vec<f64> = r.samples.iter().map(|s| got[s.row * n + s.col].to_f64()).collect();
    let exact: Vec<f64> = r.samples.iter().map(|s| s.exact).collect();
    let rel = relative_error(&vals, &exact);
    anyhow::ensure!(rel <= 2e-3, "{what}: ‖out − ref‖/‖ref‖ = {rel:.3e} > 2e-3 over {} samples", vals.len());
    let rms = (exact.iter().map(|v| v * v).sum::<f64>() / exact.len().max(1) as f64).sqrt();
    let mut bad = Vec::new();
    for (s, &v) in r.samples.iter().zip(&vals) {
        let tol = (s.exact.abs() + rms) * 2f64.powi(-8);
        if (v - s.exact).abs() > tol {
            bad.push(format!("(row {}, col {}, expert {}): got {v} want {}", s.row, s.col, s.expert, s.exact));
        }
    }
    anyhow::ensure!(
        bad.is_empty(),
        "{what}: {} samples beyond 2^-8·(|ref| + rms {rms:.3}); first: {}",
        bad.len(),
        bad[..bad.len().min(5)].join("; ")
    );
    for g in (0..d.case.experts()).filter(|_| !r.exact_only) {
        let (x, y): (Vec<f64>, Vec<f64>) =
            r.samples.iter().zip(&vals).filter(|(s, _)| s.expert == g).map(|(s, &v)| (v, s.unquantized)).unzip();
        if x.len() < CALC_DIFF_SAMPLES {
            continue;
        }
        let cd = calc_diff(&x, &y);
        anyhow::ensure!(cd < 1e-3, "{what}: expert {g}: calc_diff vs the unquantized product = {cd:.3e} ≥ 1e-3");
    }
    Ok(())
}

/// Runs `kernels` (and the automatic choice) on a case for output type T.
fn gemm_case<T: GemmOutput + TestFloat>(case: Case, kernels: &[GemmKernel]) -> anyhow::Result<()> {
    let seed = seed();
    let run = || -> anyhow::Result<()> {
        let d = Data::new(case.clone(), seed);
        let refs = Refs::new(&d);
        let mut dev = Dev::new(&d)?;
        for &k in kernels {
            let got = dev.run::<T>(&d, Some(k))?;
            check_output(k.tag(), &d, &refs, &got)?;
        }
        let got = dev.run::<T>(&d, None)?;
        check_output("auto", &d, &refs, &got)
    };
    run().map_err(|e| anyhow::anyhow!("{case:?}, seed {seed} (KILN_TEST_SEED): {e:#}"))
}

// ---- special cases ------------------------------------------------------------------------------

/// Device metadata the host cannot check: out-of-range offsets, negative and oversized counts,
/// misaligned and out-of-range scale offsets. The kernels clamp (never out of bounds) exactly as
/// the reference describes; rows nobody owns stay poisoned.
fn bad_metadata() -> anyhow::Result<()> {
    let seed = seed();
    let mut d = Data::new(Case::new(256, 256, &[5, 9, 3, 4, 6, 2]).gaps(2, 3), seed);
    let rows = d.rows as i32;
    // Expert 0 valid; 1: count runs past the end (clamped); 2: negative count; 3: offset out of
    // range; 4: scale offset misaligned; 5: scale offset beyond the scale rows.
    d.offsets[1] = rows - 4;
    d.case.counts[1] = 1000;
    d.case.counts[2] = -7;
    d.offsets[3] = rows + 10;
    d.bso[4] = 64;
    d.bso[5] = d.scale_rows as i32 + 128;
    let refs = Refs { exact_only: true, ..Refs::new(&d) };
    let mut dev = Dev::new(&d)?;
    for k in SM90 {
        let got = dev.run::<bf16>(&d, Some(k))?;
        check_output(k.tag(), &d, &refs, &got).map_err(|e| anyhow::anyhow!("seed {seed}: {e:#}"))?;
    }
    Ok(())
}

/// Views: operands and output are sub-slices of larger buffers (16-byte aligned offsets); the
/// elements of the output buffer outside the view stay untouched.
fn views() -> anyhow::Result<()> {
    let seed = seed();
    let d = Data::new(Case::new(128, 256, &[3, 130]).gaps(1, 1), seed);
    let refs = Refs::new(&d);
    let rt = rt()?;
    let pad = |v: &[E4m3]| [vec![E4m3(0x7F); 48], v.to_vec(), vec![E4m3(0x7F); 16]].concat();
    let pads = |v: &[E8m0]| [vec![E8m0(0xFF); 32], v.to_vec(), vec![E8m0(0xFF); 16]].concat();
    let wq = upload(&rt, &pad(&d.wq))?;
    let ws = upload(&rt, &pads(&d.ws))?;
    let xq = upload(&rt, &pad(&d.xq))?;
    let xs = upload(&rt, &pads(&d.xs))?;
    let meta = upload(&rt, &[d.offsets.clone(), d.case.counts.clone(), d.bso.clone()].concat())?;
    let e = d.case.experts();
    let mut ws_buf = filled(&rt, 16, 0u8)?;
    for k in SM90 {
        let total = d.rows * d.case.n + 6;
        let mut out = filled(&rt, total, f16::poison())?;
        {
            let wqv: CudaView<'_, E4m3> = wq.slice(48..48 + d.wq.len());
            let wsv = ws.slice(32..32 + d.ws.len());
            let xqv = xq.slice(48..48 + d.xq.len());
            let xsv = xs.slice(32..32 + d.xs.len());
            let (o, c, b) = (meta.slice(0..e), meta.slice(e..2 * e), meta.slice(2 * e..3 * e));
            let mut outv: CudaViewMut<'_, f16> = out.slice_mut(2..2 + d.rows * d.case.n);
            grouped_gemm_mxfp8_with(
                &rt,
                Mxfp8Operand { data: &wqv, scales: &wsv },
                Mxfp8Operand { data: &xqv, scales: &xsv },
                Experts { expert_offsets: &o, tokens_per_expert: &c, blockscale_offsets: &b },
                &mut outv,
                &mut ws_buf,
                d.shape(),
                Some(k),
            )?;
        }
        let all = download(&rt, &out)?;
        let p = f16::poison().bits();
        anyhow::ensure!(
            all[..2].iter().chain(&all[total - 4..]).all(|v| v.bits() == p),
            "{}: elements outside the output view were written",
            k.tag()
        );
        check_output(k.tag(), &d, &refs, &all[2..total - 4]).map_err(|e| anyhow::anyhow!("seed {seed}: {e:#}"))?;
    }
    Ok(())
}

/// The kiln quant kernel (PDL) writes the tokens and scales that the GEMM (PDL) reads next, into
/// buffers holding garbage beforehand: a GEMM that did not wait would read the garbage.
fn pdl_chain(kernel: GemmKernel) -> anyhow::Result<()> {
    let seed = seed();
    let rt = rt()?;
    anyhow::ensure!(rt.pdl_enabled(), "PDL is off on this device/runtime");
    let mut d = Data::new(Case::new(256, 2048, &[40, 0, 300, 7]).gaps(0, 5), seed);
    let (rows, k) = (d.rows, d.case.k);
    let xin = upload(&rt, &d.xf)?;
    let mut dev = Dev::new(&d)?;
    let garbage_q = vec![E4m3(0x7E); rows * k];
    let garbage_s = vec![E8m0(0xFE); d.scale_rows * k / BLOCK];
    let mut out = filled(&rt, rows * d.case.n, bf16::poison())?;
    let stream = rt.stream().clone();
    for _ in 0..3 {
        stream.memcpy_htod(&garbage_q, &mut dev.xq)?;
        stream.memcpy_htod(&garbage_s, &mut dev.xs)?;
        let ex = Experts { expert_offsets: &dev.offsets, tokens_per_expert: &dev.counts, blockscale_offsets: &dev.bso };
        quantize_mxfp8_grouped(&rt, &xin, ex, &mut dev.xq, &mut dev.xs, Mxfp8Shape::contiguous(rows, k), ScaleLayout::Blocked128x4)?;
        let w = Mxfp8Operand { data: &dev.wq, scales: &dev.ws };
        let x = Mxfp8Operand { data: &dev.xq, scales: &dev.xs };
        grouped_gemm_mxfp8_with(&rt, w, x, ex, &mut out, &mut dev.workspace, d.shape(), Some(kernel))?;
    }
    let got = download(&rt, &out)?;
    // The reference reads what the quant kernel wrote (kiln's CPU model of it, bit-exact per the
    // mxfp8 suite), on top of the same garbage.
    let xf: Vec<f32> = d.xf.iter().map(|v| v.to_f32()).collect();
    let (mut xq, mut xs) = (garbage_q, garbage_s);
    let dims = rf::Dims { rows, k, x_stride: k, q_stride: k };
    rf::quantize_into(&xf, dims, Some(d.host_experts()), ScaleLayout::Blocked128x4, &mut xq, &mut xs, d.scale_rows);
    d.xq = xq;
    d.xs = xs;
    let refs = Refs::new(&d);
    check_output(&format!("pdl chain {}", kernel.tag()), &d, &refs, &got).map_err(|e| anyhow::anyhow!("seed {seed}: {e:#}"))
}

/// Argument errors name their values; empty work launches nothing; all-empty experts write nothing.
fn errors_and_empty() -> anyhow::Result<()> {
    let rt = rt()?;
    let d = Data::new(Case::new(128, 128, &[2, 1]), seed());
    let mut dev = Dev::new(&d)?;
    let mut out = filled(&rt, d.rows * d.case.n, bf16::poison())?;
    let good = d.shape();
    for (shape, needle) in [
        (GroupedGemmShape { k: 96, ..good }, "k=96"),
        (GroupedGemmShape { n: 64, ..good }, "n=64"),
        (GroupedGemmShape { rows: good.rows + 1, ..good }, "tokens.len()="),
        (GroupedGemmShape { experts: 3, ..good }, "weights.len()="),
        (GroupedGemmShape { experts: 2000, ..good }, "experts=2000 exceeds 1024"),
    ] {
        let w = Mxfp8Operand { data: &dev.wq, scales: &dev.ws };
        let x = Mxfp8Operand { data: &dev.xq, scales: &dev.xs };
        let ex = Experts { expert_offsets: &dev.offsets, tokens_per_expert: &dev.counts, blockscale_offsets: &dev.bso };
        match grouped_gemm_mxfp8(&rt, w, x, ex, &mut out, &mut dev.workspace, shape) {
            Err(Error::InvalidArgument { reason, .. }) => anyhow::ensure!(reason.contains(needle), "{shape:?}: {reason} lacks {needle:?}"),
            other => anyhow::bail!("{shape:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    // rows == 0: Ok without a launch (zero-length token and output views).
    {
        let xq0 = dev.xq.slice(0..0);
        let w = Mxfp8Operand { data: &dev.wq, scales: &dev.ws };
        let x = Mxfp8Operand { data: &xq0, scales: &dev.xs };
        let mut o0 = out.slice_mut(0..0);
        let ex = Experts { expert_offsets: &dev.offsets, tokens_per_expert: &dev.counts, blockscale_offsets: &dev.bso };
        grouped_gemm_mxfp8(&rt, w, x, ex, &mut o0, &mut dev.workspace, GroupedGemmShape { rows: 0, ..good })?;
    }
    let untouched = download(&rt, &out)?;
    anyhow::ensure!(untouched.iter().all(|v| v.bits() == bf16::poison().bits()), "a failed or empty call wrote output");
    // Experts that all claim no tokens: a launch that writes nothing.
    let d2 = Data::new(Case::new(128, 128, &[0, 0]).gaps(3, 2), 11);
    let mut dev2 = Dev::new(&d2)?;
    let got = dev2.run::<bf16>(&d2, None)?;
    anyhow::ensure!(got.iter().all(|v| v.bits() == bf16::poison().bits()), "all-empty experts wrote output");
    Ok(())
}

// ---- T1 ------------------------------------------------------------------------------------------

fn ptx_contains(kernel: GemmKernel, arch: Arch, needles: &[&str]) -> anyhow::Result<()> {
    let specs: Vec<_> = kiln_mxfp8::kernel_specs().into_iter().filter(|s| s.name().contains(&format!("__{}", kernel.tag()))).collect();
    anyhow::ensure!(!specs.is_empty(), "no spec for {}", kernel.tag());
    for s in specs {
        let c = compile(&s, arch)?;
        for n in needles {
            anyhow::ensure!(c.ptx.contains(n), "{}: PTX lacks {n:?}", s.name());
        }
    }
    Ok(())
}

fn add_shapes<T: GemmOutput + TestFloat>(v: &mut Vec<Trial>, tag: &str) {
    // The shapes: E ∈ {1, 8, 64}, (N, K) ∈ {(4096, 7168), (7168, 2048), (2048, 7168)},
    // experts of 0, 1, 7, 129, 512 and 2048 tokens.
    let cases: Vec<(&str, Case)> = vec![
        ("e1_n4096_k7168", Case::new(4096, 7168, &[512])),
        ("e8_n7168_k2048", Case::new(7168, 2048, &[0, 1, 7, 129, 512, 2048, 0, 33]).gaps(1, 2)),
        ("e64_n2048_k7168", Case::new(2048, 7168, &[1, 7, 0, 129, 2, 64, 13, 512].repeat(8))),
    ];
    for (name, case) in cases {
        v.push(trial(format!("t2::mxfp8_gemm::shape::{name}::{tag}"), Need::Gpu, move || gemm_case::<T>(case, &SM90)));
    }
}

fn main() {
    let mut v = Vec::new();
    v.push(trial("t1::mxfp8_gemm::wgmma_ptx_has_e4m3_wgmma", Need::Nvrtc, || {
        ptx_contains(
            GemmKernel::WgmmaPrefill,
            Arch::SM90A,
            &["wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3", "cp.async.bulk.tensor.2d"],
        )?;
        ptx_contains(GemmKernel::WgmmaDecode, Arch::SM90A, &["wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3", "setmaxnreg"])
    }));
    v.push(trial("t1::mxfp8_gemm::mma_ptx_has_e4m3_mma", Need::Nvrtc, || {
        ptx_contains(GemmKernel::MmaPrefill, Arch::SM90A, &["mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32", "ldmatrix"])
    }));
    v.push(trial("t1::mxfp8_gemm::sm100_ptx_has_block_scaled_tcgen05", Need::Nvrtc, || {
        ptx_contains(GemmKernel::Sm100, Arch::SM100A, &["tcgen05.mma.cta_group::1.kind::mxf8f6f4.block_scale", "tcgen05.cp", "tcgen05.ld"])
    }));
    v.push(trial("t2::mxfp8_gemm::sanitize::tiny_bf16", Need::Gpu, || {
        gemm_case::<bf16>(Case::new(128, 128, &[3, 0, 1]).gaps(1, 2), &SM90)
    }));
    v.push(trial("t2::mxfp8_gemm::sanitize::ragged_f16", Need::Gpu, || {
        gemm_case::<f16>(Case::new(256, 256, &[1, 129, 7, 0]).gaps(2, 1), &SM90)
    }));
    v.push(trial("t2::mxfp8_gemm::sanitize::bad_metadata", Need::Gpu, bad_metadata));
    v.push(trial("t2::mxfp8_gemm::sanitize::views", Need::Gpu, views));
    v.push(trial("t2::mxfp8_gemm::sanitize::errors_and_empty", Need::Gpu, errors_and_empty));
    v.push(trial("t2::mxfp8_gemm::many_tiles_bf16", Need::Gpu, || {
        gemm_case::<bf16>(Case::new(1024, 1024, &[300, 0, 1, 700, 65, 64, 128, 129]).gaps(3, 7), &SM90)
    }));
    v.push(trial("t2::mxfp8_gemm::many_tiles_f16", Need::Gpu, || {
        gemm_case::<f16>(Case::new(512, 2048, &[2048, 5, 900, 33]).gaps(0, 1), &SM90)
    }));
    for k in [GemmKernel::MmaPrefill, GemmKernel::WgmmaPrefill, GemmKernel::WgmmaDecode] {
        v.push(trial(format!("t2::mxfp8_gemm::pdl_chain::{}", k.tag()), Need::Gpu, move || pdl_chain(k)));
    }
    add_shapes::<bf16>(&mut v, "bf16");
    add_shapes::<f16>(&mut v, "f16");
    kiln_tests::main(v)
}
