//! Authentication and authorization, as a tower layer in front of every service.
//!
//! Every call but health and reflection (open to probes and tools) carries
//! `authorization: Bearer lh_<id>_<secret>`. The layer looks the token up (the lookups of
//! concurrent calls share a statement, `api::gather`; a token let in is then kept for
//! `--token-cache-ttl`, so that a revoked token is refused to every call from that long after
//! its revocation on, `api::token_cache`), refuses
//! a role weaker than the one [`METHOD_ROLES`] names for the method, and hands the [`Caller`] to
//! the service in the request's extensions, where the service's body takes its tenant and its
//! name from. A method missing from the table is refused to every role, so a new RPC is closed
//! until someone decides who may call it (a test checks the table covers every RPC).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::Utc;
use http::HeaderMap;
use leasehold_core::ids::TenantId;
use leasehold_core::store::{self, Role, Secret, Store, TokenError, TokenId, TokenRecord};
use tonic::Status;
use tower::{Layer, Service};

use super::gather::Gatherer;
use super::token_cache::TokenCache;

/// The least role each method needs, by its gRPC path. Reading is for viewers; steering runs
/// and deciding gates for operators; changing automations and the shared workers for admins.
/// Workers serve every tenant, so listing them (hosts, load) and draining them are admin's, and
/// an admin token of any tenant sees and drains every worker.
pub const METHOD_ROLES: &[(&str, Role)] = &[
    ("/leasehold.v1.Automations/CreateAutomation", Role::Admin),
    ("/leasehold.v1.Automations/UpdateAutomation", Role::Admin),
    ("/leasehold.v1.Automations/ApplyAutomation", Role::Admin),
    ("/leasehold.v1.Automations/GetAutomation", Role::Viewer),
    ("/leasehold.v1.Automations/ListAutomations", Role::Viewer),
    ("/leasehold.v1.Automations/PauseAutomation", Role::Admin),
    ("/leasehold.v1.Automations/ActivateAutomation", Role::Admin),
    ("/leasehold.v1.Automations/DeleteAutomation", Role::Admin),
    ("/leasehold.v1.Runs/StartRun", Role::Operator),
    ("/leasehold.v1.Runs/StartRuns", Role::Operator),
    ("/leasehold.v1.Runs/GetRun", Role::Viewer),
    ("/leasehold.v1.Runs/ListRuns", Role::Viewer),
    ("/leasehold.v1.Runs/CancelRun", Role::Operator),
    ("/leasehold.v1.Runs/PauseRun", Role::Operator),
    ("/leasehold.v1.Runs/ResumeRun", Role::Operator),
    ("/leasehold.v1.Runs/RecoverRun", Role::Operator),
    ("/leasehold.v1.Runs/WatchRun", Role::Viewer),
    ("/leasehold.v1.Gates/ListGates", Role::Viewer),
    ("/leasehold.v1.Gates/DecideGate", Role::Operator),
    ("/leasehold.v1.Workers/ListWorkers", Role::Admin),
    ("/leasehold.v1.Workers/DrainWorker", Role::Admin),
    ("/leasehold.v1.Workers/ListNodeKinds", Role::Viewer),
    ("/leasehold.v1.Workers/ListQueues", Role::Admin),
    ("/leasehold.v1.Workers/SetQueueLimits", Role::Admin),
    ("/leasehold.v1.Stats/GetStats", Role::Viewer),
    ("/leasehold.v1.History/GetRetention", Role::Viewer),
    ("/leasehold.v1.Schedules/ListSchedules", Role::Viewer),
    ("/leasehold.v1.Schedules/PauseSchedule", Role::Operator),
    ("/leasehold.v1.Schedules/ResumeSchedule", Role::Operator),
    ("/leasehold.v1.Schedules/TriggerSchedule", Role::Operator),
    ("/leasehold.v1.History/SetRetention", Role::Admin),
];

/// Services anyone may call: load balancers and Kubernetes probe health without a token, and
/// grpcurl lists the API through reflection (which describes the API, not anyone's data).
const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The name calls are recorded under when authentication is off.
pub const NO_AUTH_NAME: &str = "anonymous";

