//! T0 tests of quantizer validation, planning and the spec table (no GPU).

use super::*;
use kiln_runtime::Error;

const BLK: ScaleLayout = ScaleLayout::Blocked128x4;
const RM: ScaleLayout = ScaleLayout::RowMajor;

fn dense(x: usize, q: usize, s: usize) -> Lens {
    Lens { x, q, scales: s, experts: None }
}

fn reason(r: Result<Option<Plan>>) -> String {
    match r {
        Err(Error::InvalidArgument { reason, .. }) => reason,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn kernel_choice() {
    let s = Mxfp8Shape::contiguous(4096, 7168);
    let big = Mxfp8Shape::contiguous(32768, 2048);
    let p = |dir, s: Mxfp8Shape| {
        plan(dir, DtypeId::Bf16, s, BLK, dense(s.rows * s.k, s.rows * s.k, s.rows.div_ceil(128) * 128 * s.k / 32)).unwrap().unwrap()
    };
    let (mid, large, deq) = (p(Dir::Quantize, s), p(Dir::Quantize, big), p(Dir::Dequantize, s));
    assert_eq!(mid.tiles, 64 * 28);
    assert_eq!(choose(&mid, QuantKernel::Auto, true, true, 132).unwrap(), Some(2), "13.6 tiles per SM");
    assert_eq!(choose(&large, QuantKernel::Auto, true, true, 132).unwrap(), Some(4), "31 tiles per SM");
    assert_eq!(choose(&large, QuantKernel::Auto, false, true, 132).unwrap(), None, "unaligned: registers");
    assert_eq!(choose(&large, QuantKernel::Auto, true, false, 132).unwrap(), None, "sm_89: registers");
    assert_eq!(choose(&deq, QuantKernel::Auto, true, true, 132).unwrap(), None, "the dequantizer has no TMA kernel");
    assert_eq!(choose(&large, QuantKernel::Registers, true, true, 132).unwrap(), None);
    assert_eq!(choose(&mid, QuantKernel::Tma4, true, true, 132).unwrap(), Some(4));
    assert!(reason(choose(&mid, QuantKernel::Tma2, true, false, 132).map(|_| None)).contains("kernel tma2 needs"));
    assert!(reason(choose(&mid, QuantKernel::Tma4, false, true, 132).map(|_| None)).contains("aligned: false"));
    // The TMA kernels' shared memory fits the H100's 227 KiB per CTA with 1024 experts.
    assert!(tma_smem(4, MAX_EXPERTS) <= 227 * 1024);
}

#[test]
fn valid_calls_plan() {
    let s = Mxfp8Shape::contiguous(300, 256);
    let p = plan(Dir::Quantize, DtypeId::Bf16, s, BLK, dense(300 * 256, 300 * 256, 384 * 8)).unwrap().unwrap();
    assert_eq!((p.scale_rows, p.num_experts, p.smem), (384, 0, 24));
    assert_eq!(p.tiles, 5, "padding rows are written by the last data tile, they are no tiles");
    let p = plan(Dir::Dequantize, DtypeId::F32, s, BLK, dense(300 * 256, 300 * 256, 384 * 8)).unwrap().unwrap();
    assert_eq!(p.tiles, 5, "the dequantizer skips padding rows");
    let g = Lens { x: 300 * 256, q: 300 * 256, scales: 512 * 8, experts: Some([8; 3]) };
    let p = plan(Dir::Quantize, DtypeId::F16, s, BLK, g).unwrap().unwrap();
    assert_eq!((p.scale_rows, p.num_experts, p.smem, p.tiles), (512, 8, 192, 5 + 8));
    // Row-major takes k % 32 and any number of scale rows.
    let s = Mxfp8Shape::contiguous(3, 96);
    assert!(plan(Dir::Quantize, DtypeId::Bf16, s, RM, dense(288, 288, 9)).unwrap().is_some());
    let g = Lens { x: 288, q: 288, scales: 7 * 3, experts: Some([2; 3]) };
    assert_eq!(plan(Dir::Quantize, DtypeId::Bf16, s, RM, g).unwrap().unwrap().scale_rows, 7);
}

#[test]
fn empty_work_needs_no_launch() {
    assert_eq!(plan(Dir::Quantize, DtypeId::Bf16, Mxfp8Shape::contiguous(0, 128), BLK, dense(0, 0, 0)).unwrap(), None);
    assert_eq!(plan(Dir::Quantize, DtypeId::Bf16, Mxfp8Shape::contiguous(4, 0), RM, dense(0, 0, 0)).unwrap(), None);
    let g = Lens { x: 512, q: 512, scales: 512, experts: Some([0; 3]) };
    assert_eq!(plan(Dir::Quantize, DtypeId::Bf16, Mxfp8Shape::contiguous(4, 128), BLK, g).unwrap(), None);
    let g = Lens { x: 512, q: 512, scales: 0, experts: Some([3; 3]) };
    assert_eq!(plan(Dir::Dequantize, DtypeId::Bf16, Mxfp8Shape::contiguous(4, 128), BLK, g).unwrap(), None);
}

#[test]
fn bad_calls_name_their_values() {
    let s = Mxfp8Shape::contiguous(4, 96);
    assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, BLK, dense(384, 384, 512 * 3))).contains("k=96 is not a multiple of 128"));
    let s = Mxfp8Shape::contiguous(4, 100);
    assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, RM, dense(400, 400, 16))).contains("k=100 is not a multiple of 32"));
    let s = Mxfp8Shape::contiguous(4, 128);
    assert!(reason(plan(Dir::Quantize, DtypeId::F32, s, RM, dense(512, 512, 16))).contains("unsupported dtype f32"));
    assert!(reason(plan(Dir::Dequantize, DtypeId::I32, s, RM, dense(512, 512, 16))).contains("unsupported dtype i32"));
    assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, RM, dense(511, 512, 16))).contains("x.len()=511 < (rows-1)*x_stride+k=512"));
    assert!(reason(plan(Dir::Dequantize, DtypeId::Bf16, s, RM, dense(511, 512, 16))).contains("out.len()=511"));
    assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, RM, dense(512, 500, 16))).contains("q.len()=500"));
    assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, RM, dense(512, 512, 15))).contains("scales.len()=15 < 16"));
    assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, BLK, dense(512, 512, 16))).contains("scales.len()=16 < 512"));
    let st = Mxfp8Shape { rows: 4, k: 128, x_stride: 100, q_stride: 128 };
    assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, st, RM, dense(9999, 9999, 16))).contains("x_stride=100 < k=128"));
    let st = Mxfp8Shape { rows: 4, k: 128, x_stride: 130, q_stride: 128 };
    assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, st, RM, dense(3 * 130 + 127, 512, 16))).contains("(rows-1)*x_stride+k=518"));
    let g = |experts, scales| Lens { x: 512, q: 512, scales, experts: Some(experts) };
    assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, BLK, g([2, 2, 3], 512))).contains("blockscale_offsets.len()=3"));
    assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, BLK, g([1025; 3], 512))).contains("num_experts=1025 exceeds 1024"));
    assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, BLK, g([2; 3], 256))).contains("scales.len()=256 is not a whole number"));
    assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, s, RM, g([2; 3], 17))).contains("scales.len()=17 is not a whole number"));
    let big = Mxfp8Shape::contiguous(1 << 31, 32);
    assert!(reason(plan(Dir::Quantize, DtypeId::Bf16, big, RM, dense(usize::MAX, usize::MAX, usize::MAX))).contains("exceeds i32::MAX"));
}

