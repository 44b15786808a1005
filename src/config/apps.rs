//! Pusher apps (`[[apps]]`): their credentials, limits, and the options each kind of their channels gets.

use super::{ConfigError, NamespaceOptions, Secret, Source, check_webhook};
use crate::channel::{AppChannelKind, MAX_APP_ID_LEN};
use crate::types::NoticeKinds;
use std::time::Duration;

/// Options every app channel of one kind shares, indexed by
/// [`App::options_for`].
const PLAIN: usize = 0;
const PRESENCE: usize = 1;
const CACHE: usize = 2;
const PRESENCE_CACHE: usize = 3;

/// Largest `presence_max_members` (every subscribe of a presence channel
/// sends the whole member list).
pub const MAX_PRESENCE_MEMBERS: usize = 10_000;
/// Longest a cache channel keeps its last event (Pusher's limit).
pub const MAX_CACHE_TTL_SECS: u64 = 30 * 60;

/// One app as written in the config file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AppSettings {
    id: String,
    key: String,
    secret: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    client_events: bool,
    #[serde(default = "default_activity_timeout")]
    activity_timeout_secs: u64,
    #[serde(default = "default_pong_timeout")]
    pong_timeout_secs: u64,
    #[serde(default = "default_client_event_rate")]
    client_event_rate: u32,
    #[serde(default = "default_max_event_payload")]
    max_event_payload_bytes: usize,
    #[serde(default = "default_max_batch_size")]
    max_batch_size: usize,
    #[serde(default = "default_presence_max_members")]
    presence_max_members: usize,
    #[serde(default = "default_presence_max_user_info")]
    presence_max_user_info_bytes: usize,
    #[serde(default = "default_cache_ttl")]
    cache_ttl_secs: u64,
    #[serde(default)]
    max_connections: usize,
    #[serde(default = "default_history_size")]
    history_size: usize,
    #[serde(default = "default_history_ttl")]
    history_ttl_secs: u64,
    #[serde(default)]
    webhooks: Vec<WebhookSettings>,
}

/// One of an app's webhooks as written: `{ url = "...", event_types = [...] }`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSettings {
    url: String,
    #[serde(default)]
    event_types: Vec<String>,
}

fn yes() -> bool {
    true
}
fn default_activity_timeout() -> u64 {
    120
}
fn default_pong_timeout() -> u64 {
    30
}
fn default_client_event_rate() -> u32 {
    10
}
fn default_max_event_payload() -> usize {
    10 * 1024
}
fn default_max_batch_size() -> usize {
    10
}
fn default_presence_max_members() -> usize {
    100
}
fn default_presence_max_user_info() -> usize {
    1024
}
fn default_cache_ttl() -> u64 {
    MAX_CACHE_TTL_SECS
}
fn default_history_size() -> usize {
    100
}
fn default_history_ttl() -> u64 {
    600
}

/// A Pusher app: clients connect to `/app/{key}`, backends call
/// `/apps/{id}/...` signed with its secret. Its channels are herald
/// channels of their own, apart from every other app's and from `/ws`.
#[derive(Debug, Clone)]
pub struct App {
    /// The app id, in the HTTP API's paths (digits, for the Python SDK).
    pub id: String,
    /// The key, in the WebSocket path and in every signature.
    pub key: String,
    /// What every signature is made with.
    pub secret: Secret,
    /// A disabled app's clients are refused (4003).
    pub enabled: bool,
    /// Whether clients may send `client-*` events.
    pub client_events: bool,
    /// Sent in `connection_established`; a connection quiet this long is
    /// pinged.
    pub activity_timeout: Duration,
    /// How long a pinged connection has to answer (else 4201).
    pub pong_timeout: Duration,
    /// Client events one connection may send per second.
    pub client_event_rate: u32,
    /// Largest event `data` (HTTP API: 413; client events: an error).
    pub max_event_payload_bytes: usize,
    /// Events in one `batch_events` call.
    pub max_batch_size: usize,
    /// Distinct users in one presence channel.
    pub presence_max_members: usize,
    /// Largest `user_info` of a presence member.
    pub presence_max_user_info_bytes: usize,
    /// How long a cache channel keeps its last event.
    pub cache_ttl_secs: u64,
    /// Connections of this app per node (0: no limit but the node's).
    pub max_connections: usize,
    /// Events kept per channel for recovery (`herald-pusher.js`).
    pub history_size: usize,
    /// How long they are kept.
    pub history_ttl_secs: u64,
    /// Its webhooks: URL and the kinds each gets.
    pub webhooks: Vec<(String, NoticeKinds)>,
    /// Channel options by kind: plain, presence, cache, presence cache.
    options: [NamespaceOptions; 4],
}

