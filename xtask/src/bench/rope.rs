//! Benchmarks of kiln-rope: `fused_qknorm_rope` on the shapes of `../shared/peers/bench_peers.py`,
//! in the peer's configuration (bf16, NeoX, full rotary, eps 1e-6, base 1e6, no YaRN, int32
//! positions uniform in [0, 32768)). Bytes = q and k heads read and written once + positions.
//! `fused_qknorm_rope.interleaved`: the same with GPT-J (interleaved) pairs at a few sizes;
//! `apply_rope_qkv`: RoPE alone (no norm) on the same shapes at a few sizes (no peer rows).

use half::bf16;
use kiln_rope::{Heads, QkNormRope, Rope, Rows, apply_rope_qkv, fused_qk_norm_rope};
use kiln_runtime::cudarc::driver::CudaSlice;

use super::Ctx;

/// Cheap deterministic data (the kernel's time does not depend on the values).
fn data(n: usize, seed: u64) -> Vec<bf16> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
        })
        .collect()
}

/// A pair style's constructor (base, rotary_dim).
type Style = fn(f64, usize) -> Rope;

/// Times every shape.
pub fn run(c: &mut Ctx) -> anyhow::Result<()> {
    let tokens: &[usize] = if c.quick { &[1, 32, 256, 2048, 8192] } else { &[1, 8, 32, 128, 512, 2048, 8192, 16384] };
    let few: &[usize] = if c.quick { &[256] } else { &[1, 128, 512, 2048, 16384] };
    // (op, pair style, with the norm, token counts)
    let rows: [(&str, Style, bool, &[usize]); 3] = [
        ("fused_qknorm_rope", Rope::neox, true, tokens),
        ("fused_qknorm_rope.interleaved", Rope::interleaved, true, few),
        ("apply_rope_qkv", Rope::neox, false, few),
    ];
    for (op, style, norm, tokens) in rows {
        for (nq, nk, nv, hd) in [(32, 4, 4, 128), (64, 4, 4, 128), (16, 2, 2, 256)] {
            time_shape(c, op, Heads { nq, nk, nv, head_dim: hd }, style(1e6, hd), norm, tokens)?;
        }
    }
    Ok(())
}

/// Times `fused_qk_norm_rope` (`norm`) or `apply_rope_qkv` with `rope` on `heads` at each token
/// count, as rows `op`.
fn time_shape(c: &mut Ctx, op: &str, heads: Heads, rope: Rope, norm: bool, tokens: &[usize]) -> anyhow::Result<()> {
    let stream = c.rt.stream().clone();
    let Heads { nq, nk, nv, head_dim: hd } = heads;
    let width = (nq + nk + nv) * hd;
    let cfg = QkNormRope { heads, eps: 1e-6, rope };
    let (qw, kw) = (stream.clone_htod(&data(hd, 1))?, stream.clone_htod(&data(hd, 2))?);
    for &t in tokens {
        let name = format!("{t}x(q{nq},k{nk},v{nv})x{hd}");
        if !c.wants(op, &name) {
            continue;
        }
        let bytes = 2 * t * (nq + nk) * hd * 2 + t * 4;
        let sets = c.sets_for(bytes);
        let mut qkvs: Vec<CudaSlice<bf16>> =
            (0..sets).map(|i| stream.clone_htod(&data(t * width, 3 + i as u64))).collect::<Result<_, _>>()?;
        let positions: Vec<i32> = (0..t).map(|i| ((i as u64 * 2_654_435_761) % 32768) as i32).collect();
        let positions = stream.clone_htod(&positions)?;
        let rows = Rows::contiguous(t, width);
        let rt = c.rt.clone();
        let us = if norm {
            c.time(sets, |i| fused_qk_norm_rope(&rt, &mut qkvs[i], rows, &qw, &kw, &positions, &cfg))?
        } else {
            c.time(sets, |i| apply_rope_qkv(&rt, &mut qkvs[i], rows, &positions, heads, &rope))?
        };
        c.record(op, &name, us, bytes as f64, None)?;
    }
    Ok(())
}
