//! Sessions (I6 `resume`): what a core remembers of a connection after it is gone, and where
//! each session is.
//!
//! A session is made by `setup` (its id goes out in `ready`) and lives with its connection.
//! When the connection ends, the core keeps a [`Detached`] copy of what `resume` needs (the
//! identity, the topics, the lowest unacknowledged QoS 1 `seqNo` per topic) for a time to
//! live, within a per-core cap (the oldest detached session goes first). The messages
//! themselves are not copied: the topics' owners hold them (history; QoS 1 messages are always
//! kept there), so a resume is a re-subscribe plus a replay from each topic's last `seqNo`.
//!
//! Where a session is: its id starts with the index of the core that made it (its *home*),
//! followed by 128 random bits. The home keeps a pointer to the core that holds the session
//! now; a `resume` on any core asks the home, the home forwards to the holder, the holder hands
//! the session over (closing a still-open old connection: a takeover) and the home's pointer
//! moves to the resuming core. The id never changes, so a client may resume many times.
//!
//! Pure: no glommio, no sockets; generic over the engine's connection handle. Unguessable ids
//! come from `getrandom(2)`.

use crate::auth::Identity;
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `resume` needs of a session whose connection is gone. `Send`: it may move to the core
/// where the session is resumed.
#[derive(Debug, Clone)]
pub struct Detached {
    /// Who the session belongs to (a resume before `setup` adopts it).
    pub identity: Option<Identity>,
    /// The topics it was subscribed to.
    pub topics: Vec<Arc<str>>,
    /// Per topic, the lowest `seqNo` sent as QoS 1 and not acknowledged.
    pub unacked: Vec<(Arc<str>, u64)>,
}

/// Topics and positions a detached state remembers.
fn refs(d: &Detached) -> usize {
    d.topics.len() + d.unacked.len()
}

/// A session held on this core.
#[derive(Debug)]
pub enum Held<C> {
    /// Its connection is open here.
    Attached(C),
    /// Its connection is gone; kept until `expires_at`.
    Detached {
        state: Box<Detached>,
        expires_at: Instant,
    },
}

/// Why a session cannot be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    /// Not held here: never existed, expired, evicted, or already resumed elsewhere.
    Unknown,
    /// Held, but it belongs to another identity (told to the client as "unknown" too).
    OtherIdentity,
}

/// One core's sessions: those it holds and, for the ids it made, where each is held now.
#[derive(Debug)]
pub struct Sessions<C> {
    held: HashMap<Arc<str>, Held<C>>,
    /// For ids made here: the core holding the session now.
    home: HashMap<Arc<str>, usize>,
    /// Detached sessions in the order they will expire (entries may be stale: the session was
    /// resumed or re-detached since; checked against `expires_at`).
    expiry: VecDeque<(Instant, Arc<str>)>,
    detached: usize,
    /// Topics and QoS 1 positions remembered by the detached sessions (their memory).
    detached_refs: usize,
    ttl: Duration,
    max_detached: usize,
    /// Detached sessions dropped because the cap was reached.
    pub evicted: u64,
    /// Detached sessions dropped because their time ran out.
    pub expired: u64,
    /// Clusters: `@<tag>` appended to the ids made here, naming this node.
    node_tag: Option<Arc<str>>,
}

impl<C: Copy + PartialEq> Sessions<C> {
    /// `ttl`: how long a detached session is kept (zero: never kept); at most `max_detached`.
    pub fn new(ttl: Duration, max_detached: usize) -> Self {
        Sessions {
            held: HashMap::new(),
            home: HashMap::new(),
            expiry: VecDeque::new(),
            detached: 0,
            detached_refs: 0,
            ttl,
            max_detached,
            evicted: 0,
            expired: 0,
            node_tag: None,
        }
    }

    /// Clusters: ids made here end with `@tag` so that another node recognises them as made
    /// elsewhere ([`node_tag`]).
    pub fn with_node_tag(mut self, tag: &str) -> Self {
        self.node_tag = Some(tag.into());
        self
    }

    /// Clusters: this node's tag (`None` on a single node).
    pub fn own_tag(&self) -> Option<&str> {
        self.node_tag.as_deref()
    }

    /// Whether sessions outlive their connection at all.
    pub fn retains(&self) -> bool {
        !self.ttl.is_zero() && self.max_detached > 0
    }

