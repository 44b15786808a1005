//! TLS settings: the certificate chain and private key read from PEM files and checked (parsed, matching, in date), the rustls server configuration built once, and the reload that swaps the pair for new handshakes.
//!
//! The configuration is shared by every shard. It picks its certificate
//! through [`Certificates`], a resolver holding the current pair behind a
//! lock that a handshake holds only to clone an `Arc`: a reload (SIGHUP, on
//! the main thread) reads and checks the files first and swaps the pair only
//! if they are good, so new handshakes get the new pair, handshakes under
//! way and open connections keep the one they started with, and a bad pair
//! leaves the old one in place.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The one application protocol herald speaks over TLS, offered by ALPN.
/// A client that offers ALPN without it (only `h2`, say) is refused in the
/// handshake: herald has no HTTP/2.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Largest certificate or key file read (a chain of a few certificates is a
/// few KiB): a wrong path to a big file is refused instead of read whole.
pub const MAX_PEM_FILE_BYTES: u64 = 1 << 20;

/// A certificate that expires within this many days is reported with a
/// warning at start-up and at each reload.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Which setting a problem is about, so that every message names the file
/// and the setting that pointed at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `tls_cert`: the certificate chain, leaf first.
    Cert,
    /// `tls_key`: the private key.
    Key,
}

impl Setting {
    /// The setting's key in the config file.
    pub fn key(self) -> &'static str {
        match self {
            Setting::Cert => "tls_cert",
            Setting::Key => "tls_key",
        }
    }
}

/// Why a certificate and key cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// The setting the problem is about.
    pub setting: Setting,
    /// What is wrong, naming the file.
    pub message: String,
}

impl TlsError {
    fn new(setting: Setting, message: impl Into<String>) -> Self {
        TlsError { setting, message: message.into() }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsError {}

/// A checked certificate chain and key, ready to serve.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The chain and the signing key, as rustls serves them.
    pub key: Arc<CertifiedKey>,
    /// The leaf certificate's validity, in Unix seconds.
    pub not_before: i64,
    /// The leaf certificate's expiry, in Unix seconds.
    pub not_after: i64,
}

impl Pair {
    /// Reads `cert` (PEM certificates, the server's first, then the chain)
    /// and `key` (a PEM private key: PKCS#8, PKCS#1 RSA or SEC1 EC) and
    /// checks them: both parse, the key belongs to the first certificate,
    /// and that certificate is valid at `now` (Unix seconds). Every error
    /// names the file.
    pub fn load(cert: &Path, key: &Path, now: i64) -> Result<Pair, TlsError> {
        let chain = read_chain(cert)?;
        let private_key = read_key(key)?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::new(
                Setting::Cert,
                format!("{}: no certificate in the file", cert.display()),
            ));
        };
        let (not_before, not_after) = validity(leaf).map_err(|problem| {
            TlsError::new(
                Setting::Cert,
                format!(
                    "{}: the first certificate is not a valid X.509 certificate ({problem})",
                    cert.display()
                ),
            )
        })?;
        if now > not_after {
            return Err(TlsError::new(
                Setting::Cert,
                format!(
                    "{}: the certificate expired on {} (renew it; browsers refuse it)",
                    cert.display(),
                    format_utc(not_after)
                ),
            ));
        }
        if now < not_before {
            return Err(TlsError::new(
                Setting::Cert,
                format!(
                    "{}: the certificate is not valid before {} (it is now {}: check the clock)",
                    cert.display(),
                    format_utc(not_before),
                    format_utc(now)
                ),
            ));
        }
        let provider = rustls::crypto::ring::default_provider();
        let key =
            CertifiedKey::from_der(chain, private_key, &provider).map_err(|error| match error {
                rustls::Error::InconsistentKeys(_) => TlsError::new(
                    Setting::Key,
                    format!(
                        "{} is not the private key of the certificate in {} (the key and the \
                         certificate do not match)",
                        key.display(),
                        cert.display()
                    ),
                ),
                other => TlsError::new(
                    Setting::Key,
                    format!(
                        "{}: unusable private key ({other}); herald takes RSA, ECDSA P-256/P-384 \
                         and Ed25519 keys",
                        key.display()
                    ),
                ),
            })?;
        Ok(Pair { key: Arc::new(key), not_before, not_after })
    }
}

