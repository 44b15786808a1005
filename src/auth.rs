//! Who a connection is and what it may do: HS256 connection tokens, the channel access rules, the API key check.

use crate::channel::ChannelName;
use crate::config::Secret;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

/// Seconds of clock difference allowed between the backend that signs a
/// token and herald: `exp` and `nbf` are checked this much leniently.
pub const TOKEN_LEEWAY_SECS: u64 = 10;
/// Longest token accepted. A token rides in the request head, which is at
/// most 8 KiB anyway; real tokens are a few hundred bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Most `channels` grants one token may carry.
pub const MAX_GRANTS: usize = 256;

/// Seconds since the Unix epoch, by the wall clock.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// Why a token is refused. Each becomes a `401` whose message says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts, bad JSON, or a claim of the wrong type.
    Malformed(&'static str),
    /// `alg` is not `HS256` (`none` included).
    Algorithm,
    /// The signature does not match the token secret.
    Signature,
    /// `exp` has passed.
    Expired,
    /// `nbf` has not come yet.
    NotYetValid,
}

impl TokenError {
    /// The sentence in the `401` answer.
    pub fn message(&self) -> &'static str {
        match self {
            TokenError::Malformed(what) => what,
            TokenError::Algorithm => "token algorithm must be HS256",
            TokenError::Signature => "token signature does not match",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not valid yet (nbf)",
        }
    }
}

/// A connection's identity, from its token or anonymous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`; empty for an anonymous connection.
    pub user: Arc<str>,
    /// The token's `channels` claim: private channels this connection may
    /// use, each exact or a prefix ending in `*`.
    pub grants: Box<[Box<str>]>,
}

/// What a connection presented: its identity, and until when its token is
/// valid. (Kept apart from [`Identity`], which a `/ws` session holds for
/// its whole life: the expiry becomes a deadline on the shard clock.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Who the connection is.
    pub identity: Identity,
    /// The token's `exp`, in Unix seconds; `None`: no token, or no `exp`.
    pub expires_at: Option<u64>,
}

/// Why a connection may not use a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The channel needs an identity and the connection has none.
    Anonymous,
    /// A user channel of other users.
    OtherUser,
    /// A private channel the token does not grant.
    NoGrant,
}

impl Denied {
    /// The sentence in the error reply.
    pub fn message(&self) -> &'static str {
        match self {
            Denied::Anonymous => "this channel needs a connection token",
            Denied::OtherUser => "this is another user's channel",
            Denied::NoGrant => "the connection token does not grant this private channel",
        }
    }
}

impl Identity {
    /// An anonymous connection: no user, no grants. (All anonymous
    /// connections share one empty user string: no allocation each.)
    pub fn anonymous() -> Identity {
        static ANONYMOUS: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| Arc::from(""));
        Identity { user: ANONYMOUS.clone(), grants: Box::new([]) }
    }

    /// Whether this connection may subscribe to, publish on, or read the
    /// history and presence of `channel`: a user channel (`...#42,43`) only
    /// for its users, a private channel (`private-...`, `$...`) only with a
    /// matching grant, any other channel for anyone.
    pub fn may_access(&self, channel: &ChannelName) -> Result<(), Denied> {
        let needs_identity = channel.users().is_some() || channel.is_private();
        if needs_identity && self.user.is_empty() {
            return Err(Denied::Anonymous);
        }
        if let Some(mut users) = channel.users()
            && !users.any(|user| user == &*self.user)
        {
            return Err(Denied::OtherUser);
        }
        if channel.is_private()
            && !self.grants.iter().any(|grant| grant_matches(grant, channel.as_str()))
        {
            return Err(Denied::NoGrant);
        }
        Ok(())
    }
}

fn grant_matches(grant: &str, channel: &str) -> bool {
    match grant.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => grant == channel,
    }
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
}

