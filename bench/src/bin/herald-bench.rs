//! herald-bench: measures herald and the tokio-tungstenite reference side by side, interleaved, and reports medians, ratios, a table and SVG charts.
//!
//! For each workload and each run, every server is started fresh (pinned to
//! CPU 0 when there are at least two), loaded by `herald-load` (pinned to
//! the other CPUs), and stopped; servers alternate within a run (A B C A B
//! C ...), so slow drifts of a shared machine hit all of them alike. Seconds
//! in which the hypervisor stole more than 5% of the machine are left out of
//! the CPU-per-operation figures. Each figure is the median over runs.
//!
//! Servers whose name ends in `-wss` are loaded over TLS (wss://, with a
//! certificate this run makes under `--out`/tls, its CA trusted by the
//! generator); the server API the fan-out publisher uses stays plain HTTP
//! on the server's other listener, as a backend on the same network would
//! reach it.
//!
//! The server `uws` is uWebSockets (bench/uws/server.cpp, one event loop),
//! speaking the same benchmark subset as the tokio reference; build it
//! first with bench/uws/build.sh (`--uws-bin` says where it is).

use clap::Parser;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Seconds whose steal share passes this are noisy and dropped.
const MAX_STEAL: f64 = 0.05;
/// A generator above this share of its CPUs may be what limits a rate.
const GENERATOR_BOUND: f64 = 90.0;

#[derive(Debug, Parser)]
#[command(name = "herald-bench", about = "herald and the tokio reference, side by side")]
struct Args {
    /// Runs per workload and server; the medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Workloads (comma-separated): echo, fanout-10k-20, fanout-10k-40,
    /// fanout-10k-80, fanout-1k-100, connect, idle, idle-subscribed; echo-1k
    /// (1,000 echo connections); with
    /// 1 KiB JSON notifications, fanout-10k-80-json, fanout-1k-100-json;
    /// and published by a client over `/ws` instead of the server API,
    /// fanout-10k-80-ws, fanout-1k-100-ws (herald servers only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "echo,fanout-10k-20,fanout-10k-40,fanout-10k-80,fanout-1k-100,connect,idle,idle-subscribed"
    )]
    workloads: Vec<String>,
    /// Servers (comma-separated): herald, herald-baseline (with
    /// --baseline-bin), herald-pusher (herald's Pusher endpoint and HTTP
    /// API: fan-out workloads only), herald-deflate (herald, loaded by
    /// clients that offer permessage-deflate: fan-out and idle workloads),
    /// herald-redis (herald on the Redis engine, with a `redis-server` of
    /// its own on the load generator's CPUs), herald-redis-cluster (the
    /// same on a Redis Cluster of three masters), herald-uring (herald with
    /// `--io io_uring`), reference-tuned,
    /// reference-default, uws (uWebSockets, with --uws-bin); and over TLS:
    /// herald-wss, reference-tuned-wss, reference-default-wss.
    #[arg(long, value_delimiter = ',', default_value = "herald,reference-tuned,reference-default")]
    servers: Vec<String>,
    /// The directory holding an earlier herald's release binary, run as the
    /// server `herald-baseline`: before and after a change in one run.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// An extra argument for the server `herald` only (repeat), e.g.
    /// `--herald-arg=--send-buffer-bytes --herald-arg=64KiB`.
    #[arg(long = "herald-arg", allow_hyphen_values = true)]
    herald_args: Vec<String>,
    /// Seconds measured per run (after 2 s of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Where results, the table and the charts go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The directory holding the release binaries.
    #[arg(long, default_value = "target/release")]
    bin: PathBuf,
    /// The uWebSockets reference server, built by bench/uws/build.sh, run
    /// as the server `uws`.
    #[arg(long, default_value = "target/uws/uws-server")]
    uws_bin: PathBuf,
    /// Measure nothing: rebuild the table and charts from this results.jsonl.
    #[arg(long)]
    from: Option<PathBuf>,
}

const API_KEY: &str = "bench-api-key-0123456789";
/// The Pusher app of the `herald-pusher` server.
const PUSHER_APP: (&str, &str, &str) = ("1", "bench-key", "bench-secret-0123456789");

/// One workload: the generator's arguments (`{addr}` stands for the server)
/// and the metrics worth comparing.
struct Workload {
    name: &'static str,
    title: &'static str,
    load: Vec<String>,
    metrics: Vec<Metric>,
}

