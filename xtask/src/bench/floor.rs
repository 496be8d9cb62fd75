//! Latency floor of a tiny PDL launch (op `floor`; only with `--ops floor`): one CTA working on
//! one row of 128 bf16 (16 threads × 16 bytes), the shape of `rmsnorm_hf` 1×128, built up piece
//! by piece — nothing, a copy, the RMSNorm arithmetic — with the PDL trigger at each place and
//! the idle warps of a 128-thread CTA running along or leaving. Rows `floor` /
//! `{work}/t{trigger}/p{prefetch}/i{idle}/b{threads}` and `lib/rms_norm_hf` (the library on the
//! same row): what a chain of such launches costs per launch in the bench's graph replay, i.e.
//! how much of a small op's time is the chain itself (docs/PERF.md, RMSNorm, session 12).

use kiln_runtime::{KernelSource, KernelSpec, LaunchConfig, PRELUDE};

use super::Ctx;

static FLOOR: KernelSource = KernelSource {
    name: "bench_floor.cuh",
    text: r#"#include <kiln/common.cuh>
#include <kiln/pdl.cuh>
#include <kiln/math.cuh>
struct FloorParams { const uint4* x; const uint4* w; uint4* out; int active; };
// kTrig: 0 never (implied at exit), 1 before the wait, 2 after it, 3 after the loads are issued,
// 4 after the stores, 5 after the reduction (before the stores). kWork: 0 nothing (one store of
// zeros), 1 copy x, 2 RMSNorm-HF with the IEEE rsqrt, 3 the same with rsqrt.approx, 4 as 2 without
// the weight load. kIdle: warps without an active thread 0 run along, 1 return after the wait,
// 2 return before it.
template <int kTrig, bool kPre, int kWork, int kIdle>
__global__ void bench_floor(FloorParams p) {
  const int t = threadIdx.x;
  const bool act = t < p.active;
  const bool idle_warp = (t & ~31) >= p.active;
  if (kIdle == 2 && idle_warp) return;
  if (kTrig == 1) kiln::pdl_launch_dependents<true>();
  if (kPre && t == 0) kiln::pdl_prefetch_l2<true>(p.x, 256);
  kiln::pdl_wait<true>();
  if (kIdle == 1 && idle_warp) return;
  if (kTrig == 2) kiln::pdl_launch_dependents<true>();
  uint4 x = make_uint4(0u, 0u, 0u, 0u), w = make_uint4(0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u);
  if (act && kWork >= 1) {
    asm volatile("ld.global.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(x.x), "=r"(x.y), "=r"(x.z), "=r"(x.w) : "l"(p.x + t));
    if (kWork == 2 || kWork == 3) w = __ldg(p.w + t);
  }
  if (kTrig == 3) kiln::pdl_launch_dependents<true>();
  if (kWork >= 2) {
    const unsigned xs[4] = {x.x, x.y, x.z, x.w};
    const unsigned ws[4] = {w.x, w.y, w.z, w.w};
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float a = __uint_as_float(xs[j] << 16), b = __uint_as_float(xs[j] & 0xffff0000u);
      s = __fmaf_rn(a, a, s);
      s = __fmaf_rn(b, b, s);
    }
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) s = __fadd_rn(s, __shfl_xor_sync(0xffffffffu, s, o));
    const float m = __fadd_rn(__fmul_rn(s, 0.0078125f), 1e-6f);
    const float r = kWork == 3 ? rsqrtf(m) : kiln::rsqrt_rn(m);
    unsigned ys[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float a = __uint_as_float(xs[j] << 16), b = __uint_as_float(xs[j] & 0xffff0000u);
      const float wa = __uint_as_float(ws[j] << 16), wb = __uint_as_float(ws[j] & 0xffff0000u);
      const float na = __bfloat162float(__float2bfloat16_rn(__fmul_rn(a, r)));
      const float nb = __bfloat162float(__float2bfloat16_rn(__fmul_rn(b, r)));
      const __nv_bfloat162 y = __floats2bfloat162_rn(__fmul_rn(na, wa), __fmul_rn(nb, wb));
      ys[j] = *reinterpret_cast<const unsigned*>(&y);
    }
    x = make_uint4(ys[0], ys[1], ys[2], ys[3]);
  }
  if (kTrig == 5) kiln::pdl_launch_dependents<true>();
  if (act) p.out[t] = x;
  if (kTrig == 4) kiln::pdl_launch_dependents<true>();
}
"#,
    headers: &[PRELUDE],
};

