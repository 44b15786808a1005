//! Settings: built-in defaults < `herald.toml` < `HERALD_*` environment < command-line flags, validated once.

mod apps;

pub use apps::App;

use crate::channel::ChannelName;
use crate::tls::{self, Tls};
use crate::types::{BrokerError, NoticeKind, NoticeKinds};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Largest request head, request line and headers together (over it: 431).
/// Browsers send 0.5-2 KiB; cookies for a big site stay under 8 KiB, which
/// is also nginx's and Node's default. Bounds what a connection buffers
/// before it has proved anything.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most headers in one request (over it: 431). httparse parses into a
/// fixed array of this many on the stack.
pub const MAX_HEADERS: usize = 64;
/// Address the listener binds when nothing else is set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// A quiet connection is pinged this often, and closed after two such
/// intervals without a byte from it. Shorter finds dead peers sooner and costs
/// more wake-ups; 25 s stays under the 30-60 s idle timeouts of common proxies.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// Absolute time from accept to a complete request head. Stops slowloris
/// clients that dribble a head to hold a descriptor forever.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful shutdown waits for close handshakes and queued output.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a connection may have queued for sending before it is a slow
/// consumer (closed with 4008). Bounds the memory one client that stops
/// reading can pin: at most this much per connection.
pub const DEFAULT_MAX_OUTBOUND_BYTES: usize = 1 << 20;
/// Largest client message on `/ws` (over it: close 1009). Client commands are
/// small JSON objects; this bounds what one frame can make the server buffer.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 10;
/// Largest request body on the server API (over it: 413, decided from
/// `Content-Length` before the body is read). A publication is pushed to
/// every subscriber's queue, so it must fit there several times.
pub const DEFAULT_MAX_API_BODY_BYTES: usize = 256 << 10;
/// Default of `max_incomplete_bytes`: 256 MiB over all connections.
pub const DEFAULT_MAX_INCOMPLETE_BYTES: usize = 256 << 20;
/// Largest message on `/echo` (over it: close 1009). Big enough for the
/// Autobahn 9.* cases; the memory it allows is held only while a message is
/// in flight.
pub const DEFAULT_MAX_ECHO_MESSAGE_BYTES: usize = 16 << 20;
/// How long a WebSocket message (or a frame) may take to arrive whole once
/// its first byte is in (over it: 1008). A client sends a command in one
/// write; a message that trickles in for longer only holds server memory.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Client commands a `/ws` connection may send per second, on average
/// (a token bucket). An application sends a few per user action; this
/// bounds what one connection can make the broker and other subscribers do
/// (a subscribe/unsubscribe storm, join/leave floods).
pub const DEFAULT_COMMAND_RATE_PER_SEC: u32 = 100;
/// Commands a `/ws` connection may send at once before the rate applies:
/// room to resubscribe every channel after a reconnect.
pub const DEFAULT_COMMAND_BURST: u32 = 300;
/// Channels one `/ws` connection may be subscribed to at once (over it:
/// `limit_exceeded`). Each costs about 1 KiB of broker and shard state.
pub const DEFAULT_MAX_CHANNELS_PER_CONNECTION: usize = 256;
/// `SO_SNDBUF` of every connection (the kernel doubles it for its own
/// bookkeeping). With the kernel's autotuning a client that stops reading
/// pins up to 4 MiB of kernel memory beside herald's own queue; 64 KiB
/// pins 128 KiB and, measured on loopback, costs no throughput (fan-out
/// and echo alike, docs/BENCHMARKS.md). It allows 1 MiB/s per connection
/// at 100 ms round trip, far more than notifications need.
pub const DEFAULT_SEND_BUFFER_BYTES: usize = 64 << 10;
/// Messages shorter than this go uncompressed on connections that agreed
/// to permessage-deflate: below it, JSON notifications shrink by less than
/// a TCP segment's own headers, so compressing them costs the sender and
/// the receiver time for next to nothing on the wire (measured:
/// docs/BENCHMARKS.md, "Where compression pays").
pub const DEFAULT_COMPRESSION_THRESHOLD_BYTES: usize = 256;
/// With the Redis engine, how long a presence entry lives without being
/// renewed by its node (renewed every sixth of it): a node that dies
/// leaves members that are gone within about a minute.
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(60);
/// Notices a scope's webhook queue holds by default: about 20 MB of Redis
/// (or of RAM with the memory engine) at worst, an hour of a busy site's
/// joins and leaves while its backend is down.
pub const DEFAULT_WEBHOOK_QUEUE_SIZE: usize = 100_000;
/// Least default of `max_channels` (the default is the larger of this and
/// `max_connections`).
pub const MIN_DEFAULT_MAX_CHANNELS: usize = 100_000;
/// Descriptors kept back from `max_connections` when it is derived from the
/// open-file limit: listeners, wakers, epoll instances, log files, Redis.
/// (At most a quarter of a small limit.)
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// Where a setting's value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag, e.g. `--threads`.
    Flag(String),
    /// An environment variable, e.g. `HERALD_THREADS`.
    Env(String),
    /// A key in the config file.
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::File(path) => write!(f, "config file {}", path.display()),
        }
    }
}

/// A start-up error that names the setting and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        ConfigError(message.into())
    }

    fn setting(key: &str, source: &Source, problem: impl fmt::Display) -> Self {
        ConfigError(format!("invalid setting `{key}` (from {source}): {problem}"))
    }

    /// Several problems, reported together, one per line.
    fn all(errors: Vec<ConfigError>) -> Self {
        if errors.len() == 1 {
            return errors.into_iter().next().unwrap_or_else(|| ConfigError::new(""));
        }
        let lines: Vec<String> =
            errors.into_iter().map(|error| format!("  - {}", error.0)).collect();
        ConfigError(format!("{} problems with the settings:\n{}", lines.len(), lines.join("\n")))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A secret (API key, token secret) that never shows up in logs or `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: only for comparing and signing, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Which engine stores channels and delivers publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// One node, history in RAM.
    Memory,
    /// Several nodes sharing Redis.
    Redis,
}

/// How far a stored publication has gone when its publish is answered
/// (with `data_dir`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Each group commit is `fdatasync`ed before its publishes are
    /// answered: an answered publish survives a power cut.
    Fsync,
    /// Each group commit is handed to the operating system (its page
    /// cache) before its publishes are answered, never waited on: an
    /// answered publish survives a crash of herald, not a power cut or a
    /// crash of the machine, which lose the last seconds (until the kernel
    /// writes them back, typically within 5 to 30 s).
    PageCache,
}

impl Durability {
    /// The setting's value for it.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::PageCache => "page_cache",
        }
    }
}

/// How a shard waits for and does its socket I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Io {
    /// Readiness from epoll, then one `recv`/`sendmsg` per socket.
    #[default]
    Epoll,
    /// Completions from an io_uring: multishot accept and receive into a
    /// provided-buffer ring, a turn's sends in one submission. Falls back to
    /// epoll, with a warning, where the kernel refuses it.
    IoUring,
}

impl Io {
    /// The setting's value for it.
    pub fn name(self) -> &'static str {
        match self {
            Io::Epoll => "epoll",
            Io::IoUring => "io_uring",
        }
    }
}

/// Which browser origins may open a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    any: bool,
    exact: Vec<String>,
    /// `(scheme, ".example.com")` for an entry `scheme://*.example.com`.
    wildcard: Vec<(String, String)>,
}

impl OriginPolicy {
    /// A policy that allows every origin.
    pub fn any() -> Self {
        OriginPolicy { any: true, ..OriginPolicy::default() }
    }

