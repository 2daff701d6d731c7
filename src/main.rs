//! `device-taint-eviction` binary: parses the command line, sets up logging and runs a subcommand.
//!
//! An error ends the process with exit code 1 after printing it the way kubectl does: `error: ` and
//! the message, then one line per cause. Nothing else, whatever the environment says: a backtrace
//! (`RUST_BACKTRACE`) is for bugs, and only a panic prints one.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use device_taint_eviction::{
    cli::{Cli, Command, KubeArgs},
    client, controller, ops, telemetry,
};

/// Every build allocates with mimalloc: less CPU than glibc's allocator (and far less than musl's,
/// the static build's) for the many small allocations of decoding lists and answering requests,
/// at the same peak memory (measured in Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = cli
        .command
        .runtime()
        .context("failed to start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprint!("{}", error_report(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
        Command::Resume(args) => {
            let client = connect(&args.kube).await?;
            ops::resume(&client, &args.request(), &mut out).await?;
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

/// `error: <message>` and a `caused by: <cause>` line per cause, outermost first; never a
/// backtrace.
fn error_report(err: &anyhow::Error) -> String {
    std::iter::once(format!("error: {err}\n"))
        .chain(err.chain().skip(1).map(|cause| format!("caused by: {cause}\n")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::error_report;

    #[test]
    fn report_lists_the_causes_without_a_backtrace() {
        let err = anyhow::anyhow!("it does not exist")
            .context("failed to delete DeviceTaintRule r")
            .context("untaint failed");
        assert_eq!(
            error_report(&err),
            "error: untaint failed\ncaused by: failed to delete DeviceTaintRule r\ncaused by: it does not exist\n"
        );
    }
}
