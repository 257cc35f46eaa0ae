//! A trading desk with three micro sockets, each with its own purpose, QoS, token and retry
//! policy, none able to stall the others:
//!
//! - prices   `/ws/sub/prices.BTC`        QoS 0 (a late price is replaced by the next one)
//! - risk     `/ws` + `risk.alerts`       QoS 1 (every alert must arrive)
//! - payments `/ws/sub/payments.settled`  QoS 1, its own token, gives up after 10 attempts
//!
//! It plays both sides (a price feed, a risk engine, a payment service) so it runs on its own
//! against a gateway:
//!
//! ```sh
//! cargo run --release                                        # the gateway on 127.0.0.1:8080
//! cargo run -p subsocket-client --example trading_desk       # in another terminal
//! # options: GATEWAY=ws://HOST:PORT  DESK_TOKEN=…  PAYMENTS_TOKEN=…  (JWTs when auth is on)
//! ```

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use subsocket_client::{Event, MicroSocket, Qos, RetryPolicy};

const PRICES: u64 = 20;
const PAYMENTS: u64 = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gateway = std::env::var("GATEWAY").unwrap_or_else(|_| "ws://127.0.0.1:8080".into());
    let desk_token = std::env::var("DESK_TOKEN").ok();
    let payments_token = std::env::var("PAYMENTS_TOKEN").ok();

    let mut prices = MicroSocket::builder(format!("{gateway}/ws/sub/prices.BTC"))
        .name("prices")
        .qos(Qos::AtMostOnce)
        .retry(RetryPolicy::exponential(
            Duration::from_millis(50),
            Duration::from_secs(2),
        ));
    let mut risk = MicroSocket::builder(format!("{gateway}/ws"))
        .name("risk")
        .topic("risk.alerts")
        .qos(Qos::AtLeastOnce);
    if let Some(t) = &desk_token {
        prices = prices.token(t.clone());
        risk = risk.token(t.clone());
    }
    let mut payments = MicroSocket::builder(format!("{gateway}/ws/sub/payments.settled"))
        .name("payments")
        .qos(Qos::AtLeastOnce)
        .retry(
            RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(5))
                .max_attempts(10),
        );
    if let Some(t) = payments_token {
        // A provider is called again on every reconnect: the place to refresh a JWT.
        payments = payments.token_provider(move || {
            let t = t.clone();
            async move { Ok::<_, std::convert::Infallible>(t) }
        });
    }
    let (prices, risk, payments) = (prices.connect()?, risk.connect()?, payments.connect()?);

    for sock in [&prices, &risk, &payments] {
        let name = sock.name().to_owned();
        let mut events = sock.events();
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                match e {
                    Event::Lost {
                        topic,
                        from_seq,
                        to_seq,
                    } => {
                        println!("[{name}] LOST {topic} #{from_seq}..=#{to_seq}")
                    }
                    other => println!("[{name}] {other:?}"),
                }
            }
        });
    }
    for sock in [&prices, &risk, &payments] {
        let session =
            tokio::time::timeout(Duration::from_secs(10), sock.wait_connected()).await??;
        println!("[{}] connected, session {session}", sock.name());
    }

    let mut price_stream = prices.stream("prices.BTC").expect("the URL's topic");
    let mut alert_stream = risk.stream("risk.alerts").expect("a configured topic");
    let mut settled_stream = payments
        .stream("payments.settled")
        .expect("the URL's topic");

    // The desk: prices drive risk checks; alerts and settlements are printed.
    let desk = async {
        let (mut p, mut a, mut s) = (0, 0, 0);
        while p < PRICES || a < PRICES / 5 || s < PAYMENTS {
            tokio::select! {
                Some(m) = price_stream.next() => {
                    p += 1;
                    let px: f64 = m.json::<serde_json::Value>()?["px"].as_f64().unwrap_or_default();
                    println!("price  #{:<3} BTC {px:.1}", m.seq_no);
                    if m.seq_no % 5 == 0 {
                        let ack = risk.publish("risk.alerts", &json!({"symbol": "BTC", "px": px, "limit": "near"}), None).await?;
                        println!("risk   published alert, seqNo {:?}", ack.seq_no);
                    }
                }
                Some(m) = alert_stream.next() => {
                    a += 1;
                    println!("alert  #{:<3} {} (qos {:?})", m.seq_no, m.data, m.qos);
                }
                Some(m) = settled_stream.next() => {
                    s += 1;
                    println!("settle #{:<3} {}", m.seq_no, m.data);
                }
                else => break,
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    };

    // The feed and the payment service, publishing through the desk's own sockets.
    let feed = async {
        for i in 0..PRICES {
            let px = 60_000.0 + 25.0 * (i as f64).sin();
            prices
                .publish("prices.BTC", &json!({ "px": px }), None)
                .await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for n in 1..=PAYMENTS {
            let ack = payments
                .publish(
                    "payments.settled",
                    &json!({ "payment": n, "amount": 100 * n }),
                    None,
                )
                .await?;
            println!(
                "pay    payment {n} acked: seqNo {:?}, duplicate {}",
                ack.seq_no, ack.duplicate
            );
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    };

    let (desk, feed) =
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(desk, feed) }).await?;
    desk?;
    feed?;
    for sock in [&prices, &risk, &payments] {
        sock.close().await;
    }
    println!(
        "done: {PRICES} prices, {} alerts, {PAYMENTS} payments",
        PRICES / 5
    );
    Ok(())
}