#[test]
fn overflowing_shapes_are_errors() {
    let deq = |s: Mxfp8Shape, l: ScaleLayout, lens: Lens| reason(plan(Dir::Dequantize, DtypeId::Bf16, s, l, lens));
    // Strides of 2^63 made (rows-1)*stride+k wrap to 128, so 3 rows passed with tiny buffers.
    let s = Mxfp8Shape { rows: 3, k: 128, x_stride: 1 << 63, q_stride: 1 << 63 };
    assert!(deq(s, RM, dense(128, 128, 12)).contains("x_stride=9223372036854775808 exceeds 576460752303423487"));
    // One row never multiplies the stride, but the kernel and the vector check still do.
    let s = Mxfp8Shape { rows: 1, k: 128, x_stride: 1 << 63, q_stride: 128 };
    assert!(deq(s, RM, dense(128, 128, 4)).contains("x_stride=9223372036854775808 exceeds"));
    let s = Mxfp8Shape { rows: 1, k: 128, x_stride: 128, q_stride: 1 << 62 };
    assert!(deq(s, RM, dense(128, 128, 4)).contains("q_stride=4611686018427387904 exceeds"));
    // 2^20 rows × 2^49 columns: the extents and the scale bytes wrapped to 0.
    let r = deq(Mxfp8Shape::contiguous(1 << 20, 1 << 49), RM, dense(0, 0, 0));
    assert!(
        r.contains("(rows-1)*x_stride+k=590295810358705651712 exceeds 576460752303423487")
            && r.contains("rows=1048576, x_stride=562949953421312, k=562949953421312"),
        "{r}"
    );
    let s = Mxfp8Shape { rows: 1 << 20, k: 128, x_stride: 128, q_stride: 1 << 49 };
    assert!(deq(s, RM, dense(usize::MAX, 0, 0)).contains("(rows-1)*q_stride+k=590295247408752230528 exceeds"));
    // No overflow of usize, but past the kernels' 64-bit offsets.
    let r = deq(Mxfp8Shape::contiguous(1 << 11, 1 << 49), RM, dense(usize::MAX, usize::MAX, usize::MAX));
    assert!(r.contains("(rows-1)*x_stride+k=1152921504606846976 exceeds"), "{r}");
    let r = deq(Mxfp8Shape::contiguous(1, 1 << 58), BLK, dense(usize::MAX, usize::MAX, usize::MAX));
    assert!(r.contains("scale bytes padded_rows(rows)*k/32=1152921504606846976 exceed 576460752303423487"), "{r}");
    let g = Lens { x: 512, q: 512, scales: 1 << 62, experts: Some([2; 3]) };
    assert!(deq(Mxfp8Shape::contiguous(4, 128), RM, g).contains("scales.len()=4611686018427387904 exceeds 576460752303423487"));
    // The largest stride is accepted, and its byte stride does not overflow in `vector_ok`.
    let s = Mxfp8Shape { rows: 1, k: 128, x_stride: MAX_EXTENT, q_stride: MAX_EXTENT };
    let p = plan(Dir::Dequantize, DtypeId::F32, s, RM, dense(128, 128, 4)).unwrap().unwrap();
    assert!(!vector_ok(&p, 256, 256), "(2^59 - 1)·4 bytes is no multiple of 16");
}

