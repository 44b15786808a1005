//! Fills a durable-history store (`data_dir`) with publications, as herald's writer would, for measuring start-up with a large store.
//!
//! `cargo run --release --example fill_store -- DIR CHANNELS PER_CHANNEL PAYLOAD_BYTES`
//! writes CHANNELS channels (`fill:0`, `fill:1`, ...) of PER_CHANNEL
//! publications each, PAYLOAD_BYTES of JSON data apiece, 1,000 publications
//! per commit, stamped now; the data is JSON text of words picked at
//! random (LZ4 shrinks it about as much as real notifications, not as much
//! as a run of one letter). Start herald on DIR with a `[namespaces.fill]`
//! that keeps at least PER_CHANNEL publications for long enough.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use herald::broker::durable::Store;
use herald::config::Durability;
use herald::types::Epoch;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, channels, per_channel, payload] = args.as_slice() else {
        eprintln!("usage: fill_store DIR CHANNELS PER_CHANNEL PAYLOAD_BYTES");
        std::process::exit(2);
    };
    let (channels, per_channel, payload): (u64, u64, usize) =
        (channels.parse().unwrap(), per_channel.parse().unwrap(), payload.parse().unwrap());
    let started = Instant::now();
    let store = Store::open(std::path::Path::new(dir), Durability::PageCache).unwrap();
    let now = herald::clock::unix_millis();
    let mut batch = store.batch();
    let mut written = 0u64;
    let words = [
        "order", "shipped", "invoice", "user", "comment", "reply", "new", "your", "payment",
        "received", "today", "team", "message", "from", "alice", "bob", "42", "is",
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut pick = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        words[usize::try_from(state % words.len() as u64).unwrap_or(0)]
    };
    for channel in 0..channels {
        let name = format!("fill:{channel}");
        let epoch =
            Epoch::from_u32(u32::try_from(channel).unwrap_or(0).wrapping_mul(2_654_435_761));
        batch.put_channel(&name, epoch);
        for offset in 1..=per_channel {
            let head = format!("{{\"n\":{offset},\"text\":\"");
            let mut text = String::new();
            while head.len() + text.len() + 2 < payload {
                text.push_str(pick());
                text.push(' ');
            }
            text.truncate(payload.saturating_sub(head.len() + 2));
            let data = format!("{head}{text}\"}}");
            batch.put_publication(&name, epoch, offset, now, data.as_bytes());
            written += 1;
            if written.is_multiple_of(1_000) {
                store.commit(std::mem::replace(&mut batch, store.batch())).unwrap();
            }
        }
    }
    store.commit(batch).unwrap();
    drop(store);
    eprintln!("{written} publications in {} ms", started.elapsed().as_millis());
}
