//! One MariaDB node: its config file, first-start initialisation, the server process, and
//! provisioning once it answers.

use std::future::Future;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::config::{DbConfig, Role};
use crate::{admin, locate, sql};

/// How long a starting server may take to answer its socket (crash recovery included).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a clean shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    NotInstalled(#[from] locate::NotFound),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("initialising {datadir} failed ({status}); its output:\n{output}")]
    InstallDb { datadir: String, status: String, output: String },
    #[error("mariadbd did not answer on {socket} within {secs} s; see {log}")]
    StartTimeout { socket: String, secs: u64, log: String },
    #[error("mariadbd exited ({status}) while starting; see {log}")]
    ExitedEarly { status: String, log: String },
    #[error("provisioning accounts and replication failed: {0}")]
    Provision(#[source] sqlx::Error),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DbError {
    let what = what.into();
    move |source| DbError::Io { what, source }
}

/// Runs the node until `shutdown` completes (then stops the server cleanly) or the server
/// exits by itself (an error: the supervisor decides whether to restart).
pub async fn run(config: DbConfig, shutdown: impl Future<Output = ()>) -> Result<(), DbError> {
    let server = locate::server()?;
    // Its own tmpdir: instances initialised at once collide on temp file names in /tmp.
    let tmp = config.datadir.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    std::fs::write(config.cnf_path(), my_cnf(&config))
        .map_err(io_err(format!("writing {}", config.cnf_path().display())))?;
    let fresh = !config.data_path().join("mysql").is_dir();
    if fresh {
        initialise(&config).await?;
    }
    // A socket file left by a killed server would make clients wait on a dead path.
    let _ = std::fs::remove_file(config.socket_path());

    let mut child = spawn_server(&server, &config)?;
    let mut conn = wait_until_answering(&config, &mut child).await?;
    if !config.provisioned_marker().exists() {
        sql::provision(&config, &mut conn).await.map_err(DbError::Provision)?;
        std::fs::write(config.provisioned_marker(), "").map_err(io_err("writing the provisioned marker"))?;
        tracing::info!(node = config.name, role = ?config.role, "node provisioned");
    }
    take_role_at_start(&config, &mut conn).await?;
    drop(conn);

    let config = Arc::new(config);
    let watch = Arc::new(crate::semi_sync::Watch::default());
    let watching = (config.clone(), watch.clone());
    let watch_task = tokio::spawn(async move { crate::semi_sync::watch(&watching.0, &watching.1).await });
    let manager = Arc::new(crate::manager::Manager::default());
    let manager_task = (config.managers.len() >= 2).then(|| {
        let (config, manager) = (config.clone(), manager.clone());
        tokio::spawn(async move { crate::manager::run(&config, &config.managers, &manager).await })
    });
    let admin_task = admin::serve(config.clone(), watch, manager)
        .await
        .map_err(io_err(format!("admin listener {}", config.admin_listen)))?;
    tracing::info!(node = config.name, listen = %config.listen, "database is up");

    let outcome = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(io_err("waiting for mariadbd"))?;
            tracing::error!(node = config.name, %status, "mariadbd exited; see {}", config.error_log_path().display());
            Err(DbError::ExitedEarly { status: status.to_string(), log: config.error_log_path().display().to_string() })
        }
        _ = shutdown => {
            stop_server(&mut child).await;
            Ok(())
        }
    };
    admin_task.abort();
    watch_task.abort();
    if let Some(task) = manager_task {
        task.abort();
    }
    outcome
}

/// Fencing at start: a node never becomes a second writable node. If a peer is writable, this
/// node replicates from it (an old primary coming back after a switchover or failover);
/// otherwise the node takes the role it last had (a promotion or a switchover changes it; the
/// config's role is only the first one), so a primary comes back writable and a replica stays
/// one.
async fn take_role_at_start(config: &DbConfig, conn: &mut sqlx::mysql::MySqlConnection) -> Result<(), DbError> {
    if let Some(writer) = crate::roles::writable_peer(config, &config.peers).await {
        let status = sqlx::query("SHOW SLAVE STATUS").fetch_optional(&mut *conn).await.map_err(DbError::Provision)?;
        let replicating_from =
            status.and_then(|row| sqlx::Row::try_get_unchecked::<String, _>(&row, "Master_Host").ok());
        if replicating_from.as_deref() != Some(writer.ip().to_string().as_str()) {
            tracing::warn!(node = config.name, %writer, "another node is writable: staying read-only and replicating from it");
            crate::roles::replicate_from(config, conn, writer)
                .await
                .map_err(|e| DbError::Provision(sqlx::Error::Protocol(e)))?;
        }
        return Ok(());
    }
    if crate::roles::last_role(config) == Role::Primary {
        sqlx::query("SET GLOBAL read_only = OFF").execute(&mut *conn).await.map_err(DbError::Provision)?;
    }
    Ok(())
}