    /// A new session made on core `me` for connection `c`: held here, homed here.
    pub fn create(&mut self, me: usize, c: C) -> Arc<str> {
        let id: Arc<str> = match &self.node_tag {
            Some(t) => format!("{}@{t}", new_id(me)).into(),
            None => new_id(me).into(),
        };
        self.held.insert(id.clone(), Held::Attached(c));
        self.home.insert(id.clone(), me);
        id
    }

    /// A session taken from elsewhere is now attached to `c` here.
    pub fn attach(&mut self, id: Arc<str>, c: C) {
        if let Some(old) = self.held.insert(id, Held::Attached(c)) {
            self.note_gone(&old);
        }
    }

    /// The connection of session `id` ended: keep what `resume` needs until the time to live
    /// runs out. Returns the ids dropped to stay within the cap (their homes must be told),
    /// and `id` itself when sessions are not retained.
    pub fn detach(&mut self, id: &Arc<str>, c: C, state: Detached, now: Instant) -> Vec<Arc<str>> {
        match self.held.get(id) {
            Some(Held::Attached(x)) if *x == c => {}
            // Taken over meanwhile (or never held here): nothing of ours to keep.
            _ => return Vec::new(),
        }
        self.keep(id, state, now)
    }

    /// Keeps a session that was taken for a `resume` which could not complete (its
    /// connection went away, its token expired): detached here, as after a disconnect.
    /// Returns the ids dropped to stay within the cap, as [`Sessions::detach`].
    pub fn restore(&mut self, id: &Arc<str>, state: Detached, now: Instant) -> Vec<Arc<str>> {
        if let Some(old) = self.held.remove(&**id) {
            self.note_gone(&old);
        }
        self.keep(id, state, now)
    }

    fn keep(&mut self, id: &Arc<str>, state: Detached, now: Instant) -> Vec<Arc<str>> {
        if !self.retains() {
            self.held.remove(id);
            return vec![id.clone()];
        }
        let mut dropped = Vec::new();
        while self.detached >= self.max_detached {
            match self.pop_oldest_detached() {
                Some(old) => {
                    self.evicted += 1;
                    dropped.push(old);
                }
                None => break,
            }
        }
        let expires_at = now + self.ttl;
        self.detached_refs += refs(&state);
        self.held.insert(
            id.clone(),
            Held::Detached {
                state: Box::new(state),
                expires_at,
            },
        );
        self.detached += 1;
        self.expiry.push_back((expires_at, id.clone()));
        dropped
    }

    /// Forgets session `id` held here for connection `c` (it ended and is not retained, or
    /// resumed another session). True when it was held.
    pub fn forget(&mut self, id: &str, c: C) -> bool {
        match self.held.get(id) {
            Some(Held::Attached(x)) if *x == c => {
                self.held.remove(id);
                true
            }
            _ => false,
        }
    }

    /// Hands session `id` over to a resume by `subject` (`None`: a connection without an
    /// identity yet, which adopts the session's). An attached session is returned as its
    /// connection handle: the caller builds the state from it and closes it.
    pub fn take(&mut self, id: &str, subject: Option<&str>) -> Result<Held<C>, TakeError> {
        let owner_ok = match self.held.get(id) {
            None => return Err(TakeError::Unknown),
            Some(Held::Attached(_)) => true, // the caller checks the live connection's identity
            Some(Held::Detached { state, .. }) => match (subject, &state.identity) {
                (Some(s), Some(i)) => *i.subject == *s,
                (Some(_), None) => false,
                (None, _) => true,
            },
        };
        if !owner_ok {
            return Err(TakeError::OtherIdentity);
        }
        let held = self.held.remove(id).expect("checked above");
        self.note_gone(&held);
        Ok(held)
    }

