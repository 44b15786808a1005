//! SSE and long-poll cursors: any text is parsed or refused without panic; a parsed cursor written back the way herald writes cursors parses to the same positions.
#![no_main]

use herald::wire::sse::parse_cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&count, rest)) = input.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let channels = usize::from(count % 8) + 1;
    let Ok(positions) = parse_cursor(text, channels) else { return };
    assert_eq!(positions.len(), channels);
    let written: Vec<String> = positions
        .iter()
        .map(|p| p.as_ref().map(|p| format!("{}-{}", p.epoch, p.offset)).unwrap_or_default())
        .collect();
    let again = parse_cursor(&written.join("."), channels).expect("a written cursor parses");
    assert_eq!(positions, again);
});