#[test]
fn allocated_outputs_that_overflow_are_errors() {
    assert_eq!(dense_output_lens(300, 256, BLK).unwrap(), (300 * 256, 384 * 8));
    let r = |x: Result<(usize, usize)>| reason(x.map(|_| None));
    assert!(
        r(dense_output_lens(1 << 20, 1 << 49, RM))
            .contains("q.len()=rows*k=590295810358705651712 overflows usize (rows=1048576, k=562949953421312)")
    );
    assert!(
        r(dense_output_lens(1, 1 << 62, BLK))
            .contains("scales.len()=padded_rows(rows)*k/32=18446744073709551616 overflows usize (rows=1, k=4611686018427387904")
    );
}

#[test]
fn vector_path_needs_alignment() {
    let s = Mxfp8Shape::contiguous(4, 128);
    let p = plan(Dir::Quantize, DtypeId::Bf16, s, BLK, dense(512, 512, 512)).unwrap().unwrap();
    assert!(vector_ok(&p, 256, 256));
    assert!(!vector_ok(&p, 258, 256), "x not 16-byte aligned");
    assert!(!vector_ok(&p, 256, 260), "q not 8-byte aligned");
    let p = Plan { shape: Mxfp8Shape { x_stride: 132, ..s }, ..p };
    assert!(!vector_ok(&p, 256, 256), "x rows not 16-byte multiples");
    let p = Plan { shape: Mxfp8Shape { q_stride: 132, ..s }, ..p };
    assert!(!vector_ok(&p, 256, 256), "q rows not 8-byte multiples");
    // Dequantization to f32: 16-byte output rows need x_stride % 4 == 0.
    let p = plan(Dir::Dequantize, DtypeId::F32, Mxfp8Shape { x_stride: 130, ..s }, RM, dense(1024, 512, 16)).unwrap().unwrap();
    assert!(!vector_ok(&p, 256, 256));
    let p = plan(Dir::Dequantize, DtypeId::F32, Mxfp8Shape { x_stride: 132, ..s }, RM, dense(1024, 512, 16)).unwrap().unwrap();
    assert!(vector_ok(&p, 256, 256));
}

#[test]
fn spec_table_is_indexed_consistently() {
    let mut seen = std::collections::HashSet::new();
    for dir in DIRS {
        for &dt in dir.dtypes() {
            for vec in [true, false] {
                for pdl in [false, true] {
                    let i = spec_index(dir, dt, vec, pdl);
                    assert!(seen.insert(i));
                    assert_eq!(SPECS[i].name(), spec(dir, dt, vec, pdl).name());
                    assert_eq!(SPECS[i].is_pdl(), pdl);
                }
            }
        }
    }
    assert_eq!(seen.len(), SPECS.len());
    assert_eq!(SPECS[spec_index(Dir::Quantize, DtypeId::Bf16, true, true)].expr(), "mxfp8_quantize<__nv_bfloat16, true, true>");
}