/// Reads a file of at most [`MAX_PEM_FILE_BYTES`].
fn read_pem_file(path: &Path, setting: Setting) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|error| {
        TlsError::new(setting, format!("cannot read {}: {error}", path.display()))
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|error| {
        TlsError::new(setting, format!("cannot read {}: {error}", path.display()))
    })?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(TlsError::new(
            setting,
            format!(
                "{}: larger than {} KiB: not a PEM file",
                path.display(),
                MAX_PEM_FILE_BYTES >> 10
            ),
        ));
    }
    Ok(bytes)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem_file(path, Setting::Cert)?;
    let chain =
        CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|error| {
            TlsError::new(Setting::Cert, format!("{}: bad PEM: {error}", path.display()))
        })?;
    if chain.is_empty() {
        return Err(TlsError::new(
            Setting::Cert,
            format!(
                "{}: no certificate in the file (expected PEM \"-----BEGIN CERTIFICATE-----\" \
                 sections: the server's certificate first, then the chain)",
                path.display()
            ),
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem_file(path, Setting::Key)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::new(
            Setting::Key,
            format!(
                "{}: no private key in the file (expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE \
                 KEY\" or \"EC PRIVATE KEY\" section)",
                path.display()
            ),
        ),
        other => TlsError::new(Setting::Key, format!("{}: bad PEM: {other}", path.display())),
    })
}

/// The certificate herald serves: rustls asks it for the pair at each
/// handshake; a reload swaps the pair.
#[derive(Debug)]
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
    not_after: AtomicI64,
}

impl Certificates {
    fn new(pair: &Pair) -> Self {
        Certificates {
            current: RwLock::new(pair.key.clone()),
            not_after: AtomicI64::new(pair.not_after),
        }
    }

    fn swap(&self, pair: &Pair) {
        // A writer never panics while holding the lock, so it is never
        // poisoned; if it were, the value inside is still a whole `Arc`.
        let mut current = self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = pair.key.clone();
        self.not_after.store(pair.not_after, Ordering::Relaxed);
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl ResolvesServerCert for Certificates {
    // One certificate for every name: herald serves one site. A client
    // without SNI (an IP address in the URL) gets it too.
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    /// The new certificate's expiry, Unix seconds.
    pub not_after: i64,
}

/// TLS for the TLS listener: the files, the current pair, and the rustls
/// server configuration every shard's handshakes use.
#[derive(Debug)]
pub struct Tls {
    cert_path: PathBuf,
    key_path: PathBuf,
    certificates: Arc<Certificates>,
    config: Arc<ServerConfig>,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
}

impl Tls {
    /// Loads and checks the pair (see [`Pair::load`]) and builds the
    /// server configuration: TLS 1.3 and 1.2 with rustls' default suites of
    /// the ring provider, ALPN `http/1.1`, no client certificates.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let pair = Pair::load(cert, key, unix_now())?;
        let certificates = Arc::new(Certificates::new(&pair));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| {
                TlsError::new(Setting::Cert, format!("cannot configure TLS: {error}"))
            })?
            .with_no_client_auth()
            .with_cert_resolver(certificates.clone());
        config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
        Ok(Tls {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            certificates,
            config: Arc::new(config),
            reloads: AtomicU64::new(0),
            failed_reloads: AtomicU64::new(0),
        })
    }

