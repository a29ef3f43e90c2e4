//! `onestack`: one command to a private OpenStack-compatible cloud.

mod agent;
mod audit;
mod client;
mod config;
mod db;
mod demo;
mod doctor;
mod hostnet;
mod node;
mod ops;
mod packages;
mod paths;
mod perms;
mod serve;
mod supervisor;
mod sys;
mod systemd;
mod teardown;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "onestack",
    version,
    about = "One command to a private OpenStack-compatible cloud"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct DataDirArg {
    /// Where OneStack keeps its state, secrets, logs and pid files.
    #[arg(long, default_value = paths::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

/// What a joining host becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    Compute,
    Controller,
}

#[derive(Subcommand)]
enum DbCommand {
    /// Move this all-in-one cloud's SQLite store into an empty PostgreSQL database (stop the
    /// cloud first); the configuration then names PostgreSQL and the SQLite file is kept.
    MigrateFromSqlite {
        #[command(flatten)]
        dir: DataDirArg,
        /// postgresql://user:password@host/database
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Bring the cloud up (idempotent): bootstrap, write credentials, start the services.
    Up {
        #[command(flatten)]
        dir: DataDirArg,
        /// Configuration file (TOML); copied into the data directory.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Do not boot the demo server at the end.
        #[arg(long)]
        no_demo: bool,
        /// Run the services in this process instead of under the supervisor (for systemd).
        #[arg(long)]
        foreground: bool,
        /// Print what `up` would do, and what it found on this host; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The state store of a new cloud: postgresql://user:password@host/database (an empty
        /// database), recorded as `[database] url`. Default: SQLite in the data directory.
        #[arg(long)]
        database: Option<String>,
    },
    /// Boot the demo server (keypair, server on the demo network, floating IP) and print the
    /// `ssh` command into it.
    Demo {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Turn this host into a compute node of the controller at URL (the command `up` prints).
    Join {
        #[command(flatten)]
        dir: DataDirArg,
        /// The controller's compute API, e.g. http://198.18.0.1:8774.
        #[arg(long)]
        controller: String,
        /// The one-time join token (`onestack join-token` on the controller).
        #[arg(long)]
        token: String,
        /// This host's name in the cloud (default: the machine's host name).
        #[arg(long)]
        host: Option<String>,
        /// This host's address as the other hosts reach it (default: the one toward the
        /// controller).
        #[arg(long)]
        my_ip: Option<String>,
        /// Local settings for this node (TOML; e.g. [compute] virt_type, agent_port).
        #[arg(long)]
        config: Option<PathBuf>,
        /// What this host becomes: a compute node, or another controller of the cloud's
        /// PostgreSQL database (the token must have been minted for that role).
        #[arg(long, value_enum, default_value_t = Role::Compute)]
        role: Role,
        /// With --role controller: the database as this host reaches it (default: the URL the
        /// controller uses).
        #[arg(long)]
        database: Option<String>,
    },
    /// Take this compute node out of the cloud (refused while it still holds servers).
    Leave {
        #[command(flatten)]
        dir: DataDirArg,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Print a join command with a fresh one-time token (on the controller).
    JoinToken {
        #[command(flatten)]
        dir: DataDirArg,
        /// Seconds the token stays valid.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// What the token lets a host become.
        #[arg(long, value_enum, default_value_t = Role::Compute)]
        role: Role,
    },
    /// Delete every server, image, network and project resource and start afresh, as a first
    /// `up` would (the configuration is kept).
    Reset {
        #[command(flatten)]
        dir: DataDirArg,
        /// Configuration file (TOML) for the fresh cloud.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Do not boot the demo server at the end.
        #[arg(long)]
        no_demo: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Stop and remove the services, VMs and host networking; keep the data unless --purge.
    Uninstall {
        #[command(flatten)]
        dir: DataDirArg,
        /// Also remove the data directory.
        #[arg(long)]
        purge: bool,
        /// Also remove the host packages `up` installed.
        #[arg(long)]
        purge_packages: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Check the host and the cloud for the usual causes of trouble (exit 1 when broken).
    Doctor {
        #[command(flatten)]
        dir: DataDirArg,
        /// Configuration file to check against (default: the data dir's).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// Stop the services; keep every piece of data.
    Down {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Show what runs, where, and whether it is healthy.
    Status {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Print an openrc for a user and project, for `source <(onestack openrc …)` (admin's and
    /// demo's passwords are filled in; other users are asked when it is sourced).
    Openrc {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long, default_value = "admin")]
        user: String,
        /// Default: admin's and demo's own project.
        #[arg(long)]
        project: Option<String>,
    },
    /// Print a clouds.yaml for a user and project.
    CloudsYaml {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long, default_value = "admin")]
        user: String,
        #[arg(long)]
        project: Option<String>,
        /// The cloud's name in the file (default onestack-<user>-<project>).
        #[arg(long)]
        cloud: Option<String>,
    },
    /// Install the openstack CLI (python-openstackclient) into a virtualenv.
    ClientSetup {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long, default_value = "/opt/onestack-client")]
        venv: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Rotate the token encryption keys (tokens stay valid through one rotation).
    RotateKeys {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// The audit log: every mutating API call (who, project, what, target, result, request id).
    Audit {
        #[command(flatten)]
        dir: DataDirArg,
        /// Only calls since then: 30m, 2h, 7d, or YYYY-MM-DDTHH:MM:SS (UTC).
        #[arg(long)]
        since: Option<String>,
        /// A user's name or id.
        #[arg(long)]
        user: Option<String>,
        /// A project id.
        #[arg(long)]
        project: Option<String>,
        /// The id of the resource acted on.
        #[arg(long)]
        target: Option<String>,
        /// One request, by its X-Openstack-Request-Id.
        #[arg(long)]
        request_id: Option<String>,
        /// identity, compute, image, network or volume.
        #[arg(long)]
        service: Option<String>,
        /// Only calls that failed (HTTP status 400 or more).
        #[arg(long)]
        failed: bool,
        /// At most this many (the newest); 0 = all.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The state store.
    Db {
        #[command(subcommand)]
        action: DbCommand,
    },
    /// Guest images.
    Image {
        #[command(subcommand)]
        action: ImageCommand,
    },
    /// Run the API services (started by the supervisor).
    #[command(hide = true)]
    Serve {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Run the compute agent of this host (started by the supervisor).
    #[command(hide = true)]
    Agent {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Supervise the services (started by `up`).
    #[command(hide = true)]
    Supervise {
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build (or find in the cache) the default guest image, onestack-tiny, from Debian packages.
    BuildDefault {
        /// Where packages and built images are kept.
        #[arg(long)]
        cache_dir: Option<std::path::PathBuf>,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Everything OneStack and its helpers create is root's alone unless opened up on purpose
    // (the files QEMU's and dnsmasq's users get, see perms.rs). `client-setup` installs a
    // virtualenv for everyone to use; the default guest image is built from public packages
    // into a cache others may read.
    if !matches!(
        cli.command,
        Command::ClientSetup { .. } | Command::Image { .. }
    ) {
        sys::set_umask(sys::PRIVATE_UMASK);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Up {
                dir,
                config,
                no_demo,
                foreground,
                dry_run,
                database,
            } => {
                if dry_run {
                    return doctor::plan(
                        paths::DataDir::new(dir.data_dir)?,
                        config.as_deref(),
                        no_demo,
                    )
                    .await;
                }
                if foreground {
                    init_logging();
                }
                ops::up(
                    paths::DataDir::new(dir.data_dir)?,
                    config.as_deref(),
                    database.as_deref(),
                    foreground,
                    no_demo,
                )
                .await
            }
            Command::Image {
                action: ImageCommand::BuildDefault { cache_dir },
            } => {
                let cache = cache_dir.unwrap_or_else(onestack_image::default_cache_dir);
                let t0 = std::time::Instant::now();
                let img =
                    tokio::task::spawn_blocking(move || onestack_image::build_default(&cache))
                        .await??;
                let size = std::fs::metadata(&img.path)?.len();
                println!("{}", img.path.display());
                eprintln!(
                    "{} ({:.1} MiB, {:.1} s)",
                    img.name,
                    size as f64 / 1048576.0,
                    t0.elapsed().as_secs_f64()
                );
                Ok(())
            }
            Command::Join {
                dir,
                controller,
                token,
                host,
                my_ip,
                config,
                role,
                database,
            } => {
                let args = node::JoinArgs {
                    controller: &controller,
                    token: &token,
                    host: host.as_deref(),
                    my_ip: my_ip.as_deref(),
                    config: config.as_deref(),
                };
                let dd = paths::DataDir::new(dir.data_dir)?;
                match role {
                    Role::Compute => {
                        if database.is_some() {
                            anyhow::bail!("--database is for --role controller");
                        }
                        node::join(dd, args).await
                    }
                    Role::Controller => node::join_controller(dd, args, database.as_deref()).await,
                }
            }
            Command::Leave { dir, yes } => {
                node::leave(paths::DataDir::new(dir.data_dir)?, yes).await
            }
            Command::JoinToken { dir, ttl, role } => {
                node::join_token(
                    paths::DataDir::new(dir.data_dir)?,
                    std::time::Duration::from_secs(ttl.clamp(60, 7 * 24 * 3600)),
                    match role {
                        Role::Compute => onestack_core::compute::join::JoinRole::Compute,
                        Role::Controller => onestack_core::compute::join::JoinRole::Controller,
                    },
                )
                .await
            }
            Command::Down { dir } => ops::down(paths::DataDir::new(dir.data_dir)?).await,
            Command::Demo { dir } => ops::demo(paths::DataDir::new(dir.data_dir)?).await,
            Command::Doctor { dir, config } => {
                if !doctor::run(paths::DataDir::new(dir.data_dir)?, config.as_deref()).await? {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Reset {
                dir,
                config,
                no_demo,
                yes,
            } => {
                teardown::reset(
                    paths::DataDir::new(dir.data_dir)?,
                    config.as_deref(),
                    no_demo,
                    yes,
                )
                .await
            }
            Command::Uninstall {
                dir,
                purge,
                purge_packages,
                yes,
            } => {
                teardown::uninstall(
                    paths::DataDir::new(dir.data_dir)?,
                    purge,
                    purge_packages,
                    yes,
                )
                .await
            }
            Command::Status { dir } => {
                if !ops::status(paths::DataDir::new(dir.data_dir)?).await? {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Openrc { dir, user, project } => {
                client::openrc(
                    paths::DataDir::new(dir.data_dir)?,
                    client::Target {
                        user: &user,
                        project: project.as_deref(),
                    },
                )
                .await
            }
            Command::CloudsYaml {
                dir,
                user,
                project,
                cloud,
            } => {
                client::clouds_yaml(
                    paths::DataDir::new(dir.data_dir)?,
                    client::Target {
                        user: &user,
                        project: project.as_deref(),
                    },
                    cloud.as_deref(),
                )
                .await
            }
            Command::ClientSetup { dir, venv, yes } => {
                client::client_setup(paths::DataDir::new(dir.data_dir)?, &venv, yes)
            }
            Command::RotateKeys { dir } => {
                ops::rotate_keys(paths::DataDir::new(dir.data_dir)?).await
            }
            Command::Db {
                action: DbCommand::MigrateFromSqlite { dir, to },
            } => db::migrate_from_sqlite(paths::DataDir::new(dir.data_dir)?, &to).await,
            Command::Audit {
                dir,
                since,
                user,
                project,
                target,
                request_id,
                service,
                failed,
                limit,
                json,
            } => {
                audit::run(
                    paths::DataDir::new(dir.data_dir)?,
                    audit::Filters {
                        since,
                        user,
                        project,
                        target,
                        request_id,
                        service,
                        failed,
                        limit,
                        json,
                    },
                )
                .await
            }
            Command::Serve { dir } => {
                init_logging();
                let dd = paths::DataDir::new(dir.data_dir)?;
                let cfg = ops::load_config(&dd, None)?;
                serve::run(cfg, dd).await
            }
            Command::Agent { dir } => {
                init_logging();
                let dd = paths::DataDir::new(dir.data_dir)?;
                let cfg = ops::load_config(&dd, None)?;
                agent::run(cfg, dd).await
            }
            Command::Supervise { dir } => {
                init_logging();
                supervisor::run(paths::DataDir::new(dir.data_dir)?).await
            }
        }
    })
}
