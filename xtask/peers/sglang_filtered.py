"""SGLang's filtered activation (silu_and_mul with expert_ids), timed like ../shared/peers.

    python3 xtask/peers/sglang_filtered.py   # on the GPU machine, from the repository root, after
                                             # `cargo xtask gpu-ci --pack --peers`; appends to $OUT/peers.jsonl

The shared peers script times SGLang's activation unfiltered only. This one times it with the
expert filter (expert_step 1) at the shapes and skip ratios of kiln's bench rows
`silu_and_mul_filtered_skip{0,50,90}` ({32, 128, 512, 2048, 8192, 16384} rows × 2·{4096, 14336},
that fraction of the rows' ids -1 at random positions), under the same op names, impl
`sglang_jit`, so that `compare.py` pairs them. GB/s count the kept rows only, as kiln's rows do.
Note: SGLang reads the ids before its PDL wait; kiln reads them after it (issue 3) unless the
caller passes `Options::ids_before_wait` (bench rows `silu_and_mul_filtered_early_skip*`, which
get the same SGLang rows under their names).
"""
import json, os, random, subprocess, sys
peers = os.environ.get("PEERS_DIR", os.path.join("target", "peers"))
whl = os.path.join(peers, "pkg", "whl")
subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                *[os.path.join(whl, w) for w in os.listdir(whl)]], check=True)
sys.path.insert(0, os.path.join(peers, "pkg"))
import torch
from triton.testing import do_bench_cudagraph
from sglang.kernels.ops.activation import activation as sg_act

OUT = os.environ.get("OUT", "/tmp")
L2_FLUSH_BYTES = 256 << 20  # rotate input sets so that no timing is served from the 50 MB L2
rows = []


def sets_for(nbytes):
    return max(1, min(64, -(-L2_FLUSH_BYTES // max(nbytes, 1))))


def bench(fn, k):
    run = lambda: [fn(i) for i in range(k)]
    run(); torch.cuda.synchronize()
    return do_bench_cudagraph(run, rep=200, return_mode="median") / k  # ms


for d in [4096, 14336]:
    for t in [32, 128, 512, 2048, 8192, 16384]:
        k = sets_for(t * 3 * d * 2)
        inps = [torch.randn(t, 2 * d, dtype=torch.bfloat16, device="cuda") for _ in range(k)]
        outs = [torch.empty(t, d, dtype=torch.bfloat16, device="cuda") for _ in range(k)]
        for tag, ratio in [("skip0", 0.0), ("skip50", 0.5), ("skip90", 0.9)]:
            skipped = round(t * ratio)
            ids = [-1 if i < skipped else i % 8 for i in range(t)]
            random.Random(t).shuffle(ids)
            dids = torch.tensor(ids, dtype=torch.int32, device="cuda")
            op, shape = f"silu_and_mul_filtered_{tag}", f"{t}x{2 * d}"
            try:
                ms = bench(lambda i: sg_act.silu_and_mul(inps[i], outs[i], expert_ids=dids, expert_step=1), k)
                nbytes = (t - skipped) * 3 * d * 2
                r = dict(op=op, shape=shape, impl="sglang_jit", us=round(ms * 1e3, 2), gbps=round(nbytes / (ms * 1e-3) / 1e9, 1))
            except Exception as e:  # a peer that fails is reported, not hidden
                r = dict(op=op, shape=shape, impl="sglang_jit", error=repr(e)[:300])
            rows.append(r); print(json.dumps(r), flush=True)
            # SGLang always reads the ids before its wait: the peer of kiln's `ids_before_wait` rows too.
            rows.append(dict(r, op=f"silu_and_mul_filtered_early_{tag}")); print(json.dumps(rows[-1]), flush=True)
        del inps, outs

with open(os.path.join(OUT, "peers.jsonl"), "a") as f:
    for r in rows:
        if "us" in r:
            f.write(json.dumps(r) + "\n")
