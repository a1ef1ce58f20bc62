//! API tokens: who may call the API, for which tenant, with which role.
//!
//! A token is `lh_<id>_<secret>`: 16 hex digits of id and 64 of secret (256 random bits). The
//! prefix lets secret scanners recognise a leaked token; the id finds its row, so checking a
//! token is one primary-key lookup; only the SHA-256 of the secret is stored (the migration,
//! `V5__api_tokens.sql`, says why a plain hash suffices). Revocation and expiry are read by that
//! same lookup, against the database's clock, so a revoked token is refused from the next call.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use tokio_postgres::Row;

use super::query::Query;
use super::{Error, Store, millis};
use crate::ids::TenantId;

/// What every token starts with.
pub const TOKEN_PREFIX: &str = "lh_";
/// Bytes of randomness in a token's id.
const ID_BYTES: usize = 8;
/// Bytes of randomness in a token's secret: 256 bits.
const SECRET_BYTES: usize = 32;
/// Longest tenant and token name.
const MAX_NAME_CHARS: usize = 128;

/// What a token may do. Each role may do everything the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads and watches.
    Viewer,
    /// Also starts and steers runs and decides gates.
    Operator,
    /// Also changes automations and drains workers.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The role as stored and as flags name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text that names no role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a role: viewer, operator or admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// A token's public id: what `token list` shows and `token revoke` takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(String);

impl TokenId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TokenId {
    type Err = MalformedToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_hex(s, ID_BYTES) {
            Ok(Self(s.to_owned()))
        } else {
            Err(MalformedToken)
        }
    }
}

/// Text that is not a token (or a token id) of this format. It never carries the text, so that
/// no message can show a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a Leasehold token (lh_ followed by 16 and 64 hex digits)")]
pub struct MalformedToken;

/// A token as its holder presents it. `Debug` and `Display` show only its id; the secret is
/// read through [`Secret::expose`], by whoever must send or print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    id: TokenId,
    secret: String,
}

impl Secret {
    /// Parses `lh_<id>_<secret>`.
    pub fn parse(text: &str) -> Result<Self, MalformedToken> {
        let rest = text.strip_prefix(TOKEN_PREFIX).ok_or(MalformedToken)?;
        let (id, secret) = rest.split_once('_').ok_or(MalformedToken)?;
        if !is_hex(secret, SECRET_BYTES) {
            return Err(MalformedToken);
        }
        Ok(Self {
            id: id.parse()?,
            secret: secret.to_owned(),
        })
    }

    /// A new random token.
    fn generate() -> Result<Self, ring::error::Unspecified> {
        let random = SystemRandom::new();
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        random.fill(&mut id)?;
        random.fill(&mut secret)?;
        Ok(Self {
            id: TokenId(hex(&id)),
            secret: hex(&secret),
        })
    }

    /// Whether `other` is this very token, its secret compared in time that does not depend on
    /// where the secrets differ.
    pub fn matches(&self, other: &Secret) -> bool {
        self.id == other.id && same_hash(self.secret.as_bytes(), other.secret.as_bytes())
    }

    /// The token's id.
    pub fn id(&self) -> &TokenId {
        &self.id
    }

    /// The whole token, secret included: to send it, or to show it once to whoever made it.
    pub fn expose(&self) -> String {
        format!("{TOKEN_PREFIX}{}_{}", self.id, self.secret)
    }

    fn hash(&self) -> Vec<u8> {
        digest::digest(&digest::SHA256, self.secret.as_bytes())
            .as_ref()
            .to_vec()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({TOKEN_PREFIX}{}_***)", self.id)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}_***", self.id)
    }
}

/// `bytes` bytes as lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_hex(text: &str, bytes: usize) -> bool {
    text.len() == bytes * 2 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Compares two hashes in time that does not depend on where they differ. Not strictly needed
/// (learning a hash of a 256-bit random secret does not reveal the secret), but free.
fn same_hash(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request to make a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The tenant every call with the token acts in.
    pub tenant: TenantId,
    /// What it may do.
    pub role: Role,
    /// Who it stands for; `token-<id>` when not given.
    pub name: Option<String>,
    /// How long it is valid; forever when not given.
    pub expires_in: Option<Duration>,
}

/// A token as stored, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Its id.
    pub id: TokenId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its role.
    pub role: Role,
    /// Who it stands for.
    pub name: String,
    /// Made at.
    pub created_at: DateTime<Utc>,
    /// Refused from then on, if set.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked at, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Why a token was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No token with this id, or its secret is wrong.
    #[error("unknown token")]
    Unknown,
    /// No token with this id (when revoking).
    #[error("no token {0}")]
    NotFound(TokenId),
    /// The token expired.
    #[error("token {0} expired")]
    Expired(TokenId),
    /// The token was revoked.
    #[error("token {0} was revoked")]
    Revoked(TokenId),
    /// A field of a new token is not acceptable.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (`tenant`, `name`).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A stored token this build cannot read (a role it does not know).
    #[error("stored token {token_id} is unreadable: {reason}")]
    Unreadable {
        /// The token.
        token_id: String,
        /// Why.
        reason: String,
    },
    /// The system's random source failed.
    #[error("no random bytes for a token")]
    NoRandomness,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

