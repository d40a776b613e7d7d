//! The `arbor` binary: see `arbor --help` and README.md.

// mimalloc rather than the system allocator: the simulator allocates and frees small
// buffers (messages, fetch lists) by the million, and spends a tenth of its time in
// glibc's malloc otherwise.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its `mi_option_e`, v2 and v3 alike).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    if std::env::args_os().skip(1).any(|a| a == "simulate") {
        // A simulation is a batch job whose memory goes back at exit: mimalloc keeps
        // what it frees rather than handing it back to the system after 10 ms and
        // having it zeroed again on the next page fault (fleet-100k spent ~6% of its
        // time there).
        // SAFETY: sets a process-wide option before any thread is started.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    arbor::cli::main()
}
