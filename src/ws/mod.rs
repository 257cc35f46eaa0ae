//! The WebSocket layer (RFC 6455), kept free of sockets and of glommio so it can be unit-tested
//! and fuzzed in isolation.

pub mod deflate;
pub mod frame;
pub mod handshake;