/// A reported figure: where it is in a result, and which way is better.
struct Metric {
    key: &'static str,
    label: &'static str,
    lower_is_better: bool,
}

fn metric(key: &'static str, label: &'static str, lower_is_better: bool) -> Metric {
    Metric { key, label, lower_is_better }
}

fn workload(name: &str, seconds: u64) -> Option<Workload> {
    let s = seconds.to_string();
    let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let fanout = |subscribers: &str, rate: &str| {
        args(&[
            "fanout",
            "--url",
            "{ws}/ws",
            "--api-addr",
            "{addr}",
            "--api-key",
            API_KEY,
            "--subscribers",
            subscribers,
            "--rate",
            rate,
            "--payload",
            "32",
            "--seconds",
            &s,
            "--drain",
            "10",
        ])
    };
    // Published by a client (`publish` on `/ws`) into the `bench`
    // namespace, which herald servers here let clients publish to.
    let ws_fanout = |subscribers: &str, rate: &str| {
        let mut load = fanout(subscribers, rate);
        load.extend(["--ws-publish".into(), "--channel".into(), "bench:fanout".into()]);
        load
    };
    let json_fanout = |subscribers: &str, rate: &str| {
        let mut load = fanout(subscribers, rate);
        if let Some(at) = load.iter().position(|a| a == "--payload") {
            load[at + 1] = "1024".into();
        }
        load.push("--json".into());
        load
    };
    let fanout_metrics = || {
        vec![
            metric("deliveries_per_s", "deliveries/s", false),
            metric("server_cpu_us_per_delivery", "server CPU µs/delivery", true),
            metric("wire_bytes_per_delivery", "bytes on the wire per delivery", true),
            metric("latency.p50_us", "p50 latency µs", true),
            metric("latency.p99_us", "p99 latency µs", true),
            metric("latency.p999_us", "p99.9 latency µs", true),
            metric("latency.max_us", "max latency µs", true),
            metric("last_subscriber_latency.p99_us", "last subscriber p99 µs", true),
            metric("lost", "lost deliveries", true),
            metric("redis_cpu_us_per_publish", "redis-server CPU µs/publication", true),
        ]
    };
    Some(match name {
        "echo" | "echo-1k" => Workload {
            name: if name == "echo" { "echo" } else { "echo-1k" },
            title: if name == "echo" {
                "echo, 100 connections x 20 bytes, 1 in flight, one core"
            } else {
                "echo, 1,000 connections x 20 bytes, 1 in flight, one core"
            },
            load: args(&[
                "echo",
                "--url",
                "{ws}/echo",
                "--connections",
                if name == "echo" { "100" } else { "1000" },
                "--size",
                "20",
                "--inflight",
                "1",
                "--seconds",
                &s,
            ]),
            metrics: vec![
                metric("messages_per_s", "messages/s", false),
                metric("server_cpu_us_per_message", "server CPU µs/message", true),
                metric("messages_per_server_cpu_s", "messages per server CPU-second", false),
                metric("latency.p50_us", "p50 latency µs", true),
                metric("latency.p99_us", "p99 latency µs", true),
            ],
        },
        "fanout-10k-20" => Workload {
            name: "fanout-10k-20",
            title: "fan-out, 10,000 subscribers, 20 publications/s (about what one core serves one at a time)",
            load: fanout("10000", "20"),
            metrics: fanout_metrics(),
        },
        "fanout-10k-40" => Workload {
            name: "fanout-10k-40",
            title: "fan-out, 10,000 subscribers, 40 publications/s (twice what saturates the reference)",
            load: fanout("10000", "40"),
            metrics: fanout_metrics(),
        },
        "fanout-10k-80" => Workload {
            name: "fanout-10k-80",
            title: "fan-out, 10,000 subscribers, 80 publications/s (four times what saturates the reference)",
            load: fanout("10000", "80"),
            metrics: fanout_metrics(),
        },
        "fanout-10k-80-json" => Workload {
            name: "fanout-10k-80-json",
            title: "fan-out, 10,000 subscribers, 80 publications/s of 1 KiB JSON notifications",
            load: json_fanout("10000", "80"),
            metrics: fanout_metrics(),
        },
        "fanout-1k-100-json" => Workload {
            name: "fanout-1k-100-json",
            title: "fan-out, 1,000 subscribers, 100 publications/s of 1 KiB JSON notifications",
            load: json_fanout("1000", "100"),
            metrics: fanout_metrics(),
        },
        "fanout-10k-80-ws" => Workload {
            name: "fanout-10k-80-ws",
            title: "fan-out, 10,000 subscribers, 80 publications/s published by a client over /ws",
            load: ws_fanout("10000", "80"),
            metrics: fanout_metrics(),
        },
        "fanout-1k-100-ws" => Workload {
            name: "fanout-1k-100-ws",
            title: "fan-out, 1,000 subscribers, 100 publications/s published by a client over /ws",
            load: ws_fanout("1000", "100"),
            metrics: fanout_metrics(),
        },
        "fanout-1k-100" => Workload {
            name: "fanout-1k-100",
            title: "fan-out, 1,000 subscribers, 100 publications/s",
            load: fanout("1000", "100"),
            metrics: fanout_metrics(),
        },
        "connect" => Workload {
            name: "connect",
            title: "connect, 64 upgrades in flight",
            load: args(&["connect", "--url", "{ws}/echo", "--inflight", "64", "--seconds", &s]),
            metrics: vec![
                metric("upgrades_per_s", "upgrades/s", false),
                metric("server_cpu_us_per_upgrade", "server CPU µs/upgrade", true),
                metric("upgrades_per_server_cpu_s", "upgrades per server CPU-second", false),
                metric("latency.p99_us", "p99 handshake µs", true),
            ],
        },
        "idle" => Workload {
            name: "idle",
            title: "idle, 0 to 10,000 connections",
            load: args(&["idle", "--url", "{ws}/echo", "--steps", "0,2500,5000,7500,10000"]),
            metrics: vec![metric("rss_bytes_per_connection", "RSS bytes per connection", true)],
        },
        "idle-subscribed" => Workload {
            name: "idle-subscribed",
            title: "idle and subscribed, 0 to 10,000 connections, one channel",
            load: args(&[
                "idle",
                "--url",
                "{ws}/ws",
                "--subscribe",
                "shared",
                "--steps",
                "0,2500,5000,7500,10000",
            ]),
            metrics: vec![metric("rss_bytes_per_connection", "RSS bytes per connection", true)],
        },
        _ => return None,
    })
}

