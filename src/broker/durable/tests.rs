//! Durable history without sockets: a store read back into the table keeps epochs, offsets and data; retention and expiry reach the disk; other formats are refused.

use super::*;
use crate::broker::memory::MemoryEngine;
use crate::broker::{Delivery, Done, Engine, Event, Subscription};
use crate::config::Config;
use crate::types::{Since, UserAction};
use std::sync::{Condvar, Mutex};
use store::FORMAT_FILE;

/// What the host was handed, in order.
#[derive(Debug)]
enum Seen {
    Delivered(usize, u64),
    Answered(Result<Vec<(ChannelName, Published)>, BrokerError>),
}

#[derive(Debug, Default)]
struct Recorder {
    seen: Mutex<Vec<Seen>>,
    changed: Condvar,
}

impl Host for Recorder {
    fn shards(&self) -> usize {
        2
    }

    fn deliver(&self, shard: usize, delivery: Delivery) {
        if let Event::Publication(publication) = &delivery.event {
            self.seen.lock().unwrap().push(Seen::Delivered(shard, publication.offset()));
            self.changed.notify_all();
        }
    }

    fn answer(&self, _: ReplyTo, answer: EngineAnswer) {
        if let EngineAnswer::Published(result) = answer {
            self.seen.lock().unwrap().push(Seen::Answered(result));
            self.changed.notify_all();
        }
    }

    fn act_on_user(&self, _: Arc<str>, _: UserAction, done: Done) {
        done(0);
    }
}

impl Recorder {
    /// Waits for the next answer (all that was seen before it stays).
    fn answer(&self) -> Result<Vec<(ChannelName, Published)>, BrokerError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = self.seen.lock().unwrap();
        loop {
            if let Some(at) = seen.iter().position(|s| matches!(s, Seen::Answered(_))) {
                let Seen::Answered(result) = seen.remove(at) else { unreachable!() };
                return result;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no answer within 10 s");
            seen = self.changed.wait_timeout(seen, left).unwrap().0;
        }
    }
}

