//! `vidcascade-text-encoder`: serves a model repository's frozen text encoder as
//! `vidcascade.v1.TextEncoder`. See `vidcascade-text-encoder --help` for every flag and its
//! `VIDCASCADE_*` variable.

use std::process::ExitCode;

use vidcascade_runtime::{exit_config, parse_or_exit, run_main, run_service, shutdown_signal};
use vidcascade_text_encoder::{EncoderCli, EncoderServer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before any thread starts (see vidcascade_kernels::cpu::configure_threads).
    vidcascade_kernels::cpu::configure_threads(vidcascade_kernels::cpu::Workload::Inference);
    let cli: EncoderCli = parse_or_exit();
    let config = cli.validate().unwrap_or_else(|err| exit_config(&err));
    run_main("vidcascade-text-encoder", &config.server, || async {
        let server = EncoderServer::load(&config)?;
        run_service(&config.server, server, shutdown_signal()).await
    })
}
