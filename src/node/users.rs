//! A shard's own index of authenticated `/ws` connections by user, for the server API calls that act on a user.

use std::collections::HashMap;
use std::sync::Arc;

/// User id to the local connections (slab key, generation) of that user.
/// Anonymous connections are not indexed. Only the shard's thread touches it.
#[derive(Debug, Default)]
pub struct LocalUsers {
    users: HashMap<Arc<str>, Vec<(u32, u32)>>,
}

impl LocalUsers {
    /// Records that connection `key`/`generation` belongs to `user`.
    pub fn add(&mut self, user: &Arc<str>, key: u32, generation: u32) {
        if user.is_empty() {
            return;
        }
        self.users.entry(user.clone()).or_default().push((key, generation));
    }

    /// Forgets connection `key` of `user`.
    pub fn remove(&mut self, user: &str, key: u32) {
        if let Some(conns) = self.users.get_mut(user) {
            conns.retain(|(k, _)| *k != key);
            if conns.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// The connections of `user`, copied (the caller changes them).
    pub fn of(&self, user: &str) -> Vec<(u32, u32)> {
        self.users.get(user).cloned().unwrap_or_default()
    }

    /// Users with a connection on this shard.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user has a connection here.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_found_by_user_and_forgotten() {
        let mut users = LocalUsers::default();
        let alice: Arc<str> = Arc::from("alice");
        users.add(&alice, 1, 10);
        users.add(&alice, 2, 11);
        users.add(&Arc::from(""), 3, 12);
        assert_eq!(users.of("alice"), [(1, 10), (2, 11)]);
        assert_eq!(users.len(), 1);
        users.remove("alice", 1);
        assert_eq!(users.of("alice"), [(2, 11)]);
        users.remove("alice", 2);
        assert!(users.is_empty());
        assert!(users.of("").is_empty());
    }
}
