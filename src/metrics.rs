//! Counters each shard keeps for itself, summed into Prometheus text format when `/metrics` is scraped.
//!
//! Every counter has one writer, the shard that owns it, so an increment is
//! a relaxed load and store (no locked instruction, no shared cache line
//! between shards); a scrape reads every shard's counters with relaxed loads.

use crate::broker::StoreFigures;
use crate::error::CloseReason;
use crate::wire::router::ApiEndpoint as Endpoint;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A count written by one thread and read by any.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning shard calls this.
    #[inline]
    pub fn add(&self, n: u64) {
        let value = self.0.load(Ordering::Relaxed);
        self.0.store(value.wrapping_add(n), Ordering::Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A level written by one thread and read by any.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds `n` (negative to lower it). Only the owning shard calls this.
    #[inline]
    pub fn add(&self, n: i64) {
        let value = self.0.load(Ordering::Relaxed);
        self.0.store(value.wrapping_add(n), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a connection is, for `herald_connections{transport=..}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Before an upgrade, and server API connections.
    Http,
    /// `/ws`.
    WebSocket,
    /// `/echo`.
    Echo,
    /// `/sse`.
    Sse,
    /// `/poll`, while a poll is held.
    Poll,
    /// `/app/{key}`: Pusher protocol clients.
    Pusher,
}

impl Transport {
    const ALL: [Transport; 6] = [
        Transport::Http,
        Transport::WebSocket,
        Transport::Echo,
        Transport::Sse,
        Transport::Poll,
        Transport::Pusher,
    ];

    fn label(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::WebSocket => "websocket",
            Transport::Echo => "echo",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::Pusher => "pusher",
        }
    }
}

/// Why a connection was refused, for `herald_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached (503).
    AtCapacity,
    /// The process ran out of descriptors (503).
    OutOfDescriptors,
    /// The request head did not arrive within `handshake_timeout`.
    HandshakeTimeout,
    /// Closed before its first request was complete to make room under
    /// `max_pending_handshakes`.
    PendingHandshakes,
    /// The TLS handshake failed (no shared version or suite, a bad record,
    /// bytes that are not TLS).
    TlsHandshake,
    /// The request was refused with this status (400, 401, 403, 404, ...).
    Status(u16),
}

/// Statuses a refusal or an API answer can have, in label order.
const STATUSES: [u16; 14] = [200, 400, 401, 403, 404, 405, 411, 413, 426, 429, 431, 500, 503, 0];
/// Close codes herald sends, in label order.
const CLOSE_CODES: [u16; 19] = [
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 4000, 4001, 4003, 4004, 4007, 4008, 4009, 4029,
    4100, 4200, 4201,
];
/// Upper bounds of the loop-turn histogram's buckets, in microseconds.
const TURN_BUCKETS_MICROS: [u64; 14] =
    [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000];

fn status_index(status: u16) -> usize {
    STATUSES.iter().position(|s| *s == status).unwrap_or(STATUSES.len() - 1)
}

/// One shard's counters.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Open connections by transport.
    connections: [Gauge; Transport::ALL.len()],
    /// Connections accepted.
    pub accepted: Counter,
    refused_capacity: Counter,
    refused_descriptors: Counter,
    refused_timeout: Counter,
    refused_pending: Counter,
    refused_tls: Counter,
    refused_status: [Counter; STATUSES.len()],
    /// WebSocket data messages received.
    pub messages_in: Counter,
    /// WebSocket data messages sent (replies, echoes, pushes).
    pub messages_out: Counter,
    /// Bytes read from sockets.
    pub bytes_in: Counter,
    /// Bytes written to sockets.
    pub bytes_out: Counter,
    /// Publications made on this shard (server API and clients).
    pub publications: Counter,
    /// Publications and presence events queued to a subscriber.
    pub deliveries: Counter,
    /// Connections closed with 4008.
    pub slow_consumers: Counter,
    /// SSE streams and held polls ended by their client (end of stream or
    /// reset).
    pub streams_left: Counter,
    /// `/ws` commands refused by the per-connection rate limit.
    pub commands_limited: Counter,
    /// TLS handshakes completed.
    pub tls_handshakes: Counter,
    close_codes: [Counter; CLOSE_CODES.len()],
    /// By endpoint (the last row: paths under `/api/` that name none) and status.
    api: [[Counter; STATUSES.len()]; Endpoint::ALL.len() + 1],
    /// Pusher HTTP API requests by status.
    pusher_api: [Counter; STATUSES.len()],
    /// Turns of the event loop.
    pub loop_turns: Counter,
    turn_buckets: [Counter; TURN_BUCKETS_MICROS.len()],
    turn_nanos: Counter,
}

impl ShardMetrics {
    /// A connection of `transport` opened (`+1`) or closed (`-1`).
    #[inline]
    pub fn connection(&self, transport: Transport, delta: i64) {
        if let Some(gauge) = self.connections.get(transport as usize) {
            gauge.add(delta);
        }
    }

    /// A connection was refused.
    pub fn refused(&self, refusal: Refusal) {
        let counter = match refusal {
            Refusal::AtCapacity => &self.refused_capacity,
            Refusal::OutOfDescriptors => &self.refused_descriptors,
            Refusal::HandshakeTimeout => &self.refused_timeout,
            Refusal::PendingHandshakes => &self.refused_pending,
            Refusal::TlsHandshake => &self.refused_tls,
            Refusal::Status(status) => match self.refused_status.get(status_index(status)) {
                Some(counter) => counter,
                None => return,
            },
        };
        counter.inc();
    }

    /// herald sent a close frame with this reason.
    pub fn closed(&self, reason: CloseReason) {
        let code = reason.code();
        if reason == CloseReason::SlowConsumer {
            self.slow_consumers.inc();
        }
        if let Some(index) = CLOSE_CODES.iter().position(|c| *c == code)
            && let Some(counter) = self.close_codes.get(index)
        {
            counter.inc();
        }
    }

    /// A server API request to `endpoint` (`None`: no such endpoint) was
    /// answered with `status`.
    pub fn api_request(&self, endpoint: Option<Endpoint>, status: u16) {
        let row = endpoint.map_or(Endpoint::ALL.len(), |e| e as usize);
        if let Some(counter) = self.api.get(row).and_then(|row| row.get(status_index(status))) {
            counter.inc();
        }
    }

    /// A Pusher HTTP API request was answered with `status`.
    pub fn pusher_api_request(&self, status: u16) {
        if let Some(counter) = self.pusher_api.get(status_index(status)) {
            counter.inc();
        }
    }

    /// One turn of the event loop took `elapsed` (poll wait excluded).
    #[inline]
    pub fn turn(&self, elapsed: Duration) {
        self.loop_turns.inc();
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.turn_nanos.add(nanos);
        let micros = nanos / 1000;
        if let Some(index) = TURN_BUCKETS_MICROS.iter().position(|bound| micros < *bound)
            && let Some(bucket) = self.turn_buckets.get(index)
        {
            bucket.inc();
        }
    }
}

/// Reads one figure from a shard's counters.
type Read<'a> = &'a dyn Fn(&ShardMetrics) -> u64;

/// Figures that are not per-shard counters, read when scraping.
#[derive(Debug)]
pub struct NodeFigures {
    /// Channels in the broker's table.
    pub channels: usize,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Bytes held in unfinished WebSocket messages, all connections.
    pub incomplete_bytes: usize,
    /// Calls the engine refused at once because its queue was full.
    pub engine_refusals: u64,
    /// Webhook notices dropped because a queue was full.
    pub notices_dropped: u64,
    /// With a TLS listener: the served certificate's expiry (Unix
    /// seconds), and the reloads done and refused.
    pub tls: Option<TlsFigures>,
    /// The store's figures (all 0 without `data_dir`).
    pub store: StoreFigures,
}

/// The TLS listener's certificate, for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct TlsFigures {
    /// When the served certificate expires, Unix seconds.
    pub not_after: i64,
    /// Reloads that swapped the certificate.
    pub reloads: u64,
    /// Reloads refused (the new files were bad; the old pair stayed).
    pub failed_reloads: u64,
}

/// One webhook's counters.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    /// Notices the backend took (2xx).
    pub delivered: Counter,
    /// Tries that failed and were repeated.
    pub retried: Counter,
    /// Notices given up after five minutes of failures.
    pub failed: Counter,
    /// Leaves and joins that cancelled out within the grace.
    pub cancelled: Counter,
}

