//! Shared by the fuzz targets: an allocator that tracks the peak of live bytes, and drivers that feed bytes to a connection in the pieces the input asks for, plainly or through TLS.

use herald::Config;
use herald::conn::{Conn, Ctx};
use herald::testing::MemorySocket;
use rustls::pki_types::pem::PemObject;
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

mod tracking;
pub use tracking::{Tracking, measure_from_here, peak_above};

/// A context for the fuzz targets: the dev configuration with small limits,
/// so that inputs reach them.
pub fn context() -> Ctx {
    let mut config = Config::dev();
    config.max_message_bytes = 4096;
    config.max_echo_message_bytes = 8192;
    config.max_api_body_bytes = 4096;
    config.max_outbound_bytes = 64 * 1024;
    herald::testing::context(config)
}

/// Feeds `input` to a fresh connection: the first byte says how big the
/// pieces are (1..=256), as a peer's writes would split it. Returns the
/// connection for checks.
pub fn drive(ctx: &mut Ctx, input: &[u8]) -> Conn<MemorySocket> {
    let (step, rest) = match input.split_first() {
        Some((step, rest)) => (usize::from(*step) + 1, rest),
        None => (1, input),
    };
    let mut conn = Conn::new(MemorySocket::default(), ctx);
    for piece in rest.chunks(step) {
        conn.socket_mut().input.extend_from_slice(piece);
        let _ = conn.ready(true, true, ctx);
    }
    conn
}

/// Most bytes a connection may hold queued for output under [`context`]:
/// the outbound bound, plus one answer of the largest kind.
pub const OUTPUT_BOUND: usize = 64 * 1024 + 16 * 1024;

/// Most bytes processing one input may allocate under [`context`], beyond
/// the input itself: the shard's 64 KiB scratch buffer, a 4-8 KiB message
/// and its copies, tungstenite's buffers, the output bound.
pub const ALLOCATION_BOUND: usize = 1024 * 1024;

/// The TLS side of the targets: a server configuration for `localhost`
/// (a certificate made once per process) and a client that trusts it.
pub fn tls_configs() -> &'static (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    static CONFIGS: OnceLock<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> =
        OnceLock::new();
    CONFIGS.get_or_init(|| {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("a test certificate");
        let dir = std::env::temp_dir().join(format!("herald-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).expect("write the certificate");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write the key");
        let tls = herald::tls::Tls::load(&cert, &key).expect("the server's TLS");
        let _ = std::fs::remove_dir_all(&dir);
        let mut roots = rustls::RootCertStore::empty();
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(certified.cert.pem().as_bytes())
                .expect("the certificate back");
        roots.add(der).expect("a trust anchor");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        (tls.server_config().clone(), Arc::new(client))
    })
}

/// A fresh connection of the TLS listener, its output kept.
pub fn tls_conn(ctx: &Ctx) -> Conn<MemorySocket> {
    let socket = MemorySocket { output: Some(Vec::new()), ..MemorySocket::default() };
    let mut conn = Conn::new(socket, ctx);
    assert!(conn.start_tls(tls_configs().0.clone()));
    conn
}

/// Feeds `input` as ciphertext to a fresh TLS connection, in the pieces its
/// first byte asks for (1..=256): bytes before or inside a ClientHello.
pub fn drive_tls_raw(ctx: &mut Ctx, input: &[u8]) -> Conn<MemorySocket> {
    let (step, rest) = match input.split_first() {
        Some((step, rest)) => (usize::from(*step) + 1, rest),
        None => (1, input),
    };
    let mut conn = tls_conn(ctx);
    for piece in rest.chunks(step) {
        conn.socket_mut().input.extend_from_slice(piece);
        let _ = conn.ready(true, true, ctx);
    }
    conn
}

/// Moves what each side wrote to the other until neither writes more.
/// Returns false once the client gave up (the server closed or failed it).
fn pump(
    conn: &mut Conn<MemorySocket>,
    client: &mut rustls::ClientConnection,
    ctx: &mut Ctx,
) -> bool {
    for _ in 0..64 {
        let mut to_server = Vec::new();
        while client.wants_write() {
            if client.write_tls(&mut to_server).is_err() {
                return false;
            }
        }
        let progressed = !to_server.is_empty();
        conn.socket_mut().input.extend_from_slice(&to_server);
        let _ = conn.ready(true, true, ctx);
        let from_server = conn.socket_mut().output.as_mut().map(std::mem::take).unwrap_or_default();
        let mut rest = &from_server[..];
        while !rest.is_empty() {
            if client.read_tls(&mut rest).is_err() || client.process_new_packets().is_err() {
                return false;
            }
        }
        // What the server answered: read and dropped.
        let mut sink = [0u8; 4096];
        while matches!(client.reader().read(&mut sink), Ok(n) if n > 0) {}
        if !progressed && from_server.is_empty() {
            return true;
        }
    }
    true
}

/// Completes a TLS handshake with an in-memory client, then sends `input`
/// as plaintext through it, in the pieces its first byte asks for: HTTP
/// requests and WebSocket frames arriving in TLS records.
pub fn drive_tls_plaintext(ctx: &mut Ctx, input: &[u8]) -> Conn<MemorySocket> {
    let (step, rest) = match input.split_first() {
        Some((step, rest)) => (usize::from(*step) + 1, rest),
        None => (1, input),
    };
    let mut conn = tls_conn(ctx);
    let name = "localhost".try_into().expect("a server name");
    let Ok(mut client) = rustls::ClientConnection::new(tls_configs().1.clone(), name) else {
        return conn;
    };
    if !pump(&mut conn, &mut client, ctx) || client.is_handshaking() {
        return conn;
    }
    for piece in rest.chunks(step) {
        if client.writer().write_all(piece).is_err() || !pump(&mut conn, &mut client, ctx) {
            break;
        }
    }
    conn
}