    /// Parses entries: `*`, `https://example.com[:port]`, or `https://*.example.com`.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut policy = OriginPolicy::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry == "*" {
                policy.any = true;
                continue;
            }
            let lower = entry.to_ascii_lowercase();
            let Some((scheme, host)) = lower.split_once("://") else {
                return Err(format!(
                    "origin {entry:?} must look like https://example.com (scheme://host[:port]) or be *"
                ));
            };
            let scheme_ok = !scheme.is_empty()
                && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
            let host_ok = !host.is_empty()
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]*".contains(&b));
            if !scheme_ok || !host_ok {
                return Err(format!(
                    "origin {entry:?} must look like https://example.com (no path, no trailing slash)"
                ));
            }
            match host.strip_prefix("*.") {
                Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                    policy.wildcard.push((scheme.to_string(), format!(".{suffix}")));
                }
                _ if host.contains('*') => {
                    return Err(format!(
                        "origin {entry:?}: a wildcard is allowed only as the first label (https://*.example.com)"
                    ));
                }
                _ => policy.exact.push(lower),
            }
        }
        Ok(policy)
    }

    /// Whether a request with this `Origin` header may connect. `host` is the
    /// request's `Host` header: a same-origin page is always allowed.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if self.any {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        let Some((scheme, origin_host)) = origin.split_once("://") else {
            return false;
        };
        if let Some(host) = host
            && origin_host.eq_ignore_ascii_case(host.trim())
        {
            return true;
        }
        self.exact.contains(&origin)
            || self.wildcard.iter().any(|(allowed_scheme, suffix)| {
                allowed_scheme == scheme && origin_host.ends_with(suffix.as_str())
            })
    }
}

/// The namespaces `--dev` adds (unless the config file defines them), for
/// the demo page at `/` and the README's examples: `demo:...` and
/// `chat:...` channels with history, presence, join/leave and client
/// publish.
pub const DEV_NAMESPACES: [&str; 2] = ["demo", "chat"];

/// Options of one channel namespace (`[channels]` or `[namespaces.NAME]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceOptions {
    /// Publications kept per channel for recovery (0: no history).
    pub history_size: usize,
    /// Seconds a publication stays in history (required with history).
    pub history_ttl_secs: u64,
    /// Whether `presence` answers for channels of this namespace.
    pub presence: bool,
    /// Whether subscribers get `join`/`leave` pushes.
    pub join_leave: bool,
    /// Whether clients may publish (else only the server API may).
    pub client_publish: bool,
    /// The transitions of its channels that webhooks are configured for
    /// (from `webhook_events`, or the app's `webhooks`).
    #[serde(skip)]
    pub notices: NoticeKinds,
}

/// A webhook: where the notices of one scope (an app, a namespace) go, which
/// kinds, and how the requests are signed.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The scope whose notices it gets: `app:ID` or `ns:NAME` (`ns:` for
    /// channels without a namespace).
    pub scope: String,
    /// Its name in logs and metrics, unique: `app-1-0`, `ns-chat`.
    pub name: String,
    /// `http://` or `https://` URL the notices are POSTed to.
    pub url: String,
    /// The kinds it gets.
    pub kinds: NoticeKinds,
    /// How requests are signed.
    pub signing: WebhookSigning,
}

/// How a webhook's requests are signed.
#[derive(Debug, Clone)]
pub enum WebhookSigning {
    /// Pusher's: `X-Pusher-Key` and `X-Pusher-Signature` with the app's
    /// secret.
    Pusher {
        /// The app's key.
        key: String,
        /// The app's secret.
        secret: Secret,
    },
    /// herald's: `X-Herald-Signature: sha256=HEX` with `webhook_secret`.
    Herald(Secret),
}

/// Checks a webhook URL and its event names; returns the kinds (all when
/// none are named).
pub(crate) fn check_webhook(url: &str, events: &[String]) -> Result<NoticeKinds, String> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let host = rest.map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
    if host.is_none_or(str::is_empty) || url.contains(char::is_whitespace) {
        return Err(format!("webhook url {url:?} must be an http:// or https:// URL with a host"));
    }
    if events.is_empty() {
        return Ok(NoticeKinds(NoticeKind::ALL.iter().fold(0, |bits, kind| bits | kind.bit())));
    }
    let mut kinds = NoticeKinds::default();
    for name in events {
        let kind = NoticeKind::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = NoticeKind::ALL.iter().map(|kind| kind.name()).collect();
            format!("unknown webhook event {name:?} (known: {})", known.join(", "))
        })?;
        kinds = kinds.with(kind);
    }
    Ok(kinds)
}

/// Largest `history_size` a namespace may ask for.
pub const MAX_HISTORY_SIZE: usize = 100_000;

impl NamespaceOptions {
    fn validate(&self, section: &str, source: &Source) -> Result<(), ConfigError> {
        if self.history_size > MAX_HISTORY_SIZE {
            return Err(ConfigError::setting(
                &format!("{section}.history_size"),
                source,
                format_args!("must be at most {MAX_HISTORY_SIZE}, got {}", self.history_size),
            ));
        }
        if self.history_size > 0 && self.history_ttl_secs == 0 {
            return Err(ConfigError::setting(
                &format!("{section}.history_ttl_secs"),
                source,
                "must be set (above 0) when history_size is: a channel nobody subscribes to is \
                 freed when its history expires",
            ));
        }
        if self.join_leave && !self.presence {
            return Err(ConfigError::setting(
                &format!("{section}.join_leave"),
                source,
                "join_leave needs presence = true in the same section",
            ));
        }
        Ok(())
    }
}

/// herald's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Address of the TLS listener (`wss://`, `https://`), beside the
    /// plain one; set together with `tls`.
    pub listen_tls: Option<SocketAddr>,
    /// The certificate and key the TLS listener serves (`tls_cert`,
    /// `tls_key`), loaded and checked; reloaded on SIGHUP.
    pub tls: Option<Arc<Tls>>,
    /// Number of shards (event-loop threads).
    pub threads: usize,
    /// The shards' reactor: epoll or io_uring.
    pub io: Io,
    /// Development mode: anonymous connections, any origin, generated secrets.
    pub dev: bool,
    /// Key that backends present to the server API.
    pub api_key: Secret,
    /// HS256 secret that connection tokens are signed with.
    pub token_secret: Secret,
    /// Browser origins allowed to connect.
    pub allowed_origins: OriginPolicy,
    /// Accept connections without a token (user id "").
    pub allow_anonymous: bool,
    /// Channel engine.
    pub engine: Engine,
    /// Redis address for the redis engine.
    pub redis_url: String,
    /// Prefix of every Redis key and channel herald uses, so that several
    /// deployments can share one Redis.
    pub redis_prefix: String,
    /// Open connections per node (over it: 503).
    pub max_connections: usize,
    /// Serve the `/echo` endpoint.
    pub echo: bool,
    /// Heartbeat interval.
    pub ping_interval: Duration,
    /// Time from accept to a complete request head.
    pub handshake_timeout: Duration,
    /// Time a graceful shutdown waits for connections to close.
    pub shutdown_timeout: Duration,
    /// Outbound queue bound per connection (over it: 4008).
    pub max_outbound_bytes: usize,
    /// Largest client message on `/ws`.
    pub max_message_bytes: usize,
    /// Largest message on `/echo`.
    pub max_echo_message_bytes: usize,
    /// Largest server API request body.
    pub max_api_body_bytes: usize,
    /// Bytes all connections together may hold in WebSocket messages whose
    /// last frame has not arrived (over it, the connection adding to them
    /// is closed with 1008).
    pub max_incomplete_bytes: usize,
    /// Connections that have not completed their first request, per node;
    /// past it, the one waiting longest is closed to make room.
    pub max_pending_handshakes: usize,
    /// Time a WebSocket message may take to arrive whole (over it: 1008).
    pub message_timeout: Duration,
    /// Commands per second a `/ws` connection may send on average.
    pub command_rate_per_sec: u32,
    /// Commands a `/ws` connection may send at once.
    pub command_burst: u32,
    /// Channels that may exist on this node at once (over it, subscribing
    /// to or publishing on a new channel is `limit_exceeded`).
    pub max_channels: usize,
    /// Channels one `/ws` connection may be subscribed to.
    pub max_channels_per_connection: usize,
    /// `SO_SNDBUF` of each accepted socket (0: the kernel's autotuning).
    pub send_buffer_bytes: usize,
    /// Negotiate permessage-deflate (RFC 7692) with WebSocket clients that
    /// offer it.
    pub compression: bool,
    /// Messages shorter than this go uncompressed, also to clients that
    /// agreed to compression.
    pub compression_threshold_bytes: usize,
    /// Where the memory engine keeps history across restarts (`None`:
    /// history lives in RAM only).
    pub data_dir: Option<PathBuf>,
    /// What an answered publish survives, with `data_dir`.
    pub durability: Durability,
    /// Options of channels without a namespace.
    pub channels: NamespaceOptions,
    /// Options per namespace (the part of a channel name before the first `:`).
    pub namespaces: BTreeMap<String, NamespaceOptions>,
    /// Pusher apps (`[[apps]]`).
    pub apps: Vec<App>,
    /// Webhooks: each Pusher app's, then each namespace's.
    pub webhooks: Vec<Webhook>,
    /// Notices a scope's queue holds for its webhooks; past it new ones
    /// are dropped (counted in `herald_webhook_notices_dropped_total`).
    pub webhook_queue_size: usize,
    /// With the Redis engine: how long a presence entry lives without its
    /// node renewing it. A node that dies leaves members that leave (and
    /// are announced) within this and a sixth of it.
    pub presence_ttl: Duration,
    /// A path prefix that a proxy leaves on Pusher requests (`/herald` in
    /// `/herald/apps/1/events`): stripped before routing and before
    /// signatures are checked. Empty: none.
    pub pusher_path_prefix: String,
    /// Settings that `--dev` generated because none were given.
    pub generated: Vec<&'static str>,
}

