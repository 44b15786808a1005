//! The PHP client: the one-file example in examples/php and the Composer package in clients/php (its PHPUnit suite), run by a real `php` against a live herald.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long the whole PHPUnit suite may take.
const PHPUNIT_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `php` with `args` and herald's address and secrets in the
/// environment; fails the test past the deadline.
fn php(server: &TestServer, key: &str, args: &[&str]) -> Output {
    let mut command = Command::new("php");
    command.args(args).env("HERALD_API_KEY", key);
    run(with_herald(&mut command, server), DEADLINE, "php-cli and php-curl")
}

/// Sets herald's address and token secret in a command's environment.
fn with_herald<'a>(command: &'a mut Command, server: &TestServer) -> &'a mut Command {
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HERALD_URL", format!("http://{}", server.addr))
        .env("HERALD_TOKEN_SECRET", server.secret.expose())
}

/// Runs a command to its end; fails the test past `deadline`, or naming
/// the Debian packages to install when the program is missing.
fn run(command: &mut Command, deadline: Duration, packages: &str) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    let child =
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|error| {
            panic!("cannot run {program} ({error}): install {packages} (./.ci/run does)")
        });
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match finished.recv_timeout(deadline) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{program} did not finish within {deadline:?}");
        }
    }
}

fn lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

