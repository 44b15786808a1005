//! The `herald` command: `serve` runs the server, `token` mints a connection token.

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use herald::config::{Config, KEYS, Override, Source};
use herald::server::{Server, ServerHandle, StartError};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGXFSZ};
use signal_hook::iterator::Signals;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// herald: a real-time notification server.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Print a connection token (JWT, HS256) for development and tests.
    Token(TokenArgs),
}

/// What `herald token` signs. Backends sign their own tokens the same way.
#[derive(Debug, Args)]
struct TokenArgs {
    /// The server's token secret.
    #[arg(long, env = "HERALD_TOKEN_SECRET", hide_env_values = true)]
    secret: String,
    /// The user id (the token's `sub`).
    #[arg(long)]
    user: String,
    /// Seconds until the token expires; 0 for a token that never does.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// A private channel the token grants (`private-x`, `$x`, or a prefix
    /// ending in `*`); repeat for more.
    #[arg(long = "channel", value_name = "CHANNEL")]
    channels: Vec<String>,
}

/// Every setting has a flag, an environment variable and a key in the config
/// file; flags win over the environment, which wins over the file.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Config file (TOML).
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "HERALD_LISTEN", value_name = "IP:PORT")]
    listen: Option<String>,
    /// Address of the TLS listener (wss://, https://), beside --listen; needs --tls-cert and --tls-key.
    #[arg(long, env = "HERALD_LISTEN_TLS", value_name = "IP:PORT")]
    listen_tls: Option<String>,
    /// TLS certificate, PEM: the server's certificate first, then the chain (certbot's fullchain.pem). Reread on SIGHUP.
    #[arg(long, env = "HERALD_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<String>,
    /// The certificate's private key, PEM (certbot's privkey.pem). Reread on SIGHUP.
    #[arg(long, env = "HERALD_TLS_KEY", value_name = "FILE")]
    tls_key: Option<String>,
    /// Shards (event-loop threads); default: one per core.
    #[arg(long, env = "HERALD_THREADS", value_name = "N")]
    threads: Option<String>,
    /// The shards' reactor: epoll (default) or io_uring (falls back to epoll where the kernel refuses it).
    #[arg(long, env = "HERALD_IO", value_name = "REACTOR")]
    io: Option<String>,
    /// Development mode: anonymous connections, any origin, generated secrets.
    #[arg(long, env = "HERALD_DEV", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    dev: Option<String>,
    /// Key backends send to the server API.
    #[arg(long, env = "HERALD_API_KEY", value_name = "KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// HS256 secret connection tokens are signed with (at least 32 bytes).
    #[arg(long, env = "HERALD_TOKEN_SECRET", value_name = "SECRET", hide_env_values = true)]
    token_secret: Option<String>,
    /// Browser origin allowed to connect (repeat; `*` for any).
    #[arg(
        long = "allowed-origin",
        env = "HERALD_ALLOWED_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Accept connections without a token.
    #[arg(long, env = "HERALD_ALLOW_ANONYMOUS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    allow_anonymous: Option<String>,
    /// Channel engine: memory or redis.
    #[arg(long, env = "HERALD_ENGINE", value_name = "ENGINE")]
    engine: Option<String>,
    /// Redis address for the redis engine.
    #[arg(long, env = "HERALD_REDIS_URL", value_name = "URL")]
    redis_url: Option<String>,
    /// Prefix of herald's Redis keys and channels (several deployments can share one Redis).
    #[arg(long, env = "HERALD_REDIS_PREFIX", value_name = "PREFIX")]
    redis_prefix: Option<String>,
    /// Open connections per node (over it: 503).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<String>,
    /// Serve the /echo endpoint (on in --dev): unauthenticated, for conformance runs and benchmarks.
    #[arg(long, env = "HERALD_ECHO", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    echo: Option<String>,
    /// Turn off the /echo endpoint (also in --dev).
    #[arg(long, env = "HERALD_NO_ECHO", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    no_echo: Option<String>,
    /// Heartbeat interval in seconds.
    #[arg(long, env = "HERALD_PING_INTERVAL_SECS", value_name = "SECS")]
    ping_interval_secs: Option<String>,
    /// Seconds from accept to a complete request head.
    #[arg(long, env = "HERALD_HANDSHAKE_TIMEOUT_SECS", value_name = "SECS")]
    handshake_timeout_secs: Option<String>,
    /// Seconds a graceful shutdown waits for connections to close.
    #[arg(long, env = "HERALD_SHUTDOWN_TIMEOUT_SECS", value_name = "SECS")]
    shutdown_timeout_secs: Option<String>,
    /// Outbound bytes queued per connection before it is closed as a slow consumer.
    #[arg(long, env = "HERALD_MAX_OUTBOUND_BYTES", value_name = "BYTES")]
    max_outbound_bytes: Option<String>,
    /// Largest client message on /ws.
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    max_message_bytes: Option<String>,
    /// Largest message on /echo.
    #[arg(long, env = "HERALD_MAX_ECHO_MESSAGE_BYTES", value_name = "BYTES")]
    max_echo_message_bytes: Option<String>,
    /// Largest server API request body.
    #[arg(long, env = "HERALD_MAX_API_BODY_BYTES", value_name = "BYTES")]
    max_api_body_bytes: Option<String>,
    /// Bytes all connections may hold in unfinished WebSocket messages.
    #[arg(long, env = "HERALD_MAX_INCOMPLETE_BYTES", value_name = "BYTES")]
    max_incomplete_bytes: Option<String>,
    /// Connections still in their first request, per node (the oldest go first past it).
    #[arg(long, env = "HERALD_MAX_PENDING_HANDSHAKES", value_name = "N")]
    max_pending_handshakes: Option<String>,
    /// Seconds a WebSocket message may take to arrive whole.
    #[arg(long, env = "HERALD_MESSAGE_TIMEOUT_SECS", value_name = "SECS")]
    message_timeout_secs: Option<String>,
    /// Commands per second one /ws connection may send, on average.
    #[arg(long, env = "HERALD_COMMAND_RATE_PER_SEC", value_name = "N")]
    command_rate_per_sec: Option<String>,
    /// Commands one /ws connection may send at once before the rate applies.
    #[arg(long, env = "HERALD_COMMAND_BURST", value_name = "N")]
    command_burst: Option<String>,
    /// Channels that may exist on this node at once.
    #[arg(long, env = "HERALD_MAX_CHANNELS", value_name = "N")]
    max_channels: Option<String>,
    /// Channels one /ws connection may be subscribed to.
    #[arg(long, env = "HERALD_MAX_CHANNELS_PER_CONNECTION", value_name = "N")]
    max_channels_per_connection: Option<String>,
    /// SO_SNDBUF of each connection's socket (0: the kernel's autotuning).
    #[arg(long, env = "HERALD_SEND_BUFFER_BYTES", value_name = "BYTES")]
    send_buffer_bytes: Option<String>,
    /// Negotiate permessage-deflate with WebSocket clients that offer it (default true).
    #[arg(long, env = "HERALD_COMPRESSION", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    compression: Option<String>,
    /// Messages shorter than this go uncompressed, also where compression was agreed.
    #[arg(long, env = "HERALD_COMPRESSION_THRESHOLD_BYTES", value_name = "BYTES")]
    compression_threshold_bytes: Option<String>,
    /// Path prefix a proxy leaves on Pusher requests (/herald): stripped before signatures are checked.
    #[arg(long, env = "HERALD_PUSHER_PATH_PREFIX", value_name = "PATH")]
    pusher_path_prefix: Option<String>,
    /// With Redis: seconds a presence entry lives unless its node renews it.
    #[arg(long, env = "HERALD_PRESENCE_TTL_SECS", value_name = "SECS")]
    presence_ttl_secs: Option<String>,
    /// Secret that signs the webhooks of namespaces (X-Herald-Signature).
    #[arg(long, env = "HERALD_WEBHOOK_SECRET", value_name = "SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Notices a scope's webhook queue holds before new ones are dropped.
    #[arg(long, env = "HERALD_WEBHOOK_QUEUE_SIZE", value_name = "N")]
    webhook_queue_size: Option<String>,
    /// Directory where the memory engine keeps history across restarts (off when unset).
    #[arg(long, env = "HERALD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<String>,
    /// With --data-dir: fsync (each group commit reaches the disk before its publishes are answered) or page_cache.
    #[arg(long, env = "HERALD_DURABILITY", value_name = "MODE")]
    durability: Option<String>,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    match cli.command {
        Command::Serve(args) => {
            let Some(serve_matches) = matches.subcommand_matches("serve") else {
                return ExitCode::FAILURE;
            };
            serve(&args, serve_matches)
        }
        Command::Token(args) => token(&args),
    }
}

