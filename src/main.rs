//! The `berth` binary. Everything lives in the `cli` crate; this file only hands over.
//!
//! The allocator is jemalloc, for the whole process: its symbols are unprefixed
//! (`tikv-jemalloc-sys`, which `berth-broker` links), so SQLite's allocations use it too, and
//! Rust's go to it directly. Measured against glibc's (BENCHMARKS.md, seventeenth session):
//! W4 after W2 creates ~24 % more leases a second on ~20 % less CPU, its deadlines as
//! punctual; W2 is no slower (within the noise through `LD_PRELOAD`, ahead in all three
//! rounds built in); 100,000 hibernated tenants hold ~290 MiB. (mimalloc, measured earlier,
//! cost W2 10–20 %: memory of closed objects was taken fresh from the system, not reused.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
