//! T2 tests of kiln-rope (in progress).
fn main() {
    kiln_tests::main(Vec::new())
}