fn token(args: &TokenArgs) -> ExitCode {
    if args.secret.len() < 32 {
        eprintln!("herald: --secret must be at least 32 bytes (the server refuses shorter ones)");
        return ExitCode::from(2);
    }
    if args.user.is_empty() {
        eprintln!("herald: --user must not be empty (an empty user is anonymous)");
        return ExitCode::from(2);
    }
    let secret = herald::config::Secret::new(args.secret.clone());
    let ttl = (args.ttl > 0).then_some(args.ttl);
    println!(
        "{}",
        herald::auth::mint(&secret, &args.user, ttl, &args.channels, herald::auth::unix_now())
    );
    ExitCode::SUCCESS
}

fn serve(args: &ServeArgs, matches: &ArgMatches) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();

    let config = match load_config(args, matches) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("herald: {message}");
            return ExitCode::from(2);
        }
    };
    if !config.generated.is_empty() {
        // Printed, not logged: these are for the developer at the terminal,
        // and only exist in --dev.
        println!(
            "dev mode: generated secrets (pass them explicitly to keep them across restarts):"
        );
        for name in &config.generated {
            match *name {
                "api_key" => println!("  api_key = {}", config.api_key.expose()),
                "token_secret" => println!("  token_secret = {}", config.token_secret.expose()),
                "webhook_secret" => {
                    let secret =
                        config.webhooks.iter().find_map(|webhook| match &webhook.signing {
                            herald::config::WebhookSigning::Herald(secret) => Some(secret.expose()),
                            herald::config::WebhookSigning::Pusher { .. } => None,
                        });
                    println!("  webhook_secret = {}", secret.unwrap_or_default());
                }
                _ => {
                    for app in &config.apps {
                        println!(
                            "  pusher app: app_id = {}, key = {}, secret = {}",
                            app.id,
                            app.key,
                            app.secret.expose()
                        );
                    }
                }
            }
        }
    }

    // Signals are caught before the server announces itself, so a SIGTERM
    // sent the moment "listening" appears is a graceful shutdown (and a
    // SIGHUP a reload, not the end of the process).
    let signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("herald: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    // A file-size limit (`ulimit -f`) must fail the store's write (EFBIG,
    // answered 503), not kill the process: SIGXFSZ is caught and ignored.
    if let Err(error) = signal_hook::flag::register(
        SIGXFSZ,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    ) {
        log::warn!("cannot catch SIGXFSZ: {error}");
    }
    let listen = match config.listen_tls {
        Some(tls) => format!("{} and {tls} (TLS)", config.listen),
        None => config.listen.to_string(),
    };
    let dev_key = config.dev.then(|| config.api_key.expose().to_string());
    let handle = match Server::start(config) {
        Ok(handle) => handle,
        Err(StartError::Listen(error)) => {
            eprintln!("herald: cannot listen on {listen}: {error}");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("herald: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let addr = handle.local_addr();
    println!("herald listening on {addr}");
    if let Some(tls_addr) = handle.tls_addr() {
        println!("herald listening for TLS on {tls_addr}");
    }
    if let Some(key) = dev_key {
        // Where to go next, for the developer at the terminal.
        println!("demo page: http://{addr}/");
        if let Some(tls_addr) = handle.tls_addr() {
            println!("demo page over TLS: https://{tls_addr}/");
        }
        println!("publish from a shell:");
        println!("  export HERALD_API_KEY={key}");
        println!(
            "  curl -s http://{addr}/api/publish -H \"Authorization: apikey $HERALD_API_KEY\" \\\n    \
             -d '{{\"channel\":\"news\",\"data\":{{\"title\":\"hello\"}}}}'"
        );
    }
    let _ = std::io::stdout().flush();

    wait_for_signal(signals, handle)
}

fn wait_for_signal(mut signals: Signals, handle: ServerHandle) -> ExitCode {
    for signal in signals.forever() {
        if signal == SIGHUP {
            reload_tls(&handle);
            continue;
        }
        let name = if signal == SIGTERM { "SIGTERM" } else { "SIGINT" };
        log::info!("{name}: shutting down gracefully (send it again to stop at once)");
        break;
    }
    handle.shutdown();
    std::thread::spawn(move || {
        if signals.forever().any(|signal| signal != SIGHUP) {
            log::warn!("second signal: exiting without waiting for connections");
            std::process::exit(1);
        }
    });
    handle.join();
    log::info!("shutdown complete");
    ExitCode::SUCCESS
}

/// SIGHUP: the TLS certificate and key are read again; new handshakes get
/// them if they are good, else the current pair stays.
fn reload_tls(handle: &ServerHandle) {
    match handle.reload_tls() {
        Ok(Some(reloaded)) => log::info!(
            "SIGHUP: TLS certificate reloaded; new connections get it (it expires {})",
            herald::tls::format_utc(reloaded.not_after)
        ),
        Ok(None) => log::info!("SIGHUP: no TLS listener, nothing to reload"),
        Err(error) => log::error!(
            "SIGHUP: the new TLS certificate was refused, the current one stays: invalid \
             setting `{}`: {error}",
            error.setting.key()
        ),
    }
}

/// Reads the config file and turns flags and environment variables into
/// overrides, each labelled with where it came from.
fn load_config(args: &ServeArgs, matches: &ArgMatches) -> Result<Config, String> {
    let file = match &args.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some((path.clone(), text)),
            Err(error) => {
                return Err(format!("cannot read config file {}: {error}", path.display()));
            }
        },
        None => None,
    };
    let mut overrides = Vec::new();
    for &key in KEYS {
        let source = match matches.value_source(key) {
            Some(ValueSource::CommandLine) => Source::Flag(format!("--{}", flag_name(key))),
            Some(ValueSource::EnvVariable) => {
                Source::Env(format!("HERALD_{}", key.to_ascii_uppercase()))
            }
            _ => continue,
        };
        let values: Vec<String> = match matches.get_many::<String>(key) {
            Some(values) => values.cloned().collect(),
            None => continue,
        };
        overrides.push(Override { key, value: values.join(","), source });
    }
    Config::load(
        file.as_ref().map(|(path, text)| (path.as_path(), text.as_str())),
        overrides,
        false,
    )
    .map_err(|error| error.to_string())
}

fn flag_name(key: &str) -> String {
    match key {
        "allowed_origins" => "allowed-origin".to_string(),
        other => other.replace('_', "-"),
    }
}
