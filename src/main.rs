//! The `arbor` binary: see `arbor --help` and README.md.

fn main() -> std::process::ExitCode {
    arbor::cli::main()
}
