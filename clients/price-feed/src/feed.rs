//! The synthetic upstream feed: no network, deterministic for a seed.

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