/// How the API authenticates its callers.
// One value per server, behind an `Arc`: its size does not matter, and boxing the store would
// only cost its callers a `Box::new`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Auth {
    /// Every call needs a token of the store's `api_tokens`.
    Tokens(Store),
    /// `--no-auth`: every call acts as the default tenant's admin, named [`NO_AUTH_NAME`]. For
    /// tests and for a coordinator that only a trusted proxy can reach.
    Disabled,
}

/// Who is calling: the token's tenant, role and name.
#[derive(Debug)]
pub struct Caller {
    /// Every call acts in this tenant, and sees nothing of another.
    pub tenant: TenantId,
    /// What it may do.
    pub role: Role,
    /// Recorded as the actor of what it does, and as the decider of the gates it decides.
    pub name: String,
    /// The token, kept to check it again during a long call; `None` without authentication.
    token: Option<Secret>,
}

impl Caller {
    /// The caller of every call when authentication is off.
    fn unauthenticated() -> Self {
        Self {
            tenant: TenantId::default(),
            role: Role::Admin,
            name: NO_AUTH_NAME.to_owned(),
            token: None,
        }
    }

    /// The token's id, to check again during a long call (a watch) that the token still
    /// stands; `None` without authentication.
    pub fn token_id(&self) -> Option<&TokenId> {
        self.token.as_ref().map(Secret::id)
    }

    /// A caller let in with `token`.
    pub(super) fn with_token(tenant: TenantId, role: Role, name: String, token: Secret) -> Self {
        Self {
            tenant,
            role,
            name,
            token: Some(token),
        }
    }

    /// Whether this caller was let in with `secret`, compared in time that does not depend on
    /// where they differ.
    pub(super) fn presented(&self, secret: &Secret) -> bool {
        self.token.as_ref().is_some_and(|own| own.matches(secret))
    }
}

/// Why a call was not let through.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` header.
    #[error(
        "this call needs an API token in the authorization header (Bearer lh_…); \
         `leasehold token create` makes one"
    )]
    Missing,
    /// A header that is not `Bearer` and a token of this format. The header is never shown.
    #[error("the authorization header is not \"Bearer\" and a Leasehold token (lh_…)")]
    Malformed,
    /// The token is unknown, its secret wrong, or it expired or was revoked.
    #[error(transparent)]
    Refused(TokenError),
    /// The token's role may not call the method.
    #[error("{method} needs the {needed} role; this token has {role}")]
    Forbidden {
        /// The method's path.
        method: String,
        /// The least role it needs.
        needed: Role,
        /// The token's.
        role: Role,
    },
    /// A method no role may call: one missing from [`METHOD_ROLES`].
    #[error("{0} is not a method of this API")]
    UnknownMethod(String),
    /// The store failed while checking the token.
    #[error(transparent)]
    Store(store::Error),
    /// The coordinator is stopping: the token was not looked up.
    #[error("the coordinator is stopping; the call did nothing")]
    Stopping,
}

fn refused(e: TokenError) -> AuthError {
    match e {
        TokenError::Store(e) => AuthError::Store(e),
        other => AuthError::Refused(other),
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Malformed | AuthError::Refused(_) => {
                Status::unauthenticated(e.to_string())
            }
            AuthError::Forbidden { .. } | AuthError::UnknownMethod(_) => {
                Status::permission_denied(e.to_string())
            }
            AuthError::Store(e) => super::ApiError::Store(e).into(),
            AuthError::Stopping => Status::unavailable(e.to_string()),
        }
    }
}

/// The least role `path` needs; `None` for a method the table does not name.
pub fn method_role(path: &str) -> Option<Role> {
    METHOD_ROLES
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, role)| *role)
}

/// The token of an `authorization: Bearer <token>` header. The scheme is case-insensitive, as
/// HTTP's are.
fn bearer(headers: &HeaderMap) -> Result<Secret, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let text = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = text.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    Secret::parse(token.trim()).map_err(|_| AuthError::Malformed)
}

