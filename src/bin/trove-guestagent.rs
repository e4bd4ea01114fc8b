//! trove-guestagent: the daemon that serves Trove's guest RPCs for the local Redis.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use trove_guest::config::{self, LogFormat};

/// Trove guest agent for Redis replication.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// TOML config file (see etc/trove-guestagent.toml); env TROVE_GUESTAGENT__<SECTION>__<KEY> overrides it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print the documented default configuration and exit.
    #[arg(long)]
    print_defaults: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_defaults {
        print!("{}", config::DEFAULTS);
        return ExitCode::SUCCESS;
    }
    let settings = match config::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(error) => {
            eprintln!("trove-guestagent: {error}");
            return ExitCode::from(64);
        }
    };
    let mut filter = tracing_subscriber::EnvFilter::try_new(&settings.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // At trace level lapin logs every AMQP frame: the connection's credentials (StartOk) and message
    // bodies (passwords, when secure RPC is off). Its frame dumps never go into our log.
    if filter.max_level_hint() == Some(tracing::level_filters::LevelFilter::TRACE) {
        for target in ["lapin", "lapin::io_loop", "lapin::channels"] {
            filter = filter.add_directive(format!("{target}=debug").parse().expect("static directive"));
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match settings.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("trove-guestagent: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let cancel = CancellationToken::new();
        let signals = cancel.clone();
        tokio::spawn(async move {
            trove_guest::signal::shutdown().await;
            signals.cancel();
        });
        tracing::info!(guest_id = %settings.guest.id, version = env!("CARGO_PKG_VERSION"), "trove-guestagent starting");
        match trove_guest::agent::run(settings, cancel, Default::default()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "agent failed");
                ExitCode::FAILURE
            }
        }
    })
}