    /// The configuration each new TLS connection is made with.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The served certificate's expiry, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.certificates.not_after.load(Ordering::Relaxed)
    }

    /// Reloads done, and refused because the new files were bad.
    pub fn reload_counts(&self) -> (u64, u64) {
        (self.reloads.load(Ordering::Relaxed), self.failed_reloads.load(Ordering::Relaxed))
    }

    /// Reads and checks both files again and, if they are good, serves
    /// them to every new handshake. Otherwise the current pair stays, and
    /// the error says why. Reads files: call it off the shards.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        match Pair::load(&self.cert_path, &self.key_path, unix_now()) {
            Ok(pair) => {
                self.certificates.swap(&pair);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(Reloaded { not_after: pair.not_after })
            }
            Err(error) => {
                self.failed_reloads.fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    /// The pair new handshakes get (for tests and logs).
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.certificates.current()
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-03-01 12:00:00 UTC` for Unix seconds.
pub fn format_utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let seconds = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One DER element: its tag and contents, and what follows it.
fn der_element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), &'static str> {
    let (&tag, rest) = input.split_first().ok_or("truncated")?;
    let (&first, rest) = rest.split_first().ok_or("truncated")?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let octets = usize::from(first & 0x7F);
        if octets == 0 || octets > 4 {
            return Err("unsupported length");
        }
        let (digits, rest) = rest.split_at_checked(octets).ok_or("truncated")?;
        let length = digits.iter().fold(0usize, |length, &digit| length << 8 | usize::from(digit));
        (length, rest)
    };
    let (contents, rest) = rest.split_at_checked(length).ok_or("truncated")?;
    Ok((tag, contents, rest))
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// `notBefore` and `notAfter` of an X.509 certificate, in Unix seconds:
/// Certificate → TBSCertificate → [version], serial, signature, issuer,
/// Validity.
fn validity(der: &[u8]) -> Result<(i64, i64), &'static str> {
    let (tag, certificate, _) = der_element(der)?;
    if tag != SEQUENCE {
        return Err("not a SEQUENCE");
    }
    let (tag, tbs, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return Err("no TBSCertificate");
    }
    let mut rest = tbs;
    // [0] EXPLICIT version, absent in a version 1 certificate.
    if rest.first() == Some(&0xA0) {
        rest = der_element(rest)?.2;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        rest = der_element(rest)?.2;
    }
    let (tag, validity, _) = der_element(rest)?;
    if tag != SEQUENCE {
        return Err("no Validity");
    }
    let (tag, not_before, rest) = der_element(validity)?;
    let not_before = parse_time(tag, not_before)?;
    let (tag, not_after, _) = der_element(rest)?;
    let not_after = parse_time(tag, not_after)?;
    Ok((not_before, not_after))
}

/// UTCTime `YYMMDDHHMMSSZ` (years 1950-2049) or GeneralizedTime
/// `YYYYMMDDHHMMSSZ`, as X.509 requires them (RFC 5280 4.1.2.5).
fn parse_time(tag: u8, text: &[u8]) -> Result<i64, &'static str> {
    let digits = match (tag, text.split_last()) {
        (UTC_TIME | GENERALIZED_TIME, Some((b'Z', digits))) => digits,
        _ => return Err("bad time"),
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err("bad time");
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, &'static str> {
        let field = digits.get(range).ok_or("bad time")?;
        Ok(field.iter().fold(0i64, |value, digit| value * 10 + i64::from(digit - b'0')))
    };
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let year = number(0..2)?;
            (if year >= 50 { 1900 + year } else { 2000 + year }, 2)
        }
        (GENERALIZED_TIME, 14) => (number(0..4)?, 4),
        _ => return Err("bad time"),
    };
    let month = number(rest..rest + 2)?;
    let day = number(rest + 2..rest + 4)?;
    let hour = number(rest + 4..rest + 6)?;
    let minute = number(rest + 6..rest + 8)?;
    let second = number(rest + 8..rest + 10)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err("bad time");
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for days in [-800_000, -1, 0, 59, 60, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
    }

    #[test]
    fn times_follow_rfc_5280() {
        assert_eq!(parse_time(UTC_TIME, b"700101000000Z"), Ok(0));
        assert_eq!(parse_time(UTC_TIME, b"491231235959Z"), Ok(2_524_607_999));
        assert_eq!(parse_time(GENERALIZED_TIME, b"20500101000000Z"), Ok(2_524_608_000));
        assert!(parse_time(UTC_TIME, b"700101000000").is_err());
        assert!(parse_time(UTC_TIME, b"701301000000Z").is_err());
        assert!(parse_time(GENERALIZED_TIME, b"700101000000Z").is_err());
        assert!(parse_time(0x04, b"700101000000Z").is_err());
    }

    #[test]
    fn der_never_reads_past_its_input() {
        assert!(validity(&[]).is_err());
        assert!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(validity(&[0x30, 0x89, 1, 2, 3, 4, 5, 6, 7, 8, 9]).is_err());
        assert!(validity(&[0x30, 0x02, 0x30, 0x00]).is_err());
        for len in 0..64u8 {
            let mut bytes = vec![0x30, 0x80 | (len % 5)];
            bytes.extend(std::iter::repeat_n(len, usize::from(len)));
            let _ = validity(&bytes);
        }
    }
}

/// Certificates for the crate's own tests, made with rcgen.
#[cfg(test)]
pub(crate) mod test_certs {
    use rcgen::{CertificateParams, KeyPair, date_time_ymd};
    use std::path::{Path, PathBuf};

    /// A self-signed certificate for `localhost` valid from `from` to
    /// `until` (year, month, day): its PEM and its key's PEM.
    pub fn self_signed(from: (i32, u8, u8), until: (i32, u8, u8)) -> (String, String) {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.not_before = date_time_ymd(from.0, from.1, from.2);
        params.not_after = date_time_ymd(until.0, until.1, until.2);
        let cert = params.self_signed(&key).expect("a certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A certificate valid from 2020 to 2099.
    pub fn valid() -> (String, String) {
        self_signed((2020, 1, 1), (2099, 1, 1))
    }

    /// A test CA's certificate (PEM) and a `localhost` certificate it
    /// signed, with its key: (CA PEM, chain PEM, key PEM).
    pub fn ca_signed() -> (String, String, String) {
        use rcgen::{BasicConstraints, CertifiedIssuer, IsCa};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a key"))
            .expect("a CA");
        let key = KeyPair::generate().expect("a key");
        let params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.signed_by(&key, &ca).expect("a certificate");
        (ca.pem(), cert.pem(), key.serialize_pem())
    }

    /// A fresh directory under the system's temporary directory.
    pub fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herald-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir
    }

    /// Writes `text` to `dir/name`.
    pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    }
}

#[cfg(test)]
mod load_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::test_certs::{dir, self_signed, valid, write};
    use super::*;

    #[test]
    fn a_good_pair_loads_and_serves_http_1_1() {
        let dir = dir("good");
        let (cert, key) = valid();
        let tls = Tls::load(&write(&dir, "c.pem", &cert), &write(&dir, "k.pem", &key)).unwrap();
        assert_eq!(tls.server_config().alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(format_utc(tls.not_after()), "2099-01-01 00:00:00 UTC");
    }

    #[test]
    fn every_problem_names_its_file() {
        let dir = dir("problems");
        let (cert, key) = valid();
        let (other_cert, other_key) = valid();
        let cert_path = write(&dir, "cert.pem", &cert);
        let key_path = write(&dir, "key.pem", &key);
        let now = unix_now();
        let missing = dir.join("missing.pem");
        let error = Pair::load(&missing, &key_path, now).unwrap_err();
        assert_eq!(error.setting, Setting::Cert);
        assert!(error.message.starts_with(&format!("cannot read {}", missing.display())));

        let error = Pair::load(&cert_path, &missing, now).unwrap_err();
        assert_eq!(error.setting, Setting::Key);

        let empty = write(&dir, "empty.pem", "");
        let error = Pair::load(&empty, &key_path, now).unwrap_err();
        assert!(error.message.contains("no certificate"), "{error}");
        // A key where the certificate should be, and the reverse.
        let error = Pair::load(&key_path, &key_path, now).unwrap_err();
        assert!(error.message.contains("no certificate"), "{error}");
        let error = Pair::load(&cert_path, &cert_path, now).unwrap_err();
        assert!(error.message.contains("no private key"), "{error}");

        let broken = write(&dir, "broken.pem", "-----BEGIN CERTIFICATE-----\n!!!\n");
        let error = Pair::load(&broken, &key_path, now).unwrap_err();
        assert!(error.message.contains("bad PEM"), "{error}");

        let other_key_path = write(&dir, "other-key.pem", &other_key);
        let error = Pair::load(&cert_path, &other_key_path, now).unwrap_err();
        assert_eq!(error.setting, Setting::Key);
        assert!(error.message.contains("do not match"), "{error}");
        assert!(error.message.contains(&cert_path.display().to_string()), "{error}");
        let _ = other_cert;

        let (old, old_key) = self_signed((2020, 1, 1), (2021, 1, 1));
        let old_path = write(&dir, "old.pem", &old);
        let old_key_path = write(&dir, "old-key.pem", &old_key);
        let error = Pair::load(&old_path, &old_key_path, now).unwrap_err();
        assert!(error.message.contains("expired on 2021-01-01 00:00:00 UTC"), "{error}");
        assert!(error.message.contains(&old_path.display().to_string()), "{error}");

        let (future, future_key) = self_signed((2098, 1, 1), (2099, 1, 1));
        let future_path = write(&dir, "future.pem", &future);
        let future_key_path = write(&dir, "future-key.pem", &future_key);
        let error = Pair::load(&future_path, &future_key_path, now).unwrap_err();
        assert!(error.message.contains("not valid before 2098-01-01"), "{error}");
    }

    #[test]
    fn a_reload_swaps_a_good_pair_and_keeps_the_old_one_otherwise() {
        let dir = dir("reload");
        let (cert, key) = valid();
        let cert_path = write(&dir, "cert.pem", &cert);
        let key_path = write(&dir, "key.pem", &key);
        let tls = Tls::load(&cert_path, &key_path).unwrap();
        let first = tls.current();

        // Only the certificate was replaced: the key no longer matches.
        let (new_cert, new_key) = self_signed((2020, 1, 1), (2098, 6, 1));
        write(&dir, "cert.pem", &new_cert);
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&tls.current(), &first), "the old pair stays");
        assert_eq!(tls.reload_counts(), (0, 1));

        write(&dir, "key.pem", &new_key);
        let reloaded = tls.reload().unwrap();
        assert_eq!(format_utc(reloaded.not_after), "2098-06-01 00:00:00 UTC");
        assert!(!Arc::ptr_eq(&tls.current(), &first));
        assert_eq!(tls.not_after(), reloaded.not_after);
        assert_eq!(tls.reload_counts(), (1, 1));
    }

    #[test]
    fn validity_is_read_from_real_certificates() {
        let (cert, _) = self_signed((2001, 2, 3), (2051, 4, 5));
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let (from, until) = validity(&der).unwrap();
        assert_eq!(format_utc(from), "2001-02-03 00:00:00 UTC");
        assert_eq!(format_utc(until), "2051-04-05 00:00:00 UTC");
    }
}