    /// Drops the detached sessions whose time ran out; returns their ids (their homes must be
    /// told). Amortized O(1) per session.
    pub fn expire(&mut self, now: Instant) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.expiry.front() {
            if *at > now {
                break;
            }
            let (at, id) = self.expiry.pop_front().expect("front exists");
            if matches!(self.held.get(&id), Some(Held::Detached { expires_at, .. }) if *expires_at == at)
            {
                if let Some(old) = self.held.remove(&id) {
                    self.note_gone(&old);
                }
                self.expired += 1;
                out.push(id);
            }
        }
        out
    }

    fn pop_oldest_detached(&mut self) -> Option<Arc<str>> {
        while let Some((at, id)) = self.expiry.pop_front() {
            if matches!(self.held.get(&id), Some(Held::Detached { expires_at, .. }) if *expires_at == at)
            {
                if let Some(old) = self.held.remove(&id) {
                    self.note_gone(&old);
                }
                return Some(id);
            }
        }
        None
    }

    /// Drops the oldest detached session for memory (the budget is spent); returns its id
    /// (its home must be told). Counted in `evicted`.
    pub fn evict_oldest(&mut self) -> Option<Arc<str>> {
        let id = self.pop_oldest_detached()?;
        self.evicted += 1;
        Some(id)
    }

    /// A held session left `held`: count it out if it was detached.
    fn note_gone(&mut self, old: &Held<C>) {
        if let Held::Detached { state, .. } = old {
            self.detached -= 1;
            self.detached_refs -= refs(state);
        }
    }

    /// Memory the detached sessions hold, as the memory budget counts it.
    pub fn detached_bytes(&self) -> usize {
        self.detached * crate::memory::SESSION_BYTES
            + self.detached_refs * crate::memory::SESSION_TOPIC_BYTES
    }

    // ----- the home side: ids made on this core ------------------------------------------

    /// The core holding session `id` (made here), when it is known.
    pub fn holder(&self, id: &str) -> Option<usize> {
        self.home.get(id).copied()
    }

    /// Session `id` (made here) is now held by `core`.
    pub fn set_holder(&mut self, id: Arc<str>, core: usize) {
        self.home.insert(id, core);
    }

    /// Session `id` (made here) was dropped by `core`: forget it unless it moved on since.
    pub fn gone(&mut self, id: &str, core: usize) {
        if self.home.get(id) == Some(&core) {
            self.home.remove(id);
        }
    }

    /// Sessions held here with an open connection.
    pub fn attached_count(&self) -> usize {
        self.held.len() - self.detached
    }

    /// Sessions held here waiting for a resume.
    pub fn detached_count(&self) -> usize {
        self.detached
    }

    /// Ids made here still pointing somewhere.
    pub fn homed_count(&self) -> usize {
        self.home.len()
    }
}

/// A new session id for core `home`: `"<home in hex>.<32 hex digits from getrandom(2)>"`.
pub fn new_id(home: usize) -> String {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    format!("{home:x}.{}", hex::encode(bytes))
}

/// The cluster node tag of session `id` (`<core>.<random>@<tag>`), when it has one.
pub fn node_tag(id: &str) -> Option<&str> {
    id.split_once('@').map(|(_, t)| t)
}

/// The tag of node `name` in session ids: 8 hex digits of its SHA-256.
pub fn tag_of_node(name: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(name.as_bytes())[..4])
}

/// The core that made session `id`, when `id` is well-formed for a gateway of `n` cores.
pub fn home_of(id: &str, n: usize) -> Option<usize> {
    let id = id.split_once('@').map_or(id, |(base, _)| base);
    let (core, rand) = id.split_once('.')?;
    if rand.len() != 32 || !rand.bytes().all(|b| b.is_ascii_hexdigit()) || core.len() > 4 {
        return None;
    }
    let core = usize::from_str_radix(core, 16).ok()?;
    (core < n).then_some(core)
}

