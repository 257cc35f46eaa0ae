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

/// The synthetic upstream feed: no network, deterministic for a seed.
mod feed {
    /// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, statistically fine for a demo feed, and
    /// the same numbers on every platform, which is what "seedable" needs.
    #[derive(Debug, Clone)]
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in (0, 1]: never 0, so `ln` below is finite.
        pub fn unit(&mut self) -> f64 {
            ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
        }

        /// Standard normal (Box–Muller; one of the pair is enough here).
        pub fn normal(&mut self) -> f64 {
            let (u1, u2) = (self.unit(), self.unit());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        }
    }

    /// One instrument of the feed.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Symbol {
        pub name: String,
        /// Where the walk starts and what it reverts to.
        pub base_mid: f64,
        /// Decimal places of its prices (5 for 1.08412, 3 for 151.502, 2 above 1000).
        pub digits: u32,
    }

    impl Symbol {
        pub fn new(name: &str, base_mid: f64) -> Symbol {
            let digits = if base_mid < 10.0 {
                5
            } else if base_mid < 1_000.0 {
                3
            } else {
                2
            };
            Symbol {
                name: name.to_owned(),
                base_mid,
                digits,
            }
        }
    }

    /// The built-in instruments and their starting mid prices.
    const BUILT_IN: &[(&str, f64)] = &[
        ("EURUSD", 1.0850),
        ("GBPUSD", 1.2700),
        ("USDJPY", 151.50),
        ("AUDUSD", 0.6550),
        ("USDCHF", 0.9050),
        ("USDCAD", 1.3600),
        ("NZDUSD", 0.6000),
        ("EURGBP", 0.8550),
        ("EURJPY", 164.40),
        ("XAUUSD", 2350.00),
        ("BTCUSD", 65000.0),
        ("ETHUSD", 3200.0),
    ];

    /// A symbol name: 1 to 16 of `A-Z 0-9 _` (upper case keeps topics and margins unambiguous).
    pub fn is_symbol_name(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 16
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    }

    /// `--symbols`: a count (the built-in list, then `SYM013`…) or a comma-separated list.
    /// Symbols outside the built-in list start at a price drawn from the seed.
    pub fn parse_symbols(arg: &str, seed: u64) -> Result<Vec<Symbol>, String> {
        let arg = arg.trim();
        let names: Vec<String> = if let Ok(n) = arg.parse::<usize>() {
            if n == 0 || n > super::MAX_SYMBOLS {
                return Err(format!(
                    "--symbols: between 1 and {} symbols",
                    super::MAX_SYMBOLS
                ));
            }
            (0..n)
                .map(|i| match BUILT_IN.get(i) {
                    Some((name, _)) => (*name).to_owned(),
                    None => format!("SYM{:03}", i + 1),
                })
                .collect()
        } else {
            arg.split(',')
                .map(|s| s.trim().to_ascii_uppercase())
                .collect()
        };
        if names.len() > super::MAX_SYMBOLS {
            return Err(format!("--symbols: at most {} symbols", super::MAX_SYMBOLS));
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(names.len());
        let mut rng = Rng::new(seed ^ 0x5eed_5eed_5eed_5eed);
        for name in names {
            if !is_symbol_name(&name) {
                return Err(format!(
                    "--symbols: {name:?} is not a symbol (1 to 16 of A-Z, 0-9, _)"
                ));
            }
            if symbols.iter().any(|s| s.name == name) {
                return Err(format!("--symbols: {name} given twice"));
            }
            let base = match BUILT_IN.iter().find(|(n, _)| *n == name) {
                Some((_, base)) => *base,
                // 1.00 to 500.00, two decimals: a plausible price that depends on the seed.
                None => 1.0 + (rng.next_u64() % 49_900) as f64 / 100.0,
            };
            symbols.push(Symbol::new(&name, base));
        }
        Ok(symbols)
    }

    /// Rounds to `digits` decimal places.
    pub fn round_to(x: f64, digits: u32) -> f64 {
        let scale = 10f64.powi(digits as i32);
        (x * scale).round() / scale
    }

    /// One upstream quote: what the upstream feed says about one symbol at one tick.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Quote {
        pub bid: f64,
        pub ask: f64,
    }

    /// Relative volatility of one step (0.5 bp), and how fast the walk is pulled back to its
    /// base (so a demo running for days stays near plausible prices).
    const STEP_VOLATILITY: f64 = 0.5e-4;
    const MEAN_REVERSION: f64 = 0.001;
    /// The upstream's full bid/ask spread, relative to the mid (1 bp).
    const SPREAD: f64 = 1e-4;

    /// A mean-reverting geometric random walk per symbol, driven by one PRNG in symbol order:
    /// the same seed and symbol list give the same sequence of quotes.
    #[derive(Debug)]
    pub struct Walk {
        rng: Rng,
        mids: Vec<f64>,
    }

    impl Walk {
        pub fn new(symbols: &[Symbol], seed: u64) -> Walk {
            Walk {
                rng: Rng::new(seed),
                mids: symbols.iter().map(|s| s.base_mid).collect(),
            }
        }

        /// Moves symbol `i` one step and quotes it, rounded to its digits.
        pub fn step(&mut self, i: usize, symbol: &Symbol) -> Quote {
            let mid = self.mids[i];
            let drift = MEAN_REVERSION * (symbol.base_mid - mid) / symbol.base_mid;
            let next = mid * (STEP_VOLATILITY * self.rng.normal() + drift).exp();
            self.mids[i] = next;
            let tick_size = 10f64.powi(-(symbol.digits as i32));
            let half = (next * SPREAD / 2.0).max(tick_size / 2.0);
            let bid = round_to(next - half, symbol.digits);
            let ask = round_to(next + half, symbol.digits).max(bid + tick_size);
            Quote {
                bid,
                ask: round_to(ask, symbol.digits),
            }
        }
    }
}

/// Derived channels: a name and the margins it applies. Pure.
mod channels {
    use super::feed::{round_to, Quote};
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    /// Largest margin a channel may apply, in basis points (10%): beyond it a typo is likelier
    /// than an intent.
    pub const MAX_MARGIN_BPS: f64 = 1_000.0;
    /// Channels at most: each one is a publish per upstream update.
    pub const MAX_CHANNELS: usize = 64;
    /// The raw stream's name; no channel may take it.
    pub const MAIN: &str = "main";

