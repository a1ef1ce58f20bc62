//! Identifiers and the fencing token, as newtypes so that one is never passed for another.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A run. Time-ordered (UUIDv7) so that new runs land at the right edge of the primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub Uuid);

impl RunId {
    /// A fresh, time-ordered run id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The lease epoch: raised by every claim, matched by every write the holder makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseEpoch(pub i64);

impl fmt::Display for LeaseEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

string_id!(
    /// A tenant. Every row and query is scoped by one; single-tenant installs use [`TenantId::default`].
    TenantId
);
string_id!(
    /// An automation, named by its author (`hello`, `nightly-report`).
    AutomationId
);
string_id!(
    /// A node within one automation.
    NodeId
);
string_id!(
    /// A worker process: unique per process start, so a restarted worker never inherits a lease.
    ClaimantId
);

impl Default for TenantId {
    fn default() -> Self {
        Self("default".to_owned())
    }
}
