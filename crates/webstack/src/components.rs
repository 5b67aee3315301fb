//! `webstack proxy|app|db|dns --config FILE`: one component alone. Each validates its whole config
//! before it binds a socket; `--check` stops there (like `nginx -t`).

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use webstack_config::ConfigErrors;

#[derive(clap::Args)]
pub struct ComponentArgs {
    /// The component's config file.
    #[arg(long)]
    config: PathBuf,
    /// Validate the config and exit.
    #[arg(long)]
    check: bool,
}

impl ComponentArgs {
    pub fn new(config: PathBuf, check: bool) -> Self {
        ComponentArgs { config, check }
    }
}

/// `webstack proxy`: a component's arguments, and how it starts.
#[derive(clap::Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    component: ComponentArgs,
    /// Take over from the proxy with this process ID (HAProxy's `-sf PID`, nginx's binary
    /// upgrade): open its addresses beside it, carry its servers' runtime state over, then let
    /// it finish its requests and exit. No connection is refused on the way.
    #[arg(long, value_name = "PID")]
    take_over: Option<u32>,
    /// Write this process's ID to FILE once it serves (removed at exit).
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
}

/// Exit status for a config error, as with `nginx -t`: distinct from a run-time failure.
const CONFIG_ERROR: u8 = 2;

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into());
    // Components log to files under the state dir: colours only on a terminal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// SIGTERM or SIGINT: the graceful stop every component honours.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

fn run_component<C, E: std::fmt::Display, F: Future<Output = Result<(), E>>>(
    args: &ComponentArgs,
    load: impl FnOnce(&PathBuf) -> Result<C, ConfigErrors>,
    run: impl FnOnce(C) -> F,
) -> ExitCode {
    run_component_on(args, load, |_| runtime(), run)
}

/// As [`run_component`], on the runtime `runtime` makes for the loaded config.
fn run_component_on<C, E: std::fmt::Display, F: Future<Output = Result<(), E>>>(
    args: &ComponentArgs,
    load: impl FnOnce(&PathBuf) -> Result<C, ConfigErrors>,
    runtime: impl FnOnce(&C) -> std::io::Result<tokio::runtime::Runtime>,
    run: impl FnOnce(C) -> F,
) -> ExitCode {
    init_logging();
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    if args.check {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    let outcome =
        runtime(&config).map_err(|e| e.to_string()).and_then(|rt| rt.block_on(run(config)).map_err(|e| e.to_string()));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

pub fn proxy(args: &ProxyArgs) -> ExitCode {
    let launch = proxy::Launch { take_over: args.take_over, pid_file: args.pid_file.clone() };
    run_component_on(
        &args.component,
        |p| proxy::ProxyConfig::load(p),
        proxy::runtime,
        |c| proxy::run_launched(c, launch, stop_signal()),
    )
}

pub fn app(args: &ComponentArgs) -> ExitCode {
    run_component(args, |p| app::AppConfig::load(p), |c| app::run(c, stop_signal()))
}

pub fn db(args: &ComponentArgs) -> ExitCode {
    run_component(args, |p| db::DbConfig::load(p), |c| db::run(c, stop_signal()))
}

pub fn dns(args: &ComponentArgs) -> ExitCode {
    run_component(args, |p| dns::DnsConfig::load(p), |c| dns::run(c, stop_signal()))
}
