"""PyTorch denominators for kiln's grouped MXFP8 GEMM (issue 7), timed like ../shared/peers.

    python3 xtask/peers/torch_gemm.py      # on the GPU machine; appends to $OUT/peers.jsonl

For each grouped shape g{G}xm{m}/n{N}/k{K} that `cargo xtask bench --ops mxfp8` times (G experts of
m tokens, weights [G, N, K]) it records, under op `grouped_gemm_mxfp8`:
- impl `torch_scaled_mm`: one dense `torch._scaled_mm` FP8 (e4m3, tensorwise scales) of
  [G·m, K] × [K, N]: the same FLOPs on a single weight matrix (the best FP8 GEMM PyTorch has);
- impl `torch_scaled_grouped_mm`: `torch._scaled_grouped_mm` FP8 rowwise, [G·m, K] × [G, K, N]
  with offsets: the same grouped problem.
Both with bf16 output. Times are CUDA-graph replay medians (triton's do_bench_cudagraph), so
`compare.py` gives peer_us / kiln_us = kiln TFLOP/s / peer TFLOP/s.
"""
import json, os
import torch
from triton.testing import do_bench_cudagraph

OUT = os.environ.get("OUT", "/tmp")
SHAPES = [(8, 512, 4096, 7168), (8, 2048, 7168, 2048), (64, 64, 4096, 7168), (32, 8, 4096, 7168),
          (32, 128, 4096, 7168), (8, 4096, 7168, 2048), (32, 256, 4096, 7168), (64, 16, 4096, 7168),
          (8, 1, 4096, 7168)]
rows = []


def fp8(*shape):
    return (torch.randn(*shape, device="cuda") * 0.5).to(torch.float8_e4m3fn)


def record(shape, impl, fn, flops, nbytes):
    try:
        fn(); torch.cuda.synchronize()
        ms = do_bench_cudagraph(fn, rep=200, return_mode="median")
        r = dict(op="grouped_gemm_mxfp8", shape=shape, impl=impl, us=round(ms * 1e3, 2),
                 gbps=round(nbytes / (ms * 1e-3) / 1e9, 1), tflops=round(flops / (ms * 1e-3) / 1e12, 1))
    except Exception as e:  # a peer that fails is reported, not hidden
        r = dict(op="grouped_gemm_mxfp8", shape=shape, impl=impl, error=repr(e)[:300])
    rows.append(r)
    print(json.dumps(r), flush=True)


for g, m, n, k in SHAPES:
    t = g * m
    name = f"g{g}xm{m}/n{n}/k{k}"
    flops = 2.0 * t * n * k
    a = fp8(t, k)
    one = torch.tensor(1.0, device="cuda")
    w1 = fp8(n, k)
    out1 = torch.empty(t, n, dtype=torch.bfloat16, device="cuda")
    record(name, "torch_scaled_mm",
           lambda: torch._scaled_mm(a, w1.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
           flops, t * k + n * k + t * n * 2)
    del w1, out1
    wg = fp8(g, n, k)
    sa = torch.rand(t, device="cuda", dtype=torch.float32) + 0.5
    sb = torch.rand(g, n, device="cuda", dtype=torch.float32) + 0.5
    offs = torch.arange(1, g + 1, device="cuda", dtype=torch.int32) * m
    record(name, "torch_scaled_grouped_mm",
           lambda: torch._scaled_grouped_mm(a, wg.transpose(-2, -1), sa, sb, offs=offs, out_dtype=torch.bfloat16),
           flops, g * n * k + t * k + t * n * 2)
    del wg, a
    torch.cuda.empty_cache()

with open(os.path.join(OUT, "peers.jsonl"), "a") as f:
    for r in rows:
        if "us" in r:
            f.write(json.dumps(r) + "\n")
