//! herald-reference: a plain, idiomatic tokio-tungstenite server speaking the benchmark subset of herald's protocol (`/echo`, `/ws` subscribe, `POST /api/publish`), measured side by side with herald.
//!
//! With `--tls-cert` and `--tls-key` it also listens for TLS (tokio-rustls,
//! ring provider, ALPN http/1.1, as herald's TLS listener), serving the same
//! endpoints over it.
//!
//! One task per connection. `/echo` is tokio-tungstenite's own echo example
//! (`read.forward(write)`). On `/ws`, each subscription is a
//! `tokio::sync::broadcast` receiver; a connection's task selects between
//! its socket and its subscriptions and sends each message (`SinkExt::send`:
//! write and flush), the plain idiom. With `--batch-writes` it instead writes
//! every message already waiting before one flush, as `StreamExt::forward`
//! does. A publication is encoded once: every subscriber gets a clone of the
//! same `Utf8Bytes`.

use base64::Engine as _;
use clap::{Parser, ValueEnum};
use futures_util::stream::{self, SelectAll, StreamExt};
use futures_util::{FutureExt, SinkExt, TryStreamExt, future};
use serde_json::Value;
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Runtime {
    CurrentThread,
    MultiThread,
}

/// A tokio-tungstenite server for side-by-side benchmarks.
#[derive(Debug, Parser)]
#[command(name = "herald-reference")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The tokio runtime flavour.
    #[arg(long, value_enum, default_value = "current-thread")]
    runtime: Runtime,
    /// Worker threads of the multi-thread runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// tungstenite's per-connection read buffer: 131072 is its default, 4096
    /// the tuned setting.
    #[arg(long, default_value_t = 128 * 1024)]
    read_buffer_size: usize,
    /// The key `POST /api/publish` requires (`Authorization: apikey KEY`).
    #[arg(long)]
    api_key: String,
    /// Messages a channel keeps for a subscriber that falls behind; past it
    /// the subscriber loses the oldest (`broadcast` lag).
    #[arg(long, default_value_t = 4096)]
    channel_capacity: usize,
    /// Write every subscribed message already waiting, then flush once
    /// (instead of one flushed send per message).
    #[arg(long)]
    batch_writes: bool,
    /// Address of the TLS listener (with --tls-cert and --tls-key).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen_tls: String,
    /// TLS certificate chain (PEM): with it, a TLS listener too.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// A rustls server configuration like herald's: ring, TLS 1.3 and 1.2,
/// ALPN http/1.1.
fn tls_config(
    cert: &PathBuf,
    key: &PathBuf,
) -> io::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(io::Error::other)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(io::Error::other)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

struct Channel {
    tx: broadcast::Sender<Message>,
    offset: u64,
}