impl Config {
    /// The options of the namespace `channel` is in.
    pub fn options(&self, channel: &ChannelName) -> Result<&NamespaceOptions, BrokerError> {
        if let Some((app, name)) = channel.app() {
            let app = self.app_by_id(app).ok_or_else(|| BrokerError::UnknownApp(app.into()))?;
            let (kind, cache) = crate::channel::app_channel_kind(name);
            return Ok(app.options_for(kind, cache));
        }
        match channel.namespace() {
            None => Ok(&self.channels),
            Some(namespace) => self
                .namespaces
                .get(namespace)
                .ok_or_else(|| BrokerError::UnknownNamespace(namespace.to_string())),
        }
    }

    /// The app with this id.
    pub fn app_by_id(&self, id: &str) -> Option<&App> {
        self.apps.iter().find(|app| app.id == id)
    }

    /// The app with this key, and its index.
    pub fn app_by_key(&self, key: &str) -> Option<(usize, &App)> {
        self.apps.iter().enumerate().find(|(_, app)| app.key == key)
    }

    /// A development configuration: defaults with `dev = true`, generated
    /// secrets, anonymous connections and any origin.
    pub fn dev() -> Config {
        // A fixed set of values that always validates.
        match Config::load(None, Vec::new(), true) {
            Ok(config) => config,
            Err(error) => unreachable!("built-in dev defaults must validate: {error}"),
        }
    }

    /// Builds the configuration from an optional config file (path and text)
    /// and overrides from the environment and flags. Later overrides win; the
    /// caller passes environment values before flag values. `dev` is the
    /// already-resolved value of the `dev` setting when it is only known from
    /// outside (tests); overrides may still set it.
    pub fn load(
        file: Option<(&Path, &str)>,
        overrides: Vec<Override>,
        dev: bool,
    ) -> Result<Config, ConfigError> {
        let layers = Layers::new(file, overrides)?;
        layers.build(dev)
    }
}

/// One value given by a flag or an environment variable.
#[derive(Debug, Clone)]
pub struct Override {
    /// The setting's key, as in the config file (`max_connections`).
    pub key: &'static str,
    /// The value as text.
    pub value: String,
    /// Where it came from.
    pub source: Source,
}

/// Every top-level key of the config file, beside the `[channels]` and
/// `[namespaces.*]` tables.
pub const KEYS: &[&str] = &[
    "listen",
    "listen_tls",
    "tls_cert",
    "tls_key",
    "threads",
    "io",
    "dev",
    "api_key",
    "token_secret",
    "allowed_origins",
    "allow_anonymous",
    "engine",
    "redis_url",
    "redis_prefix",
    "max_connections",
    "echo",
    "no_echo",
    "ping_interval_secs",
    "handshake_timeout_secs",
    "shutdown_timeout_secs",
    "max_outbound_bytes",
    "max_message_bytes",
    "max_echo_message_bytes",
    "max_api_body_bytes",
    "max_incomplete_bytes",
    "max_pending_handshakes",
    "message_timeout_secs",
    "command_rate_per_sec",
    "command_burst",
    "max_channels",
    "max_channels_per_connection",
    "send_buffer_bytes",
    "compression",
    "compression_threshold_bytes",
    "pusher_path_prefix",
    "presence_ttl_secs",
    "webhook_secret",
    "webhook_queue_size",
    "data_dir",
    "durability",
];

/// A raw value before it is typed: text from a flag or the environment, or a
/// TOML value from the file.
#[derive(Debug, Clone)]
enum Raw {
    Text(String),
    Toml(toml::Value),
}

struct Layers {
    /// Every problem found so far: all are reported at once.
    errors: std::cell::RefCell<Vec<ConfigError>>,
    values: BTreeMap<&'static str, (Raw, Source)>,
    file_source: Source,
    channels: Option<NamespaceOptions>,
    namespaces: BTreeMap<String, NamespaceOptions>,
    /// `[[apps]]`, read as soon as the file is.
    apps: Option<Vec<App>>,
    /// Namespaces' webhooks: namespace (`""` for `[channels]`), URL, kinds.
    namespace_webhooks: Vec<(String, String, NoticeKinds)>,
}

impl Layers {
    fn new(file: Option<(&Path, &str)>, overrides: Vec<Override>) -> Result<Layers, ConfigError> {
        let mut layers = Layers {
            errors: std::cell::RefCell::default(),
            values: BTreeMap::new(),
            file_source: Source::File(PathBuf::from("herald.toml")),
            channels: None,
            namespaces: BTreeMap::new(),
            apps: None,
            namespace_webhooks: Vec::new(),
        };
        if let Some((path, text)) = file {
            layers.read_file(path, text)?;
        }
        for Override { key, value, source } in overrides {
            layers.values.insert(key, (Raw::Text(value), source));
        }
        Ok(layers)
    }

