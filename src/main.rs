//! `vidcascade`: the command line of the cascade.
//!
//! - `vidcascade generate "<prompt>" -o out.gif` runs every stage in this process (no server);
//! - `vidcascade info` lists the model repository's stages, shapes and defaults.
//!
//! Errors are one line on stderr and a non-zero exit status, never a backtrace.

mod cli;

use std::process::ExitCode;

use clap::Parser;

// candle allocates a fresh buffer per tensor op; mimalloc reuses them instead of returning them
// to the OS and faulting them back in (measured ~2x on 2 cores for training, also helps sampling).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before any thread starts (see vidcascade_kernels::cpu::configure_threads).
    vidcascade_kernels::cpu::configure_threads(vidcascade_kernels::cpu::Workload::Inference);
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
