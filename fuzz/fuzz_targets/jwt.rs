//! The token verifier: any token is refused or accepted without panic; a token minted for any user verifies back to that user; changing any byte of a valid token's signature part refuses it.
#![no_main]

use herald::auth::{mint, verify};
use herald::config::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let secret = Secret::new("fuzz-secret-0123456789abcdef0123456789");
    let now = 1_800_000_000;
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = verify(text, &secret, now);
        // Round trip: any user name survives minting and verifying.
        if !text.is_empty() && text.len() <= 256 {
            let token = mint(&secret, text, Some(60), &[], now);
            let identity = verify(&token, &secret, now).expect("a fresh token verifies").identity;
            assert_eq!(&*identity.user, text);
            // A flipped signature byte is refused.
            let mut bytes = token.into_bytes();
            if let Some(last) = bytes.last_mut() {
                *last = if *last == b'A' { b'B' } else { b'A' };
            }
            if let Ok(tampered) = String::from_utf8(bytes) {
                assert!(verify(&tampered, &secret, now).is_err(), "tampered token accepted");
            }
        }
    }
});
