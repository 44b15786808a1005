//! Memory engine tests without sockets: offsets, ordering across shards, recovery, presence, expiry.

use super::*;
use crate::broker::{Publication, Recovery};
use crate::config::{Config, NamespaceOptions};
use crate::types::client_id;
use bytes::Bytes;
use std::sync::Mutex;
use std::time::Duration;

/// A host that keeps what is delivered to each shard.
#[derive(Debug)]
struct Recorder {
    shards: Vec<Mutex<Vec<Delivery>>>,
}

impl Host for Recorder {
    fn shards(&self) -> usize {
        self.shards.len()
    }

    fn deliver(&self, shard: usize, delivery: Delivery) {
        self.shards[shard].lock().unwrap().push(delivery);
    }

    fn answer(&self, _: ReplyTo, _: super::super::EngineAnswer) {}

    fn act_on_user(&self, _: Arc<str>, _: UserAction, done: crate::broker::Done) {
        done(0);
    }
}

struct Harness {
    engine: Arc<MemoryEngine>,
    host: Arc<Recorder>,
}

fn harness(shards: usize, adjust: impl FnOnce(&mut Config)) -> Harness {
    let mut config = Config::dev();
    config.threads = shards;
    config.channels =
        NamespaceOptions { history_size: 5, history_ttl_secs: 60, ..Default::default() };
    config.namespaces.insert(
        "chat".into(),
        NamespaceOptions {
            presence: true,
            join_leave: true,
            client_publish: true,
            ..Default::default()
        },
    );
    adjust(&mut config);
    let host = Arc::new(Recorder { shards: (0..shards).map(|_| Mutex::default()).collect() });
    let engine = Arc::new(MemoryEngine::new(Arc::new(config), Arc::from("n1"), host.clone()));
    Harness { engine, host }
}

const NOBODY: ReplyTo = ReplyTo { conn: ConnRef { shard: 0, key: 0, generation: 0 }, id: None };

fn now<T>(answer: Answer<T>) -> Result<T, BrokerError> {
    match answer {
        Answer::Now(result) => result,
        Answer::Later => panic!("the memory engine answers at once"),
    }
}

fn publish(
    engine: &MemoryEngine,
    channel: &ChannelName,
    data: &[u8],
    exclude: Option<ConnRef>,
) -> Result<Published, BrokerError> {
    let exclude = exclude.map(|who| client_id("n1", who));
    let results =
        now(engine.publish(std::slice::from_ref(channel), data, exclude.as_deref(), NOBODY))?;
    Ok(results[0].1.clone())
}

fn subscribe(
    engine: &MemoryEngine,
    channel: &ChannelName,
    who: ConnRef,
    member: Option<&Member>,
    since: Option<&Since>,
    replay_limit: usize,
) -> Result<Position, BrokerError> {
    let subscription = Subscription {
        channel,
        who,
        member,
        since,
        replay_limit,
        members: false,
        newest: false,
        member_limit: 0,
    };
    now(engine.subscribe(subscription, NOBODY))
}

fn history(
    engine: &MemoryEngine,
    channel: &ChannelName,
    since: Option<&Since>,
    limit: usize,
) -> Result<HistoryPage, BrokerError> {
    now(engine.history(channel, since, limit, NOBODY))
}

fn presence(engine: &MemoryEngine, channel: &ChannelName) -> Result<Vec<Member>, BrokerError> {
    now(engine.presence(channel, NOBODY))
}