/// A directory of its own under the system's temporary one, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let path =
            std::env::temp_dir().join(format!("herald-durable-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &Dir, adjust: impl FnOnce(&mut Config)) -> Arc<Config> {
    let mut config = Config::dev();
    config.threads = 2;
    config.channels =
        NamespaceOptions { history_size: 5, history_ttl_secs: 60, ..Default::default() };
    config.namespaces.insert("live".into(), NamespaceOptions::default());
    config.data_dir = Some(dir.0.clone());
    adjust(&mut config);
    Arc::new(config)
}

fn start(config: &Arc<Config>) -> (MemoryEngine, Arc<Recorder>) {
    let host = Arc::new(Recorder::default());
    let engine = MemoryEngine::start(config.clone(), Arc::from("n1"), host.clone()).unwrap();
    (engine, host)
}

const NOBODY: ReplyTo = ReplyTo { conn: ConnRef { shard: 0, key: 0, generation: 0 }, id: None };

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

fn publish(
    engine: &MemoryEngine,
    host: &Recorder,
    channels: &[ChannelName],
    data: &str,
) -> Result<Vec<(ChannelName, Published)>, BrokerError> {
    match engine.publish(channels, data.as_bytes(), None, NOBODY) {
        Answer::Now(result) => result,
        Answer::Later => host.answer(),
    }
}

fn history(engine: &MemoryEngine, name: &str) -> (Epoch, u64, Vec<(u64, String)>) {
    let Answer::Now(Ok(page)) = engine.history(&channel(name), None, 1000, NOBODY) else {
        panic!("history answers at once");
    };
    let publications = page
        .publications
        .iter()
        .map(|(offset, data)| (*offset, String::from_utf8(data.to_vec()).unwrap()))
        .collect();
    (page.epoch, page.offset, publications)
}

/// What the store in `dir` holds, read directly.
fn stored(dir: &Dir) -> Vec<StoredChannel> {
    let store = Store::open(&dir.0, Durability::Fsync).unwrap();
    let mut channels = Vec::new();
    let leftovers = store.read(|channel| channels.push(channel)).unwrap();
    assert!(leftovers.channels.is_empty() && leftovers.publications.is_empty());
    channels
}

#[test]
fn a_restarted_engine_has_the_same_epochs_offsets_and_data() {
    let dir = Dir::new("restart");
    let config = config(&dir, |_| {});
    let (engine, host) = start(&config);
    let news = channel("news");
    let mut epoch = None;
    for n in 1..=3 {
        let results =
            publish(&engine, &host, std::slice::from_ref(&news), &format!("{n}")).unwrap();
        assert_eq!(results[0].1.offset, n);
        epoch = Some(results[0].1.epoch);
    }
    engine.stop();
    drop(engine);

    let (engine, host) = start(&config);
    let (restored, top, publications) = history(&engine, "news");
    assert_eq!((Some(restored), top), (epoch, 3));
    assert_eq!(publications, vec![(1, "1".into()), (2, "2".into()), (3, "3".into())]);
    // A subscriber at offset 1 of that epoch recovers 2 and 3.
    let since = Since { epoch: restored.as_str().into(), offset: 1 };
    let subscription = Subscription {
        channel: &news,
        who: ConnRef { shard: 1, key: 7, generation: 1 },
        member: None,
        since: Some(&since),
        replay_limit: usize::MAX,
        members: false,
        newest: false,
        member_limit: 0,
    };
    let Answer::Now(Ok(position)) = engine.subscribe(subscription, NOBODY) else {
        panic!("subscribe answers at once");
    };
    let recovery = position.recovery.unwrap();
    assert!(recovery.recovered);
    let offsets: Vec<u64> = recovery.missed.iter().map(|p| p.offset()).collect();
    assert_eq!(offsets, [2, 3]);
    // The next publication follows on, and reaches the subscriber's shard
    // before its publish is answered.
    let results = publish(&engine, &host, std::slice::from_ref(&news), "4").unwrap();
    assert_eq!((results[0].1.epoch, results[0].1.offset), (restored, 4));
    let seen = host.seen.lock().unwrap();
    assert!(matches!(seen.as_slice(), [Seen::Delivered(1, 4)]), "{seen:?}");
}

#[test]
fn channels_without_history_are_not_stored_and_a_broadcast_is_answered_together() {
    let dir = Dir::new("broadcast");
    let config = config(&dir, |_| {});
    let (engine, host) = start(&config);
    // Without history: answered at once, as without a store.
    assert!(matches!(engine.publish(&[channel("live:x")], b"1", None, NOBODY), Answer::Now(Ok(_))));
    let results =
        publish(&engine, &host, &[channel("live:x"), channel("news")], "\"both\"").unwrap();
    let offsets: Vec<(&str, u64)> =
        results.iter().map(|(channel, published)| (channel.as_str(), published.offset)).collect();
    assert_eq!(offsets, [("live:x", 1), ("news", 1)], "live:x was freed after its first");
    engine.stop();
    drop(engine);
    let names: Vec<String> = stored(&dir).into_iter().map(|channel| channel.name).collect();
    assert_eq!(names, ["news"]);
}

#[test]
fn the_disk_keeps_history_size_publications_per_channel() {
    let dir = Dir::new("size");
    let config = config(&dir, |_| {});
    let (engine, host) = start(&config);
    for n in 1..=12 {
        publish(&engine, &host, &[channel("news")], &n.to_string()).unwrap();
    }
    let figures = engine.health().store.unwrap();
    assert_eq!((figures.channels, figures.publications), (1, 5));
    engine.stop();
    drop(engine);
    let channels = stored(&dir);
    let offsets: Vec<u64> = channels[0].publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [8, 9, 10, 11, 12]);
}

#[test]
fn expired_channels_leave_the_disk() {
    let dir = Dir::new("expiry");
    let config = config(&dir, |_| {});
    let (engine, host) = start(&config);
    publish(&engine, &host, &[channel("news")], "1").unwrap();
    engine.advance_clock(Duration::from_secs(61));
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.health().store.unwrap().channels > 0 {
        assert!(Instant::now() < deadline, "the channel was not removed from the disk");
        std::thread::sleep(Duration::from_millis(20));
    }
    engine.stop();
    drop(engine);
    assert!(stored(&dir).is_empty());
}