#[repr(C)]
#[derive(Clone, Copy)]
struct FloorParams {
    x: u64,
    w: u64,
    out: u64,
    active: i32,
}

/// The micro kernel for one trigger place, prefetch, work and idle-warp setting (see FLOOR).
fn floor_spec(trig: u32, pre: bool, work: usize, idle: u32) -> KernelSpec {
    KernelSpec::new(
        format!("bench_floor_{trig}_{}_{work}_{idle}", pre as u8),
        &FLOOR,
        format!("bench_floor<{trig}, {pre}, {work}, {idle}>"),
    )
    .pdl(true)
}

const WORK: [&str; 5] = ["none", "copy", "rms", "rms_approx", "rms_no_w"];

/// Times each variant on `sets` rotated rows of 128 bf16.
pub fn run(c: &mut Ctx) -> anyhow::Result<()> {
    let sets = c.sets_for(512);
    let stream = c.rt.stream().clone();
    let xs = stream
        .clone_htod(&(0..sets * 16 * 4).map(|i| 0x3f80_3f80u32 ^ ((i as u32 * 2_654_435_761) & 0x007f_007f)).collect::<Vec<u32>>())?;
    let w = stream.clone_htod(&vec![0x3f80_3f80u32; 64])?;
    let out = stream.alloc_zeros::<u32>(sets * 64)?;
    let (x0, w0, o0) = (super::device_ptr(&c.rt, &xs), super::device_ptr(&c.rt, &w), super::device_ptr(&c.rt, &out));
    for (work, work_name) in WORK.iter().enumerate() {
        for trig in 0..6 {
            for pre in [false, true] {
                for idle in 0..3 {
                    for threads in [32u32, 128] {
                        // Idle warps exist only in the 128-thread CTA (16 active threads).
                        if threads == 32 && idle != 0 {
                            continue;
                        }
                        let tag = format!("{work_name}/t{trig}/p{}/i{idle}/b{threads}", pre as u8);
                        if !c.wants("floor", &tag) {
                            continue;
                        }
                        let k = c.rt.kernel(&floor_spec(trig, pre, work, idle))?;
                        let us = c.time(sets, |i| {
                            let off = (i * 256) as u64;
                            let p = FloorParams { x: x0 + off, w: w0, out: o0 + off, active: 16 };
                            // SAFETY: FloorParams mirrors the kernel's struct; set i's 256 bytes of x
                            // and out lie inside the buffers (i < sets), w holds 256 bytes.
                            unsafe { c.rt.launch(&k, LaunchConfig::linear(1, threads)).run(&p) }
                        })?;
                        c.record("floor", &tag, us, 512.0, None)?;
                    }
                }
            }
        }
    }
    // The library's rms_norm_hf on the same row (its kernel choice for one row of 128 bf16).
    if c.wants("floor", "lib/rms_norm_hf") {
        let shape = kiln_rmsnorm::Shape::new(1, 128);
        let wb = stream.clone_htod(&vec![half::bf16::ONE; 128])?;
        let xb = stream.clone_htod(&vec![half::bf16::from_f32(0.5); 128 * sets])?;
        let mut ob = stream.alloc_zeros::<half::bf16>(128 * sets)?;
        let rt = c.rt.clone();
        let us = c.time(sets, |i| {
            let x = xb.slice(i * 128..(i + 1) * 128);
            let mut o = ob.slice_mut(i * 128..(i + 1) * 128);
            kiln_rmsnorm::rms_norm_hf(&rt, &x, &wb, &mut o, shape, 1e-6)
        })?;
        c.record("floor", "lib/rms_norm_hf", us, 512.0, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// T1: every variant compiles for sm_90a (needs NVRTC, which the project's test command
    /// installs).
    #[test]
    fn floor_kernels_compile() {
        let knobs = kiln_runtime::Knobs { cache_disable: true, ..kiln_runtime::Knobs::from_env().unwrap() };
        let arch: kiln_runtime::Arch = "sm_90a".parse().unwrap();
        for work in 0..super::WORK.len() {
            for trig in 0..6 {
                for idle in 0..3 {
                    if let Err(e) = kiln_runtime::compile_with(&super::floor_spec(trig, true, work, idle), arch, &knobs) {
                        panic!("{e}");
                    }
                }
            }
        }
    }
}
