//! The REST API: `/channels` and a few read-only views, on its own port.

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
                .ok_or_else(|| Some(Response::error(400, "BAD_REQUEST", "bad Content-Length")))?;
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
