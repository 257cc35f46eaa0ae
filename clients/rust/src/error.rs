//! The one error type of the client. Cold path only: nothing here is built per delivery.

use std::time::Duration;

use tokio_tungstenite::tungstenite;

/// What went wrong, for a connection attempt, a publish or the socket as a whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not `ws[s]://HOST[:PORT]/ws` or `ws[s]://HOST[:PORT]/ws/sub/{topic}`.
    #[error("invalid micro socket URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The token provider returned an error.
    #[error("token provider failed: {0}")]
    Token(String),
    /// The WebSocket layer failed (connect, upgrade refused, I/O, protocol).
    #[error("websocket: {0}")]
    WebSocket(Box<tungstenite::Error>),
    /// The TCP connect and upgrade did not finish within the connect timeout.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The gateway answered `ready`/`subscribed`/`resumed` too late.
    #[error("handshake (ready, subscribed, resumed) not finished after {0:?}")]
    HandshakeTimeout(Duration),
    /// The gateway answered with `{"type":"error"}` (stable `code`, e.g. `FORBIDDEN`).
    #[error("gateway error {code}: {message}")]
    Server {
        /// The stable error word, e.g. `UNAUTHORIZED`, `BAD_REQUEST`.
        code: String,
        /// The gateway's explanation.
        message: String,
        /// The topic of the request it answers, when the gateway named one.
        topic: Option<String>,
    },
    /// The gateway closed the connection (close code and reason) or the stream ended.
    #[error("connection closed: {0}")]
    Closed(String),
    /// Nothing (not even a ping) came from the gateway for this long: the connection is dead.
    #[error("no frame from the gateway for {0:?}")]
    Idle(Duration),
    /// A publish got no `ack` within its timeout (it may still have been accepted: publish
    /// again with the same `messageId` to find out, the gateway answers `duplicate`).
    #[error("no ack within {0:?}")]
    AckTimeout(Duration),
    /// The micro socket was closed (or its handle dropped) before the request finished.
    #[error("the micro socket is closed")]
    SocketClosed,
    /// The retry policy gave up reconnecting; the micro socket is finished.
    #[error("gave up reconnecting: {0}")]
    GaveUp(String),
    /// The payload could not be serialized to JSON.
    #[error("payload is not serializable to JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The gateway sent something that is not the Micro Socket protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl From<tungstenite::Error> for Error {
    fn from(e: tungstenite::Error) -> Self {
        Error::WebSocket(Box::new(e))
    }
}

impl Error {
    /// The gateway's stable error word when this is a gateway `error` answer.
    pub fn server_code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status of a refused upgrade (401, 403, 429, …), when that is what happened.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::WebSocket(e) => match &**e {
                tungstenite::Error::Http(resp) => Some(resp.status().as_u16()),
                _ => None,
            },
            _ => None,
        }
    }
}