impl From<tokio_postgres::Error> for TokenError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for TokenError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Store(e.into())
    }
}

/// A tenant is named like an automation: 1 to 128 of A-Z a-z 0-9 '_' '.' '-', starting with a
/// letter or digit, so that it reads the same in every listing and log line.
fn check_tenant(tenant: &TenantId) -> Result<(), TokenError> {
    let text = tenant.as_str();
    let invalid = |message: &str| TokenError::Invalid {
        field: "tenant",
        message: message.to_owned(),
    };
    if !text.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("must start with a letter or digit"));
    }
    if text.len() > MAX_NAME_CHARS {
        return Err(invalid("longer than 128 characters"));
    }
    if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(invalid("only A-Z, a-z, 0-9, '_', '.' and '-' are allowed"));
    }
    Ok(())
}

/// A token's name is recorded as the actor of what it does: 1 to 128 characters, no control
/// characters, so that it prints on one line.
fn check_name(name: &str) -> Result<(), TokenError> {
    let invalid = |message: &str| TokenError::Invalid {
        field: "name",
        message: message.to_owned(),
    };
    if name.trim().is_empty() {
        return Err(invalid("required"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid("longer than 128 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(())
}

// A new token. The expiry is computed from the database's clock, like every time in the store.
const CREATE_TOKEN: Query = Query {
    name: "create_token",
    sql: "\
INSERT INTO api_tokens (token_id, tenant_id, role, name, secret_hash, expires_at)
VALUES ($1::text, $2::text, $3::text, $4::text, $5::bytea,
        now() + $6::bigint * interval '1 millisecond')
RETURNING token_id, tenant_id, role, name, created_at, expires_at, revoked_at",
};

// The token a call presents, by primary key, with whether it is still usable by the database's
// clock: the one lookup every authenticated call makes.
const AUTHENTICATE: Query = Query {
    name: "authenticate",
    sql: "\
SELECT token_id, tenant_id, role, name, created_at, expires_at, revoked_at, secret_hash,
       expires_at IS NOT NULL AND expires_at <= now() AS expired
FROM api_tokens WHERE token_id = $1::text",
};

// Every token, or one tenant's, oldest first.
const LIST_TOKENS: Query = Query {
    name: "list_tokens",
    sql: "\
SELECT token_id, tenant_id, role, name, created_at, expires_at, revoked_at
FROM api_tokens WHERE $1::text IS NULL OR tenant_id = $1::text
ORDER BY created_at, token_id",
};

// Revokes a token; revoking it again keeps the first revocation's time.
const REVOKE_TOKEN: Query = Query {
    name: "revoke_token",
    sql: "\
UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
WHERE token_id = $1::text
RETURNING token_id, tenant_id, role, name, created_at, expires_at, revoked_at",
};

// The tokens of many calls at once, each id once.
const AUTHENTICATE_EACH: Query = Query {
    name: "authenticate_each",
    sql: "\
SELECT token_id, tenant_id, role, name, created_at, expires_at, revoked_at, secret_hash,
       expires_at IS NOT NULL AND expires_at <= now() AS expired
FROM api_tokens WHERE token_id = ANY($1::text[])",
};

pub(super) const QUERIES: &[Query] = &[
    CREATE_TOKEN,
    AUTHENTICATE,
    AUTHENTICATE_EACH,
    LIST_TOKENS,
    REVOKE_TOKEN,
];

/// The token `row` holds, if `secret` matches it and it is neither expired nor revoked.
fn checked_token(secret: &Secret, row: &Row) -> Result<TokenRecord, TokenError> {
    let stored: &[u8] = row.get("secret_hash");
    // Whether a token exists, expired or was revoked is told only to its holder.
    if !same_hash(stored, &secret.hash()) {
        return Err(TokenError::Unknown);
    }
    let token = read_token(row)?;
    if token.revoked_at.is_some() {
        return Err(TokenError::Revoked(token.id));
    }
    if row.get::<_, bool>("expired") {
        return Err(TokenError::Expired(token.id));
    }
    Ok(token)
}

fn read_token(row: &Row) -> Result<TokenRecord, TokenError> {
    let role: &str = row.get("role");
    let id: String = row.get("token_id");
    Ok(TokenRecord {
        role: role
            .parse()
            .map_err(|e: UnknownRole| TokenError::Unreadable {
                token_id: id.clone(),
                reason: e.to_string(),
            })?,
        id: TokenId(id),
        tenant: TenantId(row.get("tenant_id")),
        name: row.get("name"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        revoked_at: row.get("revoked_at"),
    })
}

impl Store {
    /// Makes a token; the returned [`Secret`] is the only copy of its secret.
    pub async fn create_token(
        &self,
        request: &NewToken,
    ) -> Result<(TokenRecord, Secret), TokenError> {
        check_tenant(&request.tenant)?;
        if let Some(name) = &request.name {
            check_name(name)?;
        }
        let secret = Secret::generate().map_err(|_| TokenError::NoRandomness)?;
        let name = request
            .name
            .clone()
            .unwrap_or_else(|| format!("token-{}", secret.id()));
        let expires_in_ms = request.expires_in.map(millis);
        let client = self.client().await?;
        let row = CREATE_TOKEN
            .query_one(
                &client,
                &[
                    &secret.id().as_str(),
                    &request.tenant.as_str(),
                    &request.role.as_str(),
                    &name,
                    &secret.hash(),
                    &expires_in_ms,
                ],
            )
            .await?;
        Ok((read_token(&row)?, secret))
    }

    /// The token `secret` names, if its secret matches and it is neither expired nor revoked.
    pub async fn authenticate(&self, secret: &Secret) -> Result<TokenRecord, TokenError> {
        let client = self.client().await?;
        let row = AUTHENTICATE
            .query_opt(&client, &[&secret.id().as_str()])
            .await?
            .ok_or(TokenError::Unknown)?;
        checked_token(secret, &row)
    }

    /// [`Store::authenticate`] for many secrets in one statement, answered in their order; a
    /// token named more than once is read once.
    pub async fn authenticate_each(
        &self,
        secrets: &[Secret],
    ) -> Result<Vec<Result<TokenRecord, TokenError>>, Error> {
        let ids: Vec<&str> = secrets.iter().map(|s| s.id().as_str()).collect();
        let client = self.client().await?;
        let rows = AUTHENTICATE_EACH.query(&client, &[&ids]).await?;
        let by_id: HashMap<&str, &Row> = rows
            .iter()
            .map(|row| (row.get::<_, &str>("token_id"), row))
            .collect();
        Ok(secrets
            .iter()
            .map(|secret| {
                let row = by_id.get(secret.id().as_str()).ok_or(TokenError::Unknown)?;
                checked_token(secret, row)
            })
            .collect())
    }

    /// Every token, or `tenant`'s, oldest first; never their secrets.
    pub async fn list_tokens(
        &self,
        tenant: Option<&TenantId>,
    ) -> Result<Vec<TokenRecord>, TokenError> {
        let client = self.client().await?;
        let rows = LIST_TOKENS
            .query(&client, &[&tenant.map(TenantId::as_str)])
            .await?;
        rows.iter().map(read_token).collect()
    }

    /// Revokes a token: every lookup of it is refused from now on (a coordinator lets in a token
    /// it looked up for its `--token-cache-ttl` more). Revoking a revoked token
    /// changes nothing and succeeds.
    pub async fn revoke_token(&self, id: &TokenId) -> Result<TokenRecord, TokenError> {
        let client = self.client().await?;
        let row = REVOKE_TOKEN
            .query_opt(&client, &[&id.as_str()])
            .await?
            .ok_or_else(|| TokenError::NotFound(id.clone()))?;
        read_token(&row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_and_never_shows_its_secret() {
        let token = Secret::generate().expect("random");
        let text = token.expose();
        assert!(text.starts_with("lh_"), "{text}");
        assert_eq!(text.len(), 3 + 16 + 1 + 64);
        assert_eq!(Secret::parse(&text), Ok(token.clone()));
        for shown in [format!("{token}"), format!("{token:?}")] {
            assert!(!shown.contains(&token.secret), "{shown}");
            assert!(shown.contains(token.id().as_str()), "{shown}");
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let id = "0123456789abcdef";
        let secret = "ab".repeat(32);
        assert!(Secret::parse(&format!("lh_{id}_{secret}")).is_ok());
        for bad in [
            String::new(),
            format!("{id}_{secret}"),
            format!("lx_{id}_{secret}"),
            format!("lh_{id}{secret}"),
            format!("lh_{id}_{}", &secret[1..]),
            format!("lh_{id}_{secret}0"),
            format!("lh_{}_{secret}", id.to_uppercase()),
            format!("lh_{id}_{}", secret.replace('a', "g")),
            format!("lh_{id}_{secret} "),
        ] {
            assert_eq!(Secret::parse(&bad), Err(MalformedToken), "{bad:?}");
        }
    }

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for role in Role::ALL {
            assert_eq!(role.as_str().parse(), Ok(role));
        }
        assert_eq!("root".parse::<Role>(), Err(UnknownRole("root".into())));
    }

    #[test]
    fn tenants_and_names_are_checked() {
        assert!(check_tenant(&TenantId::from("team-a.prod_1")).is_ok());
        for bad in ["", "-a", "a b", "a/b", &"a".repeat(129)] {
            assert!(check_tenant(&TenantId::from(bad)).is_err(), "{bad:?}");
        }
        assert!(check_name("Ann Smith <ann@example.com>").is_ok());
        for bad in ["", "  ", "a\nb", &"a".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hashes_compare_equal_only_when_equal() {
        assert!(same_hash(b"abc", b"abc"));
        assert!(!same_hash(b"abc", b"abd"));
        assert!(!same_hash(b"abc", b"ab"));
    }
}
