//! The `arbor` binary: see `arbor --help` and README.md.

// mimalloc rather than the system allocator: the simulator allocates and frees small
// buffers (messages, fetch lists) by the million, and spends a tenth of its time in
// glibc's malloc otherwise.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    arbor::cli::main()
}
