//! The shared state and the round that turns upstream updates into publishes.

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
                batch.push(self.publish_text(&channel.name, symbol, tick, ts_ms, derived, margin));
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
