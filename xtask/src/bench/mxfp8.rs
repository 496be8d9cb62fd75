//! Benchmarks of kiln-mxfp8's grouped quantization (issue 6): bf16 `[m_total, k]` →
//! E4M3 + E8M0 scales in the 128×4 blocked layout, for (m_total, k) ∈ {(128, 7168), (4096, 7168),
//! (16384, 7168), (32768, 2048)} with 8, 32, 32 and 64 experts. The split is uneven and fixed:
//! expert g gets a share proportional to `1 + (5g + 3) mod 7` (shares 1…7, every expert non-empty),
//! the rounding remainder going to the last. Bytes = m_total·k·(2 + 1 + 1/32) (input read, q and
//! scales written; the padding scale rows are not counted). Op `quantize_mxfp8_grouped`, shape
//! `"{m_total}x{k}/e{experts}"` (the automatic kernel choice), `quantize_mxfp8_grouped.{registers,
//! tma2,tma4}` (each kernel forced); also `dequantize_mxfp8_grouped` (bf16 out, same bytes) on the
//! quantizer's output.

use half::bf16;
use kiln_mxfp8::{
    Experts, Mxfp8Shape, QuantKernel, ScaleLayout, dequantize_mxfp8_grouped, layout, quantize_mxfp8_grouped, quantize_mxfp8_grouped_with,
};
use kiln_runtime::cudarc::driver::CudaSlice;
use kiln_runtime::{E4m3, E8m0};

use super::Ctx;

/// The fixed uneven split of `rows` over `experts`.
fn split(rows: usize, experts: usize) -> Vec<i32> {
    let w: Vec<usize> = (0..experts).map(|g| 1 + (5 * g + 3) % 7).collect();
    let total: usize = w.iter().sum();
    let mut t: Vec<i32> = w.iter().map(|&x| (x * rows / total) as i32).collect();
    let rest = rows as i32 - t.iter().sum::<i32>();
    if let Some(last) = t.last_mut() {
        *last += rest;
    }
    t
}

/// `sets` bf16 buffers of `n` elements holding a repeated pseudo-random pattern (values in ±4
/// with a spread of block magnitudes, never zero).
fn inputs(c: &Ctx, sets: usize, n: usize) -> anyhow::Result<Vec<CudaSlice<bf16>>> {
    let stream = c.rt.stream();
    let mut z = 0x5eedu64;
    let pattern: Vec<bf16> = (0..(1usize << 20).min(n))
        .map(|i| {
            z = z.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let u = ((z >> 40) as f32 + 0.5) / (1u64 << 24) as f32 * 8.0 - 4.0;
            bf16::from_f32(u * (1 << ((i / 32) % 5)) as f32)
        })
        .collect();
    let mut v = Vec::with_capacity(sets);
    for _ in 0..sets {
        let mut x = stream.alloc_zeros::<bf16>(n)?;
        let mut at = 0;
        while at < n {
            let len = pattern.len().min(n - at);
            stream.memcpy_htod(&pattern[..len], &mut x.slice_mut(at..at + len))?;
            at += len;
        }
        v.push(x);
    }
    stream.synchronize()?;
    Ok(v)
}

/// Times every shape.
pub fn run(c: &mut Ctx) -> anyhow::Result<()> {
    let rt = c.rt.clone();
    let stream = rt.stream().clone();
    let l = ScaleLayout::Blocked128x4;
    let shapes: &[(usize, usize, usize)] = if c.quick {
        &[(128, 7168, 8), (4096, 7168, 32)]
    } else {
        &[(128, 7168, 8), (4096, 7168, 32), (16384, 7168, 32), (32768, 2048, 64)]
    };
    for &(rows, k, experts) in shapes {
        if !c.wants("quantize_mxfp8_grouped", &format!("{rows}x{k}/e{experts}")) {
            continue;
        }
        let tokens = split(rows, experts);
        let (scale_offsets, scale_rows) = layout::blockscale_offsets(&tokens, l)?;
        let offsets = stream.clone_htod(&layout::expert_offsets(&tokens)?)?;
        let counts = stream.clone_htod(&tokens)?;
        let scale_offsets = stream.clone_htod(&scale_offsets)?;
        let ex = Experts { expert_offsets: &offsets, tokens_per_expert: &counts, blockscale_offsets: &scale_offsets };
        let n = rows * k;
        let bytes = n as f64 * (3.0 + 1.0 / 32.0);
        let sets = c.sets_for(bytes as usize);
        let mut xs = inputs(c, sets, n)?;
        let mut qs = (0..sets).map(|_| stream.alloc_zeros::<E4m3>(n)).collect::<Result<Vec<_>, _>>()?;
        let mut ss = (0..sets).map(|_| stream.alloc_zeros::<E8m0>(scale_rows * k / 32)).collect::<Result<Vec<_>, _>>()?;
        let shape = Mxfp8Shape::contiguous(rows, k);
        let name = format!("{rows}x{k}/e{experts}");
        let us = c.time(sets, |i| quantize_mxfp8_grouped(&rt, &xs[i], ex, &mut qs[i], &mut ss[i], shape, l))?;
        c.record("quantize_mxfp8_grouped", &name, us, bytes, None)?;
        // Each kernel forced (the automatic choice is one of them).
        for (kernel, tag) in [(QuantKernel::Registers, "registers"), (QuantKernel::Tma2, "tma2"), (QuantKernel::Tma4, "tma4")] {
            let us = c.time(sets, |i| quantize_mxfp8_grouped_with(&rt, &xs[i], ex, &mut qs[i], &mut ss[i], shape, l, kernel))?;
            c.record(&format!("quantize_mxfp8_grouped.{tag}"), &name, us, bytes, None)?;
        }
        let us = c.time(sets, |i| dequantize_mxfp8_grouped(&rt, &qs[i], &ss[i], ex, &mut xs[i], shape, l))?;
        c.record("dequantize_mxfp8_grouped", &name, us, bytes, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn split_is_uneven_and_complete() {
        for (rows, e) in [(128usize, 8usize), (4096, 32), (32768, 64)] {
            let t = super::split(rows, e);
            assert_eq!(t.len(), e);
            assert_eq!(t.iter().sum::<i32>() as usize, rows);
            assert!(t.iter().all(|&m| m > 0));
            assert!(t.iter().max() > t.iter().min());
        }
    }
}