    /// One derived channel: every upstream quote of a symbol, widened by the symbol's margin
    /// (or the default): `bid × (1 − m/10⁴)`, `ask × (1 + m/10⁴)`, rounded to the symbol's
    /// digits.
    #[derive(Debug, Clone, PartialEq, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Channel {
        pub name: String,
        pub default_margin_bps: f64,
        pub margins: BTreeMap<String, f64>,
    }

    /// The body of `POST /channels` and `PUT /channels/{name}`. Unknown fields are refused so a
    /// misspelt `defaultMargin` is an error, not a silent zero.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct ChannelBody {
        pub name: Option<String>,
        pub default_margin_bps: Option<f64>,
        #[serde(default)]
        pub margins: BTreeMap<String, f64>,
    }

    /// One topic level (or, with `dots`, several): `a-z A-Z 0-9 _ -`, 1 to 64 bytes.
    pub fn is_topic_level(s: &str, dots: bool) -> bool {
        !s.is_empty()
            && s.len() <= 64
            && !s.starts_with('.')
            && !s.ends_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (dots && b == b'.'))
    }

    /// A channel name: 1 to 32 of `a-z 0-9 _ -`, starting with a letter or digit. No dots (a
    /// dot would make `prices.{channel}.{SYMBOL}` ambiguous), lower case only (one spelling
    /// per topic).
    pub fn validate_name(name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(())
        } else {
            Err(format!(
                "invalid channel name {name:?}: 1 to 32 of a-z, 0-9, '_', '-', starting with a letter or digit"
            ))
        }
    }

    fn validate_bps(what: &str, bps: f64) -> Result<(), String> {
        if bps.is_finite() && (0.0..=MAX_MARGIN_BPS).contains(&bps) {
            Ok(())
        } else {
            Err(format!(
                "{what} must be between 0 and {MAX_MARGIN_BPS} basis points, got {bps}"
            ))
        }
    }

    impl Channel {
        /// A validated channel: a good name, margins in range, only known symbols.
        pub fn new(
            name: &str,
            default_margin_bps: f64,
            margins: BTreeMap<String, f64>,
            symbols: &[String],
        ) -> Result<Channel, String> {
            validate_name(name)?;
            validate_bps("defaultMarginBps", default_margin_bps)?;
            for (symbol, bps) in &margins {
                if !symbols.iter().any(|s| s == symbol) {
                    return Err(format!(
                        "margins: unknown symbol {symbol:?} (the feed has {})",
                        symbols.join(", ")
                    ));
                }
                validate_bps(&format!("margins.{symbol}"), *bps)?;
            }
            Ok(Channel {
                name: name.to_owned(),
                default_margin_bps,
                margins,
            })
        }

        /// A channel from a request body; `path_name` is the `{name}` of `PUT /channels/{name}`
        /// (the body's `name`, when given, must agree with it).
        pub fn from_body(
            body: ChannelBody,
            path_name: Option<&str>,
            symbols: &[String],
        ) -> Result<Channel, String> {
            let name = match (path_name, body.name.as_deref()) {
                (Some(p), Some(b)) if p != b => {
                    return Err(format!(
                        "the body's name {b:?} differs from the path's {p:?} (channels cannot be renamed)"
                    ))
                }
                (Some(p), _) => p.to_owned(),
                (None, Some(b)) => b.to_owned(),
                (None, None) => return Err("name is required".into()),
            };
            let default = body
                .default_margin_bps
                .ok_or("defaultMarginBps is required")?;
            Channel::new(&name, default, body.margins, symbols)
        }

        /// `--channel NAME:DEFAULT_BPS[:SYMBOL=BPS,…]`.
        pub fn from_spec(spec: &str, symbols: &[String]) -> Result<Channel, String> {
            let mut parts = spec.splitn(3, ':');
            let name = parts.next().unwrap_or_default();
            let default: f64 = parts
                .next()
                .ok_or("expected NAME:DEFAULT_BPS[:SYMBOL=BPS,...]")?
                .parse()
                .map_err(|_| "DEFAULT_BPS is not a number")?;
            let mut margins = BTreeMap::new();
            if let Some(list) = parts.next().filter(|l| !l.is_empty()) {
                for pair in list.split(',') {
                    let (symbol, bps) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("{pair:?}: expected SYMBOL=BPS"))?;
                    let bps: f64 = bps
                        .parse()
                        .map_err(|_| format!("{pair:?}: BPS is not a number"))?;
                    margins.insert(symbol.to_ascii_uppercase(), bps);
                }
            }
            Channel::new(name, default, margins, symbols)
        }

        /// The margin this channel applies to `symbol`.
        pub fn margin_bps(&self, symbol: &str) -> f64 {
            self.margins
                .get(symbol)
                .copied()
                .unwrap_or(self.default_margin_bps)
        }
    }

    /// The derived quote: the upstream one widened by `margin_bps` on each side.
    pub fn derive(quote: Quote, margin_bps: f64, digits: u32) -> Quote {
        let m = margin_bps / 10_000.0;
        Quote {
            bid: round_to(quote.bid * (1.0 - m), digits),
            ask: round_to(quote.ask * (1.0 + m), digits),
        }
    }
}

/// The shared state and the round that turns upstream updates into publishes.
mod book {
    use super::channels::{self, Channel};
    use super::feed::{Quote, Symbol, Walk};
    use serde::Serialize;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::mpsc::{SyncSender, TrySendError};
    use std::sync::{Mutex, MutexGuard};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    /// One round's publishes: finished `publish` request texts, main stream first.
    pub type Batch = Vec<String>;

