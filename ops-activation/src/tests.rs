//! T0: validation, launch geometry and the spec table, without a GPU.

use super::*;
use crate::plan::*;
use kiln_runtime::LaunchConfig;

fn req(shape: Shape, in_len: usize, out_len: usize) -> Request {
    Request {
        op: "silu_and_mul",
        act: Activation::Silu,
        shape,
        in_len,
        out_len,
        exact: false,
        expert: None,
        sorted: None,
        clamp: None,
        filter_tile: None,
        ids_early: false,
    }
}

fn contiguous(rows: usize, d: usize) -> Request {
    Request { exact: true, ..req(Shape::contiguous(rows, d), rows * 2 * d, rows * d) }
}

fn err(r: &Request) -> String {
    match validate(r) {
        Err(Error::InvalidArgument { op, reason }) => {
            assert_eq!(op, r.op);
            reason
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn valid_shapes_plan_the_launch() {
    let p = validate(&contiguous(7, 16)).unwrap().unwrap();
    assert_eq!((p.rows, p.d, p.in_stride, p.out_stride, p.filter_flags, p.expert_step), (7, 16, 32, 16, 0, 1));
    let p = validate(&req(Shape::strided(3, 5, 11, 6), 2 * 11 + 10, 2 * 6 + 5)).unwrap().unwrap();
    assert_eq!((p.in_stride, p.out_stride), (11, 6));
}

#[test]
fn empty_work_launches_nothing() {
    assert_eq!(validate(&contiguous(0, 4096)).unwrap(), None);
    assert_eq!(validate(&contiguous(5, 0)).unwrap(), None);
    // Strides are irrelevant when there are no rows.
    assert_eq!(validate(&req(Shape::strided(0, 8, 0, 0), 0, 0)).unwrap(), None);
}

#[test]
fn bad_lengths_and_strides_are_rejected_with_their_values() {
    // Odd input width (rows × 2d+1) / d mismatch in the contiguous forms.
    let r = Request { in_len: 7 * 33, ..contiguous(7, 16) };
    assert!(err(&r).contains("input.len()=231 != rows*2*d=224"), "{}", err(&r));
    let r = Request { out_len: 7 * 15, ..contiguous(7, 16) };
    assert!(err(&r).contains("out.len()=105 != rows*d=112"), "{}", err(&r));
    // Strided: strides below the widths, buffers that do not cover the rows.
    assert!(err(&req(Shape::strided(4, 8, 15, 8), 1000, 1000)).contains("in_row_stride=15 < 2*d=16"));
    assert!(err(&req(Shape::strided(4, 8, 16, 7), 1000, 1000)).contains("out_row_stride=7 < d=8"));
    let e = err(&req(Shape::strided(4, 8, 20, 8), 3 * 20 + 15, 32));
    assert!(e.contains("input.len()=75 < (rows-1)*in_row_stride+2*d=76"), "{e}");
    let e = err(&req(Shape::strided(4, 8, 20, 10), 76, 3 * 10 + 7));
    assert!(e.contains("out.len()=37 < (rows-1)*out_row_stride+d=38"), "{e}");
    // Index math that would overflow.
    let e = err(&req(Shape::strided(1 << 20, 1 << 10, usize::MAX / 2, 1 << 10), usize::MAX, usize::MAX));
    assert!(e.contains("overflows"), "{e}");
    let e = err(&Request { exact: true, ..req(Shape::contiguous(usize::MAX / 2, 4), 0, 0) });
    assert!(e.contains("overflows"), "{e}");
    assert!(err(&req(Shape::contiguous(MAX_ROWS + 1, 1), usize::MAX, usize::MAX)).contains("rows=2147483648 exceeds"));
    assert!(err(&req(Shape::contiguous(1, MAX_D + 1), usize::MAX, usize::MAX)).contains("d=2147483648 exceeds 2147483647"));
    validate(&req(Shape::contiguous(1, MAX_D), 2 * MAX_D, MAX_D)).unwrap();
    validate(&req(Shape::contiguous(MAX_ROWS, 1), 2 * MAX_ROWS, MAX_ROWS)).unwrap();
}

#[test]
fn filters_are_checked() {
    let base = contiguous(100, 64);
    let r = Request { expert: Some((10, 0)), ..base };
    assert!(err(&r).contains("expert_step=0"));
    // expert_step = 0 is refused even when there is nothing to do.
    assert!(err(&Request { expert: Some((10, 0)), ..contiguous(0, 64) }).contains("expert_step=0"));
    let r = Request { expert: Some((9, 11)), ..base };
    assert!(err(&r).contains("expert_ids.len()=9 * expert_step=11 < rows=100"), "{}", err(&r));
    let p = validate(&Request { expert: Some((10, 10)), ..base }).unwrap().unwrap();
    assert_eq!((p.filter_flags, p.expert_step), (FLAG_EXPERT, 10));
    // A huge step reads id 0 for every row: passed to the kernel as `rows`.
    let p = validate(&Request { expert: Some((1, usize::MAX)), ..base }).unwrap().unwrap();
    assert_eq!(p.expert_step, 100);
    let r = Request { sorted: Some((99, 1, 50)), ..base };
    assert!(err(&r).contains("sorted_token_ids.len()=99 < rows=100"));
    let r = Request { sorted: Some((100, 0, 50)), ..base };
    assert!(err(&r).contains("num_tokens_post_padded is empty"));
    let r = Request { sorted: Some((100, 1, i32::MAX as usize + 1)), ..base };
    assert!(err(&r).contains("num_valid_tokens=2147483648"));
    let p = validate(&Request { sorted: Some((100, 1, 77)), expert: Some((4, 32)), ..base }).unwrap().unwrap();
    assert_eq!((p.filter_flags, p.num_valid_tokens, p.expert_step), (FLAG_EXPERT | FLAG_SORTED, 77, 32));
}

#[test]
fn clamp_is_checked() {
    let base = contiguous(4, 64);
    assert_eq!(validate(&Request { clamp: Some((7.0, 7.0)), ..base }).unwrap().unwrap().clamp, 7.0);
    assert!(err(&Request { clamp: Some((7.0, 7.0)), act: Activation::Gelu, ..base }).contains("SiLU only, not gelu"));
    assert!(err(&Request { clamp: Some((0.0, 0.0)), ..base }).contains("clamp_limit=0"));
    assert!(err(&Request { clamp: Some((f32::NAN, f32::NAN)), ..base }).contains("must be finite"));
    assert!(err(&Request { clamp: Some((1e6, f32::INFINITY)), ..base }).contains("rounds to inf"));
    assert_eq!(effective_clamp_limit::<f16>(1e6), f32::INFINITY);
    assert_eq!(effective_clamp_limit::<bf16>(7.03), 7.03125);
    assert_eq!(effective_clamp_limit::<f32>(7.03), 7.03);
}

fn plan(rows: u64, d: u64, in_stride: u64, out_stride: u64) -> Plan {
    Plan {
        rows,
        d,
        in_stride,
        out_stride,
        expert_step: 1,
        num_valid_tokens: 0,
        clamp: 0.0,
        filter_flags: 0,
        filter_tile: None,
        ids_early: false,
    }
}

#[test]
fn vector_path_needs_aligned_pointers_strides_and_width() {
    let p = plan(4, 4096, 8192, 4096);
    assert!(vector_path(&p, 0x1000, 0x2000, 2));
    assert!(!vector_path(&p, 0x1002, 0x2000, 2));
    assert!(!vector_path(&p, 0x1000, 0x2008, 2));
    assert!(!vector_path(&plan(4, 4100, 8200, 4100), 0x1000, 0x2000, 2));
    assert!(vector_path(&plan(4, 4096, 8200, 4096), 0x1000, 0x2000, 2)); // 8200 % 8 == 0
    assert!(!vector_path(&plan(4, 4096, 8196, 4096), 0x1000, 0x2000, 2));
    assert!(!vector_path(&plan(4, 4096, 8192, 4097), 0x1000, 0x2000, 2));
    // f32: 4 lanes.
    assert!(vector_path(&plan(4, 1000, 2000, 1000), 0x1000, 0x2000, 4));
    assert!(!vector_path(&plan(4, 1002, 2004, 1002), 0x1000, 0x2000, 4));
}

/// Every thread slot of a launch, as the kernel computes it: (row, unit) pairs.
fn covered(cfg: &LaunchConfig, rows: u64, units: u64, per: u64) -> Vec<u8> {
    let (tx, ty) = (cfg.block.0 as u64, cfg.block.1 as u64);
    let mut seen = vec![0u8; (rows * units) as usize];
    for bz in 0..cfg.grid.2 as u64 {
        for by in 0..cfg.grid.1 as u64 {
            for bx in 0..cfg.grid.0 as u64 {
                for y in 0..ty {
                    let row = (bz * cfg.grid.1 as u64 + by) * ty + y;
                    if row >= rows {
                        continue;
                    }
                    for x in 0..tx {
                        for j in 0..per {
                            let c = bx * tx * per + x + j * tx;
                            if c < units {
                                seen[(row * units + c) as usize] += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    seen
}

#[test]
fn geometry_covers_every_unit_once() {
    // (rows, d, elem, vector) → every (row, unit) is covered by exactly one thread slot.
    for &(rows, d, elem, vector) in &[
        (1u64, 4096u64, 2usize, true),
        (128, 14336, 2, true),
        (7, 16, 2, true),
        (83, 1024, 4, true),
        (5, 1, 2, false),
        (3, 3, 4, false),
        (17, 1000, 2, false),
        (2, 65536, 2, true),
        (9, 129, 2, false),
        (300, 8, 2, true),
    ] {
        let units_of = if vector { vec![(16 / elem) as u64, (8 / elem) as u64] } else { vec![1] };
        for lanes in units_of {
            for threads in [SMALL_THREADS, THREADS] {
                let p = plan(rows, d, 2 * d, d);
                let per = if vector { VEC_PER } else { SCALAR_PER };
                let cfg = geometry(&p, lanes, per, threads);
                assert_eq!(cfg.block.0 as u64 * cfg.block.1 as u64, threads);
                assert_eq!(cfg.block.2, 1);
                let seen = covered(&cfg, rows, d / lanes, per);
                assert!(seen.iter().all(|&s| s == 1), "rows={rows} d={d} lanes={lanes} threads={threads}: {cfg:?}");
            }
        }
    }
    // The benchmark shapes: one row of d = 4096 bf16 is 512 vectors, two blocks of 256 threads.
    let cfg = geometry(&plan(1, 4096, 8192, 4096), 8, VEC_PER, THREADS);
    assert_eq!((cfg.grid, cfg.block), ((2, 1, 1), (256, 1, 1)));
    let cfg = geometry(&plan(128, 14336, 28672, 14336), 8, VEC_PER, THREADS);
    assert_eq!((cfg.grid, cfg.block), ((7, 128, 1), (256, 1, 1)));
    // Narrow rows pack several rows per block.
    let cfg = geometry(&plan(7, 16, 32, 16), 8, VEC_PER, THREADS);
    assert_eq!((cfg.grid, cfg.block), ((1, 1, 1), (2, 128, 1)));
    // More row blocks than gridDim.y holds spill into z; the surplus blocks of the last z slice
    // fall past the last row (the kernel returns for them).
    let rows = 65535 * 3 + 17;
    let cfg = geometry(&plan(rows, 2048, 4096, 2048), 8, VEC_PER, THREADS);
    assert_eq!((cfg.grid, cfg.block), ((1, 65535, 4), (256, 1, 1)));
    let cfg = geometry(&plan(MAX_ROWS as u64, 1, 2, 1), 1, SCALAR_PER, THREADS);
    assert_eq!((cfg.grid, cfg.block), ((1, 65535, 129), (1, 256, 1)));
    assert!(cfg.grid.1 as u64 * cfg.grid.2 as u64 * 256 >= MAX_ROWS as u64);
    let cfg = geometry(&plan(1, MAX_D as u64, 2 * MAX_D as u64, MAX_D as u64), 1, SCALAR_PER, THREADS);
    assert_eq!(cfg.grid.0 as u64, (MAX_D as u64).div_ceil(THREADS * SCALAR_PER));
}

#[test]
fn launch_policy_by_size_path_and_filter() {
    // 1 × 2·4096 bf16 (16 KiB): half vectors, small blocks, dependents released after the
    // loads, prefetch.
    let (cfg, flags) = launch_config(&plan(1, 4096, 8192, 4096), true, 2);
    assert_eq!((cfg.grid, cfg.block), ((8, 1, 1), (128, 1, 1)));
    assert_eq!(flags, FLAG_VECTOR | FLAG_PREFETCH | FLAG_HALF_VECTOR);
    // 8 × 2·4096 bf16 (128 KiB): full vectors, small blocks.
    let (cfg, flags) = launch_config(&plan(8, 4096, 8192, 4096), true, 2);
    assert_eq!((cfg.grid, cfg.block), ((4, 8, 1), (128, 1, 1)));
    assert_eq!(flags, FLAG_VECTOR | FLAG_PREFETCH);
    // 128 × 2·4096 bf16 (2 MiB): full blocks, early release, prefetch.
    let (cfg, flags) = launch_config(&plan(128, 4096, 8192, 4096), true, 2);
    assert_eq!(cfg.block, (256, 1, 1));
    assert_eq!(flags, FLAG_VECTOR | FLAG_PREFETCH | FLAG_EARLY_TRIGGER);
    // 2048 × 2·14336 bf16 (117 MiB): no prefetch.
    assert_eq!(launch_config(&plan(2048, 14336, 28672, 14336), true, 2).1, FLAG_VECTOR | FLAG_EARLY_TRIGGER);
    // Scalar path and filtered launches never prefetch.
    assert_eq!(launch_config(&plan(128, 4096, 8192, 4096), false, 2).1, FLAG_EARLY_TRIGGER);
    let filtered = Plan { filter_flags: FLAG_EXPERT, ..plan(128, 4096, 8192, 4096) };
    assert_eq!(launch_config(&filtered, true, 2).1, FLAG_EXPERT | FLAG_VECTOR | FLAG_EARLY_TRIGGER);
}

#[test]
fn overlapping_buffers_are_rejected() {
    disjoint("op", 0x1000, 64, 0x1080, 64, 2).unwrap();
    disjoint("op", 0x1080, 64, 0x1000, 64, 2).unwrap();
    assert!(disjoint("op", 0x1000, 65, 0x1080, 64, 2).is_err());
    assert!(disjoint("op", 0x1000, 64, 0x1000, 1, 2).is_err());
    disjoint("op", 0x1000, 0, 0x1000, 8, 2).unwrap();
}

#[test]
fn spec_table_is_complete_and_indexed() {
    let specs = kernel_specs();
    assert_eq!(specs.len(), GENERAL_SPECS + WIDE_SPECS + GENERAL_SPECS + 27);
    let mut names = std::collections::HashSet::new();
    for dt in DTYPES {
        for act in Activation::ALL {
            for rounding in [Rounding::Once, Rounding::Activation] {
                for pdl in [false, true] {
                    let s = &specs[spec_index(dt, act, rounding, pdl)];
                    assert!(names.insert(s.name().to_string()));
                    assert_eq!(s.is_pdl(), pdl);
                    assert!(s.name().starts_with(act.op()) && s.name().contains(dt.tag()), "{}", s.name());
                    let round = rounding == Rounding::Activation;
                    assert_eq!(s.expr(), format!("act_and_mul_kernel<{}, {}, {round}, {pdl}>", dt.cpp(), act as usize));
                    let math = if round { MathPolicy::Fixed(FastMath::PRECISE) } else { MathPolicy::ArchDefault };
                    assert_eq!(s.math_policy(), math);
                    assert_eq!(params_bytes(s), Some(ffi::PARAMS_BYTES));
                }
            }
        }
    }
    for dt in DTYPES {
        for act in Activation::ALL {
            for rounding in [Rounding::Once, Rounding::Activation] {
                for pdl in [false, true] {
                    let wide = wide_index(dt, act, rounding, pdl);
                    let has = dt != DtypeId::F32 && act != Activation::Gelu && rounding == Rounding::Once;
                    assert_eq!(wide.is_some(), has, "{dt:?} {act:?} {rounding:?}");
                    if let Some(i) = wide {
                        let s = &specs[i];
                        assert!(names.insert(s.name().to_string()));
                        assert_eq!(s.is_pdl(), pdl);
                        assert_eq!(s.expr(), format!("act_and_mul_wide_kernel<{}, {}, {pdl}>", dt.cpp(), act as usize));
                        assert_eq!(s.math_policy(), MathPolicy::ArchDefault);
                    }
                }
            }
        }
    }
    for dt in DTYPES {
        for act in Activation::ALL {
            for rounding in [Rounding::Once, Rounding::Activation] {
                for pdl in [false, true] {
                    let general = &specs[spec_index(dt, act, rounding, pdl)];
                    let s = &specs[tiled_index(dt, act, rounding, pdl)];
                    assert!(names.insert(s.name().to_string()));
                    assert_eq!(s.name(), general.name().replacen(dt.tag(), &format!("{}__tiled", dt.tag()), 1));
                    assert_eq!((s.is_pdl(), s.math_policy()), (pdl, general.math_policy()));
                    let round = rounding == Rounding::Activation;
                    assert_eq!(s.expr(), format!("act_and_mul_tiled_kernel<{}, {}, {round}, {pdl}>", dt.cpp(), act as usize));
                }
            }
        }
    }
    for dt in DTYPES {
        for act in Activation::ALL {
            for release in 0..FILTERED_RELEASES.len() {
                let s = &specs[filtered_index(dt, act, release)];
                assert!(names.insert(s.name().to_string()));
                assert_eq!((s.is_pdl(), s.math_policy()), (true, MathPolicy::ArchDefault));
                assert_eq!(s.expr(), format!("act_and_mul_filtered_kernel<{}, {}, {release}>", dt.cpp(), act as usize));
            }
        }
    }
    assert_eq!(specs[filtered_index(DtypeId::Bf16, Activation::Silu, 1)].name(), "silu_and_mul__bf16__filtered_early__pdl");
    assert_eq!(specs[filtered_index(DtypeId::F16, Activation::Gelu, 2)].name(), "gelu_and_mul__f16__filtered_kept__pdl");
    assert_eq!(names.len(), specs.len());
    assert_eq!(specs[tiled_index(DtypeId::Bf16, Activation::Silu, Rounding::Once, true)].name(), "silu_and_mul__bf16__tiled__pdl");
    assert_eq!(
        specs[wide_index(DtypeId::Bf16, Activation::GeluTanh, Rounding::Once, true).unwrap()].name(),
        "gelu_tanh_and_mul__bf16__wide__pdl"
    );
    assert_eq!(specs[spec_index(DtypeId::Bf16, Activation::Silu, Rounding::Once, true)].name(), "silu_and_mul__bf16__pdl");
    assert_eq!(specs[spec_index(DtypeId::F16, Activation::GeluTanh, Rounding::Activation, false)].name(), "gelu_tanh_and_mul__f16__round");
    static OTHER: KernelSource = KernelSource { name: "x.cuh", text: "", headers: &[] };
    assert_eq!(params_bytes(&KernelSpec::new("x", &OTHER, "x")), None);
}

#[test]
fn wide_kernel_only_for_unfiltered_vector_launches() {
    assert!(wide_allowed(FLAG_VECTOR));
    assert!(wide_allowed(FLAG_VECTOR | FLAG_HALF_VECTOR | FLAG_PREFETCH | FLAG_EARLY_TRIGGER));
    assert!(!wide_allowed(0));
    assert!(!wide_allowed(FLAG_EARLY_TRIGGER));
    assert!(!wide_allowed(FLAG_VECTOR | FLAG_EXPERT));
    assert!(!wide_allowed(FLAG_VECTOR | FLAG_SORTED));
}

#[test]
fn tiled_kernel_only_when_forced_or_with_the_ids_before_the_wait() {
    let filtered = |rows, d| Plan { filter_flags: FLAG_EXPERT, ..plan(rows, d, 2 * d, d) };
    let early = |rows, d| Plan { ids_early: true, ..filtered(rows, d) };
    let tile_of = |p: &Plan, vector: bool, elem: usize| {
        let (cfg, flags) = launch_config(p, vector, elem);
        filter_tile(flags, &cfg, p).unwrap_or(1)
    };
    // Ids after the wait: the general kernel at every size.
    for (rows, d) in [(1023, 4096), (1024, 4096), (512, 14336), (16384, 14336)] {
        assert_eq!(tile_of(&filtered(rows, d), true, 2), 1, "{rows}x{d}");
    }
    // Ids before the wait, bf16 d = 4096: 2 column blocks; 1024 rows = 2048 blocks → tile 2.
    assert_eq!(tile_of(&early(1024, 4096), true, 2), TILE);
    assert_eq!(tile_of(&early(512, 14336), true, 2), TILE);
    assert_eq!(tile_of(&early(16384, 14336), true, 2), TILE);
    // Unfiltered, scalar path, half vectors or thread rows narrower than a warp: never.
    assert_eq!(tile_of(&plan(16384, 4096, 8192, 4096), true, 2), 1);
    assert_eq!(tile_of(&early(16384, 4096), false, 2), 1);
    assert_eq!(tile_of(&Plan { filter_tile: Some(4), ..filtered(1, 4096) }, true, 2), 1); // 16 KiB: half vectors
    assert_eq!(tile_of(&Plan { filter_tile: Some(4), ..filtered(100000, 128) }, true, 2), 1); // 16 vectors per row
    // 32 vectors per row (bf16 d = 256) is a whole warp; a forced tile wins over the size rule.
    assert_eq!(tile_of(&Plan { filter_tile: Some(3), ..filtered(64, 256) }, true, 2), 3);
    assert_eq!(tile_of(&Plan { filter_tile: Some(1), ..early(16384, 4096) }, true, 2), 1);
    assert_eq!(tile_of(&Plan { filter_tile: Some(32), ..filtered(7, 4096) }, true, 4), 32);
    // Sorted filters too.
    assert_eq!(tile_of(&Plan { filter_flags: FLAG_SORTED, ..early(4096, 4096) }, true, 2), TILE);

    // The grid covers every row: ceil(rows / (ty · tile)) row blocks, split over y and z.
    let (cfg, _) = launch_config(&filtered(4099, 4096), true, 2);
    let t = tiled_geometry(&cfg, 4099, 2);
    assert_eq!((t.grid, t.block), ((2, 2050, 1), (256, 1, 1)));
    let (cfg, _) = launch_config(&filtered(1 << 22, 256), true, 2);
    assert_eq!(cfg.block, (32, 8, 1));
    let t = tiled_geometry(&cfg, 1 << 22, 3);
    let row_blocks = (1u64 << 22).div_ceil(24);
    assert_eq!((t.grid.0, t.grid.1, t.grid.2), (1, 65535, 3));
    assert!(t.grid.1 as u64 * t.grid.2 as u64 >= row_blocks && (t.grid.2 as u64 - 1) * 65535 < row_blocks);
}

#[test]
fn filter_tile_is_checked() {
    let base = Request { expert: Some((16, 1)), ..contiguous(16, 4096) };
    assert_eq!(validate(&Request { filter_tile: Some(32), ..base }).unwrap().unwrap().filter_tile, Some(32));
    assert!(err(&Request { filter_tile: Some(0), ..base }).contains("filter_tile=0"));
    assert!(err(&Request { filter_tile: Some(33), ..base }).contains("filter_tile=33 (must be 1..=32)"));
}

#[test]
fn ids_before_wait_takes_the_tiled_kernel_with_tile_1() {
    let early = |rows, d| Plan { filter_flags: FLAG_EXPERT, ids_early: true, ..plan(rows, d, 2 * d, d) };
    let tiled = |p: &Plan| {
        let (cfg, flags) = launch_config(p, true, 2);
        filter_tile(flags, &cfg, p).map(|t| (t, tiled_flags(p, flags)))
    };
    // 128 × 2·4096 bf16 (2 MiB): tile 1, ids early, kept rows (of the first wave) prefetched.
    let early_flags = FLAG_EXPERT | FLAG_VECTOR | FLAG_EARLY_TRIGGER | FLAG_IDS_EARLY | FLAG_PREFETCH;
    assert_eq!(tiled(&early(128, 4096)), Some((1, early_flags)));
    // 8192 × 2·4096 bf16 (128 MiB): the size rule's tile; the first wave's kept rows prefetched.
    assert_eq!(tiled(&early(8192, 4096)), Some((TILE, early_flags)));
    assert!(first_wave_prefetch(&early(8192, 4096), early_flags));
    // Without the permission: the general kernel at every size.
    assert_eq!(tiled(&Plan { ids_early: false, ..early(8192, 4096) }), None);
    assert_eq!(tiled(&Plan { ids_early: false, ..early(128, 4096) }), None);
    // Half vectors (under 64 KiB): the general kernel, ids after the wait.
    assert_eq!(tiled(&early(1, 4096)), None);
    // Validation drops the permission without a filter.
    let r = Request { ids_early: true, ..contiguous(16, 4096) };
    assert!(!validate(&r).unwrap().unwrap().ids_early);
    let r = Request { ids_early: true, expert: Some((16, 1)), ..contiguous(16, 4096) };
    assert!(validate(&r).unwrap().unwrap().ids_early);
}

#[test]
fn id_hints_for_filtered_vector_launches_with_the_ids_after_the_wait() {
    let filtered = |rows, d| Plan { filter_flags: FLAG_EXPERT, ..plan(rows, d, 2 * d, d) };
    let flags_of = |p: &Plan, vector: bool| {
        let (cfg, flags) = launch_config(p, vector, 2);
        let flags = match filter_tile(flags, &cfg, p) {
            Some(_) => tiled_flags(p, flags),
            None => flags,
        };
        hinted_flags(p, flags)
    };
    // 128 and 16384 rows, sorted filter, half vectors: hints, for the first wave.
    for p in [filtered(128, 4096), filtered(16384, 4096), Plan { filter_flags: FLAG_SORTED, ..filtered(128, 4096) }, filtered(1, 4096)] {
        let f = flags_of(&p, true);
        assert!(f & FLAG_PREFETCH != 0 && f & FLAG_IDS_EARLY == 0 && first_wave_prefetch(&p, f), "{p:?}");
    }
    // Scalar path: no prefetch. Unfiltered launches: their own size rule, every block.
    let p = filtered(128, 4096);
    assert_eq!(flags_of(&p, false) & FLAG_PREFETCH, 0);
    let u = plan(128, 4096, 8192, 4096);
    assert!(flags_of(&u, true) & FLAG_PREFETCH != 0 && !first_wave_prefetch(&u, flags_of(&u, true)));
    // Ids before the wait: the tiled kernel's own (kept rows), first wave too.
    let e = Plan { ids_early: true, ..filtered(8192, 4096) };
    assert!(flags_of(&e, true) & FLAG_IDS_EARLY != 0 && first_wave_prefetch(&e, flags_of(&e, true)));
    // ids_before_wait where the tiled kernel cannot run (16 KiB: half vectors): ids after the
    // wait, so the hints.
    let e = Plan { ids_early: true, ..filtered(1, 4096) };
    let f = flags_of(&e, true);
    assert!(f & FLAG_IDS_EARLY == 0 && f & FLAG_PREFETCH != 0 && first_wave_prefetch(&e, f));
}

#[test]
fn prefetch_budget_is_the_general_kernels_first_wave_in_rows() {
    // 132 SMs × 8 blocks: the general kernel's first wave; the tiled kernel's first wave / tile.
    assert_eq!(prefetch_blocks(1056, None), 1056);
    assert_eq!(prefetch_blocks(1056, Some(1)), 1056);
    assert_eq!(prefetch_blocks(1056, Some(2)), 528);
    assert_eq!(prefetch_blocks(1056, Some(32)), 33);
    // Never zero blocks, never past i32.
    assert_eq!(prefetch_blocks(7, Some(32)), 1);
    assert_eq!(prefetch_blocks(u32::MAX, None), i32::MAX);
}

#[test]
fn filtered_kernel_takes_exactly_its_flags() {
    let base = FLAG_VECTOR | FLAG_EXPERT | FLAG_PREFETCH;
    assert_eq!(filtered_fixed(base), Some(0));
    assert_eq!(filtered_fixed(base | FLAG_EARLY_TRIGGER), Some(1));
    assert_eq!(filtered_fixed(base | FLAG_EARLY_TRIGGER | FLAG_RELEASE_KEPT), Some(2));
    // Anything else: the general kernel.
    for extra in [FLAG_SORTED, FLAG_HALF_VECTOR, FLAG_IDS_EARLY] {
        assert_eq!(filtered_fixed(base | extra), None, "{extra}");
        assert_eq!(filtered_fixed(base | FLAG_EARLY_TRIGGER | extra), None, "{extra}");
        assert_eq!(filtered_fixed(base | FLAG_EARLY_TRIGGER | FLAG_RELEASE_KEPT | extra), None, "{extra}");
    }
    assert_eq!(filtered_fixed(base | FLAG_RELEASE_KEPT), None, "kept release without the early trigger");
    assert_eq!(filtered_fixed(FLAG_VECTOR | FLAG_EXPERT | FLAG_EARLY_TRIGGER), None, "no hints");
    assert_eq!(filtered_fixed(FLAG_EXPERT | FLAG_PREFETCH), None, "element-wise");
    assert_eq!(filtered_fixed(FLAG_VECTOR | FLAG_PREFETCH | FLAG_EARLY_TRIGGER), None, "unfiltered");
}

#[test]
fn large_filtered_launches_release_dependents_once_kept() {
    let filtered = |rows, d| Plan { filter_flags: FLAG_EXPERT, ..plan(rows, d, 2 * d, d) };
    let flags_of = |p: &Plan, vector: bool| {
        let (cfg, flags) = launch_config(p, vector, 2);
        release_kept_flags(p, flags, &cfg)
    };
    // bf16 d = 4096: 2 column blocks; 1024 rows = 2048 blocks → once kept, 1023 → right after the wait.
    assert_ne!(flags_of(&filtered(1024, 4096), true) & FLAG_RELEASE_KEPT, 0);
    assert_eq!(flags_of(&filtered(1023, 4096), true) & FLAG_RELEASE_KEPT, 0);
    assert_ne!(flags_of(&filtered(16384, 14336), true) & FLAG_RELEASE_KEPT, 0);
    // Sorted filters, the scalar path and ids before the wait too; never unfiltered launches or
    // launches without the early release (none has 2048 blocks under 512 KiB anyway).
    assert_ne!(flags_of(&Plan { filter_flags: FLAG_SORTED, ..filtered(4096, 4096) }, true) & FLAG_RELEASE_KEPT, 0);
    assert_ne!(flags_of(&filtered(4096, 4096), false) & FLAG_RELEASE_KEPT, 0);
    assert_ne!(flags_of(&Plan { ids_early: true, ..filtered(4096, 4096) }, true) & FLAG_RELEASE_KEPT, 0);
    assert_eq!(flags_of(&plan(16384, 4096, 8192, 4096), true) & FLAG_RELEASE_KEPT, 0);
    let cfg = LaunchConfig { grid: (4096, 1, 1), block: (256, 1, 1), smem: 0 };
    assert_eq!(release_kept_flags(&filtered(4096, 4096), FLAG_EXPERT | FLAG_VECTOR, &cfg), FLAG_EXPERT | FLAG_VECTOR);
    // The filtered kernel's third instantiation takes such a launch once the hints are added.
    let p = filtered(16384, 4096);
    assert_eq!(filtered_fixed(hinted_flags(&p, flags_of(&p, true))), Some(2));
    assert_eq!(filtered_fixed(hinted_flags(&filtered(512, 4096), flags_of(&filtered(512, 4096), true))), Some(1));
}