/// How to start a server.
fn server_command(name: &str, options: &Args) -> Option<(PathBuf, Vec<String>)> {
    let bin = &options.bin;
    let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let tls_dir = options.out.join("tls");
    let (cert, key) = (tls_dir.join("chain.pem"), tls_dir.join("key.pem"));
    let (cert, key) = (cert.to_string_lossy().into_owned(), key.to_string_lossy().into_owned());
    let herald_tls = args(&["--listen-tls", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key]);
    let reference_tls = args(&["--tls-cert", &cert, "--tls-key", &key]);
    // Every herald here reads one config: the `bench` namespace, where
    // clients may publish (the `-ws` workloads), keeps what the default
    // namespace of --dev keeps; herald-pusher adds its app.
    let config = |name: &str, extra: &str| -> Option<String> {
        let path = options.out.join(format!("{name}.toml"));
        let text = format!(
            "[namespaces.bench]\nhistory_size = 100\nhistory_ttl_secs = 600\nclient_publish = true\n{extra}"
        );
        std::fs::create_dir_all(&options.out).ok()?;
        std::fs::write(&path, text).ok()?;
        Some(path.display().to_string())
    };
    let herald_args = args(&[
        "serve",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--api-key",
        API_KEY,
        "--max-connections",
        "100000",
    ]);
    Some(match name {
        "herald" => {
            let mut all = herald_args;
            all.extend(["--config".to_string(), config("herald", "")?]);
            all.extend(options.herald_args.iter().cloned());
            (bin.join("herald"), all)
        }
        "herald-uring" => {
            let mut all = server_command("herald", options)?.1;
            all.extend(["--io".to_string(), "io_uring".to_string()]);
            (bin.join("herald"), all)
        }
        "herald-redis" | "herald-redis-cluster" => {
            let mut all = server_command("herald", options)?.1;
            all.extend(["--engine".to_string(), "redis".to_string()]);
            (bin.join("herald"), all)
        }
        "herald-wss" => {
            let mut all = herald_args;
            all.extend(herald_tls);
            all.extend(options.herald_args.iter().cloned());
            (bin.join("herald"), all)
        }
        "reference-tuned-wss" | "reference-default-wss" => {
            let (program, mut all) = server_command(name.trim_end_matches("-wss"), options)?;
            all.extend(reference_tls);
            (program, all)
        }
        "herald-baseline" => {
            let mut all = herald_args;
            all.extend(["--config".to_string(), config("herald", "")?]);
            (options.baseline_bin.as_ref()?.join("herald"), all)
        }
        "herald-deflate" => server_command("herald", options)?,
        "herald-pusher" => {
            let (id, key, secret) = PUSHER_APP;
            let app = format!("[[apps]]\nid = \"{id}\"\nkey = \"{key}\"\nsecret = \"{secret}\"\n");
            let mut all = herald_args;
            all.extend(["--config".to_string(), config("herald-pusher", &app)?]);
            all.extend(options.herald_args.iter().cloned());
            (bin.join("herald"), all)
        }
        "reference-tuned" => (
            bin.join("herald-reference"),
            args(&[
                "--runtime",
                "current-thread",
                "--read-buffer-size",
                "4096",
                "--api-key",
                API_KEY,
            ]),
        ),
        "reference-default" => (
            bin.join("herald-reference"),
            args(&[
                "--runtime",
                "current-thread",
                "--read-buffer-size",
                "131072",
                "--api-key",
                API_KEY,
            ]),
        ),
        "uws" => (options.uws_bin.clone(), args(&["--api-key", API_KEY])),
        _ => return None,
    })
}

