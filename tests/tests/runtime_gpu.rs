//! T2: the device prelude computes the right values, a PDL consumer sees a slow producer's
//! writes, a fresh process reloads from the disk cache without compiling, a CUBIN the driver
//! rejects is quarantined and rebuilt, launch configurations are validated, several GPUs share
//! one cache.

use half::{bf16, f16};
use kiln_runtime::cudarc::driver::CudaSlice;
use kiln_runtime::{DtypeId, E4m3, E8m0, Error, Knobs, LaunchConfig, Runtime, stats};
use kiln_tests::data::{Rng, TestFloat, seed};
use kiln_tests::gpu::{download, filled, ptr, rt, upload, zeros};
use kiln_tests::prelude_kernels::PdlParams;
use kiln_tests::{Need, prelude_kernels as pk, trial};

#[repr(C)]
#[derive(Clone, Copy)]
struct CopyParams {
    input: u64,
    out: u64,
    n_vec: i64,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct ConvertParams {
    in_f32: u64,
    in_t: u64,
    out_t: u64,
    out_f32: u64,
    out_e4m3: u64,
    out_e4m3_f32: u64,
    out_e8m0_f32: u64,
    n: i64,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct ReduceParams {
    input: u64,
    sums: u64,
    maxes: u64,
    warp_sums: u64,
    disagree: u64,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct MathParams {
    input: u64,
    rsqrt_out: u64,
    div_out: u64,
    n: i64,
}

fn vec_copy<T: TestFloat>(dt: DtypeId, pdl: bool) -> anyhow::Result<()> {
    let rt = rt()?;
    let lanes = 16 / dt.size();
    let n_vec = 1000 * 3 + 7;
    let mut rng = Rng::new(seed());
    let host: Vec<T> = rng.normals(n_vec * lanes, 3.0).into_iter().map(T::from_f64).collect();
    let input = upload(&rt, &host)?;
    let out = filled(&rt, host.len(), T::poison())?;
    let k = rt.kernel(&pk::vec_copy(dt, lanes as u32, pdl))?;
    anyhow::ensure!(k.is_pdl() == (pdl && rt.pdl_enabled()));
    let p = CopyParams { input: ptr(&rt, &input), out: ptr(&rt, &out), n_vec: n_vec as i64 };
    // SAFETY: CopyParams mirrors the kernel's struct; both buffers hold n_vec * lanes elements.
    unsafe { rt.launch(&k, LaunchConfig::linear((n_vec as u32).div_ceil(128), 128)).run(&p)? };
    let got = download(&rt, &out)?;
    anyhow::ensure!(got.iter().zip(&host).all(|(a, b)| a.bits() == b.bits()), "copy differs");
    Ok(())
}

fn convert<T: TestFloat>(dt: DtypeId) -> anyhow::Result<()> {
    let rt = rt()?;
    let mut rng = Rng::new(seed());
    let mut xs: Vec<f32> = rng.normals(4096, 50.0).into_iter().map(|v| v as f32).collect();
    // Ties and edge values of every format.
    xs.extend([
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        1.0625,
        1.1875,
        448.0,
        460.0,
        1e30,
        -1e30,
        65504.0,
        65520.0,
        2f32.powi(-10),
        5e-40,
        -0.0,
    ]);
    let n = xs.len();
    let ts: Vec<T> = rng.normals(n, 100.0).into_iter().map(T::from_f64).collect();
    let (in_f32, in_t) = (upload(&rt, &xs)?, upload(&rt, &ts)?);
    let out_t: CudaSlice<T> = filled(&rt, n, T::poison())?;
    let out_f32: CudaSlice<f32> = filled(&rt, n, f32::NAN)?;
    let out_e4m3: CudaSlice<u8> = filled(&rt, n, 0x7fu8)?;
    let (e4, e8): (CudaSlice<f32>, CudaSlice<f32>) = (zeros(&rt, 256)?, zeros(&rt, 256)?);
    let k = rt.kernel(&pk::convert(dt))?;
    let p = ConvertParams {
        in_f32: ptr(&rt, &in_f32),
        in_t: ptr(&rt, &in_t),
        out_t: ptr(&rt, &out_t),
        out_f32: ptr(&rt, &out_f32),
        out_e4m3: ptr(&rt, &out_e4m3),
        out_e4m3_f32: ptr(&rt, &e4),
        out_e8m0_f32: ptr(&rt, &e8),
        n: n as i64,
    };
    // SAFETY: ConvertParams mirrors the kernel's; every buffer has n (or 256) elements.
    unsafe { rt.launch(&k, LaunchConfig::linear((n as u32).div_ceil(256), 256)).run(&p)? };
    let (got_t, got_f32, got_e4) = (download(&rt, &out_t)?, download(&rt, &out_f32)?, download(&rt, &out_e4m3)?);
    for i in 0..n {
        let want = T::from_f64(xs[i] as f64);
        anyhow::ensure!(got_t[i].bits() == want.bits(), "RN({}) = {:?}, want {want:?}", xs[i], got_t[i]);
        anyhow::ensure!(got_f32[i].to_bits() == (ts[i].to_f64() as f32).to_bits(), "widen {:?}", ts[i]);
        let w8 = E4m3::from_f32_sat(xs[i]).0;
        anyhow::ensure!(got_e4[i] == w8, "e4m3({}) = {:#x}, want {w8:#x}", xs[i], got_e4[i]);
    }
    for (b, (v4, v8)) in download(&rt, &e4)?.into_iter().zip(download(&rt, &e8)?).enumerate() {
        let (w4, w8) = (E4m3(b as u8).to_f32(), E8m0(b as u8).to_f32());
        anyhow::ensure!(v4.to_bits() == w4.to_bits() || (v4.is_nan() && w4.is_nan()), "e4m3 code {b:#x}: {v4} vs {w4}");
        anyhow::ensure!(v8.to_bits() == w8.to_bits() || (v8.is_nan() && w8.is_nan()), "e8m0 code {b:#x}: {v8} vs {w8}");
    }
    Ok(())
}

fn reduce(warps: u32) -> anyhow::Result<()> {
    let rt = rt()?;
    let blocks = 37usize;
    let threads = warps as usize * 32;
    let mut rng = Rng::new(seed());
    let xs: Vec<f32> = rng.normals(blocks * threads, 10.0).into_iter().map(|v| v as f32).collect();
    let input = upload(&rt, &xs)?;
    let (sums, maxes): (CudaSlice<f32>, CudaSlice<f32>) = (filled(&rt, blocks, f32::NAN)?, filled(&rt, blocks, f32::NAN)?);
    let wsums: CudaSlice<f32> = filled(&rt, blocks * threads / 32, f32::NAN)?;
    let disagree: CudaSlice<i32> = zeros(&rt, 1)?;
    let k = rt.kernel(&pk::reduce(warps))?;
    let p = ReduceParams {
        input: ptr(&rt, &input),
        sums: ptr(&rt, &sums),
        maxes: ptr(&rt, &maxes),
        warp_sums: ptr(&rt, &wsums),
        disagree: ptr(&rt, &disagree),
    };
    // SAFETY: ReduceParams mirrors the kernel's; buffers sized for `blocks` blocks of `threads`.
    unsafe { rt.launch(&k, LaunchConfig::linear(blocks as u32, threads as u32)).run(&p)? };
    let (s, m, w, d) = (download(&rt, &sums)?, download(&rt, &maxes)?, download(&rt, &wsums)?, download(&rt, &disagree)?);
    anyhow::ensure!(d[0] == 0, "lanes of a warp disagree on warp_sum");
    for b in 0..blocks {
        let chunk = &xs[b * threads..(b + 1) * threads];
        let exact: f64 = chunk.iter().map(|&v| v as f64).sum();
        let bound: f64 = chunk.iter().map(|&v| (v as f64).abs()).sum::<f64>() * 1e-6;
        anyhow::ensure!((s[b] as f64 - exact).abs() <= bound, "block {b}: sum {} vs {exact}", s[b]);
        let mx = chunk.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        anyhow::ensure!(m[b] == mx, "block {b}: max {} vs {mx}", m[b]);
    }
    for (wi, ws) in w.iter().enumerate() {
        let exact: f64 = xs[wi * 32..wi * 32 + 32].iter().map(|&v| v as f64).sum();
        anyhow::ensure!((*ws as f64 - exact).abs() <= 1e-4 * exact.abs().max(1.0), "warp {wi}: {ws} vs {exact}");
    }
    Ok(())
}

fn math() -> anyhow::Result<()> {
    let rt = rt()?;
    let mut rng = Rng::new(seed());
    let xs: Vec<f32> = (0..5000).map(|_| (rng.range(-30.0, 30.0)).exp2() as f32).collect();
    let input = upload(&rt, &xs)?;
    let (r, d): (CudaSlice<f32>, CudaSlice<f32>) = (filled(&rt, xs.len(), f32::NAN)?, filled(&rt, xs.len(), f32::NAN)?);
    let k = rt.kernel(&pk::math())?;
    let p = MathParams { input: ptr(&rt, &input), rsqrt_out: ptr(&rt, &r), div_out: ptr(&rt, &d), n: xs.len() as i64 };
    // SAFETY: MathParams mirrors the kernel's; all buffers hold n floats.
    unsafe { rt.launch(&k, LaunchConfig::linear((xs.len() as u32).div_ceil(256), 256)).run(&p)? };
    let (r, d) = (download(&rt, &r)?, download(&rt, &d)?);
    for (i, &x) in xs.iter().enumerate() {
        // Fast-math flags are on for this kernel, yet the _rn intrinsics stay IEEE-exact.
        anyhow::ensure!(r[i].to_bits() == (1.0f32 / x.sqrt()).to_bits(), "rsqrt_rn({x}) = {}", r[i]);
        anyhow::ensure!(d[i].to_bits() == (x / 3.0f32).to_bits(), "div_rn({x}) = {}", d[i]);
    }
    Ok(())
}

fn pdl_chain() -> anyhow::Result<()> {
    let rt = rt()?;
    anyhow::ensure!(rt.pdl_enabled(), "PDL must be enabled on cc >= 9.0 (KILN_PDL unset)");
    let n = 1 << 16;
    let data: CudaSlice<f32> = zeros(&rt, n)?;
    let out: CudaSlice<f32> = filled(&rt, n, f32::NAN)?;
    let (prod, cons) = (rt.kernel(&pk::pdl_producer())?, rt.kernel(&pk::pdl_consumer(true))?);
    anyhow::ensure!(cons.is_pdl() && !prod.is_pdl());
    for round in 0..4 {
        let value = 1000.0 * (round + 1) as f32;
        // ~2 ms of spinning at ~2 GHz: without the wait, the early-launched consumer reads stale data.
        let p = PdlParams { data: ptr(&rt, &data), out: ptr(&rt, &out), n: n as i64, spin: 4_000_000, value };
        let cfg = LaunchConfig::linear((n as u32).div_ceil(256), 256);
        // SAFETY: PdlParams mirrors the kernels'; `data` and `out` hold n floats.
        unsafe {
            rt.launch(&prod, cfg).run(&p)?;
            rt.launch(&cons, cfg).run(&p)?;
        }
        p.check_consumer_out(&download(&rt, &out)?).map_err(|e| e.context(format!("round {round}")))?;
    }
    Ok(())
}

fn launch_validation() -> anyhow::Result<()> {
    let rt = rt()?;
    let k = rt.kernel(&pk::math())?;
    let p = MathParams { input: 0, rsqrt_out: 0, div_out: 0, n: 0 };
    for cfg in [
        LaunchConfig::linear(0, 128),
        LaunchConfig::linear(1, 0),
        LaunchConfig::linear(1, 4096),
        LaunchConfig { grid: (1, 70000, 1), block: (32, 1, 1), smem: 0 },
    ] {
        // SAFETY: every configuration is rejected before the driver is called (asserted below).
        match unsafe { rt.launch(&k, cfg).run(&p) } {
            Err(Error::InvalidArgument { op: "launch", .. }) => {}
            other => anyhow::bail!("{cfg:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    Ok(())
}

fn knobs_with_cache(dir: &std::path::Path) -> Knobs {
    Knobs { cache_dir: Some(dir.to_path_buf()), ..Knobs::from_env().unwrap_or_default() }
}

/// Child role: reload a kernel from the cache passed in KILN_CACHE_DIR, launch it, report stats.
fn child_reload() -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let rt = Runtime::new(0)?;
    let t_rt = t.elapsed();
    let t = std::time::Instant::now();
    let k = rt.kernel(&pk::math())?;
    let n = 256;
    let xs: Vec<f32> = (1..=n).map(|i| i as f32).collect();
    let input = upload(&rt, &xs)?;
    let (r, d): (CudaSlice<f32>, CudaSlice<f32>) = (zeros(&rt, n)?, zeros(&rt, n)?);
    let p = MathParams { input: ptr(&rt, &input), rsqrt_out: ptr(&rt, &r), div_out: ptr(&rt, &d), n: n as i64 };
    // SAFETY: as in `math`.
    unsafe { rt.launch(&k, LaunchConfig::linear(1, 256)).run(&p)? };
    let got = download(&rt, &d)?;
    let first_call = t.elapsed();
    anyhow::ensure!(got[5] == 6.0 / 3.0);
    let s = stats();
    println!(
        "CHILD compiled={} nvrtc_programs={} disk_hits={} runtime_ms={:.2} first_call_ms={:.3}",
        s.compiled,
        s.nvrtc_programs,
        s.disk_hits,
        t_rt.as_secs_f64() * 1e3,
        first_call.as_secs_f64() * 1e3
    );
    Ok(())
}

fn fresh_process_reload() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = Runtime::with_knobs(0, knobs_with_cache(dir.path()))?;
    rt.kernel(&pk::math())?;
    let out =
        std::process::Command::new(std::env::current_exe()?).env("KILN_TEST_CHILD", "reload").env("KILN_CACHE_DIR", dir.path()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "child failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|l| l.starts_with("CHILD")).unwrap_or_default();
    eprintln!("{line}");
    anyhow::ensure!(
        line.contains("compiled=0") && line.contains("nvrtc_programs=0") && line.contains("disk_hits=1"),
        "fresh process must load from disk without compiling: {line}"
    );
    Ok(())
}

fn rejected_cubin_is_rebuilt() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let knobs = knobs_with_cache(dir.path());
    let rt = Runtime::with_knobs(0, knobs)?;
    // A spec no one has compiled in this process (unique define), so nothing is in memory.
    let spec = pk::math().define("KILN_TEST_SALT", format!("{}", seed()));
    let (key, path) = rt.store().locate(&spec, rt.arch())?;
    let path = path.expect("disk cache on");
    let mut good = kiln_runtime::compile(&spec, rt.arch())?;
    good.cubin = b"\x7fELF not really a cubin".to_vec();
    rt.store().disk().expect("disk").write(&path, &key, &good)?;
    let before = stats().quarantined;
    let k = rt.kernel(&spec)?;
    anyhow::ensure!(k.tier() == kiln_runtime::Tier::Compiled, "tier {:?}", k.tier());
    anyhow::ensure!(stats().quarantined == before + 1, "the rejected entry must be quarantined");
    anyhow::ensure!(dir.path().join("quarantine").read_dir()?.count() == 1);
    match rt.store().disk().unwrap().read(&path, &key) {
        kiln_runtime::cache::disk::Read::Hit(c) => anyhow::ensure!(c.cubin != good.cubin, "bad CUBIN republished"),
        other => anyhow::bail!("entry not republished: {other:?}"),
    }
    Ok(())
}

fn preload_then_memory() -> anyhow::Result<()> {
    let rt = rt()?;
    let specs = pk::all();
    rt.preload(&specs)?;
    let before = stats();
    for s in &specs {
        rt.kernel(s)?;
    }
    let after = stats();
    anyhow::ensure!(after.compiled == before.compiled && after.disk_hits == before.disk_hits);
    anyhow::ensure!(after.memory_hits >= before.memory_hits + specs.len() as u64);
    Ok(())
}

fn two_gpus() -> anyhow::Result<()> {
    let (a, b) = (Runtime::new(0)?, Runtime::new(1)?);
    let spec = pk::reduce(4).define("KILN_TEST_SALT", format!("two-{}", seed()));
    a.kernel(&spec)?;
    let before = stats().compiled;
    let kb = b.kernel(&spec)?;
    anyhow::ensure!(stats().compiled == before, "the second GPU recompiled");
    anyhow::ensure!(kb.tier() == kiln_runtime::Tier::Memory, "image shared in memory, loaded per device");
    Ok(())
}

/// Every op refuses a buffer of another GPU with an `Err` naming it (a kernel given a foreign
/// pointer would fault and poison the context).
fn foreign_buffers() -> anyhow::Result<()> {
    let (a, b) = (Runtime::new(0)?, Runtime::new(1)?);
    let (rows, d) = (4usize, 128usize);
    let theirs: CudaSlice<bf16> = b.stream().alloc_zeros(rows * 2 * d)?;
    let mut ours: CudaSlice<bf16> = a.stream().alloc_zeros(rows * 2 * d)?;
    let expect = |what: &str, r: kiln_runtime::Result<()>| -> anyhow::Result<()> {
        match r {
            Err(Error::InvalidArgument { reason, .. }) if reason.contains("another CUDA context") && reason.contains("GPU 1") => Ok(()),
            other => anyhow::bail!("{what}: expected the foreign buffer to be refused, got {other:?}"),
        }
    };
    let mut out: CudaSlice<bf16> = a.stream().alloc_zeros(rows * d)?;
    expect("silu_and_mul", kiln_activation::silu_and_mul(&a, &theirs, &mut out, rows, d))?;
    let w: CudaSlice<bf16> = a.stream().alloc_zeros(2 * d)?;
    let shape = kiln_rmsnorm::Shape::new(rows, 2 * d);
    expect("rms_norm_hf", kiln_rmsnorm::rms_norm_hf(&a, &theirs, &w, &mut ours, shape, 1e-6))?;
    let positions: CudaSlice<i32> = a.stream().alloc_zeros(rows)?;
    let heads = kiln_rope::Heads { nq: 1, nk: 1, nv: 0, head_dim: d };
    let mut foreign = theirs.clone();
    let rope = kiln_rope::Rope::neox(1e4, d);
    let qkv_rows = kiln_rope::Rows::contiguous(rows, 2 * d);
    expect("apply_rope_qkv", kiln_rope::apply_rope_qkv(&a, &mut foreign, qkv_rows, &positions, heads, &rope))?;
    // Only the k weight is foreign here, then only k.
    let (qn, kn): (CudaSlice<bf16>, CudaSlice<bf16>) = (a.stream().alloc_zeros(d)?, b.stream().alloc_zeros(d)?);
    let cfg = kiln_rope::QkNormRope { heads, eps: 1e-6, rope };
    expect("fused_qk_norm_rope", kiln_rope::fused_qk_norm_rope(&a, &mut ours, qkv_rows, &qn, &kn, &positions, &cfg))?;
    let mut q_half: CudaSlice<bf16> = a.stream().alloc_zeros(rows * d)?;
    let mut k_half: CudaSlice<bf16> = b.stream().alloc_zeros(rows * d)?;
    let half = kiln_rope::Rows::contiguous(rows, d);
    expect("apply_rope", kiln_rope::apply_rope(&a, &mut q_half, half, &mut k_half, half, &positions, d, &rope))?;
    let q: CudaSlice<E4m3> = a.stream().alloc_zeros(rows * d)?;
    let s: CudaSlice<E8m0> = b.stream().alloc_zeros(rows * d / 32)?;
    let layout = kiln_mxfp8::ScaleLayout::RowMajor;
    let mx = kiln_mxfp8::Mxfp8Shape::contiguous(rows, d);
    expect("dequantize_mxfp8", kiln_mxfp8::dequantize_mxfp8(&a, &q, &s, &mut out, mx, layout))?;
    let mut q_out: CudaSlice<E4m3> = a.stream().alloc_zeros(rows * d)?;
    let mut s_out: CudaSlice<E8m0> = a.stream().alloc_zeros(rows * d / 32)?;
    let strided = kiln_mxfp8::Mxfp8Shape { rows, k: d, x_stride: 2 * d, q_stride: d };
    expect("quantize_mxfp8_into", kiln_mxfp8::quantize_mxfp8_into(&a, &theirs, &mut q_out, &mut s_out, strided, layout))?;
    Ok(())
}

fn main() {
    if std::env::var("KILN_TEST_CHILD").as_deref() == Ok("reload") {
        if let Err(e) = child_reload() {
            eprintln!("child: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let mut trials = vec![
        trial("t2::runtime::sanitize::vec_copy_bf16", Need::Gpu, || vec_copy::<bf16>(DtypeId::Bf16, false)),
        trial("t2::runtime::sanitize::vec_copy_f16_pdl", Need::Gpu, || vec_copy::<f16>(DtypeId::F16, true)),
        trial("t2::runtime::sanitize::vec_copy_f32", Need::Gpu, || vec_copy::<f32>(DtypeId::F32, false)),
        trial("t2::runtime::sanitize::convert_bf16", Need::Gpu, || convert::<bf16>(DtypeId::Bf16)),
        trial("t2::runtime::sanitize::convert_f16", Need::Gpu, || convert::<f16>(DtypeId::F16)),
        trial("t2::runtime::sanitize::math_rn_is_exact", Need::Gpu, math),
        trial("t2::runtime::pdl_chain_slow_producer", Need::Gpu, pdl_chain),
        trial("t2::runtime::launch_config_is_validated", Need::Gpu, launch_validation),
        trial("t2::runtime::fresh_process_reloads_without_compiling", Need::Gpu, fresh_process_reload),
        trial("t2::runtime::rejected_cubin_is_quarantined_and_rebuilt", Need::Gpu, rejected_cubin_is_rebuilt),
        trial("t2::runtime::preload_then_kernel_is_a_memory_hit", Need::Gpu, preload_then_memory),
        trial("t2::runtime::two_gpus_share_one_compile", Need::Gpus(2), two_gpus),
        trial("t2::runtime::ops_refuse_buffers_of_another_gpu", Need::Gpus(2), foreign_buffers),
    ];
    for w in [1, 4, 32] {
        trials.push(trial(format!("t2::runtime::sanitize::reduce_w{w}"), Need::Gpu, move || reduce(w)));
    }
    kiln_tests::main(trials)
}