    /// Bookkeeping of one channel that the API reports but a client does not set.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct ChannelCounters {
        /// Derived quotes computed (and queued) for this channel.
        pub published: u64,
        /// The last tick a derived quote was computed for: after `DELETE` no later one exists.
        pub last_tick: Option<u64>,
    }

    /// What the generator and the REST API share, behind one mutex. The generator holds it for
    /// one round (microseconds); a REST change therefore applies from the next round on, and
    /// `next_tick` at the time of the change says exactly which tick that is.
    #[derive(Debug, Default)]
    pub struct Book {
        pub channels: BTreeMap<String, Channel>,
        pub counters: BTreeMap<String, ChannelCounters>,
        /// The id of the next upstream update, over all symbols: ids grow by one per update.
        pub next_tick: u64,
        /// The latest upstream quote per symbol, with its tick and time (`GET /symbols`).
        pub latest: Vec<Option<(u64, u64, Quote)>>,
    }

    /// Counters of the whole sidecar (`GET /stats`). Plain atomics: written by one thread each.
    #[derive(Debug, Default)]
    pub struct Stats {
        pub connected: AtomicBool,
        pub connects: AtomicU64,
        pub ticks: AtomicU64,
        pub queued: AtomicU64,
        pub sent: AtomicU64,
        pub acked: AtomicU64,
        pub duplicates: AtomicU64,
        pub gateway_errors: AtomicU64,
        pub dropped: AtomicU64,
        pub last_error: Mutex<Option<String>>,
    }

    /// Everything the threads share.
    #[derive(Debug)]
    pub struct App {
        pub symbols: Vec<Symbol>,
        pub symbol_names: Vec<String>,
        pub topic_prefix: String,
        pub gateway: String,
        pub rate: f64,
        book: Mutex<Book>,
        pub stats: Stats,
    }

    impl App {
        pub fn new(symbols: Vec<Symbol>, topic_prefix: String, gateway: String, rate: f64) -> App {
            let book = Book {
                latest: vec![None; symbols.len()],
                ..Book::default()
            };
            App {
                symbol_names: symbols.iter().map(|s| s.name.clone()).collect(),
                symbols,
                topic_prefix,
                gateway,
                rate,
                book: Mutex::new(book),
                stats: Stats::default(),
            }
        }

        /// The book. A thread that panicked while holding it left a consistent map (every
        /// change is one insert or remove), so a poisoned lock is taken over, not propagated.
        pub fn lock_book(&self) -> MutexGuard<'_, Book> {
            self.book.lock().unwrap_or_else(|p| p.into_inner())
        }

        pub fn set_last_error(&self, e: String) {
            *self
                .stats
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(e);
        }

        pub fn topic(&self, source: &str, symbol: &str) -> String {
            format!("{}.{source}.{symbol}", self.topic_prefix)
        }

        /// One round: every symbol moves once. Per symbol: the main publish, then one publish
        /// per channel with that channel's derived quote, each computed once.
        pub fn round(&self, walk: &mut Walk, ts_ms: u64) -> Batch {
            let mut book = self.lock_book();
            let book = &mut *book;
            let mut batch = Vec::with_capacity(self.symbols.len() * (1 + book.channels.len()));
            for (i, symbol) in self.symbols.iter().enumerate() {
                let quote = walk.step(i, symbol);
                let tick = book.next_tick;
                book.next_tick += 1;
                book.latest[i] = Some((tick, ts_ms, quote));
                batch.push(self.publish_text(channels::MAIN, symbol, tick, ts_ms, quote, 0.0));
                for channel in book.channels.values() {
                    let margin = channel.margin_bps(&symbol.name);
                    let derived = channels::derive(quote, margin, symbol.digits);
                    batch.push(self.publish_text(
                        &channel.name,
                        symbol,
                        tick,
                        ts_ms,
                        derived,
                        margin,
                    ));
                    let counters = book.counters.entry(channel.name.clone()).or_default();
                    counters.published += 1;
                    counters.last_tick = Some(tick);
                }
            }
            batch
        }

        /// A finished `publish` request. Topic parts are validated to need no JSON escaping.
        fn publish_text(
            &self,
            source: &str,
            symbol: &Symbol,
            tick: u64,
            ts_ms: u64,
            quote: Quote,
            margin_bps: f64,
        ) -> String {
            let payload = Payload {
                symbol: &symbol.name,
                tick,
                bid: quote.bid,
                ask: quote.ask,
                ts: ts_ms,
                source,
                margin_bps,
            };
            // Serializing a struct of strings and finite numbers cannot fail.
            let payload = serde_json::to_string(&payload).unwrap_or_default();
            format!(
                r#"{{"type":"publish","topic":"{}","payload":{payload}}}"#,
                self.topic(source, &symbol.name)
            )
        }
    }

    /// What subscribers receive as `data`. `tick` is the upstream update's id: the main quote
    /// and every channel's derived quote of one update carry the same one.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Payload<'a> {
        symbol: &'a str,
        tick: u64,
        bid: f64,
        ask: f64,
        ts: u64,
        source: &'a str,
        margin_bps: f64,
    }

    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// The generator thread: `rate` rounds per second until `stop`. When the publisher is
    /// behind by a full queue, the round is dropped (counted), never waited for.
    pub fn generate(app: &App, tx: &SyncSender<Batch>, rate: f64, seed: u64, stop: &AtomicBool) {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut walk = Walk::new(&app.symbols, seed);
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(100)));
                continue;
            }
            next += interval;
            // After a long stall (a suspended process), start again rather than burst.
            if now > next + Duration::from_secs(1) {
                next = now + interval;
            }
            let batch = app.round(&mut walk, now_ms());
            app.stats
                .ticks
                .fetch_add(app.symbols.len() as u64, Ordering::Relaxed);
            let n = batch.len() as u64;
            match tx.try_send(batch) {
                Ok(()) => {
                    app.stats.queued.fetch_add(n, Ordering::Relaxed);
                }
                Err(TrySendError::Full(_)) => {
                    app.stats.dropped.fetch_add(n, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

/// The gateway connection: one WebSocket, `publish` per message, acks read back.
mod publisher {
    use super::book::{App, Batch};
    use super::feed::Rng;
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    use std::io::ErrorKind;
    use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{Receiver, RecvTimeoutError};
    use std::time::{Duration, Instant};
    use tungstenite::protocol::WebSocketConfig;
    use tungstenite::{Message, WebSocket};

    /// How long a connect, the upgrade and the `ready` answer may take.
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// How long the publisher waits for the next round before reading acks anyway.
    const POLL: Duration = Duration::from_millis(50);
    /// A gateway that takes no bytes for this long is given up on and reconnected to.
    const STALL_TIMEOUT: Duration = Duration::from_secs(10);
    /// Bytes the publisher may hold for a slow gateway before dropping publishes.
    const MAX_WRITE_BUFFER_BYTES: usize = 8 << 20;
    /// Reconnect backoff: exponential from the first to the cap, with full jitter.
    const BACKOFF_FIRST: Duration = Duration::from_millis(100);
    const BACKOFF_CAP: Duration = Duration::from_secs(5);

    /// Where to publish: the upgrade URL (token included) and the address to connect to.
    #[derive(Debug, Clone)]
    pub struct Target {
        /// `ws://host:port/path?…&token=…`, what the upgrade request is built from.
        pub url: String,
        /// `host:port`, resolved again on every connect (the gateway may move).
        pub authority: String,
        pub token: Option<String>,
    }

    impl Target {
        /// `ws://HOST[:PORT][/PATH]`; the path defaults to `/ws`. `wss://` is refused: the
        /// sidecar runs next to the gateway and talks to it over loopback.
        pub fn parse(url: &str, token: Option<&str>) -> Result<Target, String> {
            let rest = url.strip_prefix("ws://").ok_or_else(|| {
                format!(
                    "--gateway {url:?}: expected ws://HOST:PORT/ws (plain ws to a local gateway)"
                )
            })?;
            let (authority, path) = match rest.find(['/', '?']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/ws"),
            };
            if authority.is_empty() || authority.contains('@') {
                return Err(format!("--gateway {url:?}: no host"));
            }
            let authority = if authority
                .rsplit_once(':')
                .is_some_and(|(_, p)| !p.contains(']'))
            {
                authority.to_owned()
            } else {
                format!("{authority}:80")
            };
            let path = if path.starts_with('?') {
                format!("/ws{path}")
            } else {
                path.to_owned()
            };
            let mut full = format!("ws://{authority}{path}");
            if let Some(t) = token {
                let sep = if full.contains('?') { '&' } else { '?' };
                full.push(sep);
                full.push_str("token=");
                full.extend(utf8_percent_encode(t, NON_ALPHANUMERIC));
            }
            Ok(Target {
                url: full,
                authority,
                token: token.map(str::to_owned),
            })
        }
    }

    type Ws = WebSocket<TcpStream>;

    /// The publisher thread: connect, publish until the connection fails, back off, again;
    /// returns when the generator is gone (shutdown). While disconnected, rounds are dropped
    /// (counted): a price feed resumes with fresh quotes rather than a backlog of stale ones.
    pub fn run(target: &Target, rx: &Receiver<Batch>, app: &App, stop: &AtomicBool) {
        let mut rng = Rng::new(super::book::now_ms() ^ u64::from(std::process::id()));
        let mut failures: u32 = 0;
        loop {
            match connect(target) {
                Ok(mut ws) => {
                    failures = 0;
                    app.stats.connects.fetch_add(1, Ordering::Relaxed);
                    app.stats.connected.store(true, Ordering::Relaxed);
                    tracing::info!(gateway = %target.url_without_token(), "connected to the gateway");
                    // Rounds queued while disconnected are stale: drop them.
                    discard(rx, app);
                    let outcome = pump(&mut ws, rx, app, stop);
                    app.stats.connected.store(false, Ordering::Relaxed);
                    match outcome {
                        Ok(()) => {
                            close(ws);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!("gateway connection lost: {e}");
                            app.set_last_error(e);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot connect to the gateway: {e}");
                    app.set_last_error(e);
                }
            }
            failures = failures.saturating_add(1);
            let cap = BACKOFF_FIRST
                .saturating_mul(1u32 << failures.min(16))
                .min(BACKOFF_CAP);
            let wait = cap.mul_f64(rng.unit());
            let until = Instant::now() + wait.max(Duration::from_millis(10));
            while Instant::now() < until {
                if stop.load(Ordering::Relaxed) || !discard(rx, app) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    impl Target {
        /// The URL for logs: the token is not written anywhere.
        pub fn url_without_token(&self) -> String {
            match self.url.find("token=") {
                Some(i) => format!("{}token=…", &self.url[..i]),
                None => self.url.clone(),
            }
        }
    }

    /// Drops every queued round (counted). False when the generator is gone.
    fn discard(rx: &Receiver<Batch>, app: &App) -> bool {
        loop {
            match rx.try_recv() {
                Ok(batch) => {
                    app.stats
                        .dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => return true,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// TCP connect, upgrade, `setup` (with the token when there is one), wait for `ready`.
    fn connect(target: &Target) -> Result<Ws, String> {
        let addrs: Vec<SocketAddr> = target
            .authority
            .to_socket_addrs()
            .map_err(|e| format!("{}: {e}", target.authority))?
            .collect();
        let mut last = format!("{}: no address", target.authority);
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        let stream = stream.ok_or(last)?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(CONNECT_TIMEOUT))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(CONNECT_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let config = WebSocketConfig::default().max_write_buffer_size(MAX_WRITE_BUFFER_BYTES);
        let (mut ws, _) =
            tungstenite::client::client_with_config(target.url.as_str(), stream, Some(config))
                .map_err(|e| format!("upgrade: {e}"))?;
        let setup = match &target.token {
            Some(t) => serde_json::json!({"type": "setup", "token": t}),
            None => serde_json::json!({"type": "setup"}),
        };
        ws.send(Message::text(setup.to_string()))
            .map_err(|e| format!("setup: {e}"))?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err("no `ready` answer to setup".into());
            }
            match ws.read() {
                Ok(Message::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("ready") => break,
                        Some("error") => {
                            return Err(format!(
                                "setup refused: {} {}",
                                v["code"].as_str().unwrap_or("?"),
                                v["message"].as_str().unwrap_or("")
                            ))
                        }
                        _ => {}
                    }
                }
                Ok(Message::Close(frame)) => {
                    return Err(format!("closed during setup: {frame:?}"));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("setup: {e}")),
            }
        }
        ws.get_mut()
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        Ok(ws)
    }

    fn would_block(e: &tungstenite::Error) -> bool {
        matches!(e, tungstenite::Error::Io(io) if io.kind() == ErrorKind::WouldBlock)
    }

    /// Publishes rounds as they come and reads the gateway's answers, on a non-blocking socket.
    /// `Ok` when the generator is gone (shutdown); `Err` when the connection failed.
    fn pump(ws: &mut Ws, rx: &Receiver<Batch>, app: &App, stop: &AtomicBool) -> Result<(), String> {
        let mut last_progress = Instant::now();
        let mut pending = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match rx.recv_timeout(POLL) {
                Ok(batch) => {
                    write_batch(ws, batch, app)?;
                    // Catch up with whatever else is queued, a bounded number at a time.
                    for batch in rx.try_iter().take(64) {
                        write_batch(ws, batch, app)?;
                    }
                    pending = true;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if pending {
                match ws.flush() {
                    Ok(()) => {
                        pending = false;
                        last_progress = Instant::now();
                    }
                    Err(e) if would_block(&e) => {
                        if last_progress.elapsed() > STALL_TIMEOUT {
                            return Err(format!("the gateway took no data for {STALL_TIMEOUT:?}"));
                        }
                    }
                    Err(e) => return Err(format!("write: {e}")),
                }
            }
            read_answers(ws, app)?;
        }
    }

    /// Queues one round's publishes. A full write buffer (a gateway that stopped reading)
    /// drops the publish, counted; `pump`'s stall check then ends the connection.
    fn write_batch(ws: &mut Ws, batch: Batch, app: &App) -> Result<(), String> {
        for text in batch {
            match ws.write(Message::text(text)) {
                Ok(()) => {
                    app.stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                // The message is queued; `flush` finishes it.
                Err(e) if would_block(&e) => {
                    app.stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(tungstenite::Error::WriteBufferFull(_)) => {
                    app.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        Ok(())
    }

    /// Reads every answer already received: acks are counted, errors counted and logged (the
    /// first ten, then every thousandth: a wrong token must not flood the log).
    fn read_answers(ws: &mut Ws, app: &App) -> Result<(), String> {
        loop {
            match ws.read() {
                Ok(Message::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("ack") if v["status"] == "duplicate" => {
                            app.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        Some("ack") => {
                            app.stats.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Some("error") => {
                            let n = app.stats.gateway_errors.fetch_add(1, Ordering::Relaxed);
                            let e = format!(
                                "gateway error {} on {}: {}",
                                v["code"].as_str().unwrap_or("?"),
                                v["topic"].as_str().unwrap_or("-"),
                                v["message"].as_str().unwrap_or("")
                            );
                            if n < 10 || n.is_multiple_of(1000) {
                                tracing::warn!("{e} ({} so far)", n + 1);
                            }
                            app.set_last_error(e);
                        }
                        _ => {}
                    }
                }
                Ok(Message::Close(frame)) => {
                    return Err(match frame {
                        Some(f) => {
                            format!("the gateway closed the connection: {} {}", f.code, f.reason)
                        }
                        None => "the gateway closed the connection".into(),
                    })
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// A clean close (1000) at shutdown, waiting a moment for the gateway's answer.
    fn close(mut ws: Ws) {
        let _ = ws.get_mut().set_nonblocking(false);
        let _ = ws
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(500)));
        if ws.close(None).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                match ws.read() {
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    }
}

/// The REST API: `/channels` and a few read-only views, on its own port.
mod rest {
    use super::book::App;
    use super::channels::{self, Channel, ChannelBody};
    use serde_json::{json, Value};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Largest request head and body.
    const MAX_HEAD_BYTES: usize = 8 * 1024;
    const MAX_BODY_BYTES: usize = 64 * 1024;
    /// Time a client has to send its whole request.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    /// Connections served at once; more are answered 503 at once (one thread each).
    const MAX_CONNECTIONS: usize = 64;

    /// An HTTP answer: status, JSON body and the headers some statuses need.
    #[derive(Debug)]
    pub struct Response {
        pub status: u16,
        pub body: Value,
        pub allow: Option<&'static str>,
        pub location: Option<String>,
    }

    impl Response {
        fn ok(status: u16, body: Value) -> Response {
            Response {
                status,
                body,
                allow: None,
                location: None,
            }
        }

        fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
            Response::ok(status, json!({"error": code, "message": message.into()}))
        }

        fn method_not_allowed(allow: &'static str) -> Response {
            Response {
                allow: Some(allow),
                ..Response::error(
                    405,
                    "METHOD_NOT_ALLOWED",
                    format!("allowed methods: {allow}"),
                )
            }
        }
    }

    fn reason(status: u16) -> &'static str {
        match status {
            200 => "OK",
            201 => "Created",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            411 => "Length Required",
            413 => "Payload Too Large",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Status",
        }
    }

    /// The accept loop: a thread per connection, at most [`MAX_CONNECTIONS`] at once.
    pub fn serve(listener: &TcpListener, app: &Arc<App>) {
        let active = Arc::new(AtomicUsize::new(0));
        for stream in listener.incoming() {
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: wait a little rather than spin.
                    tracing::warn!("REST accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::AcqRel);
                let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
                write_response(
                    &mut stream,
                    &Response::error(503, "BUSY", "too many REST connections; retry"),
                );
                continue;
            }
            let (app, mine) = (Arc::clone(app), Arc::clone(&active));
            let spawned = std::thread::Builder::new()
                .name("rest-conn".into())
                .spawn(move || {
                    handle(stream, &app);
                    mine.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// One request, one answer, then the connection is closed (`Connection: close`).
    fn handle(mut stream: TcpStream, app: &App) {
        let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
        let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
        let response = match read_request(&mut stream) {
            Ok(req) => route(app, &req.method, &req.path, &req.body),
            Err(Some(r)) => r,
            Err(None) => return,
        };
        write_response(&mut stream, &response);
    }

    /// A parsed request.
    #[derive(Debug)]
    pub struct Request {
        pub method: String,
        pub path: String,
        pub body: Vec<u8>,
    }

    /// Reads one request with the size and time limits. `Err(Some(answer))` for a request to
    /// refuse, `Err(None)` when the client went away before sending one.
    fn read_request(stream: &mut TcpStream) -> Result<Request, Option<Response>> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(parsed) = parse_request(&buf)? {
                return Ok(parsed);
            }
            if Instant::now() > deadline {
                return Err(Some(Response::error(
                    408,
                    "TIMEOUT",
                    "the request did not arrive in time",
                )));
            }
            match stream.read(&mut chunk) {
                Ok(0) if buf.is_empty() => return Err(None),
                Ok(0) => {
                    return Err(Some(Response::error(
                        400,
                        "BAD_REQUEST",
                        "the request ended early",
                    )))
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return Err(Some(Response::error(
                        408,
                        "TIMEOUT",
                        "the request did not arrive in time",
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(None),
            }
        }
    }

    /// Parses `buf` as one request: `Ok(None)` when more bytes are needed.
    pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, Option<Response>> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD_BYTES {
                    return Err(Some(Response::error(
                        431,
                        "TOO_LARGE",
                        format!("the request head is over {MAX_HEAD_BYTES} bytes"),
                    )));
                }
                return Ok(None);
            }
            Err(e) => {
                return Err(Some(Response::error(
                    400,
                    "BAD_REQUEST",
                    format!("malformed HTTP request: {e}"),
                )))
            }
        };
        if head_len > MAX_HEAD_BYTES {
            return Err(Some(Response::error(
                431,
                "TOO_LARGE",
                format!("the request head is over {MAX_HEAD_BYTES} bytes"),
            )));
        }
        let mut content_length = 0usize;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(Some(Response::error(
                    411,
                    "LENGTH_REQUIRED",
                    "send the body with a Content-Length",
                )));
            }
            if h.name.eq_ignore_ascii_case("content-length") {
                content_length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| {
                        Some(Response::error(400, "BAD_REQUEST", "bad Content-Length"))
                    })?;
            }
        }
        if content_length > MAX_BODY_BYTES {
            return Err(Some(Response::error(
                413,
                "TOO_LARGE",
                format!("the body is over {MAX_BODY_BYTES} bytes"),
            )));
        }
        if buf.len() < head_len + content_length {
            return Ok(None);
        }
        Ok(Some(Request {
            method: req.method.unwrap_or_default().to_owned(),
            path: req.path.unwrap_or_default().to_owned(),
            body: buf[head_len..head_len + content_length].to_vec(),
        }))
    }

    fn write_response(stream: &mut TcpStream, r: &Response) {
        let body = format!("{}\n", r.body);
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            r.status,
            reason(r.status),
            body.len()
        );
        if let Some(allow) = r.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        if let Some(location) = &r.location {
            head.push_str(&format!("Location: {location}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body.as_bytes());
        let _ = stream.flush();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Let the client read the answer before the socket closes under unread request bytes
        // (which would reset the connection and lose the answer).
        let mut sink = [0u8; 1024];
        let deadline = Instant::now() + Duration::from_millis(500);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        while Instant::now() < deadline {
            match stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn channel_json(app: &App, channel: &Channel, book: &super::book::Book) -> Value {
        let counters = book
            .counters
            .get(&channel.name)
            .copied()
            .unwrap_or_default();
        json!({
            "name": channel.name,
            "defaultMarginBps": channel.default_margin_bps,
            "margins": channel.margins,
            "topics": app.topic(&channel.name, "{SYMBOL}"),
            "published": counters.published,
            "lastTick": counters.last_tick,
        })
    }

    fn parse_body(body: &[u8]) -> Result<ChannelBody, Response> {
        if body.is_empty() {
            return Err(Response::error(
                400,
                "BAD_REQUEST",
                "a JSON body is required: {\"name\":…,\"defaultMarginBps\":…,\"margins\":{SYMBOL:bps}}",
            ));
        }
        serde_json::from_slice(body)
            .map_err(|e| Response::error(400, "BAD_REQUEST", format!("bad JSON body: {e}")))
    }

    /// Routes one request. Pure apart from the book: testable without sockets.
    pub fn route(app: &App, method: &str, target: &str, body: &[u8]) -> Response {
        let path = target.split(['?', '#']).next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match segments.as_slice() {
            ["channels"] => match method {
                "GET" => {
                    let book = app.lock_book();
                    let list: Vec<Value> = book
                        .channels
                        .values()
                        .map(|c| channel_json(app, c, &book))
                        .collect();
                    Response::ok(200, json!({"channels": list}))
                }
                "POST" => create(app, body),
                _ => Response::method_not_allowed("GET, POST"),
            },
            ["channels", name] => {
                if let Err(e) = channels::validate_name(name) {
                    return Response::error(400, "BAD_REQUEST", e);
                }
                match method {
                    "GET" => {
                        let book = app.lock_book();
                        match book.channels.get(*name) {
                            Some(c) => Response::ok(200, channel_json(app, c, &book)),
                            None => not_found(name),
                        }
                    }
                    "PUT" => update(app, name, body),
                    "DELETE" => delete(app, name),
                    _ => Response::method_not_allowed("GET, PUT, DELETE"),
                }
            }
            ["symbols"] if method == "GET" => {
                let book = app.lock_book();
                let list: Vec<Value> = app
                    .symbols
                    .iter()
                    .zip(&book.latest)
                    .map(|(s, latest)| match latest {
                        Some((tick, ts, q)) => json!({
                            "symbol": s.name, "tick": tick, "bid": q.bid, "ask": q.ask, "ts": ts,
                            "topic": app.topic(channels::MAIN, &s.name),
                        }),
                        None => {
                            json!({"symbol": s.name, "topic": app.topic(channels::MAIN, &s.name)})
                        }
                    })
                    .collect();
                Response::ok(200, json!({"symbols": list}))
            }
            ["stats"] if method == "GET" => stats(app),
            ["healthz"] if method == "GET" => Response::ok(200, json!({"status": "ok"})),
            ["symbols"] | ["stats"] | ["healthz"] => Response::method_not_allowed("GET"),
            _ => Response::error(
                404,
                "NOT_FOUND",
                format!("no such path: {path} (see /channels, /symbols, /stats)"),
            ),
        }
    }

    fn not_found(name: &str) -> Response {
        Response::error(404, "NOT_FOUND", format!("no channel {name:?}"))
    }

    fn create(app: &App, body: &[u8]) -> Response {
        let body = match parse_body(body) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let channel = match Channel::from_body(body, None, &app.symbol_names) {
            Ok(c) => c,
            Err(e) => return Response::error(400, "BAD_REQUEST", e),
        };
        if channel.name == channels::MAIN {
            return Response::error(
                409,
                "CONFLICT",
                "\"main\" is the upstream stream's name; choose another",
            );
        }
        let mut book = app.lock_book();
        if book.channels.contains_key(&channel.name) {
            return Response::error(
                409,
                "CONFLICT",
                format!(
                    "channel {:?} exists; PUT /channels/{} changes it",
                    channel.name, channel.name
                ),
            );
        }
        if book.channels.len() >= channels::MAX_CHANNELS {
            return Response::error(
                409,
                "LIMIT_EXCEEDED",
                format!("at most {} channels", channels::MAX_CHANNELS),
            );
        }
        let name = channel.name.clone();
        book.counters.insert(name.clone(), Default::default());
        book.channels.insert(name.clone(), channel);
        let effective = book.next_tick;
        let mut body = channel_json(app, &book.channels[&name], &book);
        body["effectiveFromTick"] = json!(effective);
        tracing::info!(channel = %name, "channel created");
        Response {
            location: Some(format!("/channels/{name}")),
            ..Response::ok(201, body)
        }
    }

    fn update(app: &App, name: &str, body: &[u8]) -> Response {
        let body = match parse_body(body) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let channel = match Channel::from_body(body, Some(name), &app.symbol_names) {
            Ok(c) => c,
            Err(e) => return Response::error(400, "BAD_REQUEST", e),
        };
        let mut book = app.lock_book();
        match book.channels.get_mut(name) {
            Some(existing) => *existing = channel,
            None => return not_found(name),
        }
        let effective = book.next_tick;
        let mut body = channel_json(app, &book.channels[name], &book);
        body["effectiveFromTick"] = json!(effective);
        tracing::info!(channel = %name, from_tick = effective, "channel updated");
        Response::ok(200, body)
    }

    fn delete(app: &App, name: &str) -> Response {
        let mut book = app.lock_book();
        if book.channels.remove(name).is_none() {
            return not_found(name);
        }
        let counters = book.counters.remove(name).unwrap_or_default();
        tracing::info!(channel = %name, "channel deleted");
        Response::ok(
            200,
            json!({
                "deleted": name,
                "published": counters.published,
                "lastTick": counters.last_tick,
            }),
        )
    }

    fn stats(app: &App) -> Response {
        let s = &app.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let book = app.lock_book();
        let last_error = s
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Response::ok(
            200,
            json!({
                "gateway": app.gateway,
                "connected": s.connected.load(Ordering::Relaxed),
                "connects": load(&s.connects),
                "symbols": app.symbols.len(),
                "ratePerSymbol": app.rate,
                "channels": book.channels.len(),
                "nextTick": book.next_tick,
                "ticks": load(&s.ticks),
                "queued": load(&s.queued),
                "sent": load(&s.sent),
                "acked": load(&s.acked),
                "duplicates": load(&s.duplicates),
                "gatewayErrors": load(&s.gateway_errors),
                "dropped": load(&s.dropped),
                "lastError": last_error,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::book::App;
    use super::channels::{derive, Channel};
    use super::feed::{parse_symbols, Quote, Walk};
    use super::publisher::Target;
    use super::rest::{parse_request, route};
    use serde_json::Value;
    use std::collections::BTreeMap;

    fn app(channels: &[&str]) -> App {
        let app = App::new(
            parse_symbols("EURUSD,USDJPY", 7).unwrap(),
            "prices".into(),
            "ws://127.0.0.1:1/ws".into(),
            20.0,
        );
        {
            let mut book = app.lock_book();
            for spec in channels {
                let c = Channel::from_spec(spec, &app.symbol_names).unwrap();
                book.channels.insert(c.name.clone(), c);
            }
        }
        app
    }

    fn payloads(batch: &[String]) -> Vec<(String, Value)> {
        batch
            .iter()
            .map(|t| {
                let v: Value = serde_json::from_str(t).unwrap();
                assert_eq!(v["type"], "publish");
                (
                    v["topic"].as_str().unwrap().to_owned(),
                    v["payload"].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_quotes_and_another_seed_does_not() {
        let symbols = parse_symbols("4", 1).unwrap();
        let run = |seed| {
            let mut walk = Walk::new(&symbols, seed);
            (0..200)
                .flat_map(|_| {
                    (0..symbols.len())
                        .map(|i| walk.step(i, &symbols[i]))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<Quote>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        for q in run(42) {
            assert!(q.bid > 0.0 && q.ask > q.bid, "{q:?}");
        }
    }

    #[test]
    fn symbols_parse_as_a_count_or_a_list() {
        let names = |arg| {
            parse_symbols(arg, 1)
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("3"), ["EURUSD", "GBPUSD", "USDJPY"]);
        assert_eq!(names("eurusd, ABC_1"), ["EURUSD", "ABC_1"]);
        assert_eq!(names("13")[12], "SYM013");
        assert!(parse_symbols("0", 1).is_err());
        assert!(parse_symbols("EURUSD,EURUSD", 1).is_err());
        assert!(parse_symbols("EUR.USD", 1).is_err());
        assert!(parse_symbols("", 1).is_err());
        let usdjpy = &parse_symbols("USDJPY", 1).unwrap()[0];
        assert_eq!(usdjpy.digits, 3);
    }

    #[test]
    fn a_derived_quote_widens_each_side_by_the_margin() {
        let q = Quote {
            bid: 1.10000,
            ask: 1.10010,
        };
        let d = derive(q, 25.0, 5);
        assert_eq!(d.bid, 1.09725);
        assert_eq!(d.ask, 1.10285);
        assert_eq!(derive(q, 0.0, 5), q);
    }

    #[test]
    fn channel_validation_refuses_bad_names_margins_and_symbols() {
        let symbols = vec!["EURUSD".to_owned()];
        let margins = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(s, b)| ((*s).to_owned(), *b)).collect()
        };
        assert!(Channel::new("vip", 10.0, margins(&[("EURUSD", 25.0)]), &symbols).is_ok());
        for bad in ["", "VIP", "a.b", "-x", "a b", &"x".repeat(33)] {
            assert!(
                Channel::new(bad, 1.0, margins(&[]), &symbols).is_err(),
                "{bad:?}"
            );
        }
        assert!(Channel::new("vip", -1.0, margins(&[]), &symbols).is_err());
        assert!(Channel::new("vip", 1001.0, margins(&[]), &symbols).is_err());
        assert!(Channel::new("vip", 1.0, margins(&[("GBPUSD", 1.0)]), &symbols).is_err());
        assert!(Channel::new("vip", 1.0, margins(&[("EURUSD", f64::NAN)]), &symbols).is_err());
        let c = Channel::from_spec("gold:5:eurusd=30", &symbols).unwrap();
        assert_eq!((c.margin_bps("EURUSD"), c.margin_bps("OTHER")), (30.0, 5.0));
        assert!(Channel::from_spec("gold", &symbols).is_err());
        assert!(Channel::from_spec("gold:x", &symbols).is_err());
        assert!(Channel::from_spec("gold:1:EURUSD", &symbols).is_err());
    }

    #[test]
    fn one_round_publishes_main_then_each_channel_once_per_symbol_with_the_same_tick() {
        let app = app(&["vip:10:EURUSD=25", "retail:50"]);
        let mut walk = Walk::new(&app.symbols, 1);
        let batch = payloads(&app.round(&mut walk, 1_000));
        let topics: Vec<&str> = batch.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            [
                "prices.main.EURUSD",
                "prices.retail.EURUSD",
                "prices.vip.EURUSD",
                "prices.main.USDJPY",
                "prices.retail.USDJPY",
                "prices.vip.USDJPY"
            ]
        );
        let main = &batch[0].1;
        let vip = &batch[2].1;
        assert_eq!(main["tick"], 0);
        assert_eq!(vip["tick"], 0);
        assert_eq!(batch[3].1["tick"], 1);
        assert_eq!(main["source"], "main");
        assert_eq!(main["marginBps"], 0.0);
        assert_eq!(vip["source"], "vip");
        assert_eq!(vip["marginBps"], 25.0);
        assert_eq!(batch[5].1["marginBps"], 10.0);
        let q = Quote {
            bid: main["bid"].as_f64().unwrap(),
            ask: main["ask"].as_f64().unwrap(),
        };
        let d = derive(q, 25.0, 5);
        assert_eq!(vip["bid"].as_f64().unwrap(), d.bid);
        assert_eq!(vip["ask"].as_f64().unwrap(), d.ask);
        assert_eq!(vip["ts"], 1_000);
    }

    #[test]
    fn the_rest_api_creates_lists_updates_and_deletes_with_clear_errors() {
        let app = app(&[]);
        let r = route(
            &app,
            "POST",
            "/channels",
            br#"{"name":"vip","defaultMarginBps":10,"margins":{"EURUSD":25}}"#,
        );
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.location.as_deref(), Some("/channels/vip"));
        assert_eq!(r.body["topics"], "prices.vip.{SYMBOL}");
        let r = route(
            &app,
            "POST",
            "/channels",
            br#"{"name":"vip","defaultMarginBps":1}"#,
        );
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (409, Some("CONFLICT"))
        );
        let r = route(
            &app,
            "POST",
            "/channels",
            br#"{"name":"main","defaultMarginBps":1}"#,
        );
        assert_eq!(r.status, 409);
        assert_eq!(
            route(&app, "GET", "/channels", b"").body["channels"][0]["name"],
            "vip"
        );
        assert_eq!(route(&app, "GET", "/channels/vip?x=1", b"").status, 200);
        let r = route(
            &app,
            "PUT",
            "/channels/vip",
            br#"{"defaultMarginBps":5,"margins":{"USDJPY":7}}"#,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["margins"]["USDJPY"], 7.0);
        assert_eq!(r.body["effectiveFromTick"], 0);
        let r = route(
            &app,
            "PUT",
            "/channels/vip",
            br#"{"name":"other","defaultMarginBps":5}"#,
        );
        assert_eq!(r.status, 400);
        assert_eq!(route(&app, "DELETE", "/channels/vip", b"").status, 200);
        assert_eq!(route(&app, "DELETE", "/channels/vip", b"").status, 404);
        assert_eq!(route(&app, "GET", "/channels/vip", b"").status, 404);
        assert_eq!(
            route(&app, "PUT", "/channels/vip", br#"{"defaultMarginBps":5}"#).status,
            404
        );

        for (method, path, body) in [
            ("POST", "/channels", &b""[..]),
            ("POST", "/channels", b"{not json"),
            ("POST", "/channels", b"[]"),
            ("POST", "/channels", br#"{"name":"x"}"#),
            (
                "POST",
                "/channels",
                br#"{"name":"x","defaultMarginBps":"ten"}"#,
            ),
            ("POST", "/channels", br#"{"name":"x","defaultMargin":10}"#),
            (
                "POST",
                "/channels",
                br#"{"name":"Bad Name","defaultMarginBps":1}"#,
            ),
            (
                "POST",
                "/channels",
                br#"{"name":"x","defaultMarginBps":-1}"#,
            ),
            (
                "POST",
                "/channels",
                br#"{"name":"x","defaultMarginBps":1,"margins":{"NOPE":1}}"#,
            ),
            ("GET", "/channels/Bad%20Name", b""),
        ] {
            let r = route(&app, method, path, body);
            assert_eq!(
                r.status,
                400,
                "{method} {path} {}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(r.body["error"], "BAD_REQUEST");
            assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let r = route(&app, "PATCH", "/channels", b"");
        assert_eq!((r.status, r.allow), (405, Some("GET, POST")));
        assert_eq!(route(&app, "GET", "/nope", b"").status, 404);
        assert_eq!(route(&app, "GET", "/stats", b"").body["channels"], 0);
    }

    #[test]
    fn requests_parse_with_limits() {
        let req = parse_request(b"POST /channels HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap()
            .unwrap();
        assert_eq!(
            (req.method.as_str(), req.path.as_str(), &req.body[..]),
            ("POST", "/channels", &b"{}"[..])
        );
        assert!(
            parse_request(b"POST /channels HTTP/1.1\r\nContent-Length: 2\r\n\r\n{")
                .unwrap()
                .is_none()
        );
        assert!(parse_request(b"GET /chan").unwrap().is_none());
        let status = |raw: &[u8]| parse_request(raw).err().flatten().map(|r| r.status);
        assert_eq!(status(b"\x00\x01garbage\r\n\r\n"), Some(400));
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Some(413)
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(411)
        );
        let long = [&b"GET /"[..], &vec![b'a'; 9000]].concat();
        assert_eq!(status(&long), Some(431));
    }

    #[test]
    fn gateway_urls_get_a_default_path_and_port_and_an_encoded_token() {
        let t = Target::parse("ws://127.0.0.1:8080/ws", None).unwrap();
        assert_eq!(
            (t.url.as_str(), t.authority.as_str()),
            ("ws://127.0.0.1:8080/ws", "127.0.0.1:8080")
        );
        let t = Target::parse("ws://gw", Some("a b+c")).unwrap();
        assert_eq!(t.url, "ws://gw:80/ws?token=a%20b%2Bc");
        assert_eq!(t.url_without_token(), "ws://gw:80/ws?token=…");
        let t = Target::parse("ws://gw:1/ws?x=1", Some("t")).unwrap();
        assert_eq!(t.url, "ws://gw:1/ws?x=1&token=t");
        assert!(Target::parse("wss://gw/ws", None).is_err());
        assert!(Target::parse("http://gw/ws", None).is_err());
        assert!(Target::parse("ws:///ws", None).is_err());
    }
}
