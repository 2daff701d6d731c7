//! `device-taint-eviction` binary: parses the command line, sets up logging and runs a subcommand.

use anyhow::Context as _;
use clap::Parser as _;
use device_taint_eviction::cli::{Cli, Command};
use device_taint_eviction::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.command.log_args()).context("failed to set up logging")?;
    match cli.command {
        Command::Controller(args) => device_taint_eviction::controller::run(args)
            .await
            .context("device-taint-eviction-controller failed"),
        Command::Taint(_) => anyhow::bail!("taint not wired yet"),
        Command::Untaint(_) => anyhow::bail!("untaint not wired yet"),
        Command::Explain(_) => anyhow::bail!("explain not wired yet"),
    }
}