struct State {
    channels: Mutex<HashMap<String, Channel>>,
    config: WebSocketConfig,
    api_key: String,
    capacity: usize,
    batch_writes: bool,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let mut builder = match args.runtime {
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Runtime::MultiThread => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(threads) = args.threads {
                builder.worker_threads(threads);
            }
            builder
        }
    };
    builder.enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> io::Result<()> {
    let listener = TcpListener::bind(&args.listen).await?;
    println!("reference listening on {}", listener.local_addr()?);
    let state = Arc::new(State {
        channels: Mutex::new(HashMap::new()),
        config: WebSocketConfig::default().read_buffer_size(args.read_buffer_size),
        api_key: args.api_key,
        capacity: args.channel_capacity,
        batch_writes: args.batch_writes,
    });
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(cert, key)?);
        let tls_listener = TcpListener::bind(&args.listen_tls).await?;
        println!("reference listening for TLS on {}", tls_listener.local_addr()?);
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tls_listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let (state, acceptor) = (state.clone(), acceptor.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = connection(stream, state).await;
                    }
                });
            }
        });
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let _ = connection(stream, state).await;
        });
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Serves HTTP requests on one connection until it upgrades or closes.
async fn connection<S>(mut stream: S, state: Arc<State>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > 8192 {
                return Ok(());
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        if request.parse(&buf[..head_end]).is_err() {
            return Ok(());
        }
        let header = |name: &str| {
            request.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
        };
        let method = request.method.unwrap_or_default().to_string();
        let path = request.path.unwrap_or_default().to_string();
        let key = header("sec-websocket-key").map(<[u8]>::to_vec);
        let authorized = header("authorization")
            .and_then(|value| value.strip_prefix(b"apikey "))
            .is_some_and(|key| key == state.api_key.as_bytes());
        let length: usize = header("content-length")
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
        match (method.as_str(), path.as_str()) {
            ("GET", "/echo" | "/ws") => {
                let Some(key) = key else { return Ok(()) };
                let mut sha1 = Sha1::new();
                sha1.update(&key);
                sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
                let accept = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                stream.write_all(response.as_bytes()).await?;
                let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(state.config))
                    .await;
                if path == "/echo" {
                    echo(ws).await;
                } else {
                    client(ws, &state).await;
                }
                return Ok(());
            }
            ("POST", "/api/publish") => {
                while buf.len() < head_end + length {
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let (status, body) = if authorized {
                    publish(&state, &buf[head_end..head_end + length])
                } else {
                    ("401 Unauthorized", r#"{"error":"unauthorized"}"#.to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(response.as_bytes()).await?;
                buf.drain(..head_end + length);
                if close {
                    return Ok(());
                }
            }
            _ => {
                stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await?;
                return Ok(());
            }
        }
    }
}

fn publish(state: &State, body: &[u8]) -> (&'static str, String) {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return ("400 Bad Request", r#"{"error":"bad json"}"#.to_string());
    };
    let (Some(channel), Some(data)) = (request["channel"].as_str(), request.get("data")) else {
        return ("400 Bad Request", r#"{"error":"channel and data"}"#.to_string());
    };
    let mut channels = state.channels.lock().unwrap_or_else(|e| e.into_inner());
    let entry = channels
        .entry(channel.to_string())
        .or_insert_with(|| Channel { tx: broadcast::channel(state.capacity).0, offset: 0 });
    entry.offset += 1;
    let text = format!(
        r#"{{"op":"message","channel":"{channel}","offset":{},"data":{data}}}"#,
        entry.offset
    );
    // No subscribers is not an error: the message is simply not kept.
    let _ = entry.tx.send(Message::Text(Utf8Bytes::from(text)));
    ("200 OK", format!(r#"{{"offset":{}}}"#, entry.offset))
}

/// tokio-tungstenite's echo server example.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(ws: WebSocketStream<S>) {
    let (write, read) = ws.split();
    let _ = read
        .try_filter(|message| future::ready(message.is_text() || message.is_binary()))
        .forward(write)
        .await;
}

type Subscription = std::pin::Pin<Box<dyn futures_util::Stream<Item = Message> + Send>>;

/// A broadcast receiver as a stream; a subscriber that lagged skips ahead.
fn subscription(rx: broadcast::Receiver<Message>) -> Subscription {
    Box::pin(stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(message) => return Some((message, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }))
}

/// A `/ws` client: commands in, replies and subscribed messages out.
async fn client<S: AsyncRead + AsyncWrite + Unpin>(ws: WebSocketStream<S>, state: &State) {
    let (mut sink, mut incoming) = ws.split();
    let mut subscriptions: SelectAll<Subscription> = SelectAll::new();
    loop {
        tokio::select! {
            message = incoming.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let Ok(command) = serde_json::from_str::<Value>(&text) else { continue };
                let reply = match (command["op"].as_str(), command["channel"].as_str()) {
                    (Some("subscribe"), Some(channel)) => {
                        let (rx, offset) = {
                            let mut channels = state.channels.lock().unwrap_or_else(|e| e.into_inner());
                            let entry = channels.entry(channel.to_string()).or_insert_with(|| Channel {
                                tx: broadcast::channel(state.capacity).0,
                                offset: 0,
                            });
                            (entry.tx.subscribe(), entry.offset)
                        };
                        subscriptions.push(subscription(rx));
                        format!(r#"{{"op":"subscribed","id":{},"channel":"{channel}","offset":{offset}}}"#, command["id"])
                    }
                    (Some("ping"), _) => format!(r#"{{"op":"pong","id":{}}}"#, command["id"]),
                    _ => continue,
                };
                if sink.send(Message::text(reply)).await.is_err() {
                    return;
                }
            }
            Some(message) = subscriptions.next(), if !subscriptions.is_empty() => {
                if !state.batch_writes {
                    if sink.send(message).await.is_err() {
                        return;
                    }
                    continue;
                }
                if sink.feed(message).await.is_err() {
                    return;
                }
                // Everything else already waiting goes out in the same flush.
                while let Some(Some(message)) = subscriptions.next().now_or_never() {
                    if sink.feed(message).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}