/// A family of webhook counters: its name, its help, how to read it.
type WebhookFamily = (&'static str, &'static str, fn(&WebhookCounters) -> u64);

/// Renders the webhooks' counters, by webhook name.
pub fn render_webhooks(out: &mut String, webhooks: &[(&str, &WebhookCounters)], dropped: u64) {
    let rows: [WebhookFamily; 4] = [
        ("herald_webhook_delivered_total", "Notices a webhook's backend took.", |c| {
            c.delivered.get()
        }),
        (
            "herald_webhook_retries_total",
            "Webhook requests that failed and were tried again.",
            |c| c.retried.get(),
        ),
        (
            "herald_webhook_failed_total",
            "Notices given up after five minutes of failed tries.",
            |c| c.failed.get(),
        ),
        (
            "herald_webhook_cancelled_total",
            "Leaves and joins that cancelled out within the grace.",
            |c| c.cancelled.get(),
        ),
    ];
    for (name, help, read) in rows {
        family(out, name, "counter", help);
        for (webhook, counters) in webhooks {
            let _ = writeln!(out, "{name}{{webhook=\"{webhook}\"}} {}", read(counters));
        }
    }
    family(
        out,
        "herald_webhook_notices_dropped_total",
        "counter",
        "Notices dropped because their scope's queue was full.",
    );
    let _ = writeln!(out, "herald_webhook_notices_dropped_total {dropped}");
}

