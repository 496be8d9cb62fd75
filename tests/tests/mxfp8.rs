//! T2 tests of kiln-mxfp8 (in progress).
fn main() {
    kiln_tests::main(Vec::new())
}
