//! T2 tests of kiln-rmsnorm (in progress).
fn main() {
    kiln_tests::main(Vec::new())
}