/// Renders every shard's counters, summed, in Prometheus text format
/// (version 0.0.4). Per-shard loop figures keep a `shard` label.
pub fn render(shards: &[std::sync::Arc<ShardMetrics>], node: &NodeFigures) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let sum = |read: Read<'_>| -> u64 {
        shards.iter().map(|shard| read(shard)).fold(0, u64::wrapping_add)
    };

    family(&mut out, "herald_connections", "gauge", "Open connections by transport.");
    for transport in Transport::ALL {
        let open: i64 = shards
            .iter()
            .map(|s| s.connections.get(transport as usize).map_or(0, Gauge::get))
            .sum();
        let _ = writeln!(out, "herald_connections{{transport=\"{}\"}} {open}", transport.label());
    }

    let counters: [(&str, &str, Read<'_>); 11] = [
        ("herald_connections_accepted_total", "Connections accepted.", &|s| s.accepted.get()),
        ("herald_messages_received_total", "WebSocket data messages received.", &|s| {
            s.messages_in.get()
        }),
        (
            "herald_messages_sent_total",
            "WebSocket data messages sent: replies, echoes and pushes.",
            &|s| s.messages_out.get(),
        ),
        ("herald_bytes_received_total", "Bytes read from sockets.", &|s| s.bytes_in.get()),
        ("herald_bytes_sent_total", "Bytes written to sockets.", &|s| s.bytes_out.get()),
        (
            "herald_publications_total",
            "Publications made on this node (server API and clients).",
            &|s| s.publications.get(),
        ),
        (
            "herald_deliveries_total",
            "Pushes queued to subscribers (publications and presence events).",
            &|s| s.deliveries.get(),
        ),
        (
            "herald_slow_consumer_closes_total",
            "Connections closed with 4008 for passing max_outbound_bytes.",
            &|s| s.slow_consumers.get(),
        ),
        (
            "herald_streams_left_total",
            "SSE streams and held long-polls whose client went away (end of stream or reset).",
            &|s| s.streams_left.get(),
        ),
        (
            "herald_commands_limited_total",
            "WebSocket commands refused by the per-connection rate limit (too_many_requests).",
            &|s| s.commands_limited.get(),
        ),
        ("herald_tls_handshakes_total", "TLS handshakes completed.", &|s| s.tls_handshakes.get()),
    ];
    for (name, help, read) in counters {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", sum(read));
    }

    family(
        &mut out,
        "herald_connections_refused_total",
        "counter",
        "Connections refused, by reason (an HTTP status, or capacity, descriptors, timeout, \
         a failed TLS handshake).",
    );
    let fixed: [(&str, Read<'_>); 5] = [
        ("at_capacity", &|s| s.refused_capacity.get()),
        ("out_of_descriptors", &|s| s.refused_descriptors.get()),
        ("handshake_timeout", &|s| s.refused_timeout.get()),
        ("too_many_pending_handshakes", &|s| s.refused_pending.get()),
        ("tls_handshake", &|s| s.refused_tls.get()),
    ];
    for (reason, read) in fixed {
        let _ =
            writeln!(out, "herald_connections_refused_total{{reason=\"{reason}\"}} {}", sum(read));
    }
    for (index, status) in STATUSES.iter().enumerate() {
        let count = sum(&|s| s.refused_status.get(index).map_or(0, Counter::get));
        if count > 0 {
            let _ =
                writeln!(out, "herald_connections_refused_total{{reason=\"{status}\"}} {count}");
        }
    }

    family(
        &mut out,
        "herald_close_codes_sent_total",
        "counter",
        "Close frames herald initiated, by code.",
    );
    for (index, code) in CLOSE_CODES.iter().enumerate() {
        let count = sum(&|s| s.close_codes.get(index).map_or(0, Counter::get));
        let _ = writeln!(out, "herald_close_codes_sent_total{{code=\"{code}\"}} {count}");
    }

    family(
        &mut out,
        "herald_api_requests_total",
        "counter",
        "Server API requests by endpoint and status.",
    );
    let labels = Endpoint::ALL.iter().map(|endpoint| endpoint.label()).chain(["unknown"]);
    for (row, label) in labels.enumerate() {
        for (column, status) in STATUSES.iter().enumerate() {
            let count =
                sum(&|s| s.api.get(row).and_then(|r| r.get(column)).map_or(0, Counter::get));
            if count > 0 {
                let _ = writeln!(
                    out,
                    "herald_api_requests_total{{endpoint=\"{label}\",status=\"{status}\"}} {count}"
                );
            }
        }
    }

    family(
        &mut out,
        "herald_pusher_api_requests_total",
        "counter",
        "Pusher HTTP API requests by status.",
    );
    for (column, status) in STATUSES.iter().enumerate() {
        let count = sum(&|s| s.pusher_api.get(column).map_or(0, Counter::get));
        if count > 0 {
            let _ =
                writeln!(out, "herald_pusher_api_requests_total{{status=\"{status}\"}} {count}");
        }
    }

    family(
        &mut out,
        "herald_loop_iterations_total",
        "counter",
        "Turns of each shard's event loop.",
    );
    for (index, shard) in shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "herald_loop_iterations_total{{shard=\"{index}\"}} {}",
            shard.loop_turns.get()
        );
    }
    family(
        &mut out,
        "herald_loop_turn_seconds",
        "histogram",
        "Time each turn of a shard's loop spent working (waiting in epoll excluded).",
    );
    for (index, shard) in shards.iter().enumerate() {
        let mut cumulative = 0u64;
        for (bound, bucket) in TURN_BUCKETS_MICROS.iter().zip(shard.turn_buckets.iter()) {
            cumulative += bucket.get();
            let seconds = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "herald_loop_turn_seconds_bucket{{shard=\"{index}\",le=\"{seconds}\"}} {cumulative}"
            );
        }
        let turns = shard.loop_turns.get();
        let _ = writeln!(
            out,
            "herald_loop_turn_seconds_bucket{{shard=\"{index}\",le=\"+Inf\"}} {turns}"
        );
        let _ = writeln!(
            out,
            "herald_loop_turn_seconds_sum{{shard=\"{index}\"}} {}",
            shard.turn_nanos.get() as f64 / 1e9
        );
        let _ = writeln!(out, "herald_loop_turn_seconds_count{{shard=\"{index}\"}} {turns}");
    }

    family(
        &mut out,
        "herald_channels",
        "gauge",
        "Channels in the broker (with subscribers or history).",
    );
    let _ = writeln!(out, "herald_channels {}", node.channels);
    family(
        &mut out,
        "herald_incomplete_message_bytes",
        "gauge",
        "Bytes of WebSocket messages begun and not finished, all connections.",
    );
    let _ = writeln!(out, "herald_incomplete_message_bytes {}", node.incomplete_bytes);
    family(
        &mut out,
        "herald_engine_refusals_total",
        "counter",
        "Calls answered unavailable at once because the engine's queue was full (the Redis \
         engine's, or the store's writer with data_dir).",
    );
    let _ = writeln!(out, "herald_engine_refusals_total {}", node.engine_refusals);
    if let Some(tls) = &node.tls {
        family(
            &mut out,
            "herald_tls_certificate_expiry_seconds",
            "gauge",
            "When the TLS listener's certificate expires (Unix time).",
        );
        let _ = writeln!(out, "herald_tls_certificate_expiry_seconds {}", tls.not_after);
        family(
            &mut out,
            "herald_tls_reloads_total",
            "counter",
            "Certificate reloads (SIGHUP), by result: ok, or refused (the old pair stayed).",
        );
        let _ = writeln!(out, "herald_tls_reloads_total{{result=\"ok\"}} {}", tls.reloads);
        let _ =
            writeln!(out, "herald_tls_reloads_total{{result=\"refused\"}} {}", tls.failed_reloads);
    }
    let store: [(&str, &str, &str, u64); 4] = [
        (
            "herald_store_failures_total",
            "counter",
            "Publishes answered 503 because the store could not write them (disk full or \
             failing); 0 without data_dir.",
            node.store.failures,
        ),
        (
            "herald_store_commits_total",
            "counter",
            "Batches the store committed (each one write, and one fdatasync with durability = \
             fsync).",
            node.store.commits,
        ),
        ("herald_store_channels", "gauge", "Channels the store holds.", node.store.channels),
        (
            "herald_store_publications",
            "gauge",
            "Publications the store holds.",
            node.store.publications,
        ),
    ];
    for (name, kind, help, value) in store {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(&mut out, "herald_uptime_seconds", "gauge", "Seconds since the server started.");
    let _ = writeln!(out, "herald_uptime_seconds {}", node.uptime_secs);
    family(&mut out, "herald_build_info", "gauge", "The running version.");
    let _ = writeln!(out, "herald_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counters_sum_over_shards_and_buckets_are_cumulative() {
        let shards = vec![Arc::new(ShardMetrics::default()), Arc::new(ShardMetrics::default())];
        shards[0].publications.add(3);
        shards[1].publications.add(4);
        shards[0].connection(Transport::WebSocket, 1);
        shards[1].connection(Transport::WebSocket, 1);
        shards[1].connection(Transport::WebSocket, -1);
        shards[0].closed(CloseReason::SlowConsumer);
        shards[0].api_request(Some(Endpoint::Publish), 200);
        shards[1].api_request(None, 404);
        shards[0].refused(Refusal::Status(401));
        shards[0].turn(Duration::from_micros(3));
        shards[0].turn(Duration::from_micros(700));
        shards[0].turn(Duration::from_secs(5));
        let text = render(
            &shards,
            &NodeFigures {
                channels: 2,
                uptime_secs: 9,
                incomplete_bytes: 0,
                engine_refusals: 0,
                notices_dropped: 0,
                tls: Some(TlsFigures { not_after: 4_070_908_800, reloads: 1, failed_reloads: 2 }),
                store: StoreFigures { failures: 3, ..StoreFigures::default() },
            },
        );
        for line in [
            "herald_publications_total 7",
            "herald_connections{transport=\"websocket\"} 1",
            "herald_slow_consumer_closes_total 1",
            "herald_close_codes_sent_total{code=\"4008\"} 1",
            "herald_api_requests_total{endpoint=\"publish\",status=\"200\"} 1",
            "herald_api_requests_total{endpoint=\"unknown\",status=\"404\"} 1",
            "herald_connections_refused_total{reason=\"401\"} 1",
            "herald_loop_turn_seconds_bucket{shard=\"0\",le=\"0.000005\"} 1",
            "herald_loop_turn_seconds_bucket{shard=\"0\",le=\"0.001\"} 2",
            "herald_loop_turn_seconds_bucket{shard=\"0\",le=\"+Inf\"} 3",
            "herald_loop_turn_seconds_count{shard=\"0\"} 3",
            "herald_channels 2",
            "herald_tls_certificate_expiry_seconds 4070908800",
            "herald_tls_reloads_total{result=\"refused\"} 2",
            "herald_store_failures_total 3",
            "herald_store_publications 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {base} ")), "{line}");
        }
    }
}