#[test]
fn the_php_example_publishes_and_a_subscriber_receives_it() {
    let server = start_server(2, |_| {});
    let (mut subscriber, _) = WsClient::open_client(server.addr);
    subscriber.subscribe("news");
    let output = php(
        &server,
        &server.api_key,
        &["examples/php/publish.php", "news", r#"{"title":"from PHP","n":1}"#],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines = lines(&output);
    assert_eq!(lines[0]["published"]["offset"], 1);
    let push = subscriber.next_push();
    assert_eq!(push["data"], json!({"title": "from PHP", "n": 1}));
    // The token PHP minted opens a connection as user 42 with its grant.
    let token = lines[1]["token"].as_str().unwrap();
    let (mut client, welcome) =
        WsClient::open_client_at(server.addr, &format!("/ws?token={token}"), "");
    assert_eq!(welcome["user"], "42");
    assert_eq!(client.subscribe("private-42")["op"], "subscribed");

    let refused = php(&server, "wrong-key-0000", &["examples/php/publish.php", "news", "1"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("401 unauthorized"), "{stderr}");
}

#[test]
fn every_call_of_the_php_class_works_against_herald() {
    let server = start_server(2, |_| {});
    let token = server.token("alice", &[]);
    let (mut alice, _) = WsClient::open_client_at(server.addr, &format!("/ws?token={token}"), "");
    alice.subscribe("chat:room");
    let script = r#"
        require 'examples/php/Herald.php';
        $h = new Herald(getenv('HERALD_URL'), getenv('HERALD_API_KEY'));
        $out = fn ($v) => print(json_encode($v) . "\n");
        $out($h->broadcast(['news', 'chat:room'], ['n' => 1]));
        $out($h->presence('chat:room'));
        $out($h->history('chat:room'));
        $first = $h->history('chat:room');
        $out($h->history('chat:room', 0, $first['epoch'], 1));
        $out($h->channels('chat:'));
        $out($h->info()['version']);
        $out($h->unsubscribe('alice', 'chat:room'));
        $out($h->disconnect('alice'));
        try { $h->publish('bad channel', 1); } catch (HeraldException $e) { $out([$e->status, $e->errorCode]); }
        try { $h->publish('news', "\xB1"); } catch (HeraldException $e) { $out([$e->status, $e->getMessage()]); }
        try { new Herald(getenv('HERALD_URL'), getenv('NO_SUCH_VARIABLE')); } catch (InvalidArgumentException $e) { $out($e->getMessage()); }
    "#;
    let output = php(&server, &server.api_key, &["-r", script]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines = lines(&output);
    assert_eq!(lines[0][1]["channel"], "chat:room");
    assert_eq!(lines[1][0]["user"], "alice");
    assert_eq!(lines[2]["publications"][0]["data"], json!({"n": 1}));
    assert_eq!(lines[3]["publications"].as_array().unwrap().len(), 1);
    assert_eq!(lines[4], json!([{"channel": "chat:room", "subscribers": 1}]));
    assert_eq!(lines[5], env!("CARGO_PKG_VERSION"));
    assert_eq!(lines[6], 1);
    assert_eq!(lines[7], 1);
    assert_eq!(lines[8], json!([400, "bad_request"]));
    assert_eq!(
        lines[9],
        json!([
            0,
            "herald: the data cannot be encoded as JSON: Malformed UTF-8 characters, \
                   possibly incorrectly encoded (nothing was sent)"
        ])
    );
    assert!(lines[10].as_str().unwrap().contains("set HERALD_API_KEY"), "{}", lines[10]);
    assert_eq!(alice.next_push()["op"], "message");
    assert_eq!(alice.next_push()["op"], "unsubscribed");
    assert_eq!(alice.expect_close(), 4000);
}

#[test]
fn the_php_example_says_in_one_line_what_is_wrong_with_its_input() {
    let server = start_server(1, |_| {});

    let bad_json = php(&server, &server.api_key, &["examples/php/publish.php", "news", "{oops"]);
    assert_eq!(bad_json.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&bad_json.stderr),
        "publish.php: the data argument is not valid JSON: Syntax error\n"
    );
    assert!(bad_json.stdout.is_empty(), "{}", String::from_utf8_lossy(&bad_json.stdout));

    let mut command = Command::new("php");
    command.args(["examples/php/publish.php", "news", "{}"]).env_remove("HERALD_API_KEY");
    let no_key = run(with_herald(&mut command, &server), DEADLINE, "php-cli and php-curl");
    assert_eq!(no_key.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&no_key.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("publish.php: HERALD_API_KEY is not set"), "{stderr}");

    // Neither got as far as publishing.
    let history =
        ApiClient::new(server.addr, &server.api_key).send("GET", "/api/history?channel=news", "");
    assert_eq!(history.json()["offset"], 0, "{}", history.body);
}

#[test]
fn the_php_package_passes_its_phpunit_suite_against_herald() {
    // Config::dev() adds the `demo` namespace (history, presence) that the
    // suite uses, as `herald serve --dev` does.
    let server = start_server(2, |_| {});
    let mut command = Command::new("phpunit");
    command.args(["-c", "clients/php/phpunit.xml.dist"]).env("HERALD_API_KEY", &server.api_key);
    let output = run(
        with_herald(&mut command, &server),
        PHPUNIT_DEADLINE,
        "phpunit, php-cli and php-curl (apt-get install phpunit php-curl)",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "phpunit failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every test ran and passed (phpunit.xml.dist also fails on skipped,
    // risky and incomplete tests).
    assert!(stdout.lines().any(|line| line.starts_with("OK (")), "{stdout}");
    // It talked to this herald.
    for (metric_line, at_least) in [
        (r#"herald_api_requests_total{endpoint="publish",status="200"} "#, 5.0),
        (r#"herald_api_requests_total{endpoint="broadcast",status="200"} "#, 1.0),
        (r#"herald_api_requests_total{endpoint="info",status="401"} "#, 1.0),
    ] {
        let value = metric(server.addr, metric_line);
        assert!(value >= at_least, "{metric_line}{value}");
    }
}

#[test]
fn the_php_package_mints_the_tokens_herald_mints() {
    let server = start_server(1, |_| {});
    let script = r#"
        require 'clients/php/src/Token.php';
        $secret = getenv('HERALD_TOKEN_SECRET');
        echo Herald\Token::mint($secret, 'u/42', 3600, ['private-a', 'team-*'], 1700000000), "\n";
        echo Herald\Token::mint($secret, 'é', 0, [], 1700000000), "\n";
    "#;
    let output = php(&server, &server.api_key, &["-r", script]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tokens: Vec<&str> = stdout.lines().collect();
    let channels = ["private-a".to_string(), "team-*".to_string()];
    assert_eq!(
        tokens,
        [
            herald::auth::mint(&server.secret, "u/42", Some(3600), &channels, 1_700_000_000),
            herald::auth::mint(&server.secret, "é", None, &[], 1_700_000_000),
        ]
    );
}

/// `php -S` serving the webhook example, stopped when dropped.
struct PhpReceiver {
    child: std::process::Child,
    url: String,
    log: std::path::PathBuf,
}

impl Drop for PhpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PhpReceiver {
    fn start(secret: &str) -> PhpReceiver {
        static RECEIVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = RECEIVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("herald-php-webhook-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("events.log");
        // Port 0: php picks a free port and says which (a port probed here
        // and handed over could be taken meanwhile by another test's
        // server, which would then receive the webhooks).
        let mut child = Command::new("php")
            .args(["-S", "127.0.0.1:0", "examples/php/webhook.php"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("HERALD_WEBHOOK_SECRET", secret)
            .env("HERALD_WEBHOOK_LOG", &log)
            .env("HERALD_WEBHOOK_SEEN", dir.join("seen"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("php runs (install php-cli; ./.ci/run does)");
        let (tx, rx) = mpsc::channel();
        // php says where it listens on one stream or the other; both are
        // read to the end, so that its request log never fills a pipe.
        let streams: [Box<dyn std::io::Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for stream in streams {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(url) = line
                        .split_once("(http://")
                        .and_then(|(_, rest)| rest.split_once(')'))
                        .map(|(addr, _)| format!("http://{addr}/"))
                    {
                        let _ = tx.send(url);
                    }
                }
            });
        }
        let url = rx.recv_timeout(DEADLINE).expect("php -S says where it listens");
        PhpReceiver { child, url, log }
    }

    /// The events the example handled, in order.
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

#[test]
fn the_php_webhook_example_verifies_and_handles_each_event_once() {
    let secret = "webhook-secret-0123456789";
    let receiver = PhpReceiver::start(secret);
    let url = receiver.url.clone();
    let server = start_server(2, move |config| {
        let text = format!(
            "webhook_secret = \"{secret}\"\n[namespaces.chat]\npresence = true\nwebhook_url = \"{url}\"\n"
        );
        let loaded =
            herald::Config::load(Some((std::path::Path::new("h.toml"), &text)), Vec::new(), true)
                .unwrap();
        config.namespaces.insert("chat".into(), loaded.namespaces["chat"].clone());
        config.webhooks = loaded.webhooks;
    });
    let (mut client, _) = WsClient::open_client(server.addr);
    client.subscribe("chat:lobby");
    wait_until("the example handled two events", || receiver.events().len() >= 2);
    let events = receiver.events();
    assert_eq!(events[0]["name"], "channel_occupied");
    assert_eq!(events[0]["channel"], "chat:lobby");
    assert_eq!(events[1]["name"], "member_added");
    assert_ne!(events[0]["id"], events[1]["id"]);
    // A forged request is refused and not handled; a repeat is handled once.
    let body = r#"{"time_ms":1,"events":[{"name":"channel_vacated","channel":"chat:lobby"}]}"#;
    let forged = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nX-Herald-Signature: sha256=00\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let address = receiver.url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    assert_eq!(request(address, &forged).status, 401);
    let time_ms = herald::clock::unix_millis();
    let body = format!(
        r#"{{"time_ms":{time_ms},"events":[{{"name":"channel_vacated","channel":"chat:lobby"}}]}}"#
    );
    let signature =
        herald::wire::pusher::sign(&herald::config::Secret::new(secret), body.as_bytes());
    let repeat = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nX-Herald-Signature: sha256={signature}\r\nX-Herald-Webhook-Id: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        events[0]["id"].as_str().unwrap(),
        body.len()
    );
    assert_eq!(request(address, &repeat).status, 204);
    assert_eq!(receiver.events().len(), 2, "{:?}", receiver.events());
}
