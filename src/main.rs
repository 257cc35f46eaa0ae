//! The `subsocket` command: parse flags and the config file, start the gateway, stop it on
//! SIGINT/SIGTERM; or, as `subsocket doctor`, check the host against the configuration
//! (`subsocket::doctor`). No logic lives here.

use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use subsocket::config::{Config, Cores, Overrides, SlowConsumerPolicy, WritePath};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core io_uring WebSocket broadcast gateway (Micro Socket protocol).
///
/// With no options it serves the local demo configuration on 127.0.0.1:8080: no
/// authentication, demo publishing on (GET /demo/publish/{topic}?k=v).
#[derive(Debug, Parser)]
#[command(name = "subsocket", version)]
struct Cli {
    /// `doctor` checks the host instead of serving; without a command the gateway serves.
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file; flags override its values.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (every core listens on it with SO_REUSEPORT).
    #[arg(long, value_name = "HOST:PORT", global = true)]
    bind: Option<std::net::SocketAddr>,
    /// Cores to run on: a count (taken from the highest core id down) or a list like 0,2,3.
    #[arg(long, value_name = "N|LIST", value_parser = Cores::parse, global = true)]
    cores: Option<Cores>,
    /// Serve the conformance echo endpoint /echo (for the Autobahn test suite).
    #[arg(long)]
    echo: bool,
    /// Serve GET /demo/publish/{topic} (default: on).
    #[arg(long, value_name = "BOOL")]
    demo_publish: Option<bool>,
    /// Write path: io_uring batches (`uring`, default) or coalesced send(2) (`send`).
    #[arg(long, value_name = "PATH", value_parser = parse_write_path)]
    write_path: Option<WritePath>,
    /// What to do with a subscriber over its backlog cap: `disconnect` (default), `drop` or
    /// `refill` (per topic: `[[slow_consumer_rules]]` in the file).
    #[arg(long, value_name = "POLICY", value_parser = parse_policy)]
    slow_consumer: Option<SlowConsumerPolicy>,
    /// Per-connection cap on queued bytes (judged while its socket refuses bytes).
    #[arg(long, value_name = "BYTES")]
    max_backlog_bytes: Option<usize>,
    /// How long a connection may stay over its backlog cap before the policy applies.
    #[arg(long, value_name = "MS")]
    slow_consumer_grace_ms: Option<u64>,
    /// Ceiling on the bytes queued for all of one core's connections together.
    #[arg(long, value_name = "BYTES")]
    core_backlog_budget_bytes: Option<usize>,
    /// Memory budget of the process (0: half of the machine's memory); see docs/operations.md.
    #[arg(long, value_name = "BYTES")]
    memory_budget_bytes: Option<usize>,
    /// Largest client message (close 1009 above it).
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// Close connections silent for this long.
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<u64>,
    /// Send a WebSocket ping after this long.
    #[arg(long, value_name = "MS")]
    ping_interval_ms: Option<u64>,
    /// permessage-deflate for clients that offer it (default: on; `[deflate]` in the file).
    #[arg(long, value_name = "BOOL")]
    deflate: Option<bool>,
    /// Authentication: `none` (everyone may do everything; local demos) or `jwt` (tokens checked
    /// against the `[auth]` keys of the config file). Default: `jwt` when the config file has a
    /// key, `none` otherwise.
    #[arg(long, value_name = "MODE", value_parser = parse_auth)]
    auth: Option<subsocket::auth::AuthMode>,
    /// Join a cluster over NATS: server URL(s), comma-separated (`nats://127.0.0.1:4222`).
    /// Other settings (credentials, TLS, history limits) are in `[cluster]` of the config file.
    #[arg(long, value_name = "URL[,URL…]")]
    backbone: Option<String>,
    /// This node's name in the cluster (default: subsocket@<bind address>).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG works too.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check this host (limits, sysctls, io_uring, cores, memory) against the configuration and
    /// the connections and subscriptions to plan for; print ok / warn / fail per check with the
    /// command that fixes it. Exit status 1 when a check fails.
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
struct DoctorArgs {
    /// Connections to plan for (default: max_conns_per_core x cores, at most 1,000,000).
    #[arg(long, value_name = "N")]
    connections: Option<u64>,
    /// Subscriptions to plan for (default: connections x max_topics_per_conn, at most 10,000,000).
    #[arg(long, value_name = "N")]
    subscriptions: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_write_path(s: &str) -> Result<WritePath, String> {
    match s {
        "uring" => Ok(WritePath::Uring),
        "send" => Ok(WritePath::Send),
        _ => Err(format!("'{s}': expected uring or send")),
    }
}

fn parse_auth(s: &str) -> Result<subsocket::auth::AuthMode, String> {
    match s {
        "none" => Ok(subsocket::auth::AuthMode::None),
        "jwt" => Ok(subsocket::auth::AuthMode::Jwt),
        _ => Err(format!("'{s}': expected none or jwt")),
    }
}

fn parse_policy(s: &str) -> Result<SlowConsumerPolicy, String> {
    match s {
        "disconnect" => Ok(SlowConsumerPolicy::Disconnect),
        "drop" => Ok(SlowConsumerPolicy::Drop),
        "refill" => Ok(SlowConsumerPolicy::Refill),
        _ => Err(format!("'{s}': expected disconnect, drop or refill")),
    }
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let mut cfg = match &cli.config {
        Some(p) => Config::from_file(p).unwrap_or_else(|e| fail(&e)),
        None => Config::default(),
    };
    cfg.apply(&Overrides {
        bind: cli.bind,
        cores: cli.cores.clone(),
        echo: cli.echo,
        demo_publish: cli.demo_publish,
        write_path: cli.write_path,
        slow_consumer: cli.slow_consumer,
        max_backlog_bytes: cli.max_backlog_bytes,
        slow_consumer_grace_ms: cli.slow_consumer_grace_ms,
        core_backlog_budget_bytes: cli.core_backlog_budget_bytes,
        memory_budget_bytes: cli.memory_budget_bytes,
        max_message_bytes: cli.max_message_bytes,
        idle_timeout_ms: cli.idle_timeout_ms,
        ping_interval_ms: cli.ping_interval_ms,
        deflate: cli.deflate,
        auth_mode: cli.auth,
        backbone: cli.backbone.clone(),
        node_name: cli.node_name.clone(),
    });
    if let Some(Command::Doctor(args)) = &cli.command {
        doctor(&cfg, args);
    }
    let auth_on = cfg.auth.effective_mode() == subsocket::auth::AuthMode::Jwt;
    if !cfg.bind.ip().is_loopback() && !auth_on {
        tracing::warn!(
            "listening on non-loopback {} WITHOUT authentication: anyone who can reach it may subscribe and publish",
            cfg.bind
        );
    }
    let demo = cfg.demo_publish;
    let (ws, http) = if cfg.tls.is_some() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    subsocket::doctor::log_startup_checks(&cfg);
    let gateway = subsocket::gateway::start(cfg).unwrap_or_else(|e| fail(&e));
    let addr = gateway.local_addr();
    let n = gateway.cores().len();
    tracing::info!(cores = ?gateway.cores(), "serving");
    // Handlers go in before the line below: a SIGTERM right after it is a graceful stop.
    let stopper = gateway.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .unwrap_or_else(|e| fail(&format!("cannot install signal handlers: {e}")));
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "shutting down");
                stopper.shutdown();
            }
        })
        .unwrap_or_else(|e| fail(&format!("cannot start the signal thread: {e}")));
    // Scripts wait for exactly this line.
    // (`wss://` with `[tls]`.)
    println!("subsocket listening on {ws}://{addr} ({n} cores)");
    let _ = std::io::stdout().flush();
    eprintln!("  WebSocket:  {ws}://{addr}/ws   {ws}://{addr}/ws/sub/{{topic}}");
    eprintln!(
        "  HTTP:       {http}://{addr}/docs  /stats  /metrics  /healthz  POST /publish/{{topic}}"
    );
    eprintln!(
        "  SSE:        {http}://{addr}/sse/sub/{{topic}}   {http}://{addr}/sse?topic=A&topic=B"
    );
    if demo {
        eprintln!("  demo:       curl '{http}://{addr}/demo/publish/hello?msg=world'");
    }

    match gateway.join() {
        Ok(()) => tracing::info!("stopped"),
        Err(e) => fail(&e),
    }
}

/// `subsocket doctor`: prints the report and exits 1 on a blocker, 0 otherwise.
fn doctor(cfg: &Config, args: &DoctorArgs) -> ! {
    cfg.validate().unwrap_or_else(|e| fail(&e));
    let report = subsocket::doctor::check_this_host(cfg, args.connections, args.subscriptions);
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render_text());
    }
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(report.has_blocker()));
}

fn fail(msg: &str) -> ! {
    eprintln!("subsocket: {msg}");
    std::process::exit(1);
}