fn my_cnf(c: &DbConfig) -> String {
    let user = if unsafe { libc::geteuid() } == 0 { "user = root\n" } else { "" };
    format!(
        "# Written by `webstack db` at every start; edit the db config, not this file.\n\
         [mariadbd]\n\
         {user}\
         datadir = {data}\n\
         socket = {socket}\n\
         pid-file = {dir}/mysqld.pid\n\
         tmpdir = {dir}/tmp\n\
         log-error = {log}\n\
         bind-address = {ip}\n\
         port = {port}\n\
         server-id = {id}\n\
         log-bin = {name}-bin\n\
         log-basename = {name}\n\
         binlog-format = ROW\n\
         log-slave-updates = ON\n\
         gtid-strict-mode = ON\n\
         gtid-domain-id = 0\n\
         slave-parallel-threads = 4\n\
         rpl-semi-sync-slave-enabled = ON\n\
         init-rpl-role = SLAVE\n\
         rpl-semi-sync-master-wait-point = AFTER_SYNC\n\
         rpl-semi-sync-master-timeout = {ack_timeout}\n\
         read-only = ON\n\
         skip-name-resolve = ON\n\
         innodb-buffer-pool-size = 32M\n\
         innodb-log-file-size = 32M\n\
         performance-schema = OFF\n\
         character-set-server = utf8mb4\n\
         collation-server = utf8mb4_unicode_ci\n\
         max-connections = 300\n",
        data = c.data_path().display(),
        socket = c.socket_path().display(),
        dir = c.datadir.display(),
        log = c.error_log_path().display(),
        ip = c.listen.ip(),
        port = c.listen.port(),
        id = c.server_id,
        name = c.name,
        ack_timeout = crate::semi_sync::ACK_TIMEOUT_MS,
    )
}

async fn initialise(config: &DbConfig) -> Result<(), DbError> {
    let install = locate::install_db()?;
    let data = config.data_path();
    tracing::info!(node = config.name, datadir = %data.display(), "initialising a new datadir");
    let mut cmd = Command::new(&install);
    cmd.arg(format!("--defaults-file={}", config.cnf_path().display()))
        .arg(format!("--datadir={}", data.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db");
    if let Some(basedir) = install.parent().and_then(Path::parent) {
        cmd.arg(format!("--basedir={}", basedir.display()));
    }
    let output = cmd.output().await.map_err(io_err(format!("running {}", install.display())))?;
    if !output.status.success() {
        // Leave no half-made datadir: the next start initialises again.
        let _ = std::fs::remove_dir_all(&data);
        return Err(DbError::InstallDb {
            datadir: data.display().to_string(),
            status: output.status.to_string(),
            output: String::from_utf8_lossy(&[output.stdout, output.stderr].concat()).into_owned(),
        });
    }
    Ok(())
}

fn spawn_server(server: &Path, config: &DbConfig) -> Result<Child, DbError> {
    let mut cmd = Command::new(server);
    cmd.arg(format!("--defaults-file={}", config.cnf_path().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // The server dies with this process, so SIGKILL on the db component is a database crash.
    unsafe {
        cmd.as_std_mut().pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(io_err(format!("starting {}", server.display())))
}

async fn wait_until_answering(config: &DbConfig, child: &mut Child) -> Result<sqlx::mysql::MySqlConnection, DbError> {
    let started = Instant::now();
    let provisioned = config.provisioned_marker().exists();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(DbError::ExitedEarly {
                status: status.to_string(),
                log: config.error_log_path().display().to_string(),
            });
        }
        if config.socket_path().exists() {
            let attempt = match provisioned {
                true => sql::admin(config).await,
                // Until provisioned, root has no password yet, or has the admin one if a
                // previous provisioning got that far.
                false => match sql::connect(config, "root", None).await {
                    Ok(c) => Ok(c),
                    Err(_) => sql::connect(config, "root", Some(&config.accounts.admin_password)).await,
                },
            };
            if let Ok(conn) = attempt {
                return Ok(conn);
            }
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.start_kill();
            return Err(DbError::StartTimeout {
                socket: config.socket_path().display().to_string(),
                secs: START_TIMEOUT.as_secs(),
                log: config.error_log_path().display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop_server(child: &mut Child) {
    if let Some(pid) = child.id() {
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
        tracing::warn!("mariadbd did not stop within {} s; killing it", STOP_TIMEOUT.as_secs());
        let _ = child.kill().await;
    }
}
