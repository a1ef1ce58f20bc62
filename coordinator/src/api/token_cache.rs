//! The tokens calls were admitted with, kept for a short while so that a busy client's calls do
//! not each look their token up: a call whose token was looked up less than the cache's `ttl`
//! ago, with the same secret, is admitted as that lookup admitted it.
//!
//! The bound this keeps: a token revoked (or whose row changes) at time `r` is refused to every
//! call admitted after `r + ttl`, since an entry is dated from before its lookup was sent, and
//! is never used past `ttl`. Only tokens that were let in are kept, so a wrong secret, an
//! unknown id, or a revoked or expired token is looked up every time, and a wrong secret never
//! evicts the right one. A token's own expiry is checked on every use, by this coordinator's
//! clock. A zero `ttl` keeps nothing: every call looks its token up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use leasehold_core::store::{Secret, TokenId};

use super::auth::Caller;

/// Entries at most; past this, the stale ones are dropped, and all of them if none is. Only
/// tokens that exist are kept, so this bounds memory, not what a client can make it do.
const MAX_ENTRIES: usize = 10_000;

/// A token that was let in, and when its lookup was asked.
struct Entry {
    caller: Arc<Caller>,
    expires_at: Option<DateTime<Utc>>,
    asked_at: Instant,
}

/// Tokens let in within the last `ttl`, by id.
pub(super) struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<TokenId, Entry>>,
}

impl TokenCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// The caller `secret` was let in as, if a lookup asked less than `ttl` before `now` let it
    /// in, with this very secret, and the token has not expired by `wall_now`.
    pub fn get(
        &self,
        secret: &Secret,
        now: Instant,
        wall_now: DateTime<Utc>,
    ) -> Option<Arc<Caller>> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(secret.id())?;
        usable(entry, secret, self.ttl, now, wall_now).then(|| Arc::clone(&entry.caller))
    }

    /// Keeps `caller`, whose token a lookup asked at `asked_at` let in.
    pub fn put(&self, caller: Arc<Caller>, expires_at: Option<DateTime<Utc>>, asked_at: Instant) {
        let Some(id) = caller.token_id().cloned() else {
            return;
        };
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&id) {
            let ttl = self.ttl;
            entries.retain(|_, e| asked_at.saturating_duration_since(e.asked_at) < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        // A later lookup's answer replaces an earlier one's, never the reverse.
        match entries.get(&id) {
            Some(kept) if kept.asked_at > asked_at => {}
            _ => {
                entries.insert(
                    id,
                    Entry {
                        caller,
                        expires_at,
                        asked_at,
                    },
                );
            }
        }
    }
}

/// Whether `entry` admits a call presenting `secret` at `now` (`wall_now` by the clock tokens
/// expire by).
fn usable(
    entry: &Entry,
    secret: &Secret,
    ttl: Duration,
    now: Instant,
    wall_now: DateTime<Utc>,
) -> bool {
    now.saturating_duration_since(entry.asked_at) < ttl
        && entry.expires_at.is_none_or(|at| wall_now < at)
        && entry.caller.presented(secret)
}

#[cfg(test)]
mod tests {
    use leasehold_core::ids::TenantId;
    use leasehold_core::store::Role;

    use super::*;

    const TTL: Duration = Duration::from_secs(1);

    fn secret(id: &str, fill: &str) -> Secret {
        Secret::parse(&format!("lh_{id}_{}", fill.repeat(64))).expect("a token")
    }

    fn caller(token: &Secret, name: &str) -> Arc<Caller> {
        Arc::new(Caller::with_token(
            TenantId::default(),
            Role::Operator,
            name.to_owned(),
            token.clone(),
        ))
    }

    #[test]
    fn a_token_let_in_is_kept_for_less_than_the_ttl_from_its_lookup() {
        let (t0, wall) = (Instant::now(), Utc::now());
        let token = secret("0123456789abcdef", "a");
        let cache = TokenCache::new(TTL);
        assert!(cache.get(&token, t0, wall).is_none(), "nothing kept yet");
        cache.put(caller(&token, "ann"), None, t0);
        let kept = cache
            .get(&token, t0 + TTL - Duration::from_millis(1), wall)
            .expect("kept within the ttl");
        assert_eq!(kept.name, "ann");
        assert!(
            cache.get(&token, t0 + TTL, wall).is_none(),
            "gone at the ttl"
        );
    }

    #[test]
    fn another_secret_for_the_same_id_is_not_let_in_and_evicts_nothing() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let token = secret("0123456789abcdef", "a");
        let wrong = secret("0123456789abcdef", "b");
        let cache = TokenCache::new(TTL);
        cache.put(caller(&token, "ann"), None, t0);
        assert!(cache.get(&wrong, t0, wall).is_none(), "wrong secret");
        assert!(cache.get(&token, t0, wall).is_some(), "the right one stays");
        let other_id = secret("fedcba9876543210", "a");
        assert!(cache.get(&other_id, t0, wall).is_none(), "another token");
    }

    #[test]
    fn a_token_past_its_expiry_is_not_let_in_from_the_cache() {
        let (t0, wall) = (Instant::now(), Utc::now());
        let token = secret("0123456789abcdef", "a");
        let cache = TokenCache::new(TTL);
        let expires_at = wall + chrono::Duration::milliseconds(10);
        cache.put(caller(&token, "ann"), Some(expires_at), t0);
        assert!(cache.get(&token, t0, wall).is_some(), "before its expiry");
        assert!(cache.get(&token, t0, expires_at).is_none(), "at its expiry");
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let (t0, wall) = (Instant::now(), Utc::now());
        let token = secret("0123456789abcdef", "a");
        let cache = TokenCache::new(Duration::ZERO);
        cache.put(caller(&token, "ann"), None, t0);
        assert!(cache.get(&token, t0, wall).is_none());
    }

    #[test]
    fn an_older_lookup_never_replaces_a_newer_one() {
        let (t0, wall) = (Instant::now(), Utc::now());
        let token = secret("0123456789abcdef", "a");
        let cache = TokenCache::new(TTL);
        cache.put(
            caller(&token, "newer"),
            None,
            t0 + Duration::from_millis(500),
        );
        cache.put(caller(&token, "older"), None, t0);
        let kept = cache
            .get(&token, t0 + Duration::from_millis(1_400), wall)
            .expect("the newer lookup's entry");
        assert_eq!(kept.name, "newer");
    }
}