    fn read_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let source = Source::File(path.to_path_buf());
        self.file_source = source.clone();
        let table: toml::Table = toml::from_str(text).map_err(|error| {
            ConfigError::new(format!("config file {}: {error}", path.display()))
        })?;
        for (key, value) in table {
            match key.as_str() {
                "channels" => {
                    let options = self.read_namespace(value, "channels", "", &source)?;
                    self.channels = Some(options);
                }
                "apps" => {
                    let apps = apps::read(value, &source, &mut self.errors.borrow_mut());
                    self.apps = Some(apps);
                }
                "namespaces" => {
                    let toml::Value::Table(namespaces) = value else {
                        return Err(ConfigError::setting(
                            "namespaces",
                            &source,
                            "must be a table of [namespaces.NAME] sections",
                        ));
                    };
                    for (name, options) in namespaces {
                        let section = format!("namespaces.{name}");
                        validate_namespace_name(&name)
                            .map_err(|problem| ConfigError::setting(&section, &source, problem))?;
                        let options = self.read_namespace(options, &section, &name, &source)?;
                        self.namespaces.insert(name, options);
                    }
                }
                other => {
                    let Some(known) = KEYS.iter().find(|known| **known == other) else {
                        return Err(ConfigError::new(format!(
                            "config file {}: unknown setting `{other}` (known: {}, [channels], [namespaces.NAME], [[apps]])",
                            path.display(),
                            KEYS.join(", ")
                        )));
                    };
                    self.values.insert(known, (Raw::Toml(value), source.clone()));
                }
            }
        }
        Ok(())
    }

    /// One `[channels]` or `[namespaces.NAME]` section: its options, and
    /// its webhook (`webhook_url`, `webhook_events`), noted for the build.
    fn read_namespace(
        &mut self,
        value: toml::Value,
        section: &str,
        namespace: &str,
        source: &Source,
    ) -> Result<NamespaceOptions, ConfigError> {
        let toml::Value::Table(mut table) = value else {
            return Err(ConfigError::setting(section, source, "must be a table"));
        };
        let url = table.remove("webhook_url");
        let events = table.remove("webhook_events");
        let mut options = toml::Value::Table(table)
            .try_into::<NamespaceOptions>()
            .map_err(|error| ConfigError::setting(section, source, error.to_string().trim()))?;
        options.validate(section, source)?;
        if let Some(url) = url {
            let url = url.as_str().map(str::to_string).ok_or_else(|| {
                ConfigError::setting(&format!("{section}.webhook_url"), source, "must be a string")
            })?;
            let events: Vec<String> = match events {
                None => Vec::new(),
                Some(events) => events.try_into().map_err(|_| {
                    ConfigError::setting(
                        &format!("{section}.webhook_events"),
                        source,
                        "must be a list of event names",
                    )
                })?,
            };
            let kinds = check_webhook(&url, &events).map_err(|problem| {
                ConfigError::setting(&format!("{section}.webhook_url"), source, problem)
            })?;
            options.notices = kinds;
            self.namespace_webhooks.push((namespace.to_string(), url, kinds));
        } else if events.is_some() {
            return Err(ConfigError::setting(
                &format!("{section}.webhook_events"),
                source,
                "needs webhook_url in the same section",
            ));
        }
        Ok(options)
    }

    /// The value, or `None` with the problem noted for the report.
    fn check<T>(&self, result: Result<Option<T>, ConfigError>) -> Option<T> {
        result.unwrap_or_else(|error| {
            self.errors.borrow_mut().push(error);
            None
        })
    }

    /// Notes a problem for the report.
    fn refuse(&self, result: Result<(), ConfigError>) {
        if let Err(error) = result {
            self.errors.borrow_mut().push(error);
        }
    }

    fn raw(&self, key: &'static str) -> Option<&(Raw, Source)> {
        self.values.get(key)
    }

    fn string(&self, key: &'static str) -> Result<Option<(String, Source)>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some((Raw::Text(text), source)) => Ok(Some((text.clone(), source.clone()))),
            Some((Raw::Toml(toml::Value::String(text)), source)) => {
                Ok(Some((text.clone(), source.clone())))
            }
            Some((Raw::Toml(other), source)) => Err(ConfigError::setting(
                key,
                source,
                format_args!("expected a string, got {}", other.type_str()),
            )),
        }
    }

    fn boolean(&self, key: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some((Raw::Toml(toml::Value::Boolean(value)), _)) => Ok(Some(*value)),
            Some((Raw::Text(text), source)) => match text.trim().to_ascii_lowercase().as_str() {
                "" | "1" | "true" | "yes" | "on" => Ok(Some(true)),
                "0" | "false" | "no" | "off" => Ok(Some(false)),
                _ => Err(ConfigError::setting(
                    key,
                    source,
                    format_args!("expected true or false, got {text:?}"),
                )),
            },
            Some((Raw::Toml(other), source)) => Err(ConfigError::setting(
                key,
                source,
                format_args!("expected true or false, got {}", other.type_str()),
            )),
        }
    }

    fn integer(&self, key: &'static str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        let (value, source) = match self.raw(key) {
            None => return Ok(None),
            Some((Raw::Toml(toml::Value::Integer(value)), source)) => {
                (u64::try_from(*value).ok(), source)
            }
            Some((Raw::Text(text), source)) => (text.trim().parse::<u64>().ok(), source),
            Some((Raw::Toml(other), source)) => {
                return Err(ConfigError::setting(
                    key,
                    source,
                    format_args!("expected a whole number, got {}", other.type_str()),
                ));
            }
        };
        match value {
            Some(value) if (min..=max).contains(&value) => Ok(Some(value)),
            Some(value) => Err(ConfigError::setting(
                key,
                source,
                format_args!("must be between {min} and {max}, got {value}"),
            )),
            None => Err(ConfigError::setting(key, source, "expected a whole number")),
        }
    }

    fn bytes(
        &self,
        key: &'static str,
        min: usize,
        max: usize,
    ) -> Result<Option<usize>, ConfigError> {
        let (value, source) = match self.raw(key) {
            None => return Ok(None),
            Some((Raw::Toml(toml::Value::Integer(value)), source)) => {
                (usize::try_from(*value).ok(), source)
            }
            Some((Raw::Toml(toml::Value::String(text)) | Raw::Text(text), source)) => {
                (parse_byte_size(text), source)
            }
            Some((Raw::Toml(other), source)) => {
                return Err(ConfigError::setting(
                    key,
                    source,
                    format_args!("expected a size in bytes, got {}", other.type_str()),
                ));
            }
        };
        match value {
            Some(value) if (min..=max).contains(&value) => Ok(Some(value)),
            Some(value) => Err(ConfigError::setting(
                key,
                source,
                format_args!(
                    "must be between {} and {}, got {value} bytes",
                    format_byte_size(min),
                    format_byte_size(max)
                ),
            )),
            None => Err(ConfigError::setting(
                key,
                source,
                "expected a size in bytes: a number, or one with a unit (64KiB, 1MiB)",
            )),
        }
    }

    fn seconds(
        &self,
        key: &'static str,
        min: f64,
        max: f64,
    ) -> Result<Option<Duration>, ConfigError> {
        let (value, source) = match self.raw(key) {
            None => return Ok(None),
            Some((Raw::Toml(toml::Value::Integer(value)), source)) => (Some(*value as f64), source),
            Some((Raw::Toml(toml::Value::Float(value)), source)) => (Some(*value), source),
            Some((Raw::Text(text), source)) => (text.trim().parse::<f64>().ok(), source),
            Some((Raw::Toml(other), source)) => {
                return Err(ConfigError::setting(
                    key,
                    source,
                    format_args!("expected a number of seconds, got {}", other.type_str()),
                ));
            }
        };
        match value {
            Some(value) if value.is_finite() && (min..=max).contains(&value) => {
                Ok(Some(Duration::from_secs_f64(value)))
            }
            Some(value) => Err(ConfigError::setting(
                key,
                source,
                format_args!("must be between {min} and {max} seconds, got {value}"),
            )),
            None => Err(ConfigError::setting(key, source, "expected a number of seconds")),
        }
    }

    fn string_list(&self, key: &'static str) -> Result<Option<(Vec<String>, Source)>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some((Raw::Text(text), source)) => Ok(Some((
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                source.clone(),
            ))),
            Some((Raw::Toml(toml::Value::Array(items)), source)) => {
                let mut list = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(text) => list.push(text.clone()),
                        other => {
                            return Err(ConfigError::setting(
                                key,
                                source,
                                format_args!(
                                    "expected a list of strings, found {}",
                                    other.type_str()
                                ),
                            ));
                        }
                    }
                }
                Ok(Some((list, source.clone())))
            }
            Some((Raw::Toml(toml::Value::String(text)), source)) => {
                Ok(Some((vec![text.clone()], source.clone())))
            }
            Some((Raw::Toml(other), source)) => Err(ConfigError::setting(
                key,
                source,
                format_args!("expected a list of strings, got {}", other.type_str()),
            )),
        }
    }

    /// The TLS listener's address and its certificate: both or neither.
    /// The files are read and checked here, so that a missing, unreadable,
    /// mismatched or expired certificate is reported with every other
    /// problem.
    fn tls(&self, listen: SocketAddr) -> (Option<SocketAddr>, Option<Arc<Tls>>) {
        let listen_tls = self.check(self.string("listen_tls")).and_then(|(text, source)| {
            self.check(
                parse_listen(&text)
                    .map(|addr| Some((addr, source.clone())))
                    .map_err(|problem| ConfigError::setting("listen_tls", &source, problem)),
            )
        });
        let cert = self.check(self.string("tls_cert"));
        let key = self.check(self.string("tls_key"));
        if let Some((addr, source)) = &listen_tls
            && addr.port() != 0
            && *addr == listen
        {
            self.refuse(Err(ConfigError::setting(
                "listen_tls",
                source,
                format_args!("{addr} is also the plain listener's address (listen)"),
            )));
        }
        let paths = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some((_, source)), None) => {
                self.refuse(Err(ConfigError::setting(
                    "tls_cert",
                    &source,
                    "tls_key is not set: give the private key of the certificate too",
                )));
                None
            }
            (None, Some((_, source))) => {
                self.refuse(Err(ConfigError::setting(
                    "tls_key",
                    &source,
                    "tls_cert is not set: give the certificate (chain) of the key too",
                )));
                None
            }
        };
        match (listen_tls, paths) {
            (Some((addr, _)), Some(((cert, cert_source), (key, key_source)))) => {
                match Tls::load(Path::new(&cert), Path::new(&key)) {
                    Ok(loaded) => {
                        let days_left = (loaded.not_after() - tls::unix_now()) / 86_400;
                        if days_left < tls::EXPIRY_WARNING_DAYS {
                            log::warn!(
                                "the TLS certificate in {cert} expires in {days_left} days, on {}",
                                tls::format_utc(loaded.not_after())
                            );
                        }
                        (Some(addr), Some(Arc::new(loaded)))
                    }
                    Err(error) => {
                        let source = match error.setting {
                            tls::Setting::Cert => &cert_source,
                            tls::Setting::Key => &key_source,
                        };
                        self.refuse(Err(ConfigError::setting(error.setting.key(), source, error)));
                        (None, None)
                    }
                }
            }
            (None, None) => (None, None),
            (Some((_, source)), None) => {
                self.refuse(Err(ConfigError::setting(
                    "listen_tls",
                    &source,
                    "a TLS listener needs tls_cert and tls_key (PEM files)",
                )));
                (None, None)
            }
            (None, Some(((_, source), _))) => {
                self.refuse(Err(ConfigError::setting(
                    "tls_cert",
                    &source,
                    "listen_tls is not set: give the TLS listener's address too (e.g. 0.0.0.0:443)",
                )));
                (None, None)
            }
        }
    }

    fn build(mut self, dev_default: bool) -> Result<Config, ConfigError> {
        let dev = self.check(self.boolean("dev")).unwrap_or(dev_default);
        let mut generated = Vec::new();

        let listen = match self.check(self.string("listen")) {
            None => parse_listen(DEFAULT_LISTEN).unwrap_or_else(|_| unreachable!()),
            Some((text, source)) => self
                .check(
                    parse_listen(&text)
                        .map(Some)
                        .map_err(|problem| ConfigError::setting("listen", &source, problem)),
                )
                .unwrap_or_else(|| parse_listen(DEFAULT_LISTEN).unwrap_or_else(|_| unreachable!())),
        };

        let (listen_tls, tls) = self.tls(listen);

        let threads = match self.check(self.integer("threads", 1, 1024)) {
            Some(threads) => usize::try_from(threads).unwrap_or(1024),
            None => std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        };

        let api_key = match self.check(self.string("api_key")) {
            Some((key, source)) => {
                self.refuse(
                    validate_api_key(&key)
                        .map_err(|problem| ConfigError::setting("api_key", &source, problem)),
                );
                Secret::new(key)
            }
            None if dev => {
                generated.push("api_key");
                Secret::new(random_token(24))
            }
            None => {
                self.refuse(Err(ConfigError::new(
                    "no API key: set api_key in the config file, HERALD_API_KEY, or --api-key \
                     (or run with --dev to generate one)",
                )));
                Secret::new("")
            }
        };

        let token_secret = match self.check(self.string("token_secret")) {
            Some((secret, source)) => {
                self.refuse(
                    validate_token_secret(&secret)
                        .map_err(|problem| ConfigError::setting("token_secret", &source, problem)),
                );
                Secret::new(secret)
            }
            None if dev => {
                generated.push("token_secret");
                Secret::new(random_token(32))
            }
            None => {
                self.refuse(Err(ConfigError::new(
                    "no token secret: set token_secret in the config file, HERALD_TOKEN_SECRET, \
                     or --token-secret (at least 32 bytes; or run with --dev to generate one)",
                )));
                Secret::new("")
            }
        };

        let allowed_origins =
            match self.check(self.string_list("allowed_origins")) {
                Some((entries, source)) => self
                    .check(OriginPolicy::parse(&entries).map(Some).map_err(|problem| {
                        ConfigError::setting("allowed_origins", &source, problem)
                    }))
                    .unwrap_or_default(),
                None if dev => OriginPolicy::any(),
                None => OriginPolicy::default(),
            };

        let allow_anonymous = self.check(self.boolean("allow_anonymous")).unwrap_or(dev);

        let engine = match self.check(self.string("engine")) {
            None => Engine::Memory,
            Some((name, source)) => match name.trim() {
                "memory" => Engine::Memory,
                "redis" => Engine::Redis,
                other => {
                    self.refuse(Err(ConfigError::setting(
                        "engine",
                        &source,
                        format_args!("expected memory or redis, got {other:?}"),
                    )));
                    Engine::Memory
                }
            },
        };

        let redis_url = match self.check(self.string("redis_url")) {
            None => "redis://127.0.0.1:6379".to_string(),
            Some((url, source)) => {
                self.refuse(
                    validate_redis_url(&url)
                        .map_err(|problem| ConfigError::setting("redis_url", &source, problem)),
                );
                url
            }
        };

        let redis_prefix = match self.check(self.string("redis_prefix")) {
            None => "herald".to_string(),
            Some((prefix, source)) => {
                let ok = !prefix.is_empty()
                    && prefix.len() <= 64
                    && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                if !ok {
                    self.refuse(Err(ConfigError::setting(
                        "redis_prefix",
                        &source,
                        format_args!("1 to 64 of A-Z a-z 0-9 _ - . expected, got {prefix:?}"),
                    )));
                }
                prefix
            }
        };

        let max_connections = match self.check(self.integer("max_connections", 1, 10_000_000)) {
            Some(max) => usize::try_from(max).unwrap_or(usize::MAX),
            None => default_max_connections(),
        };
        let max_pending_handshakes =
            match self.check(self.integer("max_pending_handshakes", 1, 10_000_000)) {
                Some(max) => usize::try_from(max).unwrap_or(usize::MAX),
                None => (max_connections / 4).max(1024),
            };

        // `/echo` serves unauthenticated 16 MiB messages: for conformance
        // runs and benchmarks, so only where asked for (or in --dev).
        let echo = self.check(self.boolean("echo")).unwrap_or(dev)
            && !self.check(self.boolean("no_echo")).unwrap_or(false);
        let ping_interval = self
            .check(self.seconds("ping_interval_secs", 0.1, 3600.0))
            .unwrap_or(DEFAULT_PING_INTERVAL);
        let handshake_timeout = self
            .check(self.seconds("handshake_timeout_secs", 0.1, 300.0))
            .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
        let shutdown_timeout = self
            .check(self.seconds("shutdown_timeout_secs", 0.0, 3600.0))
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
        let max_outbound_bytes = self
            .check(self.bytes("max_outbound_bytes", 4 << 10, 1 << 30))
            .unwrap_or(DEFAULT_MAX_OUTBOUND_BYTES);
        let max_message_bytes = self
            .check(self.bytes("max_message_bytes", 1 << 10, 64 << 20))
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        let max_echo_message_bytes = self
            .check(self.bytes("max_echo_message_bytes", 1 << 10, 64 << 20))
            .unwrap_or(DEFAULT_MAX_ECHO_MESSAGE_BYTES);
        let max_api_body_bytes = self
            .check(self.bytes("max_api_body_bytes", 1 << 10, 64 << 20))
            .unwrap_or(DEFAULT_MAX_API_BODY_BYTES);
        let max_incomplete_bytes = self
            .check(self.bytes("max_incomplete_bytes", 64 << 10, 1 << 40))
            .unwrap_or(DEFAULT_MAX_INCOMPLETE_BYTES);
        let message_timeout = self
            .check(self.seconds("message_timeout_secs", 0.1, 3600.0))
            .unwrap_or(DEFAULT_MESSAGE_TIMEOUT);
        let command_rate_per_sec = self
            .check(self.integer("command_rate_per_sec", 1, 1_000_000))
            .map_or(DEFAULT_COMMAND_RATE_PER_SEC, |rate| u32::try_from(rate).unwrap_or(u32::MAX));
        let command_burst = self
            .check(self.integer("command_burst", 1, 1_000_000))
            .map_or(DEFAULT_COMMAND_BURST, |burst| u32::try_from(burst).unwrap_or(u32::MAX));
        let max_channels = match self.check(self.integer("max_channels", 1, 1 << 32)) {
            Some(max) => usize::try_from(max).unwrap_or(usize::MAX),
            None => max_connections.max(MIN_DEFAULT_MAX_CHANNELS),
        };
        let max_channels_per_connection = self
            .check(self.integer("max_channels_per_connection", 1, 65_536))
            .map_or(DEFAULT_MAX_CHANNELS_PER_CONNECTION, |max| {
                usize::try_from(max).unwrap_or(usize::MAX)
            });
        let send_buffer_bytes = self
            .check(self.bytes("send_buffer_bytes", 0, 64 << 20))
            .unwrap_or(DEFAULT_SEND_BUFFER_BYTES);
        let compression = self.check(self.boolean("compression")).unwrap_or(true);
        let compression_threshold_bytes = self
            .check(self.bytes("compression_threshold_bytes", 0, 64 << 20))
            .unwrap_or(DEFAULT_COMPRESSION_THRESHOLD_BYTES);
        let data_dir = match self.check(self.string("data_dir")) {
            None => None,
            Some((dir, source)) => {
                if dir.trim().is_empty() {
                    self.refuse(Err(ConfigError::setting(
                        "data_dir",
                        &source,
                        "must be a directory path (leave it unset to keep history in RAM only)",
                    )));
                } else if engine == Engine::Redis {
                    self.refuse(Err(ConfigError::setting(
                        "data_dir",
                        &source,
                        "durable history is the memory engine's: with engine = redis, history \
                         lives in Redis (unset data_dir, or use engine = memory)",
                    )));
                }
                Some(PathBuf::from(dir))
            }
        };
        let durability = match self.check(self.string("durability")) {
            None => Durability::Fsync,
            Some((name, source)) => match name.trim() {
                "fsync" => Durability::Fsync,
                "page_cache" => Durability::PageCache,
                other => {
                    self.refuse(Err(ConfigError::setting(
                        "durability",
                        &source,
                        format_args!("expected fsync or page_cache, got {other:?}"),
                    )));
                    Durability::Fsync
                }
            },
        };
        let io = match self.check(self.string("io")) {
            None => Io::Epoll,
            Some((name, source)) => match name.trim() {
                "epoll" => Io::Epoll,
                "io_uring" => Io::IoUring,
                other => {
                    self.refuse(Err(ConfigError::setting(
                        "io",
                        &source,
                        format_args!("expected epoll or io_uring, got {other:?}"),
                    )));
                    Io::Epoll
                }
            },
        };
        let pusher_path_prefix = match self.check(self.string("pusher_path_prefix")) {
            None => String::new(),
            Some((prefix, source)) => {
                let prefix = prefix.trim_end_matches('/').to_string();
                let ok = prefix.is_empty()
                    || (prefix.starts_with('/')
                        && prefix.len() <= 128
                        && prefix
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"/_-.~".contains(&b))
                        && !prefix.contains("//"));
                if !ok {
                    self.refuse(Err(ConfigError::setting(
                        "pusher_path_prefix",
                        &source,
                        format_args!("expected a path such as /herald, got {prefix:?}"),
                    )));
                }
                prefix
            }
        };
        let presence_ttl = self
            .check(self.seconds("presence_ttl_secs", 1.0, 3600.0))
            .unwrap_or(DEFAULT_PRESENCE_TTL);
        let webhook_secret = match self.check(self.string("webhook_secret")) {
            Some((secret, source)) => {
                if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
                    self.refuse(Err(ConfigError::setting(
                        "webhook_secret",
                        &source,
                        "must be at least 16 printable characters without spaces",
                    )));
                }
                Some(Secret::new(secret))
            }
            None if dev && !self.namespace_webhooks.is_empty() => {
                generated.push("webhook_secret");
                Some(Secret::new(random_token(24)))
            }
            None if !self.namespace_webhooks.is_empty() => {
                self.refuse(Err(ConfigError::new(
                    "namespaces have webhook_url but no webhook_secret is set to sign them \
                     (webhook_secret in the config file, HERALD_WEBHOOK_SECRET, or --webhook-secret)",
                )));
                None
            }
            None => None,
        };
        let webhook_queue_size = self
            .check(self.integer("webhook_queue_size", 1, 10_000_000))
            .map_or(DEFAULT_WEBHOOK_QUEUE_SIZE, |size| usize::try_from(size).unwrap_or(usize::MAX));
        let apps = match self.apps.take() {
            Some(apps) => apps,
            None if dev => {
                generated.push("apps");
                vec![apps::dev_app(random_token(24))]
            }
            None => Vec::new(),
        };
        // A publication (from a client or the API) goes into every
        // subscriber's outbound queue; if it could not fit there with room to
        // spare, every subscriber would be closed as a slow consumer.
        for (key, value) in
            [("max_message_bytes", max_message_bytes), ("max_api_body_bytes", max_api_body_bytes)]
        {
            if value > max_outbound_bytes / 4 {
                self.refuse(Err(ConfigError::new(format!(
                    "invalid setting `{key}`: {} must be at most a quarter of max_outbound_bytes \
                     ({}), so that a publication fits in every subscriber's outbound queue; \
                     lower {key} or raise max_outbound_bytes",
                    format_byte_size(value),
                    format_byte_size(max_outbound_bytes)
                ))));
            }
        }
        let errors = self.errors.take();
        if !errors.is_empty() {
            return Err(ConfigError::all(errors));
        }

        let mut namespaces = self.namespaces;
        let mut channels = self.channels;
        let namespace_webhooks = self.namespace_webhooks;
        if dev {
            // What the README and the demo page use, unless the file says
            // otherwise: the default namespace keeps a modest history (so
            // SSE and long-poll clients recover across reconnects), and
            // `chat:...` and the demo page's `demo:...` channels also let
            // clients publish and see each other.
            channels.get_or_insert(NamespaceOptions {
                history_size: 100,
                history_ttl_secs: 600,
                ..NamespaceOptions::default()
            });
            for namespace in DEV_NAMESPACES {
                namespaces.entry(namespace.to_string()).or_insert(NamespaceOptions {
                    history_size: 100,
                    history_ttl_secs: 600,
                    presence: true,
                    join_leave: true,
                    client_publish: true,
                    notices: NoticeKinds::default(),
                });
            }
        }
        Ok(Config {
            listen,
            listen_tls,
            tls,
            threads,
            io,
            dev,
            api_key,
            token_secret,
            allowed_origins,
            allow_anonymous,
            engine,
            redis_url,
            redis_prefix,
            max_connections,
            echo,
            ping_interval,
            handshake_timeout,
            shutdown_timeout,
            max_outbound_bytes,
            max_message_bytes,
            max_echo_message_bytes,
            max_api_body_bytes,
            max_incomplete_bytes,
            max_pending_handshakes,
            message_timeout,
            command_rate_per_sec,
            command_burst,
            max_channels,
            max_channels_per_connection,
            send_buffer_bytes,
            compression,
            compression_threshold_bytes,
            data_dir,
            durability,
            channels: channels.unwrap_or_default(),
            namespaces,
            webhooks: webhooks(&apps, namespace_webhooks, webhook_secret.as_ref()),
            webhook_queue_size,
            apps,
            presence_ttl,
            pusher_path_prefix,
            generated,
        })
    }
}