/// `taskset -c CPUS` when the machine has the CPUs and the tool.
fn pinned(cpus: &str, program: &Path, args: &[String]) -> Command {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let taskset = Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if cores >= 2 && taskset.is_ok_and(|s| s.success()) {
        let mut command = Command::new("taskset");
        command.arg("-c").arg(cpus).arg(program).args(args);
        command
    } else {
        let mut command = Command::new(program);
        command.args(args);
        command
    }
}

struct Server {
    child: Child,
    /// The plain listener.
    addr: String,
    /// Loaded through the Pusher protocol.
    pusher: bool,
    /// The TLS listener, for a `-wss` server.
    tls_addr: Option<String>,
    /// Loaded by clients that offer permessage-deflate.
    deflate: bool,
    /// The `redis-server`s of a `herald-redis` (one) or a
    /// `herald-redis-cluster` (three).
    redis: Vec<Child>,
}

impl Server {
    /// Stops the server (and its `redis-server`).
    fn stop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(self.redis.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The CPUs the load generator (and a `redis-server`) runs on.
fn load_cpus() -> String {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores > 2 { format!("1-{}", cores - 1) } else { "1".into() }
}

/// A free loopback port.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| e.to_string())
}

/// A `redis-server` of its own on a free loopback port, pinned beside the
/// load generator, that keeps nothing on disk (`extra`: more settings);
/// its port once it answers.
fn start_redis(extra: &[String]) -> Result<(Child, u16), String> {
    let port = free_port()?;
    let mut args: Vec<String> =
        ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .iter()
            .map(|a| a.to_string())
            .collect();
    args.extend(extra.iter().cloned());
    let mut child = pinned(&load_cpus(), Path::new("redis-server"), &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting redis-server (is it installed?): {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let mut answer = [0u8; 7];
            if stream.write_all(b"PING\r\n").is_ok()
                && std::io::Read::read_exact(&mut stream, &mut answer).is_ok()
                && &answer == b"+PONG\r\n"
            {
                return Ok((child, port));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err("redis-server did not answer within 10 s".into())
}

/// Three `redis-server`s in cluster mode made one cluster (no replicas,
/// every slot served); the servers and `redis_url` (every node a seed).
fn start_redis_cluster(out: &Path) -> Result<(Vec<Child>, String), String> {
    let dir = out.join("redis-cluster");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    let mut ports = Vec::new();
    let stop = |children: &mut Vec<Child>| {
        for child in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    };
    for _ in 0..3 {
        let bus = free_port()?;
        let extra: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus.to_string(),
            "--cluster-config-file",
            &format!("nodes-{bus}.conf"),
            "--dir",
            &dir.to_string_lossy(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        match start_redis(&extra) {
            Ok((child, port)) => {
                children.push(child);
                ports.push(port);
            }
            Err(error) => {
                stop(&mut children);
                return Err(error);
            }
        }
    }
    let nodes: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
    let created = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&nodes)
        .arg("--cluster-yes")
        .stdout(Stdio::null())
        .status();
    let settled = created.is_ok_and(|status| status.success()) && {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = ports.iter().all(|port| {
                Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
                    .output()
                    .is_ok_and(|out| {
                        String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok")
                    })
            });
            if ok || Instant::now() >= deadline {
                break ok;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    if !settled {
        stop(&mut children);
        return Err("the Redis cluster did not form (is redis-cli installed?)".into());
    }
    let url = ports.iter().map(|port| format!("redis://127.0.0.1:{port}")).collect::<Vec<_>>();
    Ok((children, url.join(",")))
}

fn start_server(name: &str, options: &Args) -> Result<Server, String> {
    let (program, mut args) = server_command(name, options)
        .ok_or(format!("unknown server {name} (herald-baseline needs --baseline-bin)"))?;
    let mut redis = Vec::new();
    if name == "herald-redis" {
        let (child, port) = start_redis(&[])?;
        redis.push(child);
        args.extend(["--redis-url".to_string(), format!("redis://127.0.0.1:{port}")]);
    }
    if name == "herald-redis-cluster" {
        let (children, url) = start_redis_cluster(&options.out)?;
        redis = children;
        args.extend(["--redis-url".to_string(), url]);
    }
    let hint = if name == "uws" { " (build it with bench/uws/build.sh)" } else { "" };
    let mut child = pinned("0", &program, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}{hint}", program.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, addr)) = line.split_once("listening on ") {
                let _ = tx.send((false, addr.trim().to_string()));
            } else if let Some((_, addr)) = line.split_once("listening for TLS on ") {
                let _ = tx.send((true, addr.trim().to_string()));
            }
        }
    });
    let mut server = Server {
        child,
        addr: String::new(),
        tls_addr: None,
        pusher: name == "herald-pusher",
        deflate: name == "herald-deflate",
        redis,
    };
    let wanted = if name.ends_with("-wss") { 2 } else { 1 };
    for _ in 0..wanted {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((false, addr)) => server.addr = addr,
            Ok((true, addr)) => server.tls_addr = Some(addr),
            Err(_) => {
                server.stop();
                return Err(format!("{name} did not start"));
            }
        }
    }
    Ok(server)
}

fn run_load(workload: &Workload, server: &Server, options: &Args) -> Result<Value, String> {
    let bin = &options.bin;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let ws = match &server.tls_addr {
        Some(addr) => format!("wss://{addr}"),
        None => format!("ws://{}", server.addr),
    };
    let mut args: Vec<String> = workload
        .load
        .iter()
        .map(|a| a.replace("{ws}", &ws).replace("{addr}", &server.addr))
        .collect();
    if server.tls_addr.is_some() {
        args.push("--ca".into());
        args.push(options.out.join("tls/ca.pem").to_string_lossy().into_owned());
    }
    if server.pusher {
        if args.first().map(String::as_str) != Some("fanout") {
            return Err(format!(
                "herald-pusher runs fan-out workloads only, not {}",
                workload.name
            ));
        }
        let (id, key, secret) = PUSHER_APP;
        for arg in &mut args {
            *arg = arg.replace("/ws", &format!("/app/{key}"));
        }
        args.push("--pusher".into());
        args.push(format!("{id}:{key}:{secret}"));
    }
    if server.deflate {
        if !matches!(args.first().map(String::as_str), Some("fanout" | "idle")) {
            return Err(format!(
                "herald-deflate runs fan-out and idle workloads only, not {}",
                workload.name
            ));
        }
        args.push("--deflate".into());
    }
    args.push("--pid".into());
    args.push(server.child.id().to_string());
    if workload.name != "idle" && workload.name != "idle-subscribed" {
        args.push("--threads".into());
        args.push((cores - 1).max(1).to_string());
    }
    if !server.redis.is_empty() {
        args.push("--redis-pid".into());
        let pids: Vec<String> = server.redis.iter().map(|redis| redis.id().to_string()).collect();
        args.push(pids.join(","));
    }
    let output = pinned(&load_cpus(), &bin.join("herald-load"), &args)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("herald-load: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "herald-load failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line =
        stdout.lines().rev().find(|l| l.starts_with('{')).ok_or("herald-load printed no result")?;
    serde_json::from_str(line).map_err(|e| format!("bad result: {e}"))
}

/// The per-operation CPU figure again, leaving out seconds with steal above
/// `MAX_STEAL`; the share of seconds kept is reported beside it.
fn filter_noise(result: &mut Value) {
    let Some(seconds) = result["per_second"].as_array() else { return };
    let kept: Vec<&Value> =
        seconds.iter().filter(|s| s["steal"].as_f64().unwrap_or(0.0) <= MAX_STEAL).collect();
    let count: f64 = kept.iter().map(|s| s["count"].as_f64().unwrap_or(0.0)).sum();
    let cpu: f64 = kept.iter().map(|s| s["server_cpu_s"].as_f64().unwrap_or(0.0)).sum();
    let kept_share = kept.len() as f64 / seconds.len().max(1) as f64;
    result["seconds_kept"] = json!(kept_share);
    if count > 0.0 {
        let per_op = (cpu * 1e6 / count * 1000.0).round() / 1000.0;
        for key in
            ["server_cpu_us_per_message", "server_cpu_us_per_delivery", "server_cpu_us_per_upgrade"]
        {
            if result.get(key).is_some() {
                result[key] = json!(per_op);
            }
        }
        let per_cpu_s = (count / cpu.max(1e-9)).round();
        if result.get("messages_per_s").is_some() {
            result["messages_per_server_cpu_s"] = json!(per_cpu_s);
        }
        if result.get("upgrades_per_s").is_some() {
            result["upgrades_per_server_cpu_s"] = json!(per_cpu_s);
        }
    }
}

fn lookup(value: &Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(value, |v, key| v.get(key))?.as_f64()
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 })
}