/// Verifies an HS256 token and returns the identity and expiry it carries.
/// The signature is checked (in constant time) before any claim is read.
pub fn verify(token: &str, secret: &Secret, now: u64) -> Result<Credentials, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("a token is three base64url parts separated by dots"));
    };
    let header = BASE64URL
        .decode(header_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Header>(&bytes).ok())
        .ok_or(TokenError::Malformed("token header is not base64url JSON"))?;
    if header.alg.as_deref() != Some("HS256") {
        return Err(TokenError::Algorithm);
    }
    let signature = BASE64URL
        .decode(signature_b64)
        .map_err(|_| TokenError::Malformed("token signature is not base64url"))?;
    let mut mac = hmac_for(secret);
    mac.update(header_b64.as_bytes());
    mac.update(b".");
    mac.update(claims_b64.as_bytes());
    mac.verify_slice(&signature).map_err(|_| TokenError::Signature)?;

    let claims: serde_json::Map<String, Value> = BASE64URL
        .decode(claims_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(TokenError::Malformed("token claims are not a base64url JSON object"))?;
    let user = match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub.as_str(),
        _ => return Err(TokenError::Malformed("token has no sub (a non-empty string)")),
    };
    let expires_at = numeric_date(claims.get("exp"), "token exp is not a number")?;
    if let Some(exp) = expires_at
        && now > exp.saturating_add(TOKEN_LEEWAY_SECS)
    {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = numeric_date(claims.get("nbf"), "token nbf is not a number")?
        && now.saturating_add(TOKEN_LEEWAY_SECS) < nbf
    {
        return Err(TokenError::NotYetValid);
    }
    let grants = match claims.get("channels") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_GRANTS => items
            .iter()
            .map(|item| item.as_str().map(Box::from))
            .collect::<Option<Vec<Box<str>>>>()
            .ok_or(TokenError::Malformed("token channels must be a list of strings"))?,
        Some(_) => {
            return Err(TokenError::Malformed(
                "token channels must be a list of at most 256 strings",
            ));
        }
    };
    let identity = Identity { user: Arc::from(user), grants: grants.into_boxed_slice() };
    Ok(Credentials { identity, expires_at })
}

/// A JWT NumericDate (seconds, possibly fractional) as whole seconds.
fn numeric_date(value: Option<&Value>, problem: &'static str) -> Result<Option<u64>, TokenError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => match (number.as_u64(), number.as_f64()) {
            (Some(seconds), _) => Ok(Some(seconds)),
            // A fractional date: its whole seconds (a saturating cast).
            #[allow(clippy::cast_possible_truncation)]
            (None, Some(seconds)) if seconds.is_finite() => Ok(Some(seconds.max(0.0) as u64)),
            _ => Err(TokenError::Malformed(problem)),
        },
        Some(_) => Err(TokenError::Malformed(problem)),
    }
}

fn hmac_for(secret: &Secret) -> HmacSha256 {
    // HMAC takes a key of any length; this cannot fail.
    match HmacSha256::new_from_slice(secret.expose().as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// Signs a token for `user` (what `herald token` prints, and what tests use).
pub fn mint(
    secret: &Secret,
    user: &str,
    ttl_secs: Option<u64>,
    channels: &[String],
    now: u64,
) -> String {
    let header = BASE64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), Value::from(user));
    claims.insert("iat".into(), Value::from(now));
    if let Some(ttl) = ttl_secs {
        claims.insert("exp".into(), Value::from(now.saturating_add(ttl)));
    }
    if !channels.is_empty() {
        claims.insert("channels".into(), Value::from(channels.to_vec()));
    }
    let claims = BASE64URL.encode(Value::Object(claims).to_string());
    let mut mac = hmac_for(secret);
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(claims.as_bytes());
    let signature = BASE64URL.encode(mac.finalize().into_bytes());
    format!("{header}.{claims}.{signature}")
}

/// The server API key, compared in constant time: both the configured and
/// the presented key go through HMAC with a random per-process key, and the
/// two codes are compared with `CtOutput`'s constant-time equality, so
/// neither the key's bytes nor its length leak through timing.
#[derive(Clone)]
pub struct ApiKey {
    mac_key: [u8; 32],
    expected: hmac::digest::CtOutput<HmacSha256>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

impl ApiKey {
    /// Prepares the check for the configured key.
    pub fn new(key: &Secret) -> ApiKey {
        let mut mac_key = [0u8; 32];
        mac_key.copy_from_slice(&crate::sys::random_bytes(32));
        let expected = Self::code(&mac_key, key.expose().as_bytes());
        ApiKey { mac_key, expected }
    }

