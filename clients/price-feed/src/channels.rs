//! Derived channels: a name and the margins it applies. Pure.

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
                    "the body's name {b:?} differs from the path's {p:?} \
                     (channels cannot be renamed)"
                ));
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
