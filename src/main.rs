//! The broker binary: arguments, logging, configuration and the subcommands;
//! the broker itself is `hopper::run` (src/run.rs), served until SIGINT /
//! SIGTERM, with the addresses it reports printed on stdout.

use anyhow::Context;
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;

use hopper::{config::Config, store};

#[derive(Debug, Parser)]
#[command(
    name = "hopper",
    version,
    about = "AMQP 0-9-1 message broker",
    args_conflicts_with_subcommands = true,
    // A repeated flag takes its last value (tests append to a fixed command line).
    args_override_self = true
)]
struct Args {
    /// With no subcommand, run the broker.
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML); the embedded conf/broker.toml when omitted.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:5672 (port 0 picks a free port).
    #[arg(long)]
    listen: Option<String>,
    /// amqps listen address (needs a [tls] section in the config).
    #[arg(long)]
    tls_listen: Option<String>,
    /// Data directory for durable state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Management HTTP API listen address (port 0 picks a free port), or `off`.
    #[arg(long)]
    management_listen: Option<String>,
    /// Prometheus metrics listen address (port 0 picks a free port), or `off`.
    #[arg(long)]
    metrics_listen: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the salted hash of a password for `password_hash` in the config
    /// (RabbitMQ's format). Reads the password from stdin when not given,
    /// e.g. `echo -n 'secret' | hopper hash-password` (keeps it out of the
    /// shell history and the process list); one trailing newline is dropped.
    HashPassword {
        /// The password (prefer stdin).
        password: Option<String>,
        /// Hash function.
        #[arg(long, value_enum, default_value_t = Algorithm::Sha256)]
        algorithm: Algorithm,
    },
    /// Read a stopped broker's store back and verify every checksum (the
    /// broker does the same at start). Exits non-zero, naming the damaged
    /// file, when the store is damaged.
    CheckStore {
        /// The broker's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Before checking, rebuild a damaged store from what can still be
        /// read: unreadable files move to `lost/` and their records are gone.
        /// Keep a copy of the directory first.
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Algorithm {
    Sha256,
    Sha512,
}

fn hash_password(password: Option<String>, algorithm: Algorithm) -> anyhow::Result<()> {
    use hopper::auth::hashing::{HashingAlgorithm, PasswordHash};
    let password = match password {
        Some(p) => p,
        None => {
            use std::io::IsTerminal;
            let stdin = std::io::stdin();
            let mut text = String::new();
            if stdin.is_terminal() {
                // Typed by hand: one line (it is echoed; prefer a pipe).
                eprint!("Password: ");
                stdin
                    .read_line(&mut text)
                    .context("reading the password from stdin")?;
            } else {
                std::io::Read::read_to_string(&mut stdin.lock(), &mut text)
                    .context("reading the password from stdin")?;
            }
            let trimmed = text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(&text);
            trimmed.to_string()
        }
    };
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    let algorithm = match algorithm {
        Algorithm::Sha256 => HashingAlgorithm::Sha256,
        Algorithm::Sha512 => HashingAlgorithm::Sha512,
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        PasswordHash::new(password.as_bytes(), algorithm).encode()
    )?;
    Ok(())
}

fn check_store(dir: &std::path::Path, repair: bool) -> anyhow::Result<()> {
    if !dir.join("CURRENT").is_file() {
        anyhow::bail!("{} holds no store (no CURRENT file)", dir.display());
    }
    if repair {
        eprintln!("repairing the store in {}", dir.display());
        store::rocks::repair(dir)?;
    }
    let rocks = store::rocks::RocksStore::open(dir)?;
    let verified = rocks.verify()?;
    println!(
        "the store in {} reads back whole:\n{verified}",
        dir.display()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Command::HashPassword {
            password,
            algorithm,
        }) => return hash_password(password, algorithm),
        Some(Command::CheckStore { data_dir, repair }) => return check_store(&data_dir, repair),
        None => {}
    }
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default_config()?,
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(listen) = args.tls_listen {
        match config.tls.as_mut() {
            Some(tls) => tls.listen = listen,
            None => anyhow::bail!(
                "--tls-listen needs a [tls] section (cert_file, key_file) in the config file"
            ),
        }
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.management_listen {
        config.management.listen = listen;
    }
    if let Some(listen) = args.metrics_listen {
        config.prometheus.listen = listen;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let level = config.log_level.as_deref().unwrap_or("info");
        // openraft logs every group's start-up state and each election at
        // info: with a group per quorum queue that drowns the broker's own
        // lines (which say who leads what). Its warnings still show.
        if level.contains("openraft") {
            tracing_subscriber::EnvFilter::new(level)
        } else {
            tracing_subscriber::EnvFilter::new(format!("{level},openraft=warn"))
        }
    });
    // Colour codes only for a person at a terminal: a log file, journald or a
    // test harness reading stderr gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(config))
}

/// Run the broker until SIGTERM / SIGINT, printing where it listens.
async fn serve(config: Config) -> anyhow::Result<()> {
    // Installed before anything is bound: see `shutdown_signal`.
    let stop = shutdown_signal();
    let running = hopper::run(config, stop).await?;
    {
        // Harnesses read the plain line first; the amqps line follows it.
        let mut out = std::io::stdout().lock();
        writeln!(out, "hopper listening on {}", running.amqp)?;
        if let Some(a) = running.amqps {
            writeln!(out, "hopper amqps listening on {a}")?;
        }
        if let Some(a) = running.management {
            writeln!(out, "hopper management listening on {a}")?;
        }
        if let Some(a) = running.metrics {
            writeln!(out, "hopper metrics listening on {a}")?;
        }
        out.flush()?;
    }
    running.stopped().await
}

/// SIGTERM or SIGINT. The SIGTERM handler is installed when this is called,
/// not when the future is first polled: a supervisor (or a test) may send
/// SIGTERM as soon as it reads the listening line, and the default action
/// would kill the broker without syncing.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