    fn code(mac_key: &[u8; 32], key: &[u8]) -> hmac::digest::CtOutput<HmacSha256> {
        let mut mac = match HmacSha256::new_from_slice(mac_key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        mac.update(key);
        mac.finalize()
    }

    /// Whether `presented` is the API key.
    pub fn matches(&self, presented: &[u8]) -> bool {
        Self::code(&self.mac_key, presented) == self.expected
    }
}

/// Failed API key checks one peer may make within [`FAILURE_WINDOW`]
/// before every request it sends is answered 429 until the window ends.
pub const MAX_KEY_FAILURES: u32 = 10;
/// The window [`MAX_KEY_FAILURES`] is counted over.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Peers tracked at once; past it the stalest entries are dropped, so a
/// flood of addresses cannot grow the table without bound.
const MAX_TRACKED_PEERS: usize = 16_384;

/// Counts failed API key checks per peer address (IPv6 by /64, the block a
/// single host usually holds) and refuses a peer that fails too often.
#[derive(Debug, Default)]
pub struct KeyFailures {
    peers: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Peers in the table: while it is 0, a check takes no lock.
    tracked: AtomicUsize,
}

impl KeyFailures {
    /// `Err(seconds to wait)` when `peer` has used up its failures.
    pub fn check(&self, peer: Option<IpAddr>, now: Instant) -> Result<(), u64> {
        let Some(peer) = peer.map(peer_block) else { return Ok(()) };
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        match peers.get(&peer) {
            Some((count, since)) if *count >= MAX_KEY_FAILURES => {
                let ends = *since + FAILURE_WINDOW;
                if ends > now { Err(ends.duration_since(now).as_secs().max(1)) } else { Ok(()) }
            }
            _ => Ok(()),
        }
    }

