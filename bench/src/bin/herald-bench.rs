//! herald-bench: measures herald and the tokio reference side by side.
fn main() {}
