//! Hostile bytes on the initial session: decoding never panics, never reads past the frame,
//! and whatever decodes re-encodes to the very same bytes.
#![no_main]

use ccm_core::wire::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((msg, used)) = Message::decode(rest) {
        assert!(used > 0 && used <= rest.len());
        assert_eq!(msg.to_bytes(), &rest[..used]);
        rest = &rest[used..];
    }
});