impl App {
    /// The options of an app channel of this kind.
    pub fn options_for(&self, kind: AppChannelKind, cache: bool) -> &NamespaceOptions {
        let index = match (kind == AppChannelKind::Presence, cache) {
            (false, false) => PLAIN,
            (true, false) => PRESENCE,
            (false, true) => CACHE,
            (true, true) => PRESENCE_CACHE,
        };
        // The array has every index.
        self.options.get(index).unwrap_or(&self.options[PLAIN])
    }
}

/// Reads and checks the `[[apps]]` array of the config file; every problem
/// found goes into `errors`.
pub(super) fn read(value: toml::Value, source: &Source, errors: &mut Vec<ConfigError>) -> Vec<App> {
    let toml::Value::Array(items) = value else {
        errors.push(ConfigError::setting("apps", source, "must be an array of [[apps]] sections"));
        return Vec::new();
    };
    let mut apps: Vec<App> = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let section = format!("apps[{index}]");
        let settings = match item.try_into::<AppSettings>() {
            Ok(settings) => settings,
            Err(error) => {
                errors.push(ConfigError::setting(&section, source, error.to_string().trim()));
                continue;
            }
        };
        let problems = check(&settings, &apps);
        if problems.is_empty() {
            apps.push(build(settings));
        }
        for problem in problems {
            errors.push(ConfigError::setting(&section, source, problem));
        }
    }
    apps
}

/// What is wrong with one app (given the apps before it).
fn check(app: &AppSettings, before: &[App]) -> Vec<String> {
    let mut problems = Vec::new();
    let id_ok = !app.id.is_empty()
        && app.id.len() <= MAX_APP_ID_LEN
        && app.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
    if !id_ok {
        problems.push(format!(
            "id {:?} must be 1 to {MAX_APP_ID_LEN} of A-Z a-z 0-9 _ - (digits for the Python SDK)",
            app.id
        ));
    }
    let key_ok = !app.key.is_empty()
        && app.key.len() <= 64
        && app.key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !key_ok {
        problems.push(format!("key {:?} must be 1 to 64 of A-Z a-z 0-9 _ - .", app.key));
    }
    if app.secret.len() < 16 || !app.secret.bytes().all(|b| b.is_ascii_graphic()) {
        problems.push("secret must be at least 16 printable characters without spaces".into());
    }
    if before.iter().any(|other| other.id == app.id) {
        problems.push(format!("another app has id {:?}", app.id));
    }
    if before.iter().any(|other| other.key == app.key) {
        problems.push(format!("another app has key {:?}", app.key));
    }
    let ranges: [(&str, u64, u64, u64); 8] = [
        ("activity_timeout_secs", app.activity_timeout_secs, 1, 3600),
        ("pong_timeout_secs", app.pong_timeout_secs, 1, 600),
        ("client_event_rate", u64::from(app.client_event_rate), 1, 10_000),
        ("max_event_payload_bytes", app.max_event_payload_bytes as u64, 1, 1 << 20),
        ("max_batch_size", app.max_batch_size as u64, 1, 1000),
        ("presence_max_members", app.presence_max_members as u64, 1, MAX_PRESENCE_MEMBERS as u64),
        ("presence_max_user_info_bytes", app.presence_max_user_info_bytes as u64, 1, 64 << 10),
        ("cache_ttl_secs", app.cache_ttl_secs, 1, MAX_CACHE_TTL_SECS),
    ];
    for (name, value, min, max) in ranges {
        if !(min..=max).contains(&value) {
            problems.push(format!("{name} must be between {min} and {max}, got {value}"));
        }
    }
    if app.history_size > super::MAX_HISTORY_SIZE {
        problems.push(format!("history_size must be at most {}", super::MAX_HISTORY_SIZE));
    }
    if app.history_size > 0 && app.history_ttl_secs == 0 {
        problems.push("history_ttl_secs must be above 0 when history_size is".into());
    }
    for webhook in &app.webhooks {
        if let Err(problem) = check_webhook(&webhook.url, &webhook.event_types) {
            problems.push(problem);
        }
    }
    problems
}

