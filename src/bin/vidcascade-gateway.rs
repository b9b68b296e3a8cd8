//! `vidcascade-gateway`: the public `vidcascade.v1.Gateway` in front of the text encoder and
//! stage services. See `vidcascade-gateway --help` for every flag and its `VIDCASCADE_*`
//! variable.

use std::process::ExitCode;

use vidcascade_gateway::{GatewayCli, GatewayServer};
use vidcascade_runtime::{exit_config, parse_or_exit, run_main, run_service, shutdown_signal};

fn main() -> ExitCode {
    let cli: GatewayCli = parse_or_exit();
    let config = cli.validate().unwrap_or_else(|err| exit_config(&err));
    run_main("vidcascade-gateway", &config.server, || async {
        let server = GatewayServer::new(&config);
        run_service(&config.server, server, shutdown_signal()).await
    })
}
