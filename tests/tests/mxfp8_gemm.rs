//! T2 tests of the kiln-mxfp8 grouped GEMM (in progress).
fn main() {
    kiln_tests::main(Vec::new())
}
