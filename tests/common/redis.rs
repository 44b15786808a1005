//! Real `redis-server`s and herald nodes as separate processes, for the tests of the Redis engine.

use super::pusher::{APP_ID, APP_KEY, APPS, PusherClient, apps, pusher_api};
use super::{DEADLINE, TestServer, request, start_server, wait_until};
use herald::config::Engine;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on a free port, stopped when dropped.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        for _ in 0..20 {
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut redis = Redis { port, child: None };
            if redis.run() {
                return redis;
            }
        }
        panic!(
            "could not start redis-server (install the Debian package redis-server; ./.ci/run does)"
        );
    }

    /// Starts the server on its port; whether it answers PING in time.
    pub fn run(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (install the Debian package redis-server; ./.ci/run does)");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            if let Some(child) = &mut self.child
                && child.try_wait().unwrap().is_some()
            {
                return false; // the port was taken meanwhile
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node in this process on the Redis (or cluster) at `url`, with the
/// channel-test namespaces.
pub fn engine_node(url: &str, prefix: &str) -> TestServer {
    let (url, prefix) = (url.to_string(), prefix.to_string());
    start_server(2, move |config| {
        config.engine = Engine::Redis;
        config.redis_url = url;
        config.redis_prefix = prefix;
    })
}

/// A node in this process on the Redis (or cluster) at `url`, with the
/// Pusher test apps and a presence TTL of 2 s.
pub fn pusher_engine_node(url: &str, prefix: &str) -> TestServer {
    let (url, prefix) = (url.to_string(), prefix.to_string());
    start_server(2, move |config| {
        config.engine = Engine::Redis;
        config.redis_url = url;
        config.redis_prefix = prefix;
        config.apps = apps(APPS);
        config.presence_ttl = Duration::from_secs(2);
    })
}

/// Waits until the node at `addr` reaches its Redis.
pub fn wait_up(addr: std::net::SocketAddr) {
    wait_until("the node reaches Redis", || {
        request(addr, "GET /health HTTP/1.1\r\n\r\n").json()["engine"]["state"] == "up"
    });
}

/// Waits until `server` reaches its Redis.
pub fn wait_engine_up(server: &TestServer) {
    wait_up(server.addr);
}

/// Two nodes on the Redis (or cluster) at `url`, the second a process
/// killed with SIGKILL: its Pusher presence member leaves, announced on
/// the first node, within the presence TTL (2 s, renewed and swept every
/// 1/3 s) and a sweep.
pub fn dead_nodes_members_leave_within_the_presence_ttl(url: &str, prefix: &str) {
    let a = pusher_engine_node(url, prefix);
    wait_engine_up(&a);
    let extra = format!("presence_ttl_secs = 2\n{APPS}");
    let mut b = NodeProcess::start_at(url, prefix, "process-node-api-key-0123", &extra);
    wait_up(b.addr);
    let mut watcher = PusherClient::connect(a.addr, APP_KEY);
    watcher.join("presence-room", "u1", json!({}));
    let mut doomed = PusherClient::connect(b.addr, APP_KEY);
    doomed.join("presence-room", "u2", json!({}));
    watcher.expect("pusher_internal:member_added");
    b.child.kill().unwrap(); // SIGKILL: the node never says goodbye
    b.child.wait().unwrap();
    let killed = Instant::now();
    let removed = watcher.expect("pusher_internal:member_removed");
    assert_eq!(removed["data"], r#"{"user_id":"u2"}"#);
    assert!(killed.elapsed() < Duration::from_secs(4), "{:?}", killed.elapsed());
    let users =
        pusher_api(a.addr, "GET", &format!("/apps/{APP_ID}/channels/presence-room/users"), &[], "");
    assert_eq!(users.json(), json!({"users":[{"id":"u1"}]}));
}

/// A `herald serve` process on the Redis engine, killed with SIGKILL when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub addr: std::net::SocketAddr,
}

impl NodeProcess {
    pub fn start(redis: &Redis, prefix: &str, api_key: &str) -> NodeProcess {
        NodeProcess::start_with(redis, prefix, api_key, "")
    }

    /// A node whose config file also has `extra`.
    pub fn start_with(redis: &Redis, prefix: &str, api_key: &str, extra: &str) -> NodeProcess {
        NodeProcess::start_at(&redis.url(), prefix, api_key, extra)
    }

    /// A node on the Redis (or cluster) at `url`, whose config file also
    /// has `extra`.
    pub fn start_at(url: &str, prefix: &str, api_key: &str, extra: &str) -> NodeProcess {
        let config =
            std::env::temp_dir().join(format!("herald-test-{}-{prefix}.toml", std::process::id()));
        let text = format!("{extra}\n[channels]\nhistory_size = 1000\nhistory_ttl_secs = 300\n");
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--threads", "2"])
            .args(["--engine", "redis", "--redis-url", url, "--redis-prefix", prefix])
            .args(["--api-key", api_key, "--config", config.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("herald runs");
        let stdout = child.stdout.take().unwrap();
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("herald listening on ") {
                    let _ = send.send(addr.parse().unwrap());
                }
            }
        });
        let addr = receive.recv_timeout(DEADLINE).expect("the node starts");
        NodeProcess { child, addr }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of real `redis-server`s in cluster mode (masters, each
/// with its replicas), made with `redis-cli --cluster create`; every
/// server is killed when dropped.
pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    dir: std::path::PathBuf,
}

/// One server of a [`RedisCluster`].
pub struct ClusterNode {
    pub port: u16,
    child: Option<Child>,
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each, every slot served.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "herald-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = RedisCluster { nodes: Vec::new(), dir };
        for _ in 0..masters * (1 + replicas) {
            let node = cluster.spawn();
            cluster.nodes.push(node);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs (install the Debian package redis-tools; ./.ci/run does)");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
        cluster.wait_settled(masters * (1 + replicas));
        wait_until("every replica is in sync with its master", || {
            cluster.live().all(|node| {
                let role = node.cli(&["INFO", "replication"]);
                role.contains("role:slave") || {
                    let online = role.matches("state=online").count();
                    role.contains(&format!("connected_slaves:{replicas}")) && online == replicas
                }
            })
        });
        cluster
    }

    /// A server in cluster mode on free ports; answers PING before this
    /// returns.
    fn spawn(&self) -> ClusterNode {
        for _ in 0..20 {
            let (port, bus) = (free_port(), free_port());
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--cluster-port", &bus.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--protected-mode", "no", "--cluster-enabled", "yes"])
                .args(["--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0"])
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .arg("--dir")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "redis-server runs (install the Debian package redis-server; ./.ci/run does)",
                );
            let mut node = ClusterNode { port, child: Some(child) };
            let redis = Redis { port, child: None };
            let deadline = Instant::now() + DEADLINE;
            while Instant::now() < deadline && !redis.ping() {
                if node.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                    break; // a port was taken meanwhile
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if redis.ping() {
                return node;
            }
            node.kill();
        }
        panic!("could not start a redis-server in cluster mode");
    }

    /// Waits until every live node says the cluster is ok and knows
    /// `nodes` nodes with every slot served.
    pub fn wait_settled(&self, nodes: usize) {
        wait_until("the Redis cluster is ok on every node", || {
            self.live().all(|node| {
                let info = node.cli(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_assigned:16384")
                    && info.contains(&format!("cluster_known_nodes:{nodes}"))
            })
        });
    }

    /// The nodes still running.
    pub fn live(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.iter().filter(|node| node.child.is_some())
    }

    /// `redis_url` for herald: every node as a seed.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node that serves `slot` as master now.
    pub fn master_of(&mut self, slot: u16) -> &mut ClusterNode {
        let port = self.live().find_map(|node| {
            let slots = node.cli(&["CLUSTER", "SLOTS"]);
            // redis-cli prints each range as lines: first, last, host, port, id, ...
            let lines: Vec<&str> = slots.lines().map(str::trim).collect();
            lines.windows(4).find_map(|w| {
                let (first, last) = (w[0].parse::<u16>().ok()?, w[1].parse::<u16>().ok()?);
                (w[2] == "127.0.0.1" && first <= slot && slot <= last)
                    .then(|| w[3].parse::<u16>().ok())
                    .flatten()
            })
        });
        let port = port.expect("a master serves the slot");
        self.nodes.iter_mut().find(|node| node.port == port).unwrap()
    }

    /// The slot of `key`, as Redis computes it.
    pub fn slot_of(&self, key: &str) -> u16 {
        self.live().next().unwrap().cli(&["CLUSTER", "KEYSLOT", key]).trim().parse().unwrap()
    }

    /// Moves `slot` (with its keys) from its master to another master, as
    /// `redis-cli --cluster reshard` does: importing and migrating states,
    /// `MIGRATE` of its keys in batches, then `SETSLOT NODE` everywhere.
    pub fn move_slot(&mut self, slot: u16) {
        let source = self.master_of(slot).port;
        let target = self
            .live()
            .find(|node| node.port != source && node.cli(&["ROLE"]).starts_with("master"))
            .unwrap()
            .port;
        let node = |port: u16| self.nodes.iter().find(|node| node.port == port).unwrap();
        let (source_id, target_id) = (node(source).id(), node(target).id());
        let slot = slot.to_string();
        node(target).cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id]);
        node(source).cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id]);
        loop {
            let keys = node(source).cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().map(str::trim).filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec!["MIGRATE", "127.0.0.1", "", "", "0", "5000", "REPLACE", "KEYS"];
            let port = target.to_string();
            migrate[2] = &port;
            migrate.extend(keys);
            let answer = node(source).cli(&migrate);
            assert!(answer.contains("OK") || answer.contains("NOKEY"), "{answer}");
        }
        for port in [target, source] {
            node(port).cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
        }
        for other in self.live().filter(|n| n.port != source && n.port != target) {
            other.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl ClusterNode {
    /// Runs `redis-cli` against this node; its output (raw, one value a line).
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The node's id in the cluster.
    pub fn id(&self) -> String {
        self.cli(&["CLUSTER", "MYID"]).trim().to_string()
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
