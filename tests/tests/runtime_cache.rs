//! T1 cache behaviour across processes (filled in below).
fn main() {
    kiln_tests::main(Vec::new())
}