/// Every webhook: each app's (in order), then each namespace's.
fn webhooks(
    apps: &[App],
    namespaces: Vec<(String, String, NoticeKinds)>,
    secret: Option<&Secret>,
) -> Vec<Webhook> {
    let mut webhooks = Vec::new();
    for app in apps {
        for (index, (url, kinds)) in app.webhooks.iter().enumerate() {
            webhooks.push(Webhook {
                scope: format!("app:{}", app.id),
                name: format!("app-{}-{index}", app.id),
                url: url.clone(),
                kinds: *kinds,
                signing: WebhookSigning::Pusher {
                    key: app.key.clone(),
                    secret: app.secret.clone(),
                },
            });
        }
    }
    if let Some(secret) = secret {
        for (namespace, url, kinds) in namespaces {
            webhooks.push(Webhook {
                scope: format!("ns:{namespace}"),
                name: if namespace.is_empty() { "ns".into() } else { format!("ns-{namespace}") },
                url,
                kinds,
                signing: WebhookSigning::Herald(secret.clone()),
            });
        }
    }
    webhooks
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse::<SocketAddr>()
        .map_err(|_| format!("expected IP:PORT such as 127.0.0.1:8080 or [::]:8080, got {text:?}"))
}

fn validate_api_key(key: &str) -> Result<(), String> {
    if key.len() < 16 {
        return Err("must be at least 16 characters".into());
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces (it travels in an HTTP header)".into());
    }
    Ok(())
}

