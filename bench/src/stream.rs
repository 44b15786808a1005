//! A load connection: plain TCP, or TLS (rustls, buffered) over it for wss:// servers; non-blocking, registered with mio like the socket itself.

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The TLS client configuration, once `--ca` was given.
static CLIENT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Trusts the CA certificate(s) in `path` for wss:// servers. Every
/// connection makes a full handshake (no resumption): the `connect`
/// figures are those of new visitors.
pub fn trust(path: &Path) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for cert in certs {
        roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    let _ = CLIENT.set(Arc::new(config));
    Ok(())
}

/// A connection to the server.
pub enum Stream {
    /// ws://
    Plain(TcpStream),
    /// wss://
    Tls(Box<TlsStream>),
}

/// TLS over a non-blocking socket.
pub struct TlsStream {
    tcp: TcpStream,
    tls: rustls::ClientConnection,
}

impl Stream {
    /// Wraps a just-connected socket; with `tls`, the handshake starts with
    /// the first flush.
    pub fn new(tcp: TcpStream, tls: bool) -> io::Result<Stream> {
        if !tls {
            return Ok(Stream::Plain(tcp));
        }
        let config = CLIENT
            .get()
            .cloned()
            .ok_or_else(|| io::Error::other("a wss:// server needs --ca FILE"))?;
        let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
        let tls = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        Ok(Stream::Tls(Box::new(TlsStream { tcp, tls })))
    }

    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.tcp,
        }
    }

    /// Writes the ciphertext rustls holds (the handshake, or what the
    /// socket did not take). Call it on every writable event.
    pub fn flush_tls(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

impl TlsStream {
    fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                    ) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let tls = match self {
            Stream::Plain(tcp) => return tcp.read(buf),
            Stream::Tls(tls) => tls,
        };
        loop {
            match tls.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match tls.tls.read_tls(&mut tls.tcp) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    tls.tls.process_new_packets().map_err(io::Error::other)?;
                    // Handshake messages, or a key update, to answer.
                    tls.flush()?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let tls = match self {
            Stream::Plain(tcp) => return tcp.write(buf),
            Stream::Tls(tls) => tls,
        };
        let n = tls.tls.writer().write(buf)?;
        tls.flush()?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}

impl mio::event::Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.register(registry, token, interests),
            Stream::Tls(tls) => tls.tcp.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.reregister(registry, token, interests),
            Stream::Tls(tls) => tls.tcp.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.deregister(registry),
            Stream::Tls(tls) => tls.tcp.deregister(registry),
        }
    }
}
