//! T0 tests of grouped-GEMM validation, kernel choice and the spec table (no GPU).

use super::*;

fn shape(experts: usize, n: usize, k: usize, rows: usize) -> GroupedGemmShape {
    GroupedGemmShape { experts, n, k, rows }
}

fn lens(s: GroupedGemmShape, scale_rows: usize) -> GemmLens {
    GemmLens {
        weights: s.experts * s.n * s.k,
        weight_scales: s.experts * s.n * s.k / 32,
        tokens: s.rows * s.k,
        token_scales: scale_rows * s.k / 32,
        meta: [s.experts; 3],
        out: s.rows * s.n,
        workspace: 0,
    }
}

fn check(s: GroupedGemmShape, l: GemmLens, a: GemmAddrs) -> Result<Option<GemmPlan>> {
    plan(DtypeId::Bf16, s, l, a, Arch::SM90, None)
}

fn reason(r: Result<Option<GemmPlan>>) -> String {
    match r {
        Err(Error::InvalidArgument { op, reason }) => {
            assert_eq!(op, OP);
            reason
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn valid_calls_plan_a_launch() {
    let s = shape(8, 4096, 7168, 2697);
    let p = check(s, lens(s, 8 * 2048), GemmAddrs::default()).unwrap().unwrap();
    assert_eq!(p.kernel, GemmKernel::WgmmaPrefill);
    assert_eq!(p.scale_rows, 8 * 2048);
    assert_eq!(p.smem as usize, GemmKernel::WgmmaPrefill.smem_bytes(8));
    // Few tokens per expert: the decode kernel.
    let s = shape(64, 2048, 7168, 64 * 64);
    assert_eq!(check(s, lens(s, 64 * 128), GemmAddrs::default()).unwrap().unwrap().kernel, GemmKernel::WgmmaDecode);
    let s = shape(64, 2048, 7168, 64 * 64 + 1);
    assert_eq!(check(s, lens(s, 64 * 128), GemmAddrs::default()).unwrap().unwrap().kernel, GemmKernel::WgmmaPrefill);
}

#[test]
fn empty_work_needs_no_launch() {
    let s = shape(4, 128, 128, 0);
    assert_eq!(check(s, lens(s, 0), GemmAddrs::default()).unwrap(), None);
    assert_eq!(check(s, lens(s, 128), GemmAddrs::default()).unwrap(), None);
    let s = shape(4, 128, 128, 5);
    assert_eq!(check(s, lens(s, 0), GemmAddrs::default()).unwrap(), None);
}

#[test]
fn bad_shapes_are_named() {
    let s = shape(2, 256, 192, 4);
    assert!(reason(check(s, lens(s, 128), GemmAddrs::default())).contains("k=192"));
    let s = shape(2, 200, 256, 4);
    assert!(reason(check(s, lens(s, 128), GemmAddrs::default())).contains("n=200"));
    let s = shape(1025, 128, 128, 4);
    assert!(reason(check(s, lens(s, 128), GemmAddrs::default())).contains("experts=1025 exceeds 1024"));
    let s = shape(0, 128, 128, 4);
    assert!(reason(check(s, lens(s, 128), GemmAddrs::default())).contains("experts=0"));
}

#[test]
fn inconsistent_buffers_are_named() {
    let s = shape(2, 256, 256, 10);
    let good = lens(s, 256);
    let r = |l: GemmLens| reason(check(s, l, GemmAddrs::default()));
    assert!(r(GemmLens { weights: good.weights - 1, ..good }).contains("weights.len()=131071 != experts*n*k=131072"));
    assert!(r(GemmLens { weight_scales: 1, ..good }).contains("weight_scales.len()=1"));
    assert!(r(GemmLens { tokens: 2559, ..good }).contains("tokens.len()=2559 != rows*k=2560"));
    assert!(r(GemmLens { out: 2561, ..good }).contains("out.len()=2561 != rows*n=2560"));
    assert!(r(GemmLens { token_scales: 8 * 200, ..good }).contains("token_scales.len()=1600"));
    assert!(r(GemmLens { meta: [2, 3, 2], ..good }).contains("tokens_per_expert.len()=3"));
}

#[test]
fn oversized_k_and_lengths_are_errors() {
    // experts·n·k overflowed (a debug panic) and k was cast to int32 unchecked.
    let s = shape(1, 128, 1 << 58, 4);
    let l = GemmLens { weights: 0, weight_scales: 0, tokens: 0, token_scales: 0, meta: [1; 3], out: 512, workspace: 0 };
    assert!(reason(check(s, l, GemmAddrs::default())).contains("k=288230376151711744 exceeds i32::MAX"));
    let s = shape(1, 128, 1 << 31, 1);
    assert!(reason(check(s, l, GemmAddrs::default())).contains("k=2147483648 exceeds i32::MAX"));
    // The largest K the kernels take plans.
    let s = shape(1, 128, (1 << 31) - 128, 1);
    assert!(check(s, lens(s, 128), GemmAddrs::default()).unwrap().is_some());
    // What `plan` reports if a product ever overflows (not reachable on 64-bit once K is bounded).
    let r = reason(checked_len(OP, "rows*k", &[("rows", usize::MAX), ("k", 2)]).map(|_| None));
    assert_eq!(r, "rows*k=36893488147419103230 overflows usize (rows=18446744073709551615, k=2)");
    let r = reason(checked_len(OP, "experts*n*k", &[("experts", usize::MAX), ("n", usize::MAX), ("k", usize::MAX)]).map(|_| None));
    assert!(r.starts_with("experts*n*k=more than u128::MAX overflows usize (experts=18446744073709551615"), "{r}");
    assert_eq!(checked_len(OP, "rows*n", &[("rows", 3), ("n", 128)]).unwrap(), 384);
    // The kernel choice of an unvalidated shape does not overflow either.
    assert_eq!(choose(Arch::SM90, &shape(usize::MAX, 128, 128, 4), None).unwrap(), GemmKernel::WgmmaDecode);
}

#[test]
fn misaligned_pointers_are_named() {
    let s = shape(1, 128, 128, 1);
    let l = lens(s, 128);
    let r = |a: GemmAddrs| reason(check(s, l, a));
    assert!(r(GemmAddrs { tokens: 8, ..Default::default() }).contains("tokens at 0x8"));
    assert!(r(GemmAddrs { weight_scales: 4, ..Default::default() }).contains("weight_scales at 0x4"));
    assert!(r(GemmAddrs { out: 2, ..Default::default() }).contains("out at 0x2"));
}

#[test]
fn dispatch_by_arch() {
    let s = shape(8, 4096, 7168, 4096);
    assert_eq!(choose(Arch::new(10, 0), &s, None).unwrap(), GemmKernel::Sm100);
    for arch in [Arch::new(8, 9), Arch::new(8, 0), Arch::new(12, 0)] {
        assert!(matches!(choose(arch, &s, None), Err(Error::UnsupportedArch { .. })), "{arch}");
    }
    assert!(matches!(choose(Arch::SM90, &s, Some(GemmKernel::Sm100)), Err(Error::UnsupportedArch { .. })));
    assert!(matches!(choose(Arch::new(10, 0), &s, Some(GemmKernel::MmaPrefill)), Err(Error::UnsupportedArch { .. })));
    assert_eq!(choose(Arch::SM90, &s, Some(GemmKernel::MmaDecode)).unwrap(), GemmKernel::MmaDecode);
}

#[test]
fn spec_table_is_indexed_consistently() {
    assert_eq!(SPECS.len(), GemmKernel::ALL.len() * 4);
    for kernel in GemmKernel::ALL {
        for dt in DTYPES {
            for pdl in [false, true] {
                let s = &SPECS[spec_index(kernel, dt, pdl)];
                assert!(s.name().contains(kernel.tag()) && s.name().contains(dt.tag()), "{}", s.name());
                assert_eq!(s.is_pdl(), pdl);
                assert_eq!(params_bytes(s), Some(if kernel.uses_tma() { TMA_PARAMS_BYTES } else { ARGS_BYTES }));
            }
        }
    }
}

#[test]
fn shared_memory_fits_the_device_limit() {
    // 227 KiB of opt-in shared memory per CTA on sm_90 and sm_100.
    for kernel in GemmKernel::ALL {
        assert!(kernel.smem_bytes(MAX_EXPERTS) <= 227 * 1024, "{kernel:?}: {}", kernel.smem_bytes(MAX_EXPERTS));
    }
    assert_eq!(GemmKernel::MmaPrefill.smem_bytes(1), 4 * 33792 + 4096 + 24);
    assert_eq!(GemmKernel::WgmmaPrefill.smem_bytes(0), 1024 + 5 * (33792 + 4096) + 128);
    assert_eq!(GemmKernel::WgmmaDecode.smem_bytes(0), 1024 + 6 * (25600 + 3072) + 144);
}
