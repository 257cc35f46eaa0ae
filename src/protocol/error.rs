//! The stable error codes of `{"type":"error","code":…}` ([`ErrorCode`]) and the error a request
//! is answered with ([`ProtoError`]: code, message, and the request's `topic`/`messageId` when
//! known). Pure: no I/O. Encoded by `encode.rs` (`encode_error`). Read next: `parse.rs`.

use std::fmt;

/// The stable error codes of `{"type":"error","code":…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The message is not a well-formed request (`BAD_REQUEST`).
    BadRequest,
    /// Authentication is required and missing or invalid (`UNAUTHORIZED`).
    Unauthorized,
    /// The identity may not read/write that topic (`FORBIDDEN`).
    Forbidden,
    /// A message or payload is over the size limit (`TOO_LARGE`).
    TooLarge,
    /// A count limit (topics per connection, connections, …) is reached (`LIMIT_EXCEEDED`).
    LimitExceeded,
    /// Too many requests in the window (`RATE_LIMITED`).
    RateLimited,
    /// `resume` named a session no longer held (`SESSION_EXPIRED`).
    SessionExpired,
    /// `replay` asked for messages no longer held (`REPLAY_UNAVAILABLE`).
    ReplayUnavailable,
    /// A `/ws/sub/{topic}` micro socket was asked about another topic (`SINGLE_TOPIC`).
    SingleTopic,
    /// The connection's outbound backlog is over its limit (`SLOW_CONSUMER`).
    SlowConsumer,
    /// A bug or unexpected condition in the gateway (`INTERNAL_ERROR`).
    Internal,
    /// (extension, clusters) The publish was not stored by the cluster backbone in time, or too
    /// many wait for it (`BACKBONE_UNAVAILABLE`). Publishing again with the same `messageId`
    /// is safe.
    BackboneUnavailable,
}

impl ErrorCode {
    /// The wire word of the code, e.g. `"BAD_REQUEST"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::SessionExpired => "SESSION_EXPIRED",
            ErrorCode::ReplayUnavailable => "REPLAY_UNAVAILABLE",
            ErrorCode::SingleTopic => "SINGLE_TOPIC",
            ErrorCode::SlowConsumer => "SLOW_CONSUMER",
            ErrorCode::Internal => "INTERNAL_ERROR",
            ErrorCode::BackboneUnavailable => "BACKBONE_UNAVAILABLE",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer: `{"type":"error","code":…,"message":…,"topic":…,"messageId":…}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    /// The stable machine-readable code.
    pub code: ErrorCode,
    /// A human-readable explanation naming the problem.
    pub message: String,
    /// The topic of the request this answers, so the client can correlate it.
    pub topic: Option<String>,
    /// The `messageId` of the request this answers (publish/ack), for correlation.
    pub message_id: Option<String>,
    /// `REPLAY_UNAVAILABLE` (extension): the oldest `seqNo` still held, when any is.
    pub oldest_seq: Option<u64>,
    /// `SLOW_CONSUMER` (extension): the `seqNo` range of `topic` dropped for this connection
    /// (`fromSeq`, `toSeq`, inclusive).
    pub range: Option<(u64, u64)>,
}

impl ProtoError {
    /// An error with no request context.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtoError {
            code,
            message: message.into(),
            topic: None,
            message_id: None,
            oldest_seq: None,
            range: None,
        }
    }

    /// Names the oldest `seqNo` still held (`REPLAY_UNAVAILABLE`).
    pub fn with_oldest_seq(mut self, seq: Option<u64>) -> Self {
        self.oldest_seq = seq;
        self
    }

    /// Names the `seqNo` range it is about (`fromSeq`..=`toSeq`).
    pub fn with_range(mut self, from: u64, to: u64) -> Self {
        self.range = Some((from, to));
        self
    }

    /// Names the topic of the request.
    pub fn with_topic(mut self, topic: &str) -> Self {
        self.topic = Some(topic.to_owned());
        self
    }

    /// Names the `messageId` of the request.
    pub fn with_message_id(mut self, id: &str) -> Self {
        self.message_id = Some(id.to_owned());
        self
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(topic) = &self.topic {
            write!(f, " (topic {topic:?})")?;
        }
        if let Some(id) = &self.message_id {
            write!(f, " (messageId {id:?})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProtoError {}
