//! Certificates for the TLS tests: a test CA made with rcgen, server certificates it signs (good, expired, not yet valid), the files herald reads, and TLS clients that trust the CA.

use super::{DEADLINE, TlsStream, connect};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate authority of the tests' own.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate (the chain file: the certificate, then the CA's)
/// and its key, as PEM.
#[derive(Clone)]
pub struct Issued {
    pub chain: String,
    pub key: String,
    /// The server certificate alone, DER, to compare with what a client saw.
    pub der: Vec<u8>,
    /// base64(SHA-256(SubjectPublicKeyInfo)), as Chromium's
    /// `--ignore-certificate-errors-spki-list` takes it.
    pub spki_sha256: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "herald test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `localhost` and 127.0.0.1 valid from 2020 to 2099.
    pub fn issue(&self) -> Issued {
        self.issue_valid((2020, 1, 1), (2099, 1, 1))
    }

    /// A certificate for `localhost` and 127.0.0.1, valid from `from` to
    /// `until` (year, month, day).
    pub fn issue_valid(&self, from: (i32, u8, u8), until: (i32, u8, u8)) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.not_before = date_time_ymd(from.0, from.1, from.2);
        params.not_after = date_time_ymd(until.0, until.1, until.2);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let spki = {
            use base64::Engine as _;
            use sha2::Digest as _;
            base64::engine::general_purpose::STANDARD
                .encode(sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)))
        };
        Issued {
            chain: format!("{}{}", cert.pem(), self.issuer.pem()),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
            spki_sha256: spki,
        }
    }

    /// A client configuration that trusts this CA and offers ALPN
    /// `http/1.1`, as browsers do.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client_config_with(rustls::ALL_VERSIONS, &[b"http/1.1"])
    }

    /// A client configuration that trusts this CA, for these protocol
    /// versions and ALPN protocols.
    pub fn client_config_with(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.pem().as_bytes()).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// The certificate and key files herald reads, in a fresh directory.
pub struct CertFiles {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// Writes `issued` into a new directory named after `name`.
    pub fn new(name: &str, issued: &Issued) -> CertFiles {
        let dir = std::env::temp_dir().join(format!("herald-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let files =
            CertFiles { cert: dir.join("fullchain.pem"), key: dir.join("privkey.pem"), dir };
        files.replace(issued);
        files
    }

    /// Replaces both files, as a renewal does.
    pub fn replace(&self, issued: &Issued) {
        write_file(&self.cert, &issued.chain);
        write_file(&self.key, &issued.key);
    }

    /// A file beside the others.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a file whole (to a temporary name, then renamed into place, as
/// certbot does, so a reader never sees half a file).
pub fn write_file(path: &Path, text: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// A TLS connection to `addr` for `localhost`, handshake done.
pub fn connect_tls(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> TlsStream {
    let stream = try_connect_tls(addr, config).unwrap_or_else(|e| panic!("TLS handshake: {e}"));
    assert!(!stream.conn.is_handshaking());
    stream
}

/// A TLS connection to `addr` for `localhost`: the handshake's outcome.
pub fn try_connect_tls(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream> {
    let tcp = connect(addr);
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let deadline = std::time::Instant::now() + DEADLINE;
    while stream.conn.is_handshaking() {
        assert!(std::time::Instant::now() < deadline, "no TLS handshake within the deadline");
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// The server certificate a TLS connection got (DER).
pub fn served_certificate(stream: &TlsStream) -> Vec<u8> {
    stream.conn.peer_certificates().unwrap()[0].to_vec()
}
