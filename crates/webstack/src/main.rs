//! `webstack`: the one binary. Stack commands (`up`, `status`, `down`, `logs`, `kill`,
//! `start`, `check`) drive the supervisor; component commands (`proxy`, `app`, `db`) run one
//! part alone with its own config file, on this machine or a real host.

mod cert;
mod components;
mod database;
mod stack;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// glibc 2.36 serves every over-aligned allocation (each tokio task is 128-byte aligned, and
/// each HTTP/2 stream is a task) outside its thread cache, through a split-and-consolidate
/// path; mimalloc keeps them in per-size free lists. Built not to ask for transparent huge
/// pages, so the heap's RSS stays what glibc's was (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "webstack",
    version,
    about = "The web infrastructure of www.foobar.com — load balancer, web servers, app servers and a replicated MariaDB — from one binary and one topology file."
)]
struct Cli {
    /// Where the stack keeps configs, logs, pid files and datadirs.
    #[arg(long, global = true, default_value = ".webstack")]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct DbArgs {
    #[command(subcommand)]
    action: Option<DbAction>,
    /// The node's config file (runs the node).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the config and exit.
    #[arg(long)]
    check: bool,
}

#[derive(Subcommand)]
enum DbAction {
    /// Every database node of the stack: role, GTID positions applied and received, lag,
    /// semi-sync state and replication errors.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Bring a node back as a replica of the primary; `--force` rebuilds one that holds
    /// transactions the cluster never received (those are lost).
    Rejoin {
        node: String,
        #[arg(long)]
        force: bool,
    },
    /// A planned change of primary: no acknowledged write lost, writes paused briefly.
    Switchover {
        /// The replica to promote (default: the one that has received the most).
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Render every component's config, start them on their loopback hosts, wait until all are healthy.
    Up {
        /// The profile to bring up (default: the topology's `profile`).
        #[arg(long)]
        profile: Option<String>,
        /// Return once healthy and leave the stack running in the background.
        #[arg(short = 'd', long)]
        detach: bool,
        /// The topology file.
        #[arg(long, default_value = "webstack.toml")]
        topology: PathBuf,
        /// Move every address into this range (e.g. 127.42.0.0/16), host parts kept.
        #[arg(long)]
        subnet: Option<String>,
        /// How long to wait for every component to be healthy.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
    /// Show every host and component: state, pid, health, role, listen addresses.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop every component and the supervisor.
    Down,
    /// Print the logs of all components, a host's, or one (HOST/COMPONENT).
    Logs {
        target: Option<String>,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Lines of each log to print first.
        #[arg(short = 'n', long, default_value_t = 40)]
        lines: usize,
    },
    /// Drill: SIGKILL a host's components or one (HOST/COMPONENT); it is not restarted.
    Kill { target: String },
    /// Start again what `kill` stopped.
    Start { target: String },
    /// Restart gracefully (a new binary, say): a proxy hands over to a new process without
    /// refusing a connection (`webstack proxy --take-over`); an app or database stops, then
    /// starts, its server out of the load balancer's pool meanwhile.
    Restart { target: String },
    /// Make a local CA and the site's certificate under the state dir, and say how to trust it.
    Cert {
        /// The topology file.
        #[arg(long, default_value = "webstack.toml")]
        topology: PathBuf,
    },
    /// Validate a topology file and every config it renders.
    Check {
        #[arg(default_value = "webstack.toml")]
        file: PathBuf,
    },
    /// Run the proxy (edge or web role) alone.
    Proxy(components::ProxyArgs),
    /// Run the foobar.com application server alone.
    App(components::ComponentArgs),
    /// Run one MariaDB node alone (`--config FILE`), or manage the stack's cluster (`status`, `switchover`, `rejoin`).
    Db(DbArgs),
    /// Run the authoritative DNS server for the site's zone alone.
    Dns(components::ComponentArgs),
    /// Run the supervisor of a rendered stack (used by `up -d`).
    #[command(hide = true)]
    Supervise,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let state_dir = &cli.state_dir;
    let result = match cli.command {
        Command::Up { profile, detach, topology, subnet, timeout } => {
            stack::up(state_dir, &topology, profile.as_deref(), subnet.as_deref(), detach, timeout)
        }
        Command::Status { json } => stack::status(state_dir, json),
        Command::Down => stack::down(state_dir),
        Command::Logs { target, follow, lines } => stack::logs(state_dir, target.as_deref(), follow, lines),
        Command::Kill { target } => stack::kill_or_start(state_dir, &target, true),
        Command::Start { target } => stack::kill_or_start(state_dir, &target, false),
        Command::Restart { target } => stack::restart(state_dir, &target),
        Command::Check { file } => stack::check(&file),
        Command::Cert { topology } => stack::cert(state_dir, &topology),
        Command::Supervise => stack::supervise(state_dir),
        Command::Proxy(args) => return components::proxy(&args),
        Command::App(args) => return components::app(&args),
        Command::Db(DbArgs { action: Some(DbAction::Status { json }), .. }) => database::status(state_dir, json),
        Command::Db(DbArgs { action: Some(DbAction::Rejoin { node, force }), .. }) => {
            database::rejoin(state_dir, &node, force)
        }
        Command::Db(DbArgs { action: Some(DbAction::Switchover { to }), .. }) => {
            database::switchover(state_dir, to.as_deref())
        }
        Command::Db(DbArgs { action: None, config: Some(config), check }) => {
            return components::db(&components::ComponentArgs::new(config, check))
        }
        Command::Db(DbArgs { action: None, config: None, .. }) => {
            eprintln!("webstack db: give --config FILE to run a node, or `status` to see the stack's cluster");
            return ExitCode::from(2);
        }
        Command::Dns(args) => return components::dns(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webstack: {e:#}");
            ExitCode::FAILURE
        }
    }
}