impl Auth {
    /// The caller of a call to `path` with `headers`; `None` for an open service. Tokens are
    /// looked up through `lookups` when given, in a statement shared with other calls, and
    /// those let in are kept in `cache` when given.
    async fn admit(
        &self,
        path: &str,
        headers: &HeaderMap,
        lookups: Option<&Lookups>,
        cache: Option<&TokenCache>,
    ) -> Result<Option<Arc<Caller>>, AuthError> {
        if OPEN_SERVICES.iter().any(|open| path.starts_with(open)) {
            return Ok(None);
        }
        let caller = match self {
            Auth::Disabled => Arc::new(Caller::unauthenticated()),
            Auth::Tokens(store) => {
                let token = bearer(headers)?;
                let kept = cache.and_then(|c| c.get(&token, Instant::now(), Utc::now()));
                match kept {
                    Some(caller) => caller,
                    None => {
                        // Dated before the lookup is sent, so that the entry is never used
                        // past `ttl` from the moment its row was read.
                        let asked_at = Instant::now();
                        let record = match lookups {
                            Some(lookups) => lookups
                                .ask(token.clone())
                                .await
                                .map_err(|_| AuthError::Stopping)?,
                            None => store.authenticate(&token).await,
                        }
                        .map_err(refused)?;
                        let caller = Arc::new(Caller::with_token(
                            record.tenant,
                            record.role,
                            record.name,
                            token,
                        ));
                        if let Some(cache) = cache {
                            cache.put(Arc::clone(&caller), record.expires_at, asked_at);
                        }
                        caller
                    }
                }
            }
        };
        let needed = method_role(path).ok_or_else(|| AuthError::UnknownMethod(path.to_owned()))?;
        if caller.role < needed {
            return Err(AuthError::Forbidden {
                method: path.to_owned(),
                needed,
                role: caller.role,
            });
        }
        Ok(Some(caller))
    }
}

/// Token lookups of concurrent calls, gathered into shared statements
/// ([`Store::authenticate_each`]): still one lookup per call, with no cache.
type Lookups = Gatherer<Secret, Result<TokenRecord, TokenError>>;

/// Tokens in one lookup at most.
const MAX_LOOKUPS: usize = 1_000;
/// Lookups at once: one is read while the next one fills (as for starts, two cost more).
const LOOKUPS_IN_FLIGHT: usize = 1;

fn lookups(store: Store) -> Lookups {
    Gatherer::spawn(
        LOOKUPS_IN_FLIGHT,
        MAX_LOOKUPS,
        move |secrets: Vec<Secret>| {
            let store = store.clone();
            async move {
                match store.authenticate_each(&secrets).await {
                    Ok(records) => records,
                    // Alone, it failed itself only.
                    Err(e) if secrets.len() == 1 => vec![Err(TokenError::Store(e))],
                    // Whatever failed the batch fails only the lookups it fails alone.
                    Err(_) => {
                        let mut records = Vec::with_capacity(secrets.len());
                        for secret in &secrets {
                            records.push(store.authenticate(secret).await);
                        }
                        records
                    }
                }
            }
        },
    )
}

/// How the layer admits calls: `auth`, with its token lookups gathered and the tokens let in
/// kept.
struct Admission {
    auth: Auth,
    lookups: Option<Lookups>,
    cache: Option<TokenCache>,
}

/// The layer for `Server::builder().layer(..)`.
#[derive(Clone)]
pub struct AuthLayer {
    admission: Arc<Admission>,
}

impl AuthLayer {
    /// Authenticates with `auth`, keeping a token let in for `token_cache_ttl` (zero: looking
    /// it up on every call); must be called inside a Tokio runtime, which runs the task that
    /// looks tokens up.
    pub fn new(auth: Auth, token_cache_ttl: Duration) -> Self {
        let (lookups, cache) = match &auth {
            Auth::Tokens(store) => (
                Some(lookups(store.clone())),
                Some(TokenCache::new(token_cache_ttl)),
            ),
            Auth::Disabled => (None, None),
        };
        Self {
            admission: Arc::new(Admission {
                auth,
                lookups,
                cache,
            }),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            admission: Arc::clone(&self.admission),
        }
    }
}

