//! Fuzzes `ws::frame::Decoder` with arbitrary bytes, as both server and client.
//!
//! The decoder must never panic, never claim to consume more bytes than it was given, and never
//! consume zero bytes while reporting progress (that would loop the connection forever).

#![no_main]

use libfuzzer_sys::fuzz_target;
use subsocket::ws::frame::{Decoder, Role};

/// Same order of magnitude as the gateway's default limit, small enough that inputs can reach it.
const MAX_MESSAGE_BYTES: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    for role in [Role::Server, Role::Client] {
        let mut decoder = Decoder::new(role, MAX_MESSAGE_BYTES);
        let mut rest = data;
        loop {
            let wanted = decoder.bytes_wanted(rest);
            match decoder.decode(rest) {
                Ok(Some((consumed, _msg))) => {
                    assert!(consumed > 0 && consumed <= rest.len());
                    assert_eq!(wanted, 0, "a whole frame was present");
                    rest = &rest[consumed..];
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
});
