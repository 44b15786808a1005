//! Micro-benchmarks of herald's hot paths, in memory: request heads and the handshake, frame reading, push encoding, outbound writes, and fan-out to 10,000 local subscribers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    missing_docs
)]

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use herald::Config;
use herald::broker::{Delivery, Event, Publication};
use herald::channel::ChannelName;
use herald::config::OriginPolicy;
use herald::conn::Conn;
use herald::conn::out_queue::OutQueue;
use herald::conn::websocket::{CodecPool, Handler, WsSession, queue_frame};
use herald::error::CloseReason;
use herald::node::subscribers::Subscriber;
use herald::protocol::message_frame;
use herald::shard::fan_out;
use herald::testing::{MemorySocket, client_frame, context};
use herald::wire::frame::Opcode;
use herald::wire::{http, upgrade};
use slab::Slab;
use std::hint::black_box;
use std::sync::Arc;
use tungstenite::Message;

const UPGRADE: &[u8] = b"GET /ws?token=x HTTP/1.1\r\nHost: herald.example.com\r\n\
Connection: Upgrade\r\nPragma: no-cache\r\nCache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36\r\n\
Upgrade: websocket\r\nOrigin: https://app.example.com\r\nSec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

fn head_and_handshake(c: &mut Criterion) {
    let origins = OriginPolicy::parse(&["https://app.example.com"]).unwrap();
    let mut group = c.benchmark_group("head and handshake");
    group.throughput(Throughput::Bytes(UPGRADE.len() as u64));
    group.bench_function("find the end of a browser upgrade head", |b| {
        b.iter(|| http::find_head_end(black_box(UPGRADE), 0))
    });
    group.bench_function("parse and validate a browser upgrade", |b| {
        b.iter(|| {
            http::parse(black_box(UPGRADE), |request| upgrade::validate(request, &origins)).unwrap()
        })
    });
    group.finish();
}

/// Counts messages and drops them.
struct Count(usize);

impl Handler for Count {
    fn on_message(&mut self, _: Message, _: &mut OutQueue) -> Result<(), CloseReason> {
        self.0 += 1;
        Ok(())
    }
}

fn frame_reading(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame reading");
    for (label, size, count) in
        [("100 frames of 20 bytes", 20, 100), ("one 64 KiB frame", 64 << 10, 1)]
    {
        let mut input = Vec::new();
        for _ in 0..count {
            input.extend(client_frame(true, 2, &vec![7u8; size]));
        }
        group.throughput(Throughput::Bytes(input.len() as u64));
        let mut pool = CodecPool::default();
        group.bench_function(label, |b| {
            let mut session = WsSession::new(1 << 20, None);
            let mut out = OutQueue::default();
            b.iter(|| {
                let mut handler = Count(0);
                session.on_input(black_box(&input), &mut out, &mut handler, &mut pool);
                assert_eq!(handler.0, count);
            })
        });
    }
    group.finish();
}

fn push_encoding(c: &mut Criterion) {
    let data = br#""32 bytes of data for the bench""#;
    let mut group = c.benchmark_group("push encoding");
    group.throughput(Throughput::Elements(1));
    group.bench_function("message push, 32-byte data", |b| {
        b.iter(|| message_frame(black_box("chat:lobby"), black_box(123_456), black_box(data)))
    });
    group.finish();
}

fn outbound_writes(c: &mut Criterion) {
    let frame = Bytes::from_static(&[0x81; 40]);
    let mut group = c.benchmark_group("outbound writes");
    for chunks in [1usize, 16, 64] {
        group.throughput(Throughput::Elements(chunks as u64));
        group.bench_function(format!("{chunks} chunks in one vectored write"), |b| {
            let mut socket = MemorySocket::default();
            b.iter(|| {
                let mut queue = OutQueue::default();
                for _ in 0..chunks {
                    queue.push(frame.clone());
                }
                queue.write_to(&mut socket);
            })
        });
    }
    group.throughput(Throughput::Elements(1));
    group.bench_function("echo reply of 20 bytes: header and payload chunks", |b| {
        let payload = Bytes::from_static(&[7; 20]);
        let mut socket = MemorySocket::default();
        b.iter(|| {
            let mut queue = OutQueue::default();
            queue_frame(&mut queue, Opcode::Binary, payload.clone());
            queue.write_to(&mut socket);
        })
    });
    group.finish();
}

fn fan_out_to_local_subscribers(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 10_000;
    let mut config = Config::dev();
    config.max_outbound_bytes = 64 << 20;
    let mut ctx = context(config);
    let mut conns: Slab<Conn<MemorySocket>> = Slab::with_capacity(SUBSCRIBERS);
    let news = ChannelName::parse("news").expect("a valid channel name");
    let channel: Arc<str> = news.shared().clone();
    let request = String::from_utf8(UPGRADE.to_vec())
        .unwrap()
        .replace("?token=x", "")
        .replace("Origin: https://app.example.com\r\n", "");
    for _ in 0..SUBSCRIBERS {
        let socket = MemorySocket { input: request.as_bytes().to_vec(), ..MemorySocket::default() };
        let entry = conns.vacant_entry();
        let key = entry.key();
        let mut conn = Conn::new(socket, &ctx);
        conn.key = key as u32;
        conn.generation = 1;
        conn.ready(true, true, &mut ctx);
        assert!(conn.is_open_websocket());
        entry.insert(conn);
        ctx.locals.add(&news, key as u32, Subscriber { generation: 1, last_offset: 0 });
    }
    let mut group = c.benchmark_group("fan-out");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    let mut offset = 0;
    let mut dirty = Vec::with_capacity(SUBSCRIBERS);
    group.bench_function(
        "one 32-byte publication to 10,000 local subscribers, queued and written",
        |b| {
            b.iter_batched(
                || {
                    offset += 1;
                    let publication = Publication::new(
                        channel.clone(),
                        offset,
                        br#""32 bytes of data for the bench""#,
                    );
                    Delivery {
                        channel: channel.clone(),
                        event: Event::Publication(publication),
                        exclude: None,
                    }
                },
                |delivery| {
                    fan_out(&mut conns, &mut ctx, &delivery, &mut dirty);
                    for key in dirty.drain(..) {
                        let conn = &mut conns[key];
                        conn.dirty = false;
                        conn.flush(&ctx);
                    }
                },
                BatchSize::SmallInput,
            )
        },
    );
    group.finish();
}

criterion_group!(
    benches,
    head_and_handshake,
    frame_reading,
    push_encoding,
    outbound_writes,
    fan_out_to_local_subscribers
);
criterion_main!(benches);