fn fill_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which is valid
        // for writes for its whole length; getrandom(2) writes at most that many bytes.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            panic!(
                "getrandom(2) failed: {} (session ids need the kernel's random source)",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Grants;

    fn state(subject: Option<&str>) -> Detached {
        Detached {
            identity: subject.map(|s| Identity::new(s, Grants::default())),
            topics: vec!["a".into()],
            unacked: vec![("a".into(), 3)],
        }
    }

    #[test]
    fn ids_are_random_and_name_their_home() {
        let a = new_id(3);
        let b = new_id(3);
        assert_ne!(a, b);
        assert_eq!(home_of(&a, 4), Some(3));
        assert_eq!(home_of(&a, 3), None, "core out of range");
        for bad in [
            "",
            "3",
            "3.",
            "x.0123",
            "3.zz",
            "12345.00000000000000000000000000000000",
        ] {
            assert_eq!(home_of(bad, 8), None, "{bad:?}");
        }
        assert_eq!(home_of("a.0123456789abcdef0123456789abcdef", 16), Some(10));
    }

    #[test]
    fn detach_then_take_hands_the_state_over_once() {
        let t0 = Instant::now();
        let mut s: Sessions<u32> = Sessions::new(Duration::from_secs(10), 100);
        let id = s.create(0, 7);
        assert_eq!(s.holder(&id), Some(0));
        assert!(s.detach(&id, 7, state(Some("alice")), t0).is_empty());
        assert_eq!((s.attached_count(), s.detached_count()), (0, 1));
        assert_eq!(
            s.take(&id, Some("bob")).unwrap_err(),
            TakeError::OtherIdentity
        );
        match s.take(&id, Some("alice")) {
            Ok(Held::Detached { state, .. }) => assert_eq!(state.unacked[0].1, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.take(&id, Some("alice")).unwrap_err(), TakeError::Unknown);
        assert_eq!(s.detached_count(), 0);
    }

    #[test]
    fn a_connection_without_identity_may_take_and_adopt() {
        let t0 = Instant::now();
        let mut s: Sessions<u32> = Sessions::new(Duration::from_secs(10), 100);
        let id = s.create(0, 1);
        s.detach(&id, 1, state(Some("alice")), t0);
        assert!(matches!(s.take(&id, None), Ok(Held::Detached { .. })));
    }

    #[test]
    fn attached_sessions_are_taken_as_their_connection() {
        let mut s: Sessions<u32> = Sessions::new(Duration::from_secs(10), 100);
        let id = s.create(0, 5);
        assert!(matches!(s.take(&id, Some("x")), Ok(Held::Attached(5))));
        // The old connection ending later keeps nothing: the session moved.
        assert!(s.detach(&id, 5, state(None), Instant::now()).is_empty());
        assert_eq!(s.detached_count(), 0);
    }

    #[test]
    fn sessions_expire_and_the_cap_evicts_the_oldest() {
        let t0 = Instant::now();
        let mut s: Sessions<u32> = Sessions::new(Duration::from_secs(10), 2);
        let a = s.create(0, 1);
        let b = s.create(0, 2);
        let c = s.create(0, 3);
        s.detach(&a, 1, state(None), t0);
        s.detach(&b, 2, state(None), t0 + Duration::from_secs(1));
        let dropped = s.detach(&c, 3, state(None), t0 + Duration::from_secs(2));
        assert_eq!(dropped, vec![a.clone()]);
        assert_eq!(s.evicted, 1);
        assert!(s.expire(t0 + Duration::from_secs(10)).is_empty());
        assert_eq!(s.expire(t0 + Duration::from_secs(11)), vec![b.clone()]);
        assert_eq!(s.expire(t0 + Duration::from_secs(60)), vec![c.clone()]);
        assert_eq!((s.detached_count(), s.expired), (0, 2));
        // A resumed and re-detached session is not expired by its first, stale deadline.
        let d = s.create(0, 4);
        s.detach(&d, 4, state(None), t0);
        assert!(s.take(&d, None).is_ok());
        s.attach(d.clone(), 9);
        s.detach(&d, 9, state(None), t0 + Duration::from_secs(5));
        assert!(s.expire(t0 + Duration::from_secs(12)).is_empty());
        assert_eq!(s.expire(t0 + Duration::from_secs(15)), vec![d]);
    }

    #[test]
    fn without_retention_a_detach_forgets() {
        let mut s: Sessions<u32> = Sessions::new(Duration::ZERO, 100);
        let id = s.create(0, 1);
        assert_eq!(
            s.detach(&id, 1, state(None), Instant::now()),
            vec![id.clone()]
        );
        assert!(s.take(&id, None).is_err());
    }

    #[test]
    fn the_home_pointer_follows_the_session() {
        let mut s: Sessions<u32> = Sessions::new(Duration::from_secs(1), 10);
        let id = s.create(1, 1);
        assert_eq!(s.holder(&id), Some(1));
        s.set_holder(id.clone(), 0);
        s.gone(&id, 1); // a stale "gone" from the old holder changes nothing
        assert_eq!(s.holder(&id), Some(0));
        s.gone(&id, 0);
        assert_eq!(s.holder(&id), None);
        assert_eq!(s.homed_count(), 0);
    }
}