fn validate_token_secret(secret: &str) -> Result<(), String> {
    // RFC 7518 3.2: an HS256 key must be at least as long as the hash output.
    if secret.len() < 32 {
        return Err(format!(
            "must be at least 32 bytes (HS256 keys shorter than the hash are weak), got {}",
            secret.len()
        ));
    }
    Ok(())
}

/// `redis_url`: one URL, or several separated by commas (seed nodes of a
/// cluster).
fn validate_redis_url(urls: &str) -> Result<(), String> {
    urls.split(',').map(str::trim).try_for_each(validate_one_redis_url)
}

fn validate_one_redis_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or_else(|| format!("expected redis://HOST:PORT[/DB], got {url:?}"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("no host in {url:?}: expected redis://HOST:PORT[/DB]"));
    }
    Ok(())
}

fn validate_namespace_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.@#=,-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "namespace name {name:?} must be 1-64 characters of A-Z a-z 0-9 _ . @ # = , - (no colon)"
        ))
    }
}

/// Parses `65536`, `64KiB`, `64 KB`, `1MiB`, `16M`. K, M and G are powers of 1024.
pub fn parse_byte_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: usize = number.parse().ok()?;
    let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

fn format_byte_size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// `max_connections` when none is set: the hard open-file limit (which
/// herald raises its soft limit to at start) less a reserve.
pub fn default_max_connections() -> usize {
    let limit = crate::sys::open_file_limit().hard;
    let reserve = RESERVED_DESCRIPTORS.min(limit / 4);
    usize::try_from(limit.saturating_sub(reserve).max(1)).unwrap_or(usize::MAX)
}

