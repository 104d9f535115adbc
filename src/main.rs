//! The `berth` binary. Everything lives in the `cli` crate; this file only hands over.

/// mimalloc rather than glibc's allocator: the broker allocates many small, short-lived
/// buffers on several threads (request bodies, JSON rows, sqlx messages), where glibc's
/// arenas spent ~15 % of the CPU in the W1 profile (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
