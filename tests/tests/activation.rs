//! T2 tests of kiln-activation (in progress).
fn main() {
    kiln_tests::main(Vec::new())
}
