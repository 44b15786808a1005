//! The README's shell, PHP and config snippets, run as written against a real `herald serve --dev`: they cannot drift from what herald does.
//!
//! Every ```sh, ```php and ```toml block runs, in order, unless the line
//! before it says `<!-- readme: not run here: REASON -->`. Shell blocks run
//! in one scratch Composer project (or, when their marker says so, from
//! this checkout) with `HERALD_API_KEY` and `HERALD_TOKEN_SECRET` exported
//! as the README tells the reader to, `herald` on `PATH`, and herald's real
//! address for `127.0.0.1:8080`. A block must succeed, print no error
//! answer, and print every field its `# {...}` comments show.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::DEADLINE;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;

/// A fenced block of the README.
#[derive(Debug)]
struct Block {
    line: usize,
    lang: String,
    text: String,
    /// The `<!-- readme: ... -->` note on the line before it.
    note: Option<String>,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut found = Vec::new();
    let lines: Vec<&str> = readme.lines().collect();
    let mut at = 0;
    while at < lines.len() {
        let Some(lang) = lines[at].strip_prefix("```") else {
            at += 1;
            continue;
        };
        let note = at
            .checked_sub(1)
            .and_then(|before| lines[before].strip_prefix("<!-- readme:"))
            .and_then(|note| note.strip_suffix("-->"))
            .map(|note| note.trim().to_string());
        let end = (at + 1..lines.len()).find(|i| lines[*i].starts_with("```")).unwrap();
        found.push(Block {
            line: at + 1,
            lang: lang.trim().to_string(),
            text: lines[at + 1..end].join("\n") + "\n",
            note,
        });
        at = end + 1;
    }
    found
}

/// A `herald serve --dev`, stopped when dropped.
struct Herald {
    child: Child,
    addr: String,
    api_key: String,
    token_secret: String,
}

impl Herald {
    fn start(args: &[&str], dir: &Path) -> Result<Herald, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let (mut api_key, mut token_secret) = (String::new(), String::new());
        loop {
            let Ok(line) = received.recv_timeout(DEADLINE) else {
                let _ = child.kill();
                let output = child.wait_with_output().unwrap();
                return Err(String::from_utf8_lossy(&output.stderr).into_owned());
            };
            if let Some(key) = line.trim().strip_prefix("api_key = ") {
                api_key = key.to_string();
            } else if let Some(secret) = line.trim().strip_prefix("token_secret = ") {
                token_secret = secret.to_string();
            } else if let Some(addr) = line.strip_prefix("herald listening on ") {
                let addr = addr.to_string();
                return Ok(Herald { child, addr, api_key, token_secret });
            }
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command, failing the test past the deadline.
fn run(command: &mut Command) -> Output {
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match finished.recv_timeout(DEADLINE) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{command:?} did not finish within {DEADLINE:?}");
        }
    }
}

/// The fields a `# {...}` comment of a block shows: each must be in what
/// the block printed.
fn expected_fields(block: &str) -> Vec<String> {
    let mut fields = Vec::new();
    for comment in block.lines().filter_map(|line| line.trim().strip_prefix("# {")) {
        for part in comment.split('"').collect::<Vec<_>>().windows(2) {
            if part[1].starts_with(':') && !part[0].is_empty() && !part[0].contains(' ') {
                fields.push(format!("\"{}\":", part[0]));
            }
        }
    }
    fields
}

fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "{tool} is needed to run the README's snippets: apt-get install {package} (./.ci/run does)"
    );
}

#[test]
fn every_shell_php_and_config_snippet_of_the_readme_runs_as_written() {
    require("php", "php-cli php-curl");
    require("composer", "composer");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let scratch = std::env::temp_dir().join(format!("herald-readme-{}", std::process::id()));
    let project = scratch.join("project");
    std::fs::create_dir_all(&project).unwrap();
    // A PHP project of the reader's, that reaches no package registry.
    std::fs::write(
        project.join("composer.json"),
        r#"{"name": "readme/app", "require": {}, "repositories": {"packagist.org": false}}"#,
    )
    .unwrap();
    let herald = Herald::start(&["serve", "--dev", "--listen", "127.0.0.1:0"], &scratch)
        .unwrap_or_else(|error| panic!("herald serve --dev did not start: {error}"));
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_herald")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    for block in blocks(&readme) {
        if !matches!(block.lang.as_str(), "sh" | "php" | "toml") {
            continue;
        }
        let note = block.note.as_deref().unwrap_or("");
        if let Some(reason) = note.strip_prefix("not run here:") {
            assert!(!reason.trim().is_empty(), "README line {}: say why it is not run", block.line);
            continue;
        }
        let text = block
            .text
            .replace("127.0.0.1:8080", &herald.addr)
            .replace("/path/to/herald", &root.display().to_string());
        let dir =
            if note.contains("from this checkout") { root.as_path() } else { project.as_path() };
        let mut command = match block.lang.as_str() {
            "sh" => {
                let mut command = Command::new("bash");
                command.args(["-e", "-o", "pipefail", "-c", &text]);
                command
            }
            "php" => {
                let file = project.join(format!("readme-{}.php", block.line));
                std::fs::write(&file, format!("<?php\n{text}")).unwrap();
                let mut command = Command::new("php");
                command.arg(&file);
                command
            }
            _ => {
                // A config file: herald must start with it.
                let file = scratch.join(format!("readme-{}.toml", block.line));
                std::fs::write(&file, &text).unwrap();
                let config = file.display().to_string();
                let started = Herald::start(
                    &["serve", "--config", &config, "--listen", "127.0.0.1:0"],
                    &scratch,
                );
                assert!(
                    started.is_ok(),
                    "README line {}: herald refused the config: {}",
                    block.line,
                    started.err().unwrap_or_default()
                );
                ran += 1;
                continue;
            }
        };
        let output = run(command
            .current_dir(dir)
            .env("PATH", &path)
            .env("HERALD_API_KEY", &herald.api_key)
            .env("HERALD_TOKEN_SECRET", &herald.token_secret)
            .env("COMPOSER_HOME", scratch.join("composer-home"))
            .env("COMPOSER_NO_INTERACTION", "1")
            .env("COMPOSER_DISABLE_NETWORK", "1")
            .env("COMPOSER_NO_AUDIT", "1"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "README line {} failed:\n{text}\n{stdout}\n{stderr}",
            block.line
        );
        assert!(
            !stdout.contains("\"error\":"),
            "README line {} got an error answer:\n{stdout}",
            block.line
        );
        for field in expected_fields(&text) {
            assert!(stdout.contains(&field), "README line {}: no {field} in\n{stdout}", block.line);
        }
        ran += 1;
    }
    assert!(ran >= 8, "only {ran} snippets ran");
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn snippets_are_found_with_their_notes() {
    let readme = "text\n<!-- readme: not run here: why -->\n```sh\na\nb\n```\n```php\nc\n```\n";
    let found = blocks(readme);
    assert_eq!(found.len(), 2);
    assert_eq!((found[0].lang.as_str(), found[0].text.as_str()), ("sh", "a\nb\n"));
    assert_eq!(found[0].note.as_deref(), Some("not run here: why"));
    assert_eq!(found[1].note, None);
    assert_eq!(
        expected_fields("curl ...\n# {\"epoch\":\"…\",\"offset\":1}\n# and {\"x\":1}"),
        ["\"epoch\":", "\"offset\":"]
    );
}
