//! The `berth` binary. Everything lives in the `cli` crate; this file only hands over.
//!
//! The system allocator stays: mimalloc cut ~10 % of CPU per request in W1 but kept several
//! hundred MiB resident after objects hibernated (each object's SQLite worker is a thread of
//! its own, and mimalloc holds on to the heaps of exited threads); see BENCHMARKS.md.
fn main() -> std::process::ExitCode {
    cli::main()
}