fn build(app: AppSettings) -> App {
    let webhooks: Vec<(String, NoticeKinds)> = app
        .webhooks
        .iter()
        .filter_map(|webhook| {
            Some((webhook.url.clone(), check_webhook(&webhook.url, &webhook.event_types).ok()?))
        })
        .collect();
    let notices = NoticeKinds(webhooks.iter().fold(0, |bits, (_, kinds)| bits | kinds.0));
    let plain = NamespaceOptions {
        history_size: app.history_size,
        history_ttl_secs: if app.history_size > 0 { app.history_ttl_secs } else { 0 },
        presence: false,
        join_leave: false,
        client_publish: false,
        notices,
    };
    let presence = NamespaceOptions { presence: true, join_leave: true, ..plain.clone() };
    // A cache channel keeps at least its last event, for the cache's TTL.
    let cache = NamespaceOptions {
        history_size: plain.history_size.max(1),
        history_ttl_secs: app.cache_ttl_secs,
        ..plain.clone()
    };
    let presence_cache = NamespaceOptions { presence: true, join_leave: true, ..cache.clone() };
    App {
        id: app.id,
        key: app.key,
        secret: Secret::new(app.secret),
        enabled: app.enabled,
        client_events: app.client_events,
        activity_timeout: Duration::from_secs(app.activity_timeout_secs),
        pong_timeout: Duration::from_secs(app.pong_timeout_secs),
        client_event_rate: app.client_event_rate,
        max_event_payload_bytes: app.max_event_payload_bytes,
        max_batch_size: app.max_batch_size,
        presence_max_members: app.presence_max_members,
        presence_max_user_info_bytes: app.presence_max_user_info_bytes,
        cache_ttl_secs: app.cache_ttl_secs,
        max_connections: app.max_connections,
        history_size: app.history_size,
        history_ttl_secs: app.history_ttl_secs,
        webhooks,
        options: [plain, presence, cache, presence_cache],
    }
}

/// The app `--dev` adds when the config file has none: id `1`, key
/// `herald-dev`, client events on, and the given (generated) secret.
pub(super) fn dev_app(secret: String) -> App {
    build(AppSettings {
        id: "1".into(),
        key: "herald-dev".into(),
        secret,
        enabled: true,
        client_events: true,
        activity_timeout_secs: default_activity_timeout(),
        pong_timeout_secs: default_pong_timeout(),
        client_event_rate: default_client_event_rate(),
        max_event_payload_bytes: default_max_event_payload(),
        max_batch_size: default_max_batch_size(),
        presence_max_members: default_presence_max_members(),
        presence_max_user_info_bytes: default_presence_max_user_info(),
        cache_ttl_secs: default_cache_ttl(),
        max_connections: 0,
        history_size: default_history_size(),
        history_ttl_secs: default_history_ttl(),
        webhooks: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn apps(text: &str) -> (Vec<App>, Vec<ConfigError>) {
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut errors = Vec::new();
        let source = Source::File(PathBuf::from("herald.toml"));
        let apps = read(table.get("apps").cloned().unwrap(), &source, &mut errors);
        (apps, errors)
    }

    #[test]
    fn an_app_gets_pushers_defaults_and_options_per_channel_kind() {
        let (apps, errors) =
            apps("[[apps]]\nid = \"1\"\nkey = \"app-key\"\nsecret = \"app-secret-0123456789\"\n");
        assert!(errors.is_empty(), "{errors:?}");
        let app = &apps[0];
        assert_eq!(app.activity_timeout, Duration::from_secs(120));
        assert_eq!(app.max_batch_size, 10);
        assert!(!app.client_events);
        let plain = app.options_for(AppChannelKind::Private, false);
        assert!(!plain.presence);
        assert_eq!(plain.history_size, 100);
        let presence = app.options_for(AppChannelKind::Presence, false);
        assert!(presence.presence && presence.join_leave);
        let cache = app.options_for(AppChannelKind::Public, true);
        assert_eq!(cache.history_ttl_secs, MAX_CACHE_TTL_SECS);
    }

    #[test]
    fn every_problem_of_every_app_is_reported() {
        let (apps, errors) = apps(
            "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"short\"\nmax_batch_size = 0\n\
             [[apps]]\nid = \"a;b\"\nkey = \"k2\"\nsecret = \"0123456789abcdef\"\n\
             [[apps]]\nid = \"3\"\nkey = \"k3\"\nsecret = \"0123456789abcdef\"\nwebhooks = 1\n",
        );
        assert!(apps.is_empty());
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 4, "{text:?}");
        assert!(text[0].contains("apps[0]") && text[0].contains("secret"));
        assert!(text[1].contains("max_batch_size"));
        assert!(text[2].contains("apps[1]") && text[2].contains("id"));
        assert!(text[3].contains("apps[2]") && text[3].contains("webhooks"));
    }

    #[test]
    fn ids_and_keys_are_unique() {
        let (apps, errors) = apps(
            "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"0123456789abcdef\"\n\
             [[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"0123456789abcdef\"\n",
        );
        assert_eq!(apps.len(), 1);
        assert_eq!(errors.len(), 2);
    }
}
