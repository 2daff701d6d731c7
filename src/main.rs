//! `device-taint-eviction` binary: parses the command line, sets up logging and runs a subcommand.

use anyhow::Context as _;
use clap::Parser as _;
use device_taint_eviction::cli::{Cli, Command, KubeArgs};
use device_taint_eviction::{client, controller, ops, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.command.log_args().settings()).context("failed to set up logging")?;
    let mut out = std::io::stdout();
    match cli.command {
        Command::Controller(args) => {
            controller::run(args.config())
                .await
                .context("device-taint-eviction-controller failed")?;
        }
        Command::Taint(args) => {
            let client = connect(&args.kube).await?;
            ops::taint(&client, &args.request(), ops::ProgressDisplay::detect(), &mut out).await?;
        }
        Command::Untaint(args) => {
            let client = connect(&args.kube).await?;
            ops::untaint(&client, &args.request(), &mut out).await?;
        }
        Command::Explain(args) => {
            let client = connect(&args.kube).await?;
            ops::explain_cluster(&client, &args.request(), &mut out).await?;
        }
    }
    Ok(())
}

async fn connect(args: &KubeArgs) -> anyhow::Result<kube::Client> {
    client::client(&args.settings())
        .await
        .context("failed to connect to the Kubernetes API server")
}
