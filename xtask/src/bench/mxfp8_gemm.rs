//! Benchmarks of kiln-mxfp8's grouped MXFP8 GEMM (issue 7): `G` experts of `m` tokens each,
//! weights `[G, N, K]`. Prefill shapes (m ≥ 512) are read as TFLOP/s against `torch._scaled_mm`
//! FP8 tensorwise and `torch._scaled_grouped_mm` FP8 rowwise (timed by the lead with PyTorch on
//! the same GPU: 970 TF at G8·m512·N4096·K7168, 890 TF at G8·m2048·N7168·K2048, 590 TF at
//! G32·m128, 317 TF at G64·m64); decode shapes (m ≤ 64) as the weight bytes' share of copy
//! bandwidth.
//!
//! Op `grouped_gemm_mxfp8` (the automatic kernel choice), shape `"g{G}xm{m}/n{N}/k{K}"`, with
//! `tflops`; bytes = G·N·K·(1 + 1/32) (weights and scales) + T·K·(1 + 1/32) (tokens and scales) +
//! T·N·2 (bf16 output). Without `--quick` every SM90 kernel is also timed on its own, op
//! `grouped_gemm_mxfp8.<kernel>`. Data: random E4M3 codes (never NaN) and scales near 2^-4;
//! weights are allocated once per (N, K) and shared by the shapes (one set: every shape moves far
//! more than the 50 MB L2 holds, except the small decode ones, which get rotated token sets).

use half::bf16;
use kiln_mxfp8::{Experts, GemmKernel, GroupedGemmShape, Mxfp8Operand, grouped_gemm_kernel, grouped_gemm_mxfp8_with, layout};
use kiln_runtime::cudarc::driver::CudaSlice;
use kiln_runtime::{E4m3, E8m0};

use super::Ctx;

/// Random E4M3 codes (finite: 0x7F/0xFF never appear) from a fixed seed.
fn codes(n: usize, seed: u64) -> Vec<E4m3> {
    let mut z = seed | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        z ^= z << 13;
        z ^= z >> 7;
        z ^= z << 17;
        for b in z.to_le_bytes() {
            if v.len() < n {
                // Magnitudes 2^-6 … 2^6 with random signs and mantissas.
                let mag = 0x18 + (b & 0x3F) % 0x60;
                v.push(E4m3((b & 0x80) | mag));
            }
        }
    }
    v
}

/// Scale bytes 2^-5 … 2^-3.
fn scales(n: usize, seed: u64) -> Vec<E8m0> {
    codes(n, seed).into_iter().map(|c| E8m0(122 + c.0 % 3)).collect()
}

/// The weights of one (N, K): elements and scales.
type Weights = ((usize, usize), CudaSlice<E4m3>, CudaSlice<E8m0>);

struct Shape {
    g: usize,
    m: usize,
    n: usize,
    k: usize,
}

/// Times every shape.
pub fn run(c: &mut Ctx) -> anyhow::Result<()> {
    let rt = c.rt.clone();
    let stream = rt.stream().clone();
    let s = |g, m, n, k| Shape { g, m, n, k };
    let mut shapes = vec![s(8, 512, 4096, 7168), s(8, 2048, 7168, 2048), s(64, 64, 4096, 7168), s(32, 8, 4096, 7168)];
    if !c.quick {
        shapes.extend([s(32, 128, 4096, 7168), s(8, 4096, 7168, 2048), s(32, 256, 4096, 7168), s(64, 16, 4096, 7168), s(8, 1, 4096, 7168)]);
    }
    // One weight tensor per (N, K), as large as the largest G needs.
    let mut weights: Vec<Weights> = Vec::new();
    let mut sizes: Vec<((usize, usize), usize)> = Vec::new();
    for sh in &shapes {
        let need = sh.g * sh.n * sh.k;
        match sizes.iter_mut().find(|s| s.0 == (sh.n, sh.k)) {
            Some(s) => s.1 = s.1.max(need),
            None => sizes.push(((sh.n, sh.k), need)),
        }
    }
    for (nk, need) in sizes {
        weights.push((nk, stream.clone_htod(&codes(need, 7))?, stream.clone_htod(&scales(need / 32, 11))?));
    }
    for sh in shapes {
        let (g, m, n, k) = (sh.g, sh.m, sh.n, sh.k);
        let t = g * m;
        let w = weights.iter().find(|w| w.0 == (n, k)).expect("allocated above");
        let wq = w.1.slice(0..g * n * k);
        let ws = w.2.slice(0..g * n * k / 32);
        let counts = vec![m as i32; g];
        let (bso, scale_rows) = layout::blockscale_offsets(&counts, kiln_mxfp8::ScaleLayout::Blocked128x4)?;
        let offsets = stream.clone_htod(&layout::expert_offsets(&counts)?)?;
        let counts_d = stream.clone_htod(&counts)?;
        let bso_d = stream.clone_htod(&bso)?;
        let token_bytes = t * k + t * k / 32 + t * n * 2;
        let sets = c.sets_for(token_bytes).min(8);
        let xq = (0..sets).map(|i| stream.clone_htod(&codes(t * k, 100 + i as u64))).collect::<Result<Vec<_>, _>>()?;
        let xs = (0..sets).map(|i| stream.clone_htod(&scales(scale_rows * k / 32, 200 + i as u64))).collect::<Result<Vec<_>, _>>()?;
        let mut out = (0..sets).map(|_| stream.alloc_zeros::<bf16>(t * n)).collect::<Result<Vec<_>, _>>()?;
        let mut ws_buf = stream.alloc_zeros::<u8>(16)?;
        let shape = GroupedGemmShape { experts: g, n, k, rows: t };
        let bytes = (g * n * k + t * k) as f64 * (1.0 + 1.0 / 32.0) + (t * n * 2) as f64;
        let flops = 2.0 * (t * n * k) as f64;
        let name = format!("g{g}xm{m}/n{n}/k{k}");
        let auto = grouped_gemm_kernel(&rt, &shape)?;
        let kernels: Vec<Option<GemmKernel>> = if c.quick {
            vec![None]
        } else {
            std::iter::once(None)
                .chain([GemmKernel::MmaPrefill, GemmKernel::MmaDecode, GemmKernel::WgmmaPrefill, GemmKernel::WgmmaDecode].map(Some))
                .collect()
        };
        for kernel in kernels {
            let us = c.time(sets, |i| {
                let ex = Experts { expert_offsets: &offsets, tokens_per_expert: &counts_d, blockscale_offsets: &bso_d };
                grouped_gemm_mxfp8_with(
                    &rt,
                    Mxfp8Operand { data: &wq, scales: &ws },
                    Mxfp8Operand { data: &xq[i], scales: &xs[i] },
                    ex,
                    &mut out[i],
                    &mut ws_buf,
                    shape,
                    kernel,
                )
            })?;
            let op = match kernel {
                None => "grouped_gemm_mxfp8".to_string(),
                Some(kk) => format!("grouped_gemm_mxfp8.{}", kk.tag()),
            };
            c.record(&op, &name, us, bytes, Some(flops))?;
        }
        eprintln!("  ({name}: automatic choice {})", auto.tag());
    }
    Ok(())
}
