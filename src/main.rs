//! `tutti`: the one user-facing binary of the farm.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // A person at a terminal wants the progress bar, not the farm's info lines.
    if cli.command.is_interactive() && std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    let service = match &cli.command {
        cli::Command::Coordinator(_) => "tutti-coordinator",
        cli::Command::Worker(_) => "tutti-worker",
        _ => "tutti",
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the OTLP exporter's gRPC channel needs a reactor.
    let result = runtime.block_on(async {
        let _telemetry = tutti_shared::telemetry::init(cli.log_format, service);
        cli::run(cli).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