    /// Records a failed check by `peer`.
    pub fn record(&self, peer: Option<IpAddr>, now: Instant) {
        let Some(peer) = peer.map(peer_block) else { return };
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if peers.len() >= MAX_TRACKED_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, (_, since)| *since + FAILURE_WINDOW > now);
            if peers.len() >= MAX_TRACKED_PEERS
                && let Some(stalest) =
                    peers.iter().min_by_key(|(_, (_, since))| *since).map(|(ip, _)| *ip)
            {
                peers.remove(&stalest);
            }
        }
        let entry = peers.entry(peer).or_insert((0, now));
        if entry.1 + FAILURE_WINDOW <= now {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
        self.tracked.store(peers.len(), Ordering::Relaxed);
    }
}

/// The address block a peer is counted by: the address itself for IPv4,
/// its /64 for IPv6.
fn peer_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("0123456789abcdef0123456789abcdef")
    }

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn minted_tokens_verify() {
        let token = mint(&secret(), "42", Some(60), &["private-a".into(), "$team:*".into()], 1000);
        let Credentials { identity, expires_at } = verify(&token, &secret(), 1000).unwrap();
        assert_eq!(&*identity.user, "42");
        assert_eq!(expires_at, Some(1060));
        assert_eq!(identity.grants.len(), 2);
    }

    #[test]
    fn expiry_and_not_before_have_a_small_leeway() {
        let token = mint(&secret(), "42", Some(60), &[], 1000);
        assert!(verify(&token, &secret(), 1060 + TOKEN_LEEWAY_SECS).is_ok());
        assert_eq!(verify(&token, &secret(), 1061 + TOKEN_LEEWAY_SECS), Err(TokenError::Expired));
        let future = signed(&serde_json::json!({"sub": "1", "nbf": 2000}));
        assert_eq!(verify(&future, &secret(), 1000), Err(TokenError::NotYetValid));
        assert!(verify(&future, &secret(), 2000 - TOKEN_LEEWAY_SECS).is_ok());
    }

    fn signed(claims: &Value) -> String {
        let header = BASE64URL.encode(br#"{"alg":"HS256"}"#);
        let claims = BASE64URL.encode(claims.to_string());
        let mut mac = hmac_for(&secret());
        mac.update(format!("{header}.{claims}").as_bytes());
        format!("{header}.{claims}.{}", BASE64URL.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn wrong_signatures_algorithms_and_shapes_are_refused() {
        let token = mint(&secret(), "42", None, &[], 1000);
        let other = Secret::new("another-secret-another-secret-xx");
        assert_eq!(verify(&token, &other, 1000), Err(TokenError::Signature));
        // alg: none with an empty signature.
        let claims = token.split('.').nth(1).unwrap();
        let none = format!("{}.{claims}.", BASE64URL.encode(br#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(verify(&none, &secret(), 1000), Err(TokenError::Algorithm));
        let hs512 = format!("{}.{claims}.x", BASE64URL.encode(br#"{"alg":"HS512"}"#));
        assert_eq!(verify(&hs512, &secret(), 1000), Err(TokenError::Algorithm));
        for bad in ["", "a.b", "a.b.c.d", "!!!.b.c", &"a".repeat(MAX_TOKEN_BYTES + 1)] {
            assert!(matches!(verify(bad, &secret(), 1000), Err(TokenError::Malformed(_))), "{bad}");
        }
        // Tampered claims.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = BASE64URL.encode(br#"{"sub":"admin"}"#);
        parts[1] = &forged;
        assert_eq!(verify(&parts.join("."), &secret(), 1000), Err(TokenError::Signature));
    }

    #[test]
    fn claims_are_type_checked() {
        for claims in [
            serde_json::json!({}),
            serde_json::json!({"sub": ""}),
            serde_json::json!({"sub": 42}),
            serde_json::json!({"sub": "1", "exp": "soon"}),
            serde_json::json!({"sub": "1", "channels": "private-a"}),
            serde_json::json!({"sub": "1", "channels": [1]}),
        ] {
            assert!(
                matches!(verify(&signed(&claims), &secret(), 1000), Err(TokenError::Malformed(_))),
                "{claims}"
            );
        }
        let fractional = signed(&serde_json::json!({"sub": "1", "exp": 1500.5}));
        assert_eq!(verify(&fractional, &secret(), 1000).unwrap().expires_at, Some(1500));
    }

    #[test]
    fn channel_rules() {
        let user = Identity {
            user: Arc::from("42"),
            grants: Box::new(["private-a".into(), "$team:*".into()]),
        };
        assert_eq!(user.may_access(&channel("news")), Ok(()));
        assert_eq!(user.may_access(&channel("notifications#42")), Ok(()));
        assert_eq!(user.may_access(&channel("dialog#7,42")), Ok(()));
        assert_eq!(user.may_access(&channel("notifications#7")), Err(Denied::OtherUser));
        assert_eq!(user.may_access(&channel("notifications#420")), Err(Denied::OtherUser));
        assert_eq!(user.may_access(&channel("private-a")), Ok(()));
        assert_eq!(user.may_access(&channel("private-ab")), Err(Denied::NoGrant));
        assert_eq!(user.may_access(&channel("$team:ops")), Ok(()));
        assert_eq!(user.may_access(&channel("$other")), Err(Denied::NoGrant));
        let anonymous = Identity::anonymous();
        assert_eq!(anonymous.may_access(&channel("news")), Ok(()));
        assert_eq!(anonymous.may_access(&channel("news#")), Err(Denied::Anonymous));
        assert_eq!(anonymous.may_access(&channel("private-a")), Err(Denied::Anonymous));
    }

    #[test]
    fn the_api_key_matches_only_itself() {
        let key = ApiKey::new(&Secret::new("the-api-key-0123"));
        assert!(key.matches(b"the-api-key-0123"));
        assert!(!key.matches(b"the-api-key-0124"));
        assert!(!key.matches(b"the-api-key-012"));
        assert!(!key.matches(b""));
    }

    #[test]
    fn key_failures_lock_out_a_peer_for_the_window() {
        let failures = KeyFailures::default();
        let start = Instant::now();
        let peer: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let other: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        for _ in 0..MAX_KEY_FAILURES {
            assert_eq!(failures.check(peer, start), Ok(()));
            failures.record(peer, start);
        }
        assert_eq!(failures.check(peer, start), Err(60));
        assert_eq!(failures.check(other, start), Ok(()));
        assert_eq!(failures.check(peer, start + FAILURE_WINDOW), Ok(()));
        // IPv6 peers are counted by their /64.
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        for _ in 0..MAX_KEY_FAILURES {
            failures.record(Some(a), start);
        }
        assert!(failures.check(Some(b), start).is_err());
    }

    #[test]
    fn key_failures_table_is_bounded() {
        let failures = KeyFailures::default();
        let now = Instant::now();
        for i in 0..(u32::try_from(MAX_TRACKED_PEERS).unwrap() + 100) {
            failures.record(Some(IpAddr::V4(i.into())), now);
        }
        assert!(failures.tracked.load(Ordering::Relaxed) <= MAX_TRACKED_PEERS);
    }
}