fn format_number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{:.0}", value)
    } else if value.abs() >= 10.0 {
        format!("{:.1}", value)
    } else {
        format!("{:.2}", value)
    }
}

/// A bar chart: one group per metric, one bar per server (median), with a
/// thin line from the lowest to the highest run.
fn svg_chart(workload: &Workload, servers: &[String], results: &[(String, Vec<Value>)]) -> String {
    let colors = ["#2b6cb0", "#d69e2e", "#9b2c2c", "#2f855a"];
    let (group_width, bar_width, chart_height, top) = (170.0, 40.0, 160.0, 64.0);
    let width = 40.0 + group_width * workload.metrics.len() as f64;
    let height = top + chart_height + 70.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    svg.push_str(&format!(
        r#"<text x="10" y="18" font-size="13" font-weight="bold">{}</text>"#,
        escape(workload.title)
    ));
    for (s, server) in servers.iter().enumerate() {
        let x = 10.0 + s as f64 * 150.0;
        svg.push_str(&format!(
            r#"<rect x="{x}" y="28" width="10" height="10" fill="{}"/><text x="{}" y="37">{}</text>"#,
            colors[s % colors.len()],
            x + 14.0,
            escape(server)
        ));
    }
    for (m, metric) in workload.metrics.iter().enumerate() {
        let values: Vec<Vec<f64>> = servers
            .iter()
            .map(|server| {
                results
                    .iter()
                    .find(|(name, _)| name == server)
                    .map(|(_, runs)| runs.iter().filter_map(|r| lookup(r, metric.key)).collect())
                    .unwrap_or_default()
            })
            .collect();
        let max = values.iter().flatten().copied().fold(0.0f64, f64::max).max(1e-9);
        let x0 = 30.0 + group_width * m as f64;
        for (s, runs) in values.iter().enumerate() {
            let Some(mid) = median(runs.clone()) else { continue };
            let x = x0 + s as f64 * (bar_width + 4.0);
            let h = mid / max * chart_height;
            let y = top + chart_height - h;
            svg.push_str(&format!(
                r#"<rect x="{x}" y="{y:.1}" width="{bar_width}" height="{h:.1}" fill="{}"/>"#,
                colors[s % colors.len()]
            ));
            let lo = runs.iter().copied().fold(f64::MAX, f64::min);
            let hi = runs.iter().copied().fold(f64::MIN, f64::max);
            let (ylo, yhi) = (
                top + chart_height - lo / max * chart_height,
                top + chart_height - hi / max * chart_height,
            );
            let cx = x + bar_width / 2.0;
            svg.push_str(&format!(
                r#"<line x1="{cx}" x2="{cx}" y1="{ylo:.1}" y2="{yhi:.1}" stroke="black"/>"#
            ));
            svg.push_str(&format!(
                r#"<text x="{cx}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
                (yhi - 3.0).min(y - 3.0),
                format_number(mid)
            ));
        }
        svg.push_str(&format!(
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="middle" fill="gray">{}</text>"#,
            x0 + 60.0,
            top + chart_height + 16.0,
            escape(metric.label),
            x0 + 60.0,
            top + chart_height + 30.0,
            if metric.lower_is_better { "lower is better" } else { "higher is better" }
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn main() {
    let args = Args::parse();
    if let Err(error) = run(&args) {
        eprintln!("\nherald-bench: {error}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let workloads: Vec<Workload> = args
        .workloads
        .iter()
        .map(|name| workload(name, args.seconds).ok_or(format!("unknown workload {name}")))
        .collect::<Result<_, _>>()?;
    let mut table = String::new();
    if let Some(from) = &args.from {
        let text = std::fs::read_to_string(from).map_err(|e| format!("{}: {e}", from.display()))?;
        let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        for workload in &workloads {
            let results: Vec<(String, Vec<Value>)> = args
                .servers
                .iter()
                .map(|server| {
                    let runs = lines
                        .iter()
                        .filter(|l| {
                            l["workload"] == workload.name && l["server"] == server.as_str()
                        })
                        .filter_map(|l| l.get("result").cloned())
                        .collect();
                    (server.clone(), runs)
                })
                .collect();
            if results.iter().all(|(_, runs)| runs.is_empty()) {
                continue;
            }
            let (chunk, summary) = report(workload, &args.servers, &results);
            table.push_str(&chunk);
            println!("{summary}");
            let chart = svg_chart(workload, &args.servers, &results);
            std::fs::write(args.out.join(format!("{}.svg", workload.name)), chart)
                .map_err(|e| e.to_string())?;
        }
        std::fs::write(args.out.join("table.md"), &table).map_err(|e| e.to_string())?;
        eprintln!("{table}");
        return Ok(());
    }
    if args.servers.iter().any(|server| server.ends_with("-wss")) {
        make_certificates(&args.out.join("tls"))?;
    }
    let jsonl_path = args.out.join("results.jsonl");
    let mut jsonl = std::fs::File::create(&jsonl_path).map_err(|e| e.to_string())?;
    let total = workloads.len() * args.runs * args.servers.len();
    let mut done = 0;
    let started = Instant::now();
    for workload in &workloads {
        let mut results: Vec<(String, Vec<Value>)> =
            args.servers.iter().map(|s| (s.clone(), Vec::new())).collect();
        for run in 1..=args.runs {
            for (server_name, runs) in results.iter_mut() {
                done += 1;
                eprint!(
                    "\r[{done}/{total}] {} run {run}/{}: {server_name:<18} ({:.0} s)   ",
                    workload.name,
                    args.runs,
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
                let mut server = start_server(server_name, args)?;
                let outcome = run_load(workload, &server, args);
                server.stop();
                let mut result = outcome?;
                filter_noise(&mut result);
                let line = json!({"workload": workload.name, "server": server_name, "run": run, "result": result});
                writeln!(jsonl, "{line}").map_err(|e| e.to_string())?;
                runs.push(result);
            }
        }
        let (chunk, summary) = report(workload, &args.servers, &results);
        table.push_str(&chunk);
        writeln!(jsonl, "{summary}").map_err(|e| e.to_string())?;
        println!("{summary}");
        let chart = svg_chart(workload, &args.servers, &results);
        std::fs::write(args.out.join(format!("{}.svg", workload.name)), chart)
            .map_err(|e| e.to_string())?;
    }
    eprintln!(
        "\r{:<80}",
        format!("done: {total} measurements in {:.0} s", started.elapsed().as_secs_f64())
    );
    std::fs::write(args.out.join("table.md"), &table).map_err(|e| e.to_string())?;
    eprintln!("{table}");
    eprintln!(
        "results: {}, table: {}, charts: {}/*.svg",
        jsonl_path.display(),
        args.out.join("table.md").display(),
        args.out.display()
    );
    Ok(())
}

/// A test CA and a certificate it signs for localhost and 127.0.0.1, for
/// the `-wss` servers: `ca.pem`, `chain.pem`, `key.pem` in `dir`.
fn make_certificates(dir: &Path) -> Result<(), String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let err = |e: rcgen::Error| e.to_string();
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(err)?;
    let cert = params.signed_by(&key, &ca).map_err(err)?;
    for (name, text) in [
        ("ca.pem", ca.pem()),
        ("chain.pem", format!("{}{}", cert.pem(), ca.pem())),
        ("key.pem", key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), text).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Medians and ratios of one workload: a table for people and a summary
/// line for machines. Ratios are herald / each reference (the tokio
/// references and uws; herald-wss / each `-wss` reference), and
/// herald-wss / herald: what TLS costs.
fn report(
    workload: &Workload,
    servers: &[String],
    results: &[(String, Vec<Value>)],
) -> (String, Value) {
    let mut table = format!("\n{}\n\n| metric |", workload.title);
    for server in servers {
        table.push_str(&format!(" {server} |"));
    }
    // herald against each reference (uws, uWebSockets, is one), and
    // against its own earlier build; over TLS, herald-wss against the TLS
    // references and against herald.
    let mut references: Vec<(&str, &str)> = servers
        .iter()
        .filter(|s| {
            s.starts_with("reference") || s.as_str() == "uws" || s.as_str() == "herald-baseline"
        })
        .map(|reference| {
            let ours = if reference.ends_with("-wss") { "herald-wss" } else { "herald" };
            (ours, reference.as_str())
        })
        .collect();
    if servers.iter().any(|s| s == "herald") && servers.iter().any(|s| s == "herald-wss") {
        references.push(("herald-wss", "herald"));
    }
    for variant in ["herald-deflate", "herald-redis", "herald-redis-cluster", "herald-uring"] {
        if servers.iter().any(|s| s == "herald") && servers.iter().any(|s| s == variant) {
            references.push((variant, "herald"));
        }
    }
    for (ours, reference) in &references {
        table.push_str(&format!(" {ours} / {reference} |"));
    }
    table.push_str("\n|---|");
    table.push_str(&"---|".repeat(servers.len() + references.len()));
    table.push('\n');
    let mut summary =
        json!({"workload": workload.name, "summary": true, "medians": {}, "ratios": {}});
    for metric in &workload.metrics {
        let medians: Vec<Option<f64>> = results
            .iter()
            .map(|(_, runs)| median(runs.iter().filter_map(|r| lookup(r, metric.key)).collect()))
            .collect();
        table.push_str(&format!("| {} |", metric.label));
        for ((server, _), value) in results.iter().zip(&medians) {
            table.push_str(&format!(" {} |", value.map_or("-".into(), format_number)));
            summary["medians"][server][metric.key] = json!(value);
        }
        let median_of =
            |name: &str| results.iter().position(|(s, _)| s == name).and_then(|i| medians[i]);
        for (ours, reference) in &references {
            let ratio = match (median_of(ours), median_of(reference)) {
                (Some(h), Some(t)) if t != 0.0 => Some(h / t),
                _ => None,
            };
            table.push_str(&format!(" {} |", ratio.map_or("-".into(), |r| format!("{r:.2}x"))));
            // Keyed by the reference alone where herald itself is measured
            // against it, as before.
            let key = if *ours == "herald" {
                reference.to_string()
            } else {
                format!("{ours}/{reference}")
            };
            summary["ratios"][key][metric.key] = json!(ratio);
        }
        table.push('\n');
    }
    let bound: Vec<String> = results
        .iter()
        .filter(|(_, runs)| {
            runs.iter()
                .any(|r| r["generator_cpu_percent"].as_f64().unwrap_or(0.0) >= GENERATOR_BOUND)
        })
        .map(|(s, _)| s.clone())
        .collect();
    if !bound.is_empty() {
        table.push_str(&format!(
            "\nThe load generator used over {GENERATOR_BOUND:.0}% of its CPU against {}: rates there may be the generator's limit; per-CPU-second figures are not.\n",
            bound.join(", ")
        ));
        summary["generator_bound"] = json!(bound);
    }
    (table, summary)
}
