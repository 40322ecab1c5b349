//! `chorus`: the one command users run.
//!
//! - `chorus serve [etcd flags]` runs one member. With no flags it is etcd's single-member
//!   default: member `default`, clients on 127.0.0.1:2379, peers on 127.0.0.1:2380, data in
//!   `./default.chorus`.
//! - `chorus dev` runs a local 3-member cluster in this process, on the ports of etcd's
//!   Procfile, with its data in a temporary directory unless `--data-dir` is given.
//! - `chorus bench WORKLOAD [options]` load-tests etcd v3 endpoints (see `chorus-bench`).
//! - `chorus put|get|del|txn|watch|lease|member|endpoint|lock|elect|service`: a client for
//!   Chorus or etcd, with the coordination recipes of `chorus-client` (see [`client_cli`]).
//!
//! `serve` and `dev` stop gracefully on Ctrl-C (SIGINT) and SIGTERM.

mod client_cli;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context as _;
use chorus_server::config::{LogFormat, LogLevel};
use chorus_server::{ServerArgs, ServerConfig};
use clap::{Parser, Subcommand};
use tokio::sync::watch;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "chorus",
    version,
    about = "A strongly consistent key-value store that speaks the etcd v3 API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    endpoints: client_cli::Endpoints,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one member (etcd's flags, CHORUS_* environment variables or --config-file).
    Serve(Box<ServerArgs>),
    /// Run a local 3-member cluster in this process, for development.
    Dev(DevArgs),
    /// Load-test any etcd v3 endpoints (Chorus or etcd) and report throughput and latency.
    Bench(Box<chorus_bench::BenchArgs>),
    #[command(flatten)]
    Client(client_cli::ClientCommand),
}

#[derive(clap::Args, Debug)]
struct DevArgs {
    /// Directory for the members' data [default: a temporary directory, removed on exit]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log level: debug, info, warn or error
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// The members of `chorus dev`: name, client port, peer port (etcd's Procfile).
const DEV_MEMBERS: [(&str, u16, u16); 3] = [
    ("infra1", 2379, 2380),
    ("infra2", 22379, 22380),
    ("infra3", 32379, 32380),
];

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Dev(args) => runtime.block_on(dev(args)),
        Command::Bench(args) => runtime.block_on(bench(*args)),
        Command::Client(command) => {
            init_tracing(LogLevel::Warn, LogFormat::Text);
            runtime.block_on(client_cli::run(command, &cli.endpoints, shutdown_signal()))
        }
    }
}

fn init_tracing(level: LogLevel, format: LogFormat) {
    let level = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHORUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Completes on the first Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
}

async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = ServerConfig::load(&args, &env).context("read the configuration")?;
    init_tracing(config.log_level, config.log_format);
    chorus_server::member::run(config, shutdown_signal())
        .await
        .context("run the member")
}

async fn bench(args: chorus_bench::BenchArgs) -> anyhow::Result<()> {
    let report = chorus_bench::run(&args)
        .await
        .context("run the benchmark")?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(())
}

fn dev_config(base: &std::path::Path, index: usize) -> anyhow::Result<ServerConfig> {
    let (name, client, peer) = DEV_MEMBERS[index];
    let cluster: Vec<String> = DEV_MEMBERS
        .iter()
        .map(|(n, _, p)| format!("{n}=http://127.0.0.1:{p}"))
        .collect();
    let args = ServerArgs {
        name: Some(name.to_string()),
        data_dir: Some(base.join(format!("{name}.chorus"))),
        listen_client_urls: Some(format!("http://127.0.0.1:{client}")),
        advertise_client_urls: Some(format!("http://127.0.0.1:{client}")),
        listen_peer_urls: Some(format!("http://127.0.0.1:{peer}")),
        initial_advertise_peer_urls: Some(format!("http://127.0.0.1:{peer}")),
        initial_cluster: Some(cluster.join(",")),
        initial_cluster_token: Some("chorus-dev-cluster".to_string()),
        ..ServerArgs::default()
    };
    ServerConfig::resolve(&args, &HashMap::new(), None)
        .with_context(|| format!("configure dev member {name}"))
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let level = match args.log_level.as_str() {
        "debug" => LogLevel::Debug,
        "warn" => LogLevel::Warn,
        "error" => LogLevel::Error,
        _ => LogLevel::Info,
    };
    init_tracing(level, LogFormat::Text);
    // The temporary directory lives until this function returns, after the members stopped.
    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("create a temporary data directory")?),
    };
    let base = match (&args.data_dir, &temp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(temp)) => temp.path().to_path_buf(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let configs = (0..DEV_MEMBERS.len())
        .map(|i| dev_config(&base, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut members = tokio::task::JoinSet::new();
    for config in configs {
        let mut stop = stop_rx.clone();
        members.spawn(chorus_server::member::run(config, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    let endpoints: Vec<String> = DEV_MEMBERS
        .iter()
        .map(|(_, c, _)| format!("http://127.0.0.1:{c}"))
        .collect();
    println!("chorus dev: a 3-member cluster, data in {}", base.display());
    println!("client endpoints: {}", endpoints.join(","));
    println!(
        "try: etcdctl --endpoints={} put foo bar",
        endpoints.join(",")
    );
    println!("stop with Ctrl-C");
    let mut failure = None;
    tokio::select! {
        () = shutdown_signal() => {}
        Some(joined) = members.join_next() => {
            failure = Some(match joined {
                Ok(Ok(())) => anyhow::anyhow!("a member stopped on its own"),
                Ok(Err(e)) => anyhow::Error::new(e),
                Err(e) => anyhow::Error::new(e),
            });
        }
    }
    stop_tx.send_replace(true);
    while let Some(joined) = members.join_next().await {
        if let Ok(Err(e)) = joined {
            failure.get_or_insert(anyhow::Error::new(e));
        }
    }
    drop(temp);
    match failure {
        Some(error) => Err(error.context("run the dev cluster")),
        None => Ok(()),
    }
}
