//! Sample payloads: JSON price ticks of an exact size, the traffic a market-data gateway carries.
//!
//! Used where a payload must look like real broadcast traffic rather than padding (which any
//! compressor shrinks a hundredfold): the compression benchmarks (`benches/deflate.rs`, the load
//! generator's `--payload-kind ticks`) and the deflate tests. Deterministic: the same `(ts,
//! counter, size)` always gives the same bytes; prices, sizes and timestamps move from message to
//! message like a quote stream (a random walk on a few symbols, two decimals). Pure; no I/O.

/// Symbols and their base prices (in cents).
const SYMBOLS: [(&str, u64); 12] = [
    ("BTC-USD", 6_400_000),
    ("ETH-USD", 345_012),
    ("SOL-USD", 14_250),
    ("XRP-USD", 61),
    ("ADA-USD", 45),
    ("DOGE-USD", 17),
    ("AVAX-USD", 3_120),
    ("LINK-USD", 1_488),
    ("DOT-USD", 702),
    ("LTC-USD", 8_410),
    ("BCH-USD", 47_733),
    ("XLM-USD", 11),
];
/// Venues a tick may come from.
const VENUES: [&str; 4] = ["cb", "bn", "kr", "bs"];

/// splitmix64: a small, well-mixed generator; the state advances by the golden ratio.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A JSON object of exactly `size` bytes (at least the head's ~40 bytes, else a little more):
/// `{"ts":TS,"n":COUNTER,"ticks":[{"sym":…,"bid":…,"ask":…,"size":…,"venue":…,"t":…},…]}`, as
/// many ticks as fit, then a `"pad"` of random digits (or a few spaces) to reach `size`
/// exactly. `ts` comes first so a reader can find it without parsing the rest.
pub fn price_ticks(ts: u64, counter: u64, size: usize) -> String {
    let mut rng = counter.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5bd1_e995;
    let mut s = format!("{{\"ts\":{ts},\"n\":{counter},\"ticks\":[");
    let mut row = String::with_capacity(128);
    let mut rows = 0;
    let millis = ts / 1_000_000;
    // Each symbol's bid starts within ±1 % of its base (by the counter) and walks from tick to
    // tick by up to ±0.01 % (at least a cent).
    let mut walk: [u64; SYMBOLS.len()] = std::array::from_fn(|i| {
        let span = (SYMBOLS[i].1 / 50).max(4);
        SYMBOLS[i].1 - span / 2 + next(&mut rng) % span
    });
    loop {
        let r = next(&mut rng);
        let i = (r % SYMBOLS.len() as u64) as usize;
        let sym = SYMBOLS[i].0;
        let step = (SYMBOLS[i].1 / 10_000).max(1);
        walk[i] = (walk[i] + (r >> 8) % (2 * step + 1))
            .saturating_sub(step)
            .max(1);
        let bid = walk[i];
        // A spread of 1..=20 cents.
        let ask = bid + 1 + (r >> 40) % 20;
        let qty = (r >> 24) % 250_000;
        row.clear();
        if rows > 0 {
            row.push(',');
        }
        row.push_str(&format!(
            "{{\"sym\":\"{sym}\",\"bid\":{}.{:02},\"ask\":{}.{:02},\"size\":{}.{:04},\"venue\":\"{}\",\"t\":{}}}",
            bid / 100,
            bid % 100,
            ask / 100,
            ask % 100,
            qty / 10_000,
            qty % 10_000,
            VENUES[((r >> 56) % 4) as usize],
            millis + (r >> 16) % 1000,
        ));
        // Room for the row, "]}" and a pad field's frame (`,"pad":""`).
        if s.len() + row.len() + 2 > size {
            break;
        }
        s.push_str(&row);
        rows += 1;
    }
    s.push(']');
    let left = size.saturating_sub(s.len() + 1);
    if left >= 9 {
        s.push_str(",\"pad\":\"");
        for _ in 0..left - 9 {
            s.push(char::from(b'0' + (next(&mut rng) % 10) as u8));
        }
        s.push('"');
    } else {
        s.extend(std::iter::repeat_n(' ', left));
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::price_ticks;

    #[test]
    fn exact_size_valid_json_and_varied() {
        for size in [64, 100, 256, 1024, 4096, 16 * 1024] {
            let a = price_ticks(1_765_100_000_000_000_000, 7, size);
            assert_eq!(a.len(), size, "{a}");
            let v: serde_json::Value = serde_json::from_str(&a).expect("valid JSON");
            assert_eq!(v["ts"], 1_765_100_000_000_000_000u64);
            assert_eq!(v["n"], 7);
            if size >= 1024 {
                assert!(v["ticks"].as_array().unwrap().len() >= 8, "{a}");
            }
            let b = price_ticks(1_765_100_000_000_000_000, 8, size);
            assert_ne!(a, b, "another counter, other prices");
            assert_eq!(a, price_ticks(1_765_100_000_000_000_000, 7, size));
        }
    }
}
