//! `subsocket-pricefeed`: the Micro Socket methodology's price-feed gateway, built as a sidecar
//! of subsocket. It shows the methodology's *derived streams*: one raw "main" stream and any
//! number of derived channels, each applying its own per-symbol adjustments, all fanned out by
//! the gateway like any other publish.
//!
//! ```text
//!  synthetic upstream ──tick──> generator thread (once per tick, under the book lock)
//!  (seeded random walk)           ├─ main quote            -> prices.main.{SYMBOL}
//!                                 └─ per channel: quote ± margin, computed ONCE
//!                                                         -> prices.{channel}.{SYMBOL}
//!                                        │ bounded queue (batches; dropped when full)
//!                                        v
//!                                 publisher thread: one WebSocket to the gateway, `publish`
//!                                 per message, acks read back, reconnect with backoff
//!  REST (thread per connection) ──> book: create / list / get / update / delete channels
//! ```
//!
//! # Layout
//!
//! - [`feed`]: the synthetic upstream: a seedable PRNG and a mean-reverting random walk per
//!   symbol. Pure; the same seed and symbols give the same quotes.
//! - [`channels`]: a derived channel (default margin, margins per symbol), its validation, and
//!   the derived price. Pure.
//! - [`book`]: the shared state (channels, next tick id, latest quotes) and the round that turns
//!   one upstream update into the main publish plus one publish per channel.
//! - [`publisher`]: the gateway connection (tungstenite, `?token=`), reconnects with backoff.
//! - [`rest`]: the REST API on its own port: parsing, routing, JSON answers and errors.
//!
//! The sidecar never crashes on bad input: every REST request is parsed with limits and answered
//! (4xx with `{"error":CODE,"message":…}`), and a gateway that goes away is reconnected to.

mod book;
mod channels;
mod feed;
mod publisher;
mod rest;
#[cfg(test)]
mod tests;

use clap::Parser;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

/// The price-feed sidecar of subsocket: a synthetic upstream feed published to the gateway as a
/// raw "main" stream and as derived channels with per-symbol margins, managed over REST.
///
/// Topics: `{prefix}.main.{SYMBOL}` for the upstream quotes, `{prefix}.{channel}.{SYMBOL}` for
/// each derived channel. REST on --listen: GET/POST /channels, GET/PUT/DELETE /channels/{name},
/// GET /symbols, GET /stats, GET /healthz.
#[derive(Debug, Parser)]
#[command(name = "subsocket-pricefeed", version)]
struct Cli {
    /// The gateway's WebSocket endpoint (`ws://` only: run the sidecar next to the gateway).
    #[arg(long, value_name = "URL", default_value = "ws://127.0.0.1:8080/ws")]
    gateway: String,
    /// Address of the REST API; port 0 picks a free port (printed at startup).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Symbols: a comma-separated list (EURUSD,USDJPY) or a count (the first N of the built-in
    /// list EURUSD, GBPUSD, USDJPY, …; SYM013 and on past its end).
    #[arg(long, value_name = "LIST|N", default_value = "10")]
    symbols: String,
    /// Upstream updates per second, per symbol.
    #[arg(long, value_name = "PER_SEC", default_value_t = 20.0)]
    rate: f64,
    /// Seed of the random walk: the same seed and symbols give the same prices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Token for the gateway: sent as `?token=` on the upgrade and in `setup`. It needs write
    /// access to `{prefix}.*`.
    #[arg(long)]
    token: Option<String>,
    /// First topic level of every publish.
    #[arg(long, value_name = "PREFIX", default_value = "prices")]
    topic_prefix: String,
    /// A channel to create at startup (repeatable): `NAME:DEFAULT_BPS` or
    /// `NAME:DEFAULT_BPS:SYMBOL=BPS,SYMBOL=BPS`, e.g. `vip:10:EURUSD=25`.
    #[arg(long = "channel", value_name = "SPEC")]
    channels: Vec<String>,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG works too.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log: String,
}

