//! Benchmarks of kiln-activation (shapes from the issue and `../shared/peers/bench_peers.py`):
//! `silu_and_mul` and `gelu_tanh_and_mul`, bf16, `t × 2d` for d ∈ {4096, 14336} and
//! t ∈ {1 … 16384}; bytes = t·3d·2 (input read once, output written once). Plus the expert filter
//! at skip ratios 0, ½ and 0.9 (`silu_and_mul_filtered_skip{0,50,90}`, and
//! `silu_and_mul_filtered_early_skip{…}` with `Options::ids_before_wait`; peer rows from
//! `xtask/peers/sglang_filtered.py`; bytes count only the rows computed).

use half::bf16;
use kiln_activation::{
    Activation, Options, Rounding, Shape, act_and_mul, act_and_mul_with, filtered_specs_for, spec_for, tiled_spec_for, wide_spec_for,
};
use kiln_runtime::cudarc::driver::CudaSlice;

use kiln_tests::data::Rng;

use super::Ctx;

/// Uniform in (-4, 4), never 0 (bench data only needs ordinary numbers, not zeros).
fn value(rng: &mut Rng) -> f32 {
    let v = rng.range(-4.0, 4.0) as f32;
    if v == 0.0 { 0.5 } else { v }
}

/// `sets` input buffers of `n` elements filled with a repeated random pattern, and as many outputs.
type Sets = Vec<CudaSlice<bf16>>;

fn buffers(c: &Ctx, sets: usize, n_in: usize, n_out: usize) -> anyhow::Result<(Sets, Sets)> {
    let stream = c.rt.stream();
    let mut mix = Rng::new(0x5eed);
    let pattern: Vec<bf16> = (0..(1 << 20).min(n_in)).map(|_| bf16::from_f32(value(&mut mix))).collect();
    let mut inputs = Vec::with_capacity(sets);
    let mut outputs = Vec::with_capacity(sets);
    for _ in 0..sets {
        let mut x = stream.alloc_zeros::<bf16>(n_in)?;
        let mut at = 0;
        while at < n_in {
            let len = pattern.len().min(n_in - at);
            stream.memcpy_htod(&pattern[..len], &mut x.slice_mut(at..at + len))?;
            at += len;
        }
        inputs.push(x);
        outputs.push(stream.alloc_zeros::<bf16>(n_out)?);
    }
    stream.synchronize()?;
    Ok((inputs, outputs))
}

/// The filtered rows `silu_and_mul_{kind}_{skip}`: kinds `filtered` (ids after the PDL wait, as
/// issue 3 asks) and `filtered_early` ([`Options::ids_before_wait`], as SGLang always reads them),
/// at these fractions of skipped rows.
const FILTER_KINDS: [&str; 2] = ["filtered", "filtered_early"];
const SKIPS: [(&str, f64); 3] = [("skip0", 0.0), ("skip50", 0.5), ("skip90", 0.9)];

fn filtered_op(kind: &str, skip: &str) -> String {
    format!("silu_and_mul_{kind}_{skip}")
}

/// Times every shape.
pub fn run(c: &mut Ctx) -> anyhow::Result<()> {
    let rt = c.rt.clone();
    let mut specs = Vec::new();
    for act in [Activation::Silu, Activation::GeluTanh] {
        specs.push(spec_for::<bf16>(&rt, act, Rounding::Once).clone());
        specs.extend(wide_spec_for::<bf16>(&rt, act, Rounding::Once).cloned());
        specs.push(tiled_spec_for::<bf16>(&rt, act, Rounding::Once).clone());
        specs.extend(filtered_specs_for::<bf16>(&rt, act, Rounding::Once).into_iter().flatten().cloned());
    }
    rt.preload(&specs)?;
    let tokens: &[usize] = if c.quick { &[1, 32, 256, 2048, 8192] } else { &[1, 8, 32, 128, 512, 2048, 8192, 16384] };
    let filtered_tokens: &[usize] = if c.quick { &[128, 8192] } else { &[32, 128, 512, 2048, 8192, 16384] };
    for d in [4096usize, 14336] {
        for &t in tokens {
            let shape = format!("{t}x{}", 2 * d);
            let wants_filtered = filtered_tokens.contains(&t)
                && FILTER_KINDS.iter().any(|k| SKIPS.iter().any(|(skip, _)| c.wants(&filtered_op(k, skip), &shape)));
            if ![Activation::Silu, Activation::GeluTanh].iter().any(|a| c.wants(a.op(), &shape)) && !wants_filtered {
                continue;
            }
            let bytes = t * 3 * d * 2;
            let sets = c.sets_for(bytes);
            let (inputs, mut outputs) = buffers(c, sets, t * 2 * d, t * d)?;
            for act in [Activation::Silu, Activation::GeluTanh] {
                if !c.wants(act.op(), &shape) {
                    continue;
                }
                let us = c.time(sets, |i| act_and_mul(&rt, act, &inputs[i], &mut outputs[i], Shape::contiguous(t, d)))?;
                c.record(act.op(), &shape, us, bytes as f64, None)?;
            }
            if !wants_filtered {
                continue;
            }
            for (skip, ratio) in SKIPS {
                // Exactly round(t·ratio) rows skipped, at random positions.
                let skipped = (t as f64 * ratio).round() as usize;
                let mut ids: Vec<i32> = (0..t).map(|i| if i < skipped { -1 } else { (i % 8) as i32 }).collect();
                let mut mix = Rng::new(t as u64 ^ 0xf11e);
                for i in (1..t).rev() {
                    ids.swap(i, mix.below(i as u64 + 1) as usize);
                }
                let dev_ids = rt.stream().clone_htod(&ids)?;
                let computed_bytes = (t - skipped) * 3 * d * 2;
                for kind in FILTER_KINDS {
                    let op = filtered_op(kind, skip);
                    let opts = Options::new().expert_filter(&dev_ids, 1);
                    let opts = if kind == "filtered_early" { opts.ids_before_wait() } else { opts };
                    if !c.wants(&op, &shape) {
                        continue;
                    }
                    let us = c.time(sets, |i| {
                        act_and_mul_with(&rt, Activation::Silu, &inputs[i], &mut outputs[i], Shape::contiguous(t, d), &opts)
                    })?;
                    c.record(&op, &shape, us, computed_bytes as f64, None)?;
                }
            }
        }
    }
    Ok(())
}