/// The services behind [`AuthLayer`].
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    admission: Arc<Admission>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; a fresh clone waits for the next.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let admission = Arc::clone(&self.admission);
        Box::pin(async move {
            let (path, headers) = (request.uri().path(), request.headers());
            let admitted = admission
                .auth
                .admit(
                    path,
                    headers,
                    admission.lookups.as_ref(),
                    admission.cache.as_ref(),
                )
                .await;
            match admitted {
                Ok(Some(caller)) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Ok(None) => inner.call(request).await,
                Err(e) => Ok(Status::from(e).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message as _;
    use tonic::Code;

    use super::*;

    /// Every method of every service of the API, as the compiled descriptor set lists them.
    fn api_methods() -> BTreeSet<String> {
        let set = prost_types::FileDescriptorSet::decode(leasehold_proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes");
        let mut methods = BTreeSet::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        methods
    }

    #[test]
    fn every_rpc_has_a_role_and_every_role_entry_is_an_rpc() {
        let methods = api_methods();
        assert!(
            methods.contains("/leasehold.v1.Runs/StartRun"),
            "{methods:?}"
        );
        let table: BTreeSet<String> = METHOD_ROLES.iter().map(|(m, _)| (*m).to_owned()).collect();
        let missing: Vec<_> = methods.difference(&table).collect();
        assert!(missing.is_empty(), "methods without a role: {missing:?}");
        let stale: Vec<_> = table.difference(&methods).collect();
        assert!(stale.is_empty(), "roles of no method: {stale:?}");
        assert_eq!(table.len(), METHOD_ROLES.len(), "a method named twice");
    }

    #[test]
    fn roles_follow_what_a_method_does() {
        let check = |path: &str, role: Role| assert_eq!(method_role(path), Some(role), "{path}");
        check("/leasehold.v1.Runs/GetRun", Role::Viewer);
        check("/leasehold.v1.Runs/WatchRun", Role::Viewer);
        check("/leasehold.v1.Stats/GetStats", Role::Viewer);
        check("/leasehold.v1.Runs/StartRun", Role::Operator);
        check("/leasehold.v1.Gates/DecideGate", Role::Operator);
        check("/leasehold.v1.Automations/ApplyAutomation", Role::Admin);
        check("/leasehold.v1.Workers/DrainWorker", Role::Admin);
        assert_eq!(method_role("/leasehold.v1.Runs/Nope"), None);
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            value.parse().expect("a header value"),
        );
        headers
    }

    #[test]
    fn the_bearer_header_is_parsed_and_never_echoed() {
        let token = format!("lh_0123456789abcdef_{}", "0a".repeat(32));
        let parsed = bearer(&headers(&format!("Bearer {token}"))).expect("bearer");
        assert_eq!(parsed.expose(), token);
        assert!(bearer(&headers(&format!("bearer {token}"))).is_ok());
        assert!(matches!(bearer(&HeaderMap::new()), Err(AuthError::Missing)));
        for bad in [
            token.clone(),
            format!("Basic {token}"),
            format!("Bearer {}", &token[..token.len() - 1]),
            "Bearer".to_owned(),
        ] {
            let refused = bearer(&headers(&bad)).expect_err(&bad);
            assert!(matches!(refused, AuthError::Malformed), "{bad}");
            let status = Status::from(refused);
            assert_eq!(status.code(), Code::Unauthenticated);
            assert!(!status.message().contains(&token[20..]), "{status:?}");
        }
    }

    #[tokio::test]
    async fn without_authentication_every_call_is_the_default_tenants_admin() {
        let caller = Auth::Disabled
            .admit(
                "/leasehold.v1.Workers/DrainWorker",
                &HeaderMap::new(),
                None,
                None,
            )
            .await
            .expect("admitted")
            .expect("a caller");
        assert_eq!(
            (&caller.tenant, caller.role, caller.name.as_str()),
            (&TenantId::default(), Role::Admin, NO_AUTH_NAME)
        );
        let open = Auth::Disabled
            .admit(
                "/grpc.health.v1.Health/Check",
                &HeaderMap::new(),
                None,
                None,
            )
            .await
            .expect("open");
        assert!(open.is_none());
        let unknown = Auth::Disabled
            .admit("/leasehold.v1.Runs/Nope", &HeaderMap::new(), None, None)
            .await
            .expect_err("closed");
        assert_eq!(Status::from(unknown).code(), Code::PermissionDenied);
    }
}
