//! Benchmarks of kiln-rmsnorm (shapes from the issue and `../shared/peers/bench_peers.py`):
//! `rmsnorm_hf` (paired with SGLang and torch.compile), plus `rms_norm` (fp32 form) and
//! `fused_add_rms_norm` at a few shapes under their own names (no peer).

use half::bf16;
use kiln_rmsnorm::{Norm, Shape};
use kiln_runtime::cudarc::driver::CudaSlice;

use super::Ctx;

/// `n` bf16 values in [-2, 2), deterministic (the values do not affect the timing).
fn data(n: usize, salt: u32) -> Vec<bf16> {
    (0..n as u32).map(|i| bf16::from_f32(((i.wrapping_mul(2_654_435_761) ^ salt) >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0)).collect()
}

fn upload_sets(c: &Ctx, host: &[bf16], sets: usize) -> anyhow::Result<Vec<CudaSlice<bf16>>> {
    (0..sets).map(|_| Ok(c.rt.stream().clone_htod(host)?)).collect()
}

/// The buffers of one `rmsnorm_hf` shape: rotated input and output sets and the weight.
struct Hf {
    bytes: usize,
    sets: usize,
    xs: Vec<CudaSlice<bf16>>,
    outs: Vec<CudaSlice<bf16>>,
    w: CudaSlice<bf16>,
    shape: Shape,
}

impl Hf {
    fn new(c: &Ctx, t: usize, h: usize) -> anyhow::Result<Hf> {
        let bytes = 2 * t * h * 2 + h * 2;
        let sets = c.sets_for(bytes);
        let xs = upload_sets(c, &data(t * h, 1), sets)?;
        let outs = upload_sets(c, &data(t * h, 2), sets)?;
        let w = c.rt.stream().clone_htod(&data(h, 3))?;
        Ok(Hf { bytes, sets, xs, outs, w, shape: Shape::new(t, h) })
    }
}

/// Times `rms_norm_hf` on `t` rows of `h` as row `op` / `{t}x{h}` (unless KILN_BENCH_ONLY drops it).
fn time_hf(c: &mut Ctx, op: &str, t: usize, h: usize) -> anyhow::Result<()> {
    let name = format!("{t}x{h}");
    if !c.wants(op, &name) {
        return Ok(());
    }
    let Hf { bytes, sets, xs, mut outs, w, shape } = Hf::new(c, t, h)?;
    let rt = c.rt.clone();
    let us = c.time(sets, |i| kiln_rmsnorm::rms_norm_hf(&rt, &xs[i], &w, &mut outs[i], shape, 1e-6))?;
    c.record(op, &name, us, bytes as f64, None)
}

/// Times every shape.
pub fn run(c: &mut Ctx) -> anyhow::Result<()> {
    let toks: &[usize] = if c.quick { &[1, 32, 256, 2048, 8192] } else { &[1, 8, 32, 128, 512, 2048, 8192, 16384] };
    for h in [128usize, 4096, 8192] {
        let extra: &[usize] = if h == 128 { &[65536] } else { &[] };
        for &t in toks.iter().chain(extra) {
            time_hf(c, "rmsnorm_hf", t, h)?;
        }
    }

    // Latency-bound launches of other sizes (op `rmsnorm_hf.small`): the data behind the launch
    // rules for few rows (CTA size, PDL trigger).
    if !c.quick {
        for h in [64usize, 128, 256, 512, 1024, 2048, 4096, 8192] {
            for t in [1usize, 2, 4, 8] {
                time_hf(c, "rmsnorm_hf.small", t, h)?;
            }
        }
    }

    // Every vectorised launch shape at the sizes where the peers come closest (op
    // `rmsnorm_hf.sweep`, shape `{t}x{h}/g{log2 group}k{chunks}r{rows}`): the data behind the
    // automatic choice in ops-rmsnorm/src/plan.rs.
    if !c.quick {
        for (t, h) in [
            (65536usize, 128usize),
            (16384, 128),
            (16384, 8192),
            (8192, 8192),
            (16384, 4096),
            (8192, 4096),
            (2048, 8192),
            (1, 4096),
            (1, 8192),
            (1, 512),
            (128, 512),
            (2048, 512),
            (1, 1024),
            (128, 1024),
            (2048, 1024),
            (16384, 1024),
        ] {
            if !c.wants("rmsnorm_hf.sweep", &format!("{t}x{h}/")) {
                continue;
            }
            let Hf { bytes, sets, xs, mut outs, w, shape } = Hf::new(c, t, h)?;
            let rt = c.rt.clone();
            for v in kiln_rmsnorm::variants(h / 8, false).into_iter().filter(|v| !v.scalar && v.chunks_per_thread != 0) {
                let us = c.time(sets, |i| kiln_rmsnorm::forced::rms_norm(&rt, &xs[i], &w, &mut outs[i], shape, Norm::hf(1e-6), v))?;
                let tag =
                    format!("{t}x{h}/g{}k{}r{}{}", v.log2_group, v.chunks_per_thread, v.rows_per_thread, if v.warp { "w" } else { "" });
                c.record("rmsnorm_hf.sweep", &tag, us, bytes as f64, None)?;
            }
        }
    }

    let shapes: &[(usize, usize)] =
        if c.quick { &[(1, 4096), (2048, 4096)] } else { &[(1, 4096), (128, 4096), (2048, 4096), (16384, 4096), (16384, 8192)] };
    for &(t, h) in shapes {
        if !c.wants("rms_norm", &format!("{t}x{h}")) && !c.wants("fused_add_rms_norm", &format!("{t}x{h}")) {
            continue;
        }
        let shape = Shape::new(t, h);
        let w = c.rt.stream().clone_htod(&data(h, 3))?;
        let rt = c.rt.clone();

        let bytes = 2 * t * h * 2 + h * 2;
        let sets = c.sets_for(bytes);
        let xs = upload_sets(c, &data(t * h, 1), sets)?;
        let mut outs = upload_sets(c, &data(t * h, 2), sets)?;
        let us = c.time(sets, |i| kiln_rmsnorm::rms_norm(&rt, &xs[i], &w, &mut outs[i], shape, Norm::fp32(1e-6)))?;
        c.record("rms_norm", &format!("{t}x{h}"), us, bytes as f64, None)?;

        // Reads x and residual, writes both.
        let bytes = 4 * t * h * 2 + h * 2;
        let sets = c.sets_for(bytes);
        let mut xs = upload_sets(c, &data(t * h, 1), sets)?;
        let mut rs = upload_sets(c, &data(t * h, 4), sets)?;
        let us = c.time(sets, |i| kiln_rmsnorm::fused_add_rms_norm(&rt, &mut xs[i], &mut rs[i], &w, shape, Norm::hf(1e-6)))?;
        c.record("fused_add_rms_norm", &format!("{t}x{h}"), us, bytes as f64, None)?;
    }
    Ok(())
}