#[test]
fn a_restart_applies_the_options_configured_now() {
    let dir = Dir::new("options");
    let (engine, host) = start(&config(&dir, |_| {}));
    for n in 1..=5 {
        publish(&engine, &host, &[channel("news"), channel("gone:x")], &n.to_string()).unwrap_err();
    }
    engine.stop();
    drop(engine);
    // `gone` was never configured: nothing was published at all.
    assert!(stored(&dir).is_empty());

    let with_gone = config(&dir, |config| {
        config.namespaces.insert(
            "gone".into(),
            NamespaceOptions { history_size: 5, history_ttl_secs: 60, ..Default::default() },
        );
    });
    let (engine, host) = start(&with_gone);
    for n in 1..=5 {
        publish(&engine, &host, &[channel("news"), channel("gone:x")], &n.to_string()).unwrap();
    }
    engine.stop();
    drop(engine);

    // Now `gone` is not configured and the default namespace keeps 2.
    let (engine, _) = start(&config(&dir, |config| config.channels.history_size = 2));
    let (_, top, publications) = history(&engine, "news");
    assert_eq!((top, publications.len()), (5, 2));
    engine.stop();
    drop(engine);
    let channels = stored(&dir);
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0].publications.len(), 2);
}

#[test]
fn stores_of_another_format_or_foreign_directories_are_refused() {
    let dir = Dir::new("format");
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join("notes.txt"), "mine").unwrap();
    let error = Store::open(&dir.0, Durability::Fsync).unwrap_err();
    assert!(error.contains("no herald store"), "{error}");
    std::fs::remove_file(dir.0.join("notes.txt")).unwrap();
    drop(Store::open(&dir.0, Durability::Fsync).unwrap());
    let text = std::fs::read_to_string(dir.0.join(FORMAT_FILE)).unwrap();
    assert!(text.starts_with("herald store format 1\n"), "{text}");
    for (version, says) in [(0, "older herald"), (2, "newer herald")] {
        std::fs::write(
            dir.0.join(FORMAT_FILE),
            format!("herald store format {version}\nwritten by herald 9.9.9\n"),
        )
        .unwrap();
        let error = Store::open(&dir.0, Durability::Fsync).unwrap_err();
        for part in [format!("format {version}"), "herald 9.9.9".into(), "reads format 1".into()] {
            assert!(error.contains(&part), "{part:?} missing from {error}");
        }
        assert!(error.contains(says), "{error}");
    }
    std::fs::write(dir.0.join(FORMAT_FILE), "something else\n").unwrap();
    let error = Store::open(&dir.0, Durability::Fsync).unwrap_err();
    assert!(error.contains("does not name a herald store format"), "{error}");
}

#[test]
fn a_store_in_use_is_refused() {
    let dir = Dir::new("locked");
    let first = Store::open(&dir.0, Durability::Fsync).unwrap();
    let error = Store::open(&dir.0, Durability::Fsync).unwrap_err();
    assert!(error.contains("another process"), "{error}");
    drop(first);
}

#[test]
fn only_the_contiguous_unexpired_newest_publications_are_kept() {
    let publication = |offset, at| StoredPublication { offset, at, data: Bytes::from_static(b"1") };
    let channel = StoredChannel {
        name: "news".into(),
        epoch: Epoch::from_u32(1),
        publications: vec![
            publication(1, 100),
            publication(3, 200),
            publication(4, 300),
            publication(5, 400),
        ],
    };
    let options = |size, ttl| NamespaceOptions {
        history_size: size,
        history_ttl_secs: ttl,
        ..Default::default()
    };
    assert_eq!(kept(&channel, &options(10, 10), 1000), 3, "1 is cut off by the gap");
    assert_eq!(kept(&channel, &options(2, 10), 1000), 2);
    assert_eq!(kept(&channel, &options(10, 1), 1250), 2, "3 expired at 1200");
    assert_eq!(kept(&channel, &options(10, 1), 1400), 0);
}
