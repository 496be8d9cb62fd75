//! T0: argument validation (every rejection names its values), spec table, planning.

use kiln_runtime::Error;

use super::*;

fn cfg() -> QkNormRope {
    QkNormRope { heads: Heads { nq: 4, nk: 2, nv: 2, head_dim: 128 }, eps: 1e-6, rope: Rope::neox(1e6, 128) }
}

/// Asserts an `InvalidArgument` of `op` whose reason contains every one of `needles`.
fn rejects(r: Result<impl std::fmt::Debug>, op: &str, needles: &[&str]) {
    match r {
        Err(Error::InvalidArgument { op: o, reason }) => {
            assert_eq!(o, op);
            for n in needles {
                assert!(reason.contains(n), "reason {reason:?} lacks {n:?}");
            }
        }
        other => panic!("expected InvalidArgument from {op} mentioning {needles:?}, got {other:?}"),
    }
}

#[test]
fn fused_accepts_good_shapes() {
    let c = cfg();
    let rows = Rows::contiguous(3, 8 * 128);
    check_fused(&c, rows, 3 * 1024, 128, 128, 3).unwrap();
    check_fused(&c, Rows::strided(3, 1024, 1031), 2 * 1031 + 1024, 128, 128, 3).unwrap();
    check_fused(&c, Rows::contiguous(0, 1024), 0, 128, 128, 0).unwrap();
    for hd in [8, 64, 80, 96, 128, 256] {
        let mut c = cfg();
        c.heads.head_dim = hd;
        c.rope = Rope::interleaved(1e4, hd / 4 * 2);
        check_fused(&c, Rows::contiguous(1, 8 * hd), 8 * hd, hd, hd, 1).unwrap();
    }
}

#[test]
fn fused_rejects_bad_shapes_naming_the_values() {
    let c = cfg();
    let rows = Rows::contiguous(3, 1024);
    rejects(check_fused(&c, Rows::contiguous(3, 1000), 3000, 128, 128, 3), FUSED, &["qkv width=1000", "(nq+nk+nv)*head_dim = 1024"]);
    rejects(check_fused(&c, Rows::strided(3, 1024, 1000), 3000, 128, 128, 3), FUSED, &["stride=1000", "width=1024"]);
    rejects(check_fused(&c, rows, 3071, 128, 128, 3), FUSED, &["qkv.len()=3071", "tokens=3", "stride=1024"]);
    rejects(check_fused(&c, rows, 3072, 64, 128, 3), FUSED, &["q_weight.len()=64", "head_dim=128"]);
    rejects(check_fused(&c, rows, 3072, 128, 129, 3), FUSED, &["k_weight.len()=129"]);
    rejects(check_fused(&c, rows, 3072, 128, 128, 4), FUSED, &["positions.len()=4", "tokens=3"]);
    rejects(check_fused(&c, Rows::contiguous(1 << 31, 1024), usize::MAX, 128, 128, 1 << 31), FUSED, &["tokens=2147483648"]);
    let with = |f: &dyn Fn(&mut QkNormRope)| {
        let mut c = cfg();
        f(&mut c);
        let w = c.heads.width().unwrap_or(0);
        check_fused(&c, Rows::contiguous(1, w), w, c.heads.head_dim, c.heads.head_dim, 1)
    };
    rejects(with(&|c| c.eps = 0.0), FUSED, &["eps=0"]);
    rejects(with(&|c| c.eps = -1e-6), FUSED, &["eps=-1e-6"]);
    rejects(with(&|c| c.eps = f32::NAN), FUSED, &["eps=NaN"]);
    rejects(with(&|c| c.rope.base = 0.0), FUSED, &["base=0"]);
    rejects(with(&|c| c.rope.base = f64::INFINITY), FUSED, &["base=inf"]);
    rejects(with(&|c| c.rope.rotary_dim = 127), FUSED, &["rotary_dim=127", "even"]);
    rejects(with(&|c| c.rope.rotary_dim = 0), FUSED, &["rotary_dim=0"]);
    rejects(with(&|c| c.rope.rotary_dim = 144), FUSED, &["rotary_dim=144", "head_dim=128"]);
    rejects(with(&|c| c.rope.rotary_dim = 24), FUSED, &["rotary_dim=24", "NeoX", "multiple of 16"]);
    rejects(with(&|c| c.heads.head_dim = 100), FUSED, &["head_dim=100", "multiple of 8"]);
    rejects(with(&|c| c.heads.head_dim = 264), FUSED, &["head_dim=264", "8..=256"]);
    rejects(with(&|c| c.heads.head_dim = 0), FUSED, &["head_dim=0"]);
    rejects(with(&|c| c.heads.nq = usize::MAX / 2), FUSED, &["nq=", "65535"]);
    rejects(with(&|c| c.heads.nv = usize::MAX / 2), FUSED, &["overflows", "nv="]);
    let yarn = Yarn { factor: 4.0, low: 1.0, high: 30.0, attention_factor: 1.1 };
    rejects(with(&|c| c.rope = c.rope.with_yarn(Yarn { factor: 0.0, ..yarn })), FUSED, &["yarn factor=0"]);
    rejects(with(&|c| c.rope = c.rope.with_yarn(Yarn { factor: -2.0, ..yarn })), FUSED, &["yarn factor=-2"]);
    rejects(with(&|c| c.rope = c.rope.with_yarn(Yarn { low: f64::NAN, ..yarn })), FUSED, &["low=NaN"]);
    rejects(with(&|c| c.rope = c.rope.with_yarn(Yarn { attention_factor: 1e300, ..yarn })), FUSED, &["attention_factor=1e300"]);
    with(&|c| c.rope = c.rope.with_yarn(yarn)).unwrap();
    // Interleaved takes any even rotary_dim; NeoX needs whole 8-element lanes per half.
    with(&|c| c.rope = Rope::interleaved(1e4, 6)).unwrap();
    with(&|c| c.rope = Rope::neox(1e4, 16)).unwrap();
}

