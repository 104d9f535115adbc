//! The `berth` binary. Everything lives in the `cli` crate; this file only hands over.
fn main() -> std::process::ExitCode {
    cli::main()
}