/// A generated dev secret: `bytes` random bytes in URL-safe base64, never
/// starting with `-` (a shell command such as `herald token --secret $S`
/// would read such a secret as an option).
fn random_token(bytes: usize) -> String {
    use base64::Engine as _;
    loop {
        let random = crate::sys::random_bytes(bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
        if !token.starts_with('-') {
            return token;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_never_look_like_an_option() {
        // One in 64 would start with '-' if nothing prevented it.
        for _ in 0..5_000 {
            let token = random_token(24);
            assert_eq!(token.len(), 32);
            assert!(!token.starts_with('-'), "{token}");
        }
    }

    fn flag(key: &'static str, value: &str) -> Override {
        Override { key, value: value.into(), source: Source::Flag(format!("--{key}")) }
    }

    fn env(key: &'static str, value: &str) -> Override {
        Override {
            key,
            value: value.into(),
            source: Source::Env(format!("HERALD_{}", key.to_ascii_uppercase())),
        }
    }

    #[test]
    fn flags_win_over_environment_which_wins_over_the_file() {
        let file = "threads = 3\nmax_connections = 100\nping_interval_secs = 5\n";
        let config = Config::load(
            Some((Path::new("herald.toml"), file)),
            vec![env("threads", "5"), env("max_connections", "200"), flag("threads", "7")],
            true,
        )
        .unwrap();
        assert_eq!(config.threads, 7);
        assert_eq!(config.max_connections, 200);
        assert_eq!(config.ping_interval, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_the_setting_and_its_source() {
        let error = Config::load(None, vec![env("threads", "0")], true).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid setting `threads` (from environment variable HERALD_THREADS): \
             must be between 1 and 1024, got 0"
        );
        let error = Config::load(None, vec![flag("listen", "localhost")], true).unwrap_err();
        assert!(error.to_string().contains("`listen` (from flag --listen)"), "{error}");
        let error =
            Config::load(Some((Path::new("h.toml"), "max_message_bytes = \"lots\"")), vec![], true)
                .unwrap_err();
        assert!(error.to_string().contains("`max_message_bytes` (from config file h.toml)"));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let error =
            Config::load(Some((Path::new("h.toml"), "thread = 2")), vec![], true).unwrap_err();
        assert!(error.to_string().contains("unknown setting `thread`"), "{error}");
        let error = Config::load(
            Some((Path::new("h.toml"), "[namespaces.chat]\nhistory = 5")),
            vec![],
            true,
        )
        .unwrap_err();
        assert!(error.to_string().contains("namespaces.chat"), "{error}");
    }

    #[test]
    fn secrets_are_required_outside_dev_mode() {
        let error = Config::load(None, vec![], false).unwrap_err();
        assert!(error.to_string().contains("HERALD_API_KEY"), "{error}");
        let error =
            Config::load(None, vec![flag("api_key", "0123456789abcdef")], false).unwrap_err();
        assert!(error.to_string().contains("HERALD_TOKEN_SECRET"), "{error}");
        let error = Config::load(
            None,
            vec![flag("api_key", "0123456789abcdef"), flag("token_secret", "short")],
            false,
        )
        .unwrap_err();
        assert!(error.to_string().contains("at least 32 bytes"), "{error}");
        let config = Config::load(
            None,
            vec![
                flag("api_key", "0123456789abcdef"),
                flag("token_secret", "0123456789abcdef0123456789abcdef"),
            ],
            false,
        )
        .unwrap();
        assert!(!config.allow_anonymous);
        assert!(config.generated.is_empty());
        assert!(!config.allowed_origins.allows("https://evil.example", Some("herald.example")));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let error = Config::load(
            Some((Path::new("h.toml"), "max_message_bytes = \"lots\"")),
            vec![env("threads", "0")],
            false,
        )
        .unwrap_err()
        .to_string();
        for problem in ["HERALD_API_KEY", "HERALD_TOKEN_SECRET", "`threads`", "`max_message_bytes`"]
        {
            assert!(error.contains(problem), "{problem} missing from {error}");
        }
        assert!(error.starts_with("4 problems with the settings:"), "{error}");
    }

    #[test]
    fn dev_mode_keeps_history_and_has_the_readme_namespaces() {
        let config = Config::dev();
        assert_eq!((config.channels.history_size, config.channels.history_ttl_secs), (100, 600));
        for namespace in DEV_NAMESPACES {
            let options = &config.namespaces[namespace];
            assert!(options.client_publish && options.presence && options.history_size > 0);
        }
        // The file's own sections win.
        let file = "[channels]\nhistory_size = 0\n[namespaces.chat]\npresence = true\n";
        let config = Config::load(Some((Path::new("h.toml"), file)), vec![], true).unwrap();
        assert_eq!(config.channels.history_size, 0);
        assert!(!config.namespaces["chat"].client_publish);
    }

    #[test]
    fn dev_mode_generates_secrets_and_allows_anonymous_and_any_origin() {
        let config = Config::dev();
        assert!(config.dev && config.allow_anonymous);
        assert_eq!(config.generated, vec!["api_key", "token_secret", "apps"]);
        assert!(config.token_secret.expose().len() >= 32);
        assert!(config.allowed_origins.allows("https://anything.example", None));
        assert_ne!(Config::dev().api_key, config.api_key, "generated keys are random");
        assert!(!format!("{config:?}").contains(config.api_key.expose()), "Debug hides secrets");
    }

    #[test]
    fn echo_is_served_only_in_dev_mode_or_when_asked_for() {
        let secrets = || {
            vec![
                flag("api_key", "0123456789abcdef"),
                flag("token_secret", "0123456789abcdef0123456789abcdef"),
            ]
        };
        assert!(!Config::load(None, secrets(), false).unwrap().echo);
        let mut asked = secrets();
        asked.push(env("echo", "true"));
        assert!(Config::load(None, asked, false).unwrap().echo);
        assert!(Config::dev().echo);
        assert!(!Config::load(None, vec![flag("no_echo", "true")], true).unwrap().echo);
    }

    #[test]
    fn limits_have_deliberate_defaults() {
        let config = Config::dev();
        assert_eq!(config.max_channels_per_connection, DEFAULT_MAX_CHANNELS_PER_CONNECTION);
        assert!(config.max_channels >= MIN_DEFAULT_MAX_CHANNELS);
        assert!(config.max_channels >= config.max_connections);
        assert_eq!(config.message_timeout, DEFAULT_MESSAGE_TIMEOUT);
        assert_eq!(
            (config.command_rate_per_sec, config.command_burst),
            (DEFAULT_COMMAND_RATE_PER_SEC, DEFAULT_COMMAND_BURST)
        );
        assert!(
            config.command_burst as usize >= config.max_channels_per_connection,
            "a reconnecting client resubscribes every channel at once"
        );
        let config = Config::load(
            None,
            vec![flag("max_channels", "10"), flag("command_rate_per_sec", "5")],
            true,
        )
        .unwrap();
        assert_eq!((config.max_channels, config.command_rate_per_sec), (10, 5));
        let error = Config::load(None, vec![flag("command_burst", "0")], true).unwrap_err();
        assert!(error.to_string().contains("`command_burst`"), "{error}");
    }

    #[test]
    fn byte_sizes_accept_units() {
        assert_eq!(parse_byte_size("65536"), Some(65536));
        assert_eq!(parse_byte_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_byte_size("16 MiB"), Some(16 << 20));
        assert_eq!(parse_byte_size("1g"), Some(1 << 30));
        assert_eq!(parse_byte_size("12 parsecs"), None);
        assert_eq!(parse_byte_size(""), None);
        let config = Config::load(None, vec![env("max_outbound_bytes", "2MiB")], true).unwrap();
        assert_eq!(config.max_outbound_bytes, 2 << 20);
        let error =
            Config::load(None, vec![env("max_outbound_bytes", "128KiB")], true).unwrap_err();
        assert!(error.to_string().contains("a quarter of max_outbound_bytes"), "{error}");
    }

    #[test]
    fn origin_policy() {
        let policy =
            OriginPolicy::parse(&["https://app.example.com", "https://*.example.org"]).unwrap();
        assert!(policy.allows("https://app.example.com", None));
        assert!(policy.allows("HTTPS://APP.EXAMPLE.COM", None));
        assert!(!policy.allows("http://app.example.com", None));
        assert!(policy.allows("https://a.b.example.org", None));
        assert!(!policy.allows("https://example.org", None));
        assert!(!policy.allows("https://evilexample.org", None));
        assert!(policy.allows("http://127.0.0.1:8080", Some("127.0.0.1:8080")), "same origin");
        assert!(!policy.allows("null", None));
        assert!(OriginPolicy::parse(&["example.com"]).is_err());
        assert!(OriginPolicy::parse(&["https://example.com/"]).is_err());
        assert!(OriginPolicy::parse(&["https://ex*ample.com"]).is_err());
    }

    #[test]
    fn namespaces_are_read_from_the_file() {
        let file = "[channels]\nhistory_size = 100\nhistory_ttl_secs = 300\n\
                    [namespaces.chat]\nclient_publish = true\npresence = true\njoin_leave = true\n";
        let no_ttl = "[channels]\nhistory_size = 10\n";
        let error = Config::load(Some((Path::new("h.toml"), no_ttl)), vec![], true).unwrap_err();
        assert!(error.to_string().contains("channels.history_ttl_secs"), "{error}");
        let config = Config::load(Some((Path::new("h.toml"), file)), vec![], true).unwrap();
        assert_eq!(config.channels.history_size, 100);
        let chat = &config.namespaces["chat"];
        assert!(chat.client_publish && chat.presence && chat.join_leave);
        assert_eq!(chat.history_size, 0);
        let bad = "[namespaces.chat]\njoin_leave = true\n";
        let error = Config::load(Some((Path::new("h.toml"), bad)), vec![], true).unwrap_err();
        assert!(error.to_string().contains("join_leave needs presence"), "{error}");
    }

    #[test]
    fn tls_settings_come_together_and_are_checked_with_the_rest() {
        use crate::tls::test_certs::{dir, self_signed, valid, write};
        let dir = dir("config");
        let (cert, key) = valid();
        let cert = write(&dir, "cert.pem", &cert);
        let key = write(&dir, "key.pem", &key);
        let (_, other_key) = valid();
        let other_key = write(&dir, "other-key.pem", &other_key);
        let (expired, expired_key) = self_signed((2019, 1, 1), (2020, 1, 1));
        let expired = write(&dir, "expired.pem", &expired);
        let expired_key = write(&dir, "expired-key.pem", &expired_key);
        let path = |p: &PathBuf| p.display().to_string();

        let config = Config::load(
            None,
            vec![
                flag("listen_tls", "127.0.0.1:0"),
                env("tls_cert", &path(&cert)),
                env("tls_key", &path(&key)),
            ],
            true,
        )
        .unwrap();
        assert_eq!(config.listen_tls, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(config.tls.as_ref().unwrap().cert_path(), cert.as_path());
        assert!(Config::dev().tls.is_none() && Config::dev().listen_tls.is_none());

        let error = Config::load(None, vec![flag("listen_tls", "127.0.0.1:0")], true).unwrap_err();
        assert!(error.to_string().contains("needs tls_cert and tls_key"), "{error}");
        let error =
            Config::load(None, vec![flag("tls_cert", &path(&cert))], true).unwrap_err().to_string();
        assert!(error.contains("tls_key is not set"), "{error}");
        let error = Config::load(
            None,
            vec![flag("tls_cert", &path(&cert)), flag("tls_key", &path(&key))],
            true,
        )
        .unwrap_err();
        assert!(error.to_string().contains("listen_tls is not set"), "{error}");
        let error = Config::load(
            None,
            vec![
                flag("listen", "127.0.0.1:8443"),
                flag("listen_tls", "127.0.0.1:8443"),
                flag("tls_cert", &path(&cert)),
                flag("tls_key", &path(&key)),
            ],
            true,
        )
        .unwrap_err();
        assert!(error.to_string().contains("also the plain listener"), "{error}");

        // A mismatched key and an expired certificate are reported with
        // every other problem, naming the file and where it was set.
        let file = format!("tls_key = \"{}\"\n", path(&other_key));
        let error = Config::load(
            Some((Path::new("h.toml"), &file)),
            vec![
                flag("listen_tls", "127.0.0.1:0"),
                flag("tls_cert", &path(&cert)),
                env("threads", "0"),
            ],
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("2 problems with the settings:"), "{error}");
        assert!(error.contains("`tls_key` (from config file h.toml)"), "{error}");
        assert!(error.contains(&path(&other_key)) && error.contains("do not match"), "{error}");
        let error = Config::load(
            None,
            vec![
                flag("listen_tls", "127.0.0.1:0"),
                flag("tls_cert", &path(&expired)),
                flag("tls_key", &path(&expired_key)),
            ],
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("`tls_cert` (from flag --tls_cert)"), "{error}");
        assert!(
            error.contains(&path(&expired)) && error.contains("expired on 2020-01-01"),
            "{error}"
        );
        let missing = dir.join("missing.pem");
        let error = Config::load(
            None,
            vec![
                flag("listen_tls", "127.0.0.1:0"),
                flag("tls_cert", &path(&missing)),
                flag("tls_key", &path(&key)),
            ],
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains(&format!("cannot read {}", path(&missing))), "{error}");
    }

    #[test]
    fn durable_history_is_off_by_default_and_checked() {
        let config = Config::dev();
        assert_eq!((config.data_dir.as_deref(), config.durability), (None, Durability::Fsync));
        let config = Config::load(
            None,
            vec![flag("data_dir", "/var/lib/herald"), env("durability", "page_cache")],
            true,
        )
        .unwrap();
        assert_eq!(config.data_dir.as_deref(), Some(Path::new("/var/lib/herald")));
        assert_eq!(config.durability, Durability::PageCache);
        assert_eq!(Config::dev().io, Io::Epoll);
        let config = Config::load(None, vec![env("io", "io_uring")], true).unwrap();
        assert_eq!(config.io, Io::IoUring);
        let error = Config::load(None, vec![flag("io", "kqueue")], true).unwrap_err();
        assert!(error.to_string().contains("expected epoll or io_uring"), "{error}");
        let error = Config::load(
            None,
            vec![flag("data_dir", "/tmp/h"), flag("engine", "redis"), flag("durability", "maybe")],
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("`data_dir`") && error.contains("engine = redis"), "{error}");
        assert!(error.contains("expected fsync or page_cache"), "{error}");
        let error = Config::load(None, vec![flag("data_dir", " ")], true).unwrap_err();
        assert!(error.to_string().contains("`data_dir`"), "{error}");
    }

    #[test]
    fn redis_settings_are_checked() {
        let config = Config::load(None, vec![flag("engine", "redis")], true).unwrap();
        assert_eq!((config.engine, config.redis_prefix.as_str()), (Engine::Redis, "herald"));
        let error = Config::load(None, vec![flag("redis_prefix", "a b")], true).unwrap_err();
        assert!(error.to_string().contains("redis_prefix"), "{error}");
        let error =
            Config::load(None, vec![flag("redis_url", "localhost:6379")], true).unwrap_err();
        assert!(error.to_string().contains("redis://HOST:PORT"), "{error}");
        let seeds = "redis://10.0.0.1:7000, redis://10.0.0.2:7000";
        let config = Config::load(None, vec![flag("redis_url", seeds)], true).unwrap();
        assert_eq!(config.redis_url, seeds);
        let error =
            Config::load(None, vec![flag("redis_url", "redis://a:1,b:2")], true).unwrap_err();
        assert!(error.to_string().contains("\"b:2\""), "{error}");
    }
}