#[test]
fn apply_validation() {
    let rope = Rope::neox(1e4, 64);
    let (q, k) = (Rows::strided(5, 8 * 64, 8 * 64 + 8), Rows::contiguous(5, 2 * 64));
    assert_eq!(check_apply(64, &rope, q, 4 * 520 + 512, k, 5 * 128, 5).unwrap(), (8, 2));
    assert_eq!(check_apply(64, &rope, q, 4 * 520 + 512, Rows::contiguous(5, 0), 0, 5).unwrap(), (8, 0));
    rejects(check_apply(64, &rope, Rows::contiguous(5, 100), 500, k, 640, 5), APPLY, &["q width=100", "head_dim=64"]);
    rejects(check_apply(64, &rope, q, 4 * 520 + 512, Rows::contiguous(4, 128), 512, 5), APPLY, &["q has 5 tokens but k has 4"]);
    rejects(check_apply(64, &rope, q, 4 * 520 + 511, k, 640, 5), APPLY, &["q.len()=2591"]);
    rejects(check_apply(64, &rope, q, 4 * 520 + 512, k, 639, 5), APPLY, &["k.len()=639"]);
    rejects(check_apply(64, &rope, q, 4 * 520 + 512, k, 640, 6), APPLY, &["positions.len()=6", "tokens=5"]);
    rejects(check_apply(32, &Rope::neox(1e4, 48), q, 4 * 520 + 512, k, 640, 5), APPLY, &["rotary_dim=48", "head_dim=32"]);
    let heads = Heads { nq: 8, nk: 2, nv: 2, head_dim: 64 };
    check_apply_qkv(heads, &rope, Rows::contiguous(5, 768), 3840, 5).unwrap();
    rejects(check_apply_qkv(heads, &rope, Rows::contiguous(5, 640), 3200, 5), APPLY_QKV, &["qkv width=640", "= 768"]);
    rejects(check_apply_qkv(heads, &Rope::interleaved(-1.0, 64), Rows::contiguous(5, 768), 3840, 5), APPLY_QKV, &["base=-1"]);
}

#[test]
fn nothing_to_do_plans_no_launch() {
    let r = Rope::neox(1e4, 64);
    assert!(plan::plan(0, 4, 2, 64, &r, 1e-6).is_none());
    assert!(plan::plan(3, 0, 0, 64, &r, 1e-6).is_none());
    let p = plan::plan(3, 4, 2, 64, &r, 1e-6).unwrap();
    assert_eq!((p.params.nq, p.params.nk, p.params.head_dim, p.params.rotary_dim), (4, 2, 64, 64));
    assert_eq!(p.params.turns[..32], r.inv_frequencies().into_iter().map(crate::reference::turns_of).collect::<Vec<_>>()[..]);
    assert_eq!(p.params.flags, 0);
    assert_eq!(plan::plan(3, 4, 2, 64, &Rope::interleaved(1e4, 64), 1e-6).unwrap().params.flags, ffi::INTERLEAVED);
}

#[test]
fn alignment_decides_vector_access() {
    assert!(vectorizable::<half::bf16>(256, 512, 1024, 8));
    assert!(!vectorizable::<half::bf16>(258, 512, 1024, 8));
    assert!(!vectorizable::<half::bf16>(256, 520, 1024, 8));
    assert!(!vectorizable::<half::bf16>(256, 512, 1028, 8));
    assert!(!vectorizable::<half::f16>(256, 512, 1024, 12));
}

#[test]
fn spec_table() {
    let specs = kernel_specs();
    assert_eq!(specs.len(), 24);
    let names: Vec<&str> = specs.iter().map(|s| s.name()).collect();
    assert!(names.contains(&"fused_qk_norm_rope__bf16__v16__pdl") && names.contains(&"apply_rope__f16__scalar"));
    assert!(names.contains(&"apply_rope__f16__v16_prefetch__pdl") && names.contains(&"fused_qk_norm_rope__f16__v16_large"));
    assert!(!names.iter().any(|n| n.starts_with("apply_rope") && n.contains("large")));
    for dt in DTYPES {
        for norm in [true, false] {
            for vec in [true, false] {
                for pdl in [false, true] {
                    for prefetch in [false, true] {
                        for large in [false, true] {
                            let s = spec(dt, norm, vec, pdl, prefetch, large);
                            // Only PDL vector launches prefetch; the other norm + RoPE vector
                            // launches of large grids keep 4 CTAs per SM.
                            let pf = prefetch && vec && pdl;
                            let blocks = if vec && !pf && large && norm { 4 } else { 3 };
                            assert_eq!(s.is_pdl(), pdl);
                            assert_eq!(s.expr(), format!("rope_kernel<{}, {norm}, {vec}, {pdl}, {pf}, {blocks}>", dt.cpp()));
                            assert_eq!(params_bytes(s), Some(1120));
                        }
                    }
                }
            }
        }
    }
    assert!(!plan::large_grid((1023, 1)) && plan::large_grid((512, 2)) && plan::large_grid((1024, 1)));
    assert!(plan::large_grid((65536, 65535)), "no overflow");
    let other = KernelSpec::new("x", &SOURCE, "rope_kernel<float, true, true, true, false, 3>");
    assert_eq!(params_bytes(&other), Some(1120));
}