impl Harness {
    fn drain(&self, shard: usize) -> Vec<Delivery> {
        std::mem::take(&mut *self.host.shards[shard].lock().unwrap())
    }
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

fn conn(shard: u16, key: u32) -> ConnRef {
    ConnRef { shard, key, generation: 1 }
}

/// The `/ws` frame a delivery carries.
fn frame(delivery: &Delivery) -> Bytes {
    match &delivery.event {
        Event::Publication(publication) => publication.ws_frame().clone(),
        Event::Presence(change) => change.ws_frame().clone(),
        Event::Restart(restart) => restart.ws_frame().clone(),
        Event::Relay(relayed) => relayed.frame().clone(),
    }
}

fn text(frame: &Bytes) -> String {
    let (_, body) = frame.split_at(if frame[1] == 126 { 4 } else { 2 });
    String::from_utf8(body.to_vec()).unwrap()
}

fn missed_texts(recovery: &Recovery) -> Vec<String> {
    recovery.missed.iter().map(|p| text(p.ws_frame())).collect()
}

#[test]
fn offsets_are_consecutive_and_the_epoch_stays() {
    let h = harness(1, |_| {});
    let news = channel("news");
    let first = publish(&h.engine, &news, b"1", None).unwrap();
    let second = publish(&h.engine, &news, b"2", None).unwrap();
    assert_eq!((first.offset, second.offset), (1, 2));
    assert_eq!(first.epoch, second.epoch);
    let other = publish(&h.engine, &channel("other"), b"1", None).unwrap();
    assert_eq!(other.offset, 1);
}

#[test]
fn the_push_frame_keeps_data_byte_for_byte() {
    let publication = Publication::new(Arc::from("news"), 46, br#"{"title": "x" , "n":1.50}"#);
    let frame = publication.ws_frame();
    assert_eq!(frame[0], 0x81);
    assert_eq!(
        text(frame),
        r#"{"op":"message","channel":"news","offset":46,"data":{"title": "x" , "n":1.50}}"#
    );
    assert_eq!(&publication.data()[..], br#"{"title": "x" , "n":1.50}"#);
    assert_eq!(
        &publication.json()[..],
        br#"{"channel":"news","offset":46,"data":{"title": "x" , "n":1.50}}"#
    );
}

#[test]
fn deliveries_go_to_interested_shards_only() {
    let h = harness(3, |_| {});
    let news = channel("news");
    subscribe(&h.engine, &news, conn(0, 1), None, None, usize::MAX).unwrap();
    subscribe(&h.engine, &news, conn(2, 1), None, None, usize::MAX).unwrap();
    subscribe(&h.engine, &news, conn(2, 2), None, None, usize::MAX).unwrap();
    publish(&h.engine, &news, b"\"hi\"", Some(conn(2, 2))).unwrap();
    let to_zero = h.drain(0);
    assert_eq!(to_zero.len(), 1);
    assert_eq!(to_zero[0].offset(), Some(1));
    assert!(h.drain(1).is_empty());
    let to_two = h.drain(2);
    assert_eq!(to_two.len(), 1, "one delivery per shard, however many subscribers");
    assert_eq!(to_two[0].exclude, Some(conn(2, 2)));
    assert!(Arc::ptr_eq(&to_zero[0].channel, &to_two[0].channel));
    assert_eq!(frame(&to_zero[0]), frame(&to_two[0]));
    Engine::unsubscribe(&*h.engine, &news, conn(0, 1), None);
    publish(&h.engine, &news, b"2", None).unwrap();
    assert!(h.drain(0).is_empty());
    assert_eq!(h.drain(2).len(), 1);
}

#[test]
fn concurrent_publishers_give_every_shard_the_same_order() {
    let h = harness(2, |_| {});
    let news = channel("news");
    subscribe(&h.engine, &news, conn(0, 1), None, None, usize::MAX).unwrap();
    subscribe(&h.engine, &news, conn(1, 1), None, None, usize::MAX).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|publisher| {
            let engine = h.engine.clone();
            let news = news.clone();
            std::thread::spawn(move || {
                for n in 0..500 {
                    publish(&engine, &news, format!("[{publisher},{n}]").as_bytes(), None).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    for shard in 0..2 {
        let offsets: Vec<u64> = h.drain(shard).iter().map(|d| d.offset().unwrap()).collect();
        assert_eq!(offsets, (1..=2000).collect::<Vec<_>>(), "shard {shard}");
    }
}

#[test]
fn history_is_bounded_by_size_and_ttl() {
    let h = harness(1, |_| {});
    let news = channel("news");
    for n in 1..=8 {
        publish(&h.engine, &news, n.to_string().as_bytes(), None).unwrap();
    }
    let page = history(&h.engine, &news, None, 100).unwrap();
    assert_eq!(page.offset, 8);
    let offsets: Vec<u64> = page.publications.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets, [4, 5, 6, 7, 8]);
    assert_eq!(&page.publications[0].1[..], b"4");
    let since = Since { epoch: page.epoch.as_str().into(), offset: 6 };
    let after = history(&h.engine, &news, Some(&since), 1).unwrap();
    assert_eq!(after.publications.len(), 1);
    assert_eq!(after.publications[0].0, 7);
    h.engine.advance_clock(Duration::from_secs(61));
    assert!(history(&h.engine, &news, None, 100).unwrap().publications.is_empty());
    assert_eq!(
        history(&h.engine, &channel("chat:x"), None, 1).unwrap_err(),
        BrokerError::HistoryOff
    );
}

#[test]
fn recovery_replays_exactly_the_missed_publications() {
    let h = harness(1, |_| {});
    let news = channel("news");
    let first = publish(&h.engine, &news, b"1", None).unwrap();
    for n in 2..=4 {
        publish(&h.engine, &news, n.to_string().as_bytes(), None).unwrap();
    }
    let epoch = first.epoch.as_str().to_string();
    let since = Since { epoch: epoch.clone(), offset: 1 };
    let subscribed =
        subscribe(&h.engine, &news, conn(0, 1), None, Some(&since), usize::MAX).unwrap();
    assert_eq!(subscribed.offset, 4);
    let recovery = subscribed.recovery.unwrap();
    assert!(recovery.recovered);
    let missed = missed_texts(&recovery);
    assert_eq!(missed.len(), 3);
    assert!(missed[0].contains(r#""offset":2,"data":2"#), "{missed:?}");
    assert!(missed[2].contains(r#""offset":4,"data":4"#));

    let up_to_date = Since { epoch: epoch.clone(), offset: 4 };
    let recovery =
        subscribe(&h.engine, &news, conn(0, 2), None, Some(&up_to_date), usize::MAX).unwrap();
    let recovery = recovery.recovery.unwrap();
    assert!(recovery.recovered && recovery.missed.is_empty());
}

#[test]
fn recovery_fails_plainly_when_it_cannot_be_complete() {
    let h = harness(1, |_| {});
    let news = channel("news");
    let epoch = publish(&h.engine, &news, b"1", None).unwrap().epoch.as_str().to_string();
    for n in 2..=10 {
        publish(&h.engine, &news, n.to_string().as_bytes(), None).unwrap();
    }
    let cases = [
        Since { epoch: "other".into(), offset: 9 }, // another epoch
        Since { epoch: epoch.clone(), offset: 2 },  // gap longer than the 5 kept
        Since { epoch: epoch.clone(), offset: 11 }, // from the future
    ];
    for (key, since) in (1..).zip(cases) {
        let subscribed =
            subscribe(&h.engine, &news, conn(0, key), None, Some(&since), usize::MAX).unwrap();
        let recovery = subscribed.recovery.unwrap();
        assert!(!recovery.recovered, "{since:?}");
        assert!(recovery.missed.is_empty());
    }
    let recoverable = Since { epoch: epoch.clone(), offset: 5 };
    let too_big = subscribe(&h.engine, &news, conn(0, 9), None, Some(&recoverable), 10).unwrap();
    assert!(!too_big.recovery.unwrap().recovered, "over the replay limit");
    let fits =
        subscribe(&h.engine, &news, conn(0, 10), None, Some(&recoverable), usize::MAX).unwrap();
    assert_eq!(fits.recovery.unwrap().missed.len(), 5);
}

#[test]
fn presence_and_join_leave_reach_other_shards() {
    let h = harness(2, |_| {});
    let lobby = channel("chat:lobby");
    let alice = Member::new("c-a".into(), "alice".into());
    let bob = Member::new("c-b".into(), "bob".into());
    subscribe(&h.engine, &lobby, conn(0, 1), Some(&alice), None, usize::MAX).unwrap();
    subscribe(&h.engine, &lobby, conn(1, 1), Some(&bob), None, usize::MAX).unwrap();
    let joins = h.drain(0);
    assert_eq!(joins.len(), 1, "alice's own join is not sent to her shard, bob's is");
    assert_eq!(joins[0].offset(), None);
    assert!(text(&frame(&joins[0])).contains(r#""op":"join""#));
    assert!(text(&frame(&joins[0])).contains(r#""user":"bob""#));
    assert!(h.drain(1).is_empty(), "bob is alone on his shard: nobody there to tell");
    let mut members: Vec<String> =
        presence(&h.engine, &lobby).unwrap().iter().map(|m| m.user.to_string()).collect();
    members.sort();
    assert_eq!(members, ["alice", "bob"]);
    Engine::unsubscribe(&*h.engine, &lobby, conn(1, 1), Some(&bob));
    let leaves = h.drain(0);
    assert!(text(&frame(&leaves[0])).contains(r#""op":"leave""#));
    assert_eq!(presence(&h.engine, &lobby).unwrap().len(), 1);
    assert_eq!(presence(&h.engine, &channel("news")).unwrap_err(), BrokerError::PresenceOff);
}

#[test]
fn pusher_presence_is_per_user_with_a_limit_and_a_member_list() {
    let h = harness(2, |config| {
        let text = "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"0123456789abcdef\"\npresence_max_members = 2\n";
        config.apps = Config::load(Some((std::path::Path::new("h.toml"), text)), Vec::new(), true)
            .unwrap()
            .apps;
    });
    let room = ChannelName::of_app("1", "presence-room").unwrap();
    let member = |client: &str, user: &str| Member {
        client: client.into(),
        user: user.into(),
        info: Some(format!(r#"{{"name":"{user}"}}"#).into()),
    };
    let join = |who: ConnRef, member: &Member| {
        let subscription = Subscription {
            channel: &room,
            who,
            member: Some(member),
            since: None,
            replay_limit: usize::MAX,
            members: true,
            newest: false,
            member_limit: 2,
        };
        now(h.engine.subscribe(subscription, NOBODY))
    };
    let (u1a, u1b, u2, u3) =
        (member("a", "u1"), member("b", "u1"), member("c", "u2"), member("d", "u3"));
    let first = join(conn(0, 1), &u1a).unwrap();
    assert_eq!(first.members, std::slice::from_ref(&u1a), "the member list has the subscriber");
    join(conn(1, 2), &u1b).unwrap();
    join(conn(1, 3), &u2).unwrap();
    // Shard 0 hears u1's second tab (not a new user) and u2 (a new user).
    let heard = h.drain(0);
    let Event::Presence(tab) = &heard[0].event else { panic!("a presence change") };
    assert!(tab.pusher_frame().is_none(), "no member_added for a user's second tab");
    let changes: Vec<(String, bool)> = heard
        .iter()
        .map(|delivery| match &delivery.event {
            Event::Presence(change) => (change.member.user.to_string(), change.user_changed),
            _ => panic!("a presence change"),
        })
        .collect();
    assert_eq!(changes, [("u1".into(), false), ("u2".into(), true)]);
    h.drain(1);
    // A third user is over the limit; another tab of a member is not.
    assert_eq!(join(conn(0, 4), &u3).unwrap_err(), BrokerError::PresenceFull(2));
    join(conn(0, 5), &member("e", "u2")).unwrap();
    h.drain(1);
    // u1 leaves once its last tab does.
    Engine::unsubscribe(&*h.engine, &room, conn(0, 1), Some(&u1a));
    Engine::unsubscribe(&*h.engine, &room, conn(1, 2), Some(&u1b));
    let leaves: Vec<bool> = h
        .drain(1)
        .iter()
        .map(|d| match &d.event {
            Event::Presence(change) => change.user_changed,
            _ => panic!(),
        })
        .collect();
    assert_eq!(leaves, [false, true]);
}

#[test]
fn a_subscribe_can_ask_for_the_newest_publication_and_relays_are_not_kept() {
    let h = harness(1, |_| {});
    let news = channel("news");
    for n in 1..=3 {
        publish(&h.engine, &news, format!("{n}").as_bytes(), None).unwrap();
    }
    let subscription = Subscription {
        channel: &news,
        who: conn(0, 1),
        member: None,
        since: None,
        replay_limit: usize::MAX,
        members: false,
        newest: true,
        member_limit: 0,
    };
    let position = now(h.engine.subscribe(subscription, NOBODY)).unwrap();
    assert_eq!(position.newest.unwrap().offset(), 3);
    h.drain(0);
    let me = client_id("n1", conn(0, 1));
    h.engine.relay(&news, br#"{"event":"client-x"}"#, Some(&me)).unwrap();
    let relayed = h.drain(0);
    assert_eq!(relayed.len(), 1);
    assert_eq!(relayed[0].offset(), None);
    assert_eq!(relayed[0].exclude, Some(conn(0, 1)));
    assert_eq!(text(&frame(&relayed[0])), r#"{"event":"client-x"}"#);
    assert_eq!(history(&h.engine, &news, None, 10).unwrap().publications.len(), 3);
}

#[test]
fn no_channel_is_made_past_max_channels() {
    let h = harness(1, |config| config.max_channels = 3);
    for n in 0..3 {
        publish(&h.engine, &channel(&format!("news.{n}")), b"1", None).unwrap();
    }
    assert_eq!(Engine::channel_count(&*h.engine), 3);
    let refused = BrokerError::TooManyChannels(3);
    assert_eq!(publish(&h.engine, &channel("news.3"), b"1", None).unwrap_err(), refused);
    assert_eq!(
        subscribe(&h.engine, &channel("chat:x"), conn(0, 1), None, None, usize::MAX).unwrap_err(),
        refused
    );
    // Existing channels still take publications and subscribers.
    publish(&h.engine, &channel("news.0"), b"2", None).unwrap();
    subscribe(&h.engine, &channel("news.1"), conn(0, 1), None, None, usize::MAX).unwrap();
    assert_eq!(Engine::channel_count(&*h.engine), 3);
}

#[test]
fn unknown_namespaces_are_refused() {
    let h = harness(1, |_| {});
    assert!(matches!(
        publish(&h.engine, &channel("nope:x"), b"1", None),
        Err(BrokerError::UnknownNamespace(namespace)) if namespace == "nope"
    ));
}

#[test]
fn abandoned_channels_are_freed_once_their_history_expires() {
    let h = harness(2, |config| config.max_channels = 1_000_000);
    for n in 0..100_000 {
        let name = channel(&format!("news.{n}"));
        subscribe(&h.engine, &name, conn(0, 1), None, None, usize::MAX).unwrap();
        publish(&h.engine, &name, b"1", None).unwrap();
        Engine::unsubscribe(&*h.engine, &name, conn(0, 1), None);
        let lobby = channel(&format!("chat:{n}"));
        subscribe(&h.engine, &lobby, conn(1, 1), None, None, usize::MAX).unwrap();
        Engine::unsubscribe(&*h.engine, &lobby, conn(1, 1), None);
    }
    h.drain(0);
    assert_eq!(
        Engine::channel_count(&*h.engine),
        100_000,
        "history keeps the news channels for now"
    );
    h.engine.advance_clock(Duration::from_secs(61));
    while Engine::channel_count(&*h.engine) > 0 {
        Engine::sweep(&*h.engine, 0, 2);
        Engine::sweep(&*h.engine, 1, 2);
    }
    // A re-created channel has a new epoch: its old history is gone.
    let fresh = publish(&h.engine, &channel("news.1"), b"x", None).unwrap();
    assert_eq!(fresh.offset, 1);
}
