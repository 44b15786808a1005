//! Calls on a user's connections across nodes: published on a control channel, carried out by every node's shards, each node's count sent back to the node that asked.

use super::{Inner, Job, answer, lock};
use crate::broker::{EngineAnswer, ReplyTo};
use crate::channel::ChannelName;
use crate::types::UserAction;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a disconnect or unsubscribe waits for every node's count; past
/// it, the answer counts the nodes that reported.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// This node's calls waiting for other nodes' counts.
#[derive(Debug, Default)]
pub(super) struct Calls {
    pending: Mutex<HashMap<u64, PendingCall>>,
    next: AtomicU64,
}

/// A call waiting for the nodes' counts.
#[derive(Debug)]
struct PendingCall {
    reply: ReplyTo,
    /// Nodes that received the call (known once `PUBLISH` answered).
    expected: Option<u64>,
    reported: u64,
    total: usize,
    deadline: Instant,
}

/// Publishes a call for every node (this one included); the answer goes to
/// `reply` once every node that received it reported, or at the timeout.
pub(super) fn call(
    inner: &Inner,
    con: &mut super::Commands,
    user: &str,
    action: &UserAction,
    reply: ReplyTo,
) -> redis::RedisResult<()> {
    let id = inner.calls.next.fetch_add(1, Ordering::Relaxed);
    let (action_name, channel) = match action {
        UserAction::Disconnect => ("disconnect", None),
        UserAction::Unsubscribe(channel) => ("unsubscribe", Some(channel.as_str())),
        UserAction::Terminate => ("terminate", None),
    };
    let message = serde_json::json!({
        "origin": &*inner.node, "id": id, "user": user,
        "action": action_name, "channel": channel,
    });
    lock(&inner.calls.pending).insert(
        id,
        PendingCall {
            reply,
            expected: None,
            reported: 0,
            total: 0,
            deadline: Instant::now() + CONTROL_TIMEOUT,
        },
    );
    let receivers: u64 = match redis::cmd(inner.publish_command())
        .arg(inner.control_channel())
        .arg(message.to_string())
        .query(con)
    {
        Ok(receivers) => receivers,
        Err(error) => {
            lock(&inner.calls.pending).remove(&id);
            return Err(error);
        }
    };
    let mut pending = lock(&inner.calls.pending);
    if let Some(call) = pending.get_mut(&id) {
        call.expected = Some(receivers);
        if call.reported >= receivers
            && let Some(call) = pending.remove(&id)
        {
            answer(inner, call.reply, EngineAnswer::Users(Ok(call.total)));
        }
    }
    Ok(())
}

/// A call from the control channel: carried out on this node's shards,
/// the count reported back to the node that asked.
pub(super) fn on_call(inner: &Inner, payload: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Call {
        origin: String,
        id: u64,
        user: String,
        action: String,
        channel: Option<String>,
    }
    let Ok(call) = serde_json::from_slice::<Call>(payload) else { return };
    let action = match (call.action.as_str(), call.channel) {
        ("disconnect", _) => UserAction::Disconnect,
        ("terminate", _) => UserAction::Terminate,
        ("unsubscribe", Some(channel)) => match ChannelName::parse(&channel) {
            Ok(channel) => UserAction::Unsubscribe(channel),
            Err(_) => return,
        },
        _ => return,
    };
    let jobs = inner.jobs.clone();
    let (origin, id) = (call.origin, call.id);
    inner.host.act_on_user(
        call.user.into(),
        action,
        Box::new(move |count| {
            let _ = jobs.send(Job::ControlReply { origin, id, count });
        }),
    );
}

/// Sends this node's count for another node's call.
pub(super) fn report(
    inner: &Inner,
    con: &mut super::Commands,
    origin: &str,
    id: u64,
    count: usize,
) -> redis::RedisResult<()> {
    let message = serde_json::json!({"id": id, "count": count});
    redis::cmd(inner.publish_command())
        .arg(inner.reply_channel(origin))
        .arg(message.to_string())
        .query::<u64>(con)?;
    Ok(())
}

/// A node's count for one of this node's calls; answers when all did.
pub(super) fn on_count(inner: &Inner, payload: &[u8]) {
    let Ok(reply) = serde_json::from_slice::<serde_json::Value>(payload) else { return };
    let (Some(id), Some(count)) = (
        reply.get("id").and_then(serde_json::Value::as_u64),
        reply.get("count").and_then(serde_json::Value::as_u64),
    ) else {
        return;
    };
    let mut pending = lock(&inner.calls.pending);
    let Some(call) = pending.get_mut(&id) else { return };
    call.reported += 1;
    call.total += usize::try_from(count).unwrap_or(0);
    if call.expected.is_some_and(|expected| call.reported >= expected)
        && let Some(call) = pending.remove(&id)
    {
        answer(inner, call.reply, EngineAnswer::Users(Ok(call.total)));
    }
}

/// Answers calls whose nodes did not all report in time, with the counts
/// of those that did.
pub(super) fn expire(inner: &Inner) {
    let now = Instant::now();
    let mut pending = lock(&inner.calls.pending);
    let late: Vec<u64> =
        pending.iter().filter(|(_, call)| call.deadline <= now).map(|(id, _)| *id).collect();
    for id in late {
        if let Some(call) = pending.remove(&id) {
            log::warn!(
                "redis engine: {} of {:?} nodes reported in time",
                call.reported,
                call.expected
            );
            answer(inner, call.reply, EngineAnswer::Users(Ok(call.total)));
        }
    }
}
