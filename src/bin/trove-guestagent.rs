//! trove-guestagent: the daemon that serves Trove's guest RPCs for the local Redis.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use tokio_util::sync::CancellationToken;
use trove_guest::config::{self, LogFormat};

/// Trove guest agent for Redis replication.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// TOML config file (see etc/trove-guestagent.toml); Trove's INI files and env TROVE_GUESTAGENT__<SECTION>__<KEY> override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// A Trove (oslo INI) option file, such as guest_info.conf or trove-guestagent.conf; repeatable.
    #[arg(long = "config-file", value_name = "FILE")]
    config_file: Vec<PathBuf>,
    /// A directory of Trove option files: every *.conf in it, in sorted order (as Trove's image starts its agent).
    #[arg(long = "config-dir", value_name = "DIR")]
    config_dir: Vec<PathBuf>,
    /// Print the documented default configuration and exit.
    #[arg(long)]
    print_defaults: bool,
    /// Run as Redis's ExecStartPre in systemd mode: make redis.conf start a replica source of a
    /// managed set guarded (a replica of nobody) unless the agent asked for this start; then exit.
    #[arg(long)]
    guard_redis_start: bool,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    if cli.print_defaults {
        print!("{}", config::DEFAULTS);
        return ExitCode::SUCCESS;
    }
    let settings = match trove_files(&cli, &matches).and_then(|files| config::load_all(cli.config.as_deref(), &files, std::env::vars())) {
        Ok(s) => s,
        Err(error) => {
            eprintln!("trove-guestagent: {error}");
            return ExitCode::from(64);
        }
    };
    if cli.guard_redis_start {
        return match trove_guest::agent::guard_redis_start(&settings) {
            Ok(true) => {
                eprintln!("trove-guestagent: redis-server starts guarded (a replica of nobody): a replica source of a managed set, not started by the agent");
                ExitCode::SUCCESS
            }
            Ok(false) => ExitCode::SUCCESS,
            Err(error) => {
                // Never keep Redis down: the start goes on unguarded, and says so.
                eprintln!("trove-guestagent: --guard-redis-start: {error}; redis-server starts unguarded");
                ExitCode::SUCCESS
            }
        };
    }
    let log_file = match &settings.log.file {
        Some(path) => match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(std::sync::Arc::new(f)),
            Err(error) => {
                eprintln!("trove-guestagent: invalid configuration: log.file: cannot open {}: {error}", path.display());
                return ExitCode::from(64);
            }
        },
        None => None,
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match (settings.log.format, log_file) {
        (LogFormat::Json, Some(f)) => builder.json().with_writer(f).init(),
        (LogFormat::Text, Some(f)) => builder.with_ansi(false).with_writer(f).init(),
        (LogFormat::Json, None) => builder.json().with_writer(std::io::stderr).init(),
        (LogFormat::Text, None) => {
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_writer(std::io::stderr).init()
        }
    }
    if !settings.ignored_trove_options.is_empty() {
        tracing::debug!(options = %settings.ignored_trove_options.join(", "), "Trove options not used by this agent");
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
        tokio::spawn(trim_heap_while_running());
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

/// Every `HEAP_TRIM_PERIOD`, gives the heap that calls freed back to the system: glibc keeps it
/// otherwise, and an agent that once served a burst of calls would idle at the burst's size.
async fn trim_heap_while_running() {
    let mut every = tokio::time::interval(HEAP_TRIM_PERIOD);
    loop {
        every.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory of glibc's arenas; it takes no pointers.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

const HEAP_TRIM_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Trove's option files in command-line order, as oslo.config reads them: each `--config-file`,
/// and each `--config-dir`'s `*.conf` files sorted by name.
fn trove_files(cli: &Cli, matches: &clap::ArgMatches) -> Result<Vec<PathBuf>, config::Error> {
    let mut args: Vec<(usize, Vec<PathBuf>)> = Vec::new();
    for (file, index) in cli.config_file.iter().zip(matches.indices_of("config_file").into_iter().flatten()) {
        args.push((index, vec![file.clone()]));
    }
    for (dir, index) in cli.config_dir.iter().zip(matches.indices_of("config_dir").into_iter().flatten()) {
        let files = trove_guest::oslo_ini::dir_files(dir).map_err(|source| config::Error::Read { path: dir.clone(), source })?;
        args.push((index, files));
    }
    args.sort_by_key(|(index, _)| *index);
    Ok(args.into_iter().flat_map(|(_, files)| files).collect())
}
