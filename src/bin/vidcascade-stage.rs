//! `vidcascade-stage --stage <name>`: serves one diffusion stage (base, TSR or SSR) of a model
//! repository as `vidcascade.v1.VideoStage`. See `vidcascade-stage --help` for every flag and
//! its `VIDCASCADE_*` variable.

use std::process::ExitCode;

use vidcascade_runtime::{exit_config, parse_or_exit, run_main, run_service, shutdown_signal};
use vidcascade_stage::StageServer;
use vidcascade_stage::config::StageCli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before any thread starts (see vidcascade_kernels::cpu::configure_threads).
    vidcascade_kernels::cpu::configure_threads(vidcascade_kernels::cpu::Workload::Inference);
    let cli: StageCli = parse_or_exit();
    let config = cli.validate().unwrap_or_else(|err| exit_config(&err));
    run_main("vidcascade-stage", &config.server, || async {
        let server = StageServer::load(&config)?;
        run_service(&config.server, server, shutdown_signal()).await
    })
}
