//! Where permessage-deflate starts to pay for JSON notifications: for message pushes of 64 B to 4 KiB, the frame's size plain and compressed, and what compressing and inflating one costs (docs/BENCHMARKS.md, "Where compression pays").
//!
//!     cargo run --release --example compression_pays
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use herald::wire::deflate::{Deflater, Inflater};
use herald::wire::frame::{Opcode, payload_of};
use std::hint::black_box;
use std::time::Instant;

/// A `message` push whose JSON is about `size` bytes: notifications as an
/// application sends them (ids, names, kinds, times, short texts), varied
/// by a fixed pseudo-random sequence so that they do not repeat.
fn message(size: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "comment",
        "liked",
        "your",
        "photo",
        "replied",
        "to",
        "thread",
        "new",
        "follower",
        "mentioned",
        "you",
        "in",
        "a",
        "post",
        "shared",
        "invoice",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut items = Vec::new();
    let head = format!(
        r#"{{"op":"message","channel":"user:{}","offset":{},"data":{{"items":["#,
        next() % 100_000,
        next() % 1_000_000
    );
    let mut len = head.len() + 3;
    while len < size {
        let text: Vec<&str> = (0..3 + next() % 5).map(|_| WORDS[(next() % 16) as usize]).collect();
        let item = format!(
            r#"{{"id":{},"from":"user-{}","kind":"{}","at":{},"text":"{}","read":{}}}"#,
            next() % 10_000_000,
            next() % 100_000,
            WORDS[(next() % 16) as usize],
            1_764_500_000 + next() % 100_000,
            text.join(" "),
            next() % 2 == 0
        );
        len += item.len() + 1;
        items.push(item);
    }
    let mut json = format!("{head}{}]}}}}", items.join(","));
    // Trim the last item's text to land near `size` (kept valid JSON).
    while json.len() > size && items.len() > 1 {
        items.pop();
        json = format!("{head}{}]}}}}", items.join(","));
    }
    json.into_bytes()
}

/// Nanoseconds per call of `f`, over enough calls to take about 50 ms.
fn time(mut f: impl FnMut()) -> f64 {
    let mut calls = 1u32;
    loop {
        let start = Instant::now();
        for _ in 0..calls {
            f();
        }
        let elapsed = start.elapsed();
        if elapsed.as_millis() >= 50 {
            return elapsed.as_nanos() as f64 / f64::from(calls);
        }
        calls *= 2;
    }
}

fn main() {
    let mut deflater = Deflater::default();
    let mut inflater = Inflater::default();
    println!(
        "| push (bytes) | frame plain | frame compressed | saved | ratio | compress | inflate |"
    );
    println!("|---|---|---|---|---|---|---|");
    for size in [64, 192, 320, 448, 1024, 2048, 4096] {
        // The median over 21 different messages of this size.
        let mut rows: Vec<(usize, usize, usize, f64, f64)> = (0..21)
            .map(|seed| {
                let json = message(size, seed);
                let plain = json.len() + if json.len() < 126 { 2 } else { 4 };
                let frame = deflater.frame(Opcode::Text, &json);
                let compressed = frame.as_ref().map_or(plain, |frame| frame.len());
                let deflate_ns = time(|| {
                    black_box(deflater.frame(Opcode::Text, black_box(&json)));
                });
                let inflate_ns = frame.as_ref().map_or(0.0, |frame| {
                    time(|| {
                        black_box(inflater.inflate(payload_of(frame), 1 << 20).unwrap());
                    })
                });
                (json.len(), plain, compressed, deflate_ns, inflate_ns)
            })
            .collect();
        rows.sort_by_key(|row| row.1 - row.2);
        let (len, plain, compressed, deflate_ns, inflate_ns) = rows[rows.len() / 2];
        println!(
            "| {len} | {plain} | {compressed} | {} | {:.2}x | {:.1} µs | {:.1} µs |",
            plain - compressed,
            plain as f64 / compressed as f64,
            deflate_ns / 1000.0,
            inflate_ns / 1000.0
        );
    }
}
