//! Benchmarks: see benches/README.md (pending).
fn main() {}
