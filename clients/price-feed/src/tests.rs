//! Unit tests of the pure parts: the feed, the derived price, the round, REST parsing and routing.

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