/// Largest accepted `--rate`: beyond it one thread's sleep granularity is the limit anyway.
const MAX_RATE_PER_SEC: f64 = 10_000.0;
/// Largest accepted number of symbols.
const MAX_SYMBOLS: usize = 1_000;
/// Upstream rounds the publisher may fall behind by before rounds are dropped (prices are
/// last-value data: an old tick is worth less than a bounded memory).
const QUEUE_ROUNDS: usize = 1_024;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let setup = match Setup::from_cli(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("subsocket-pricefeed: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(cli.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("subsocket-pricefeed: cannot listen on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    let rest_addr = listener.local_addr().unwrap_or(cli.listen);

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("subsocket-pricefeed: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }

    let app = Arc::new(book::App::new(
        setup.symbols,
        cli.topic_prefix.clone(),
        cli.gateway.clone(),
        cli.rate,
    ));
    {
        let mut book = app.lock_book();
        for channel in setup.channels {
            book.channels.insert(channel.name.clone(), channel);
        }
    }

    let (tx, rx) = sync_channel(QUEUE_ROUNDS);
    let publisher = {
        let (app, stop, target) = (Arc::clone(&app), Arc::clone(&stop), setup.target);
        std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || publisher::run(&target, &rx, &app, &stop))
    };
    let generator = {
        let (app, stop) = (Arc::clone(&app), Arc::clone(&stop));
        let (rate, seed) = (cli.rate, cli.seed);
        std::thread::Builder::new()
            .name("generator".into())
            .spawn(move || book::generate(&app, &tx, rate, seed, &stop))
    };
    let rest = {
        let app = Arc::clone(&app);
        std::thread::Builder::new()
            .name("rest".into())
            .spawn(move || rest::serve(&listener, &app))
    };
    let (publisher, generator) = match (publisher, generator, rest) {
        (Ok(p), Ok(g), Ok(_rest)) => (p, g),
        _ => {
            eprintln!("subsocket-pricefeed: cannot start its threads");
            return ExitCode::FAILURE;
        }
    };

    println!("subsocket-pricefeed listening on http://{rest_addr} (REST: /channels)");
    println!(
        "  upstream: {} symbols x {}/s (seed {}) -> {} as {}.main.{{SYMBOL}} and {}.{{channel}}.{{SYMBOL}}",
        app.symbols.len(),
        cli.rate,
        cli.seed,
        cli.gateway,
        cli.topic_prefix,
        cli.topic_prefix
    );
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }

    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("stopping: closing the gateway connection");
    // The generator sees `stop`, drops the queue's sender; the publisher then closes its
    // WebSocket cleanly (1000) and returns. The REST thread dies with the process.
    let _ = generator.join();
    let _ = publisher.join();
    ExitCode::SUCCESS
}

/// What the CLI asks for, validated before anything starts.
struct Setup {
    symbols: Vec<feed::Symbol>,
    channels: Vec<channels::Channel>,
    target: publisher::Target,
}

impl Setup {
    fn from_cli(cli: &Cli) -> Result<Setup, String> {
        if !(cli.rate.is_finite() && cli.rate > 0.0 && cli.rate <= MAX_RATE_PER_SEC) {
            return Err(format!(
                "--rate must be above 0 and at most {MAX_RATE_PER_SEC} per second"
            ));
        }
        if !channels::is_topic_level(&cli.topic_prefix, true) {
            return Err(
                "--topic-prefix: letters, digits, '_', '-' and '.' only (1 to 64 bytes)".into(),
            );
        }
        let symbols = feed::parse_symbols(&cli.symbols, cli.seed)?;
        let names: Vec<String> = symbols.iter().map(|s| s.name.clone()).collect();
        let mut channels: Vec<channels::Channel> = Vec::new();
        for spec in &cli.channels {
            let channel = channels::Channel::from_spec(spec, &names)
                .map_err(|e| format!("--channel {spec}: {e}"))?;
            if channels.iter().any(|c| c.name == channel.name) {
                return Err(format!("--channel {spec}: {} given twice", channel.name));
            }
            channels.push(channel);
        }
        let target = publisher::Target::parse(&cli.gateway, cli.token.as_deref())?;
        Ok(Setup {
            symbols,
            channels,
            target,
        })
    }
}
