//! The API's limits: how long a call may take, how many may be in flight, how many watch
//! streams may be open. Named defaults, checked when the coordinator starts.

use std::time::Duration;

use leasehold_core::retention::RetentionWindows;

/// How long a call may take unless configured otherwise. A streaming call must have opened its
/// stream by then; the stream itself is not bounded.
pub const RPC_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Shorter deadlines would refuse ordinary calls on a busy database.
pub const RPC_TIMEOUT_MIN: Duration = Duration::from_millis(100);
/// Longer deadlines would let stuck calls hold their slots for too long.
pub const RPC_TIMEOUT_MAX: Duration = Duration::from_secs(10 * 60);
/// Calls in flight on one coordinator unless configured otherwise: well above what the
/// database pool serves at once, so that short bursts queue for the pool instead of being
/// refused, and bounded, so that a flood is refused at the door instead of queueing without end.
pub const MAX_CONCURRENT_RPCS_DEFAULT: usize = 1_000;
/// Open watch streams on one coordinator unless configured otherwise.
pub const MAX_WATCH_STREAMS_DEFAULT: usize = 10_000;
/// Open watch streams of one tenant on one coordinator unless configured otherwise.
pub const MAX_WATCH_STREAMS_PER_TENANT_DEFAULT: usize = 5_000;
/// Bound of every count above.
pub const COUNT_MAX: usize = 1_000_000;
/// How long a token let in is kept unless configured otherwise: the longest a revoked token is
/// still let in, as long as an open watch stream takes to notice it.
pub const TOKEN_CACHE_TTL_DEFAULT: Duration = Duration::from_secs(1);
/// Longer would leave a revoked token working for too long.
pub const TOKEN_CACHE_TTL_MAX: Duration = Duration::from_secs(60);

/// The API's limits. Build one with [`Config::default`] and struct update syntax, then check it
/// with [`Config::validated`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The server-side deadline of every call (`--rpc-timeout`): a call that has not answered by
    /// then (a streaming call: has not opened its stream) is DEADLINE_EXCEEDED.
    pub rpc_timeout: Duration,
    /// Calls in flight at once (`--max-concurrent-rpcs`); one more is UNAVAILABLE at once.
    /// Health checks are not counted, so that a busy coordinator still answers its probes; an
    /// open watch stream counts only while it opens.
    pub max_concurrent_rpcs: usize,
    /// Watch streams open at once (`--max-watch-streams`); one more is RESOURCE_EXHAUSTED.
    pub max_watch_streams: usize,
    /// Watch streams one tenant may have open at once (`--max-watch-streams-per-tenant`); one
    /// more is RESOURCE_EXHAUSTED.
    pub max_watch_streams_per_tenant: usize,
    /// How long a token let in is kept, so that the calls made with it meanwhile do not look it
    /// up (`--token-cache-ttl`): a revoked token is refused to every call from this long after
    /// its revocation on. Zero looks the token up on every call.
    pub token_cache_ttl: Duration,
    /// The retention windows of tenants without their own, as `GetRetention` reports them: the
    /// sweeps' (`--retention`, `--delete-after`), which check them.
    pub retention: RetentionWindows,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rpc_timeout: RPC_TIMEOUT_DEFAULT,
            max_concurrent_rpcs: MAX_CONCURRENT_RPCS_DEFAULT,
            max_watch_streams: MAX_WATCH_STREAMS_DEFAULT,
            max_watch_streams_per_tenant: MAX_WATCH_STREAMS_PER_TENANT_DEFAULT,
            token_cache_ttl: TOKEN_CACHE_TTL_DEFAULT,
            retention: RetentionWindows::default(),
        }
    }
}

/// A limit out of its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {value}; it must be between {min} and {max}")]
pub struct ConfigError {
    /// The setting.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// The least allowed.
    pub min: String,
    /// The most allowed.
    pub max: String,
}

fn within<T: PartialOrd + Copy + std::fmt::Debug>(
    field: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if min <= value && value <= max {
        Ok(())
    } else {
        Err(ConfigError {
            field,
            value: format!("{value:?}"),
            min: format!("{min:?}"),
            max: format!("{max:?}"),
        })
    }
}

impl Config {
    /// The configuration, if every limit is within its bounds.
    pub fn validated(self) -> Result<Self, ConfigError> {
        within(
            "rpc_timeout",
            self.rpc_timeout,
            RPC_TIMEOUT_MIN,
            RPC_TIMEOUT_MAX,
        )?;
        within(
            "max_concurrent_rpcs",
            self.max_concurrent_rpcs,
            1,
            COUNT_MAX,
        )?;
        within("max_watch_streams", self.max_watch_streams, 1, COUNT_MAX)?;
        within(
            "max_watch_streams_per_tenant",
            self.max_watch_streams_per_tenant,
            1,
            self.max_watch_streams,
        )?;
        within(
            "token_cache_ttl",
            self.token_cache_ttl,
            Duration::ZERO,
            TOKEN_CACHE_TTL_MAX,
        )?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_inclusive() {
        assert_eq!(Config::default().validated(), Ok(Config::default()));
        let edge = Config {
            rpc_timeout: RPC_TIMEOUT_MIN,
            max_concurrent_rpcs: 1,
            max_watch_streams: 1,
            max_watch_streams_per_tenant: 1,
            token_cache_ttl: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(edge.clone().validated(), Ok(edge));
        let edge = Config {
            rpc_timeout: RPC_TIMEOUT_MAX,
            max_concurrent_rpcs: COUNT_MAX,
            max_watch_streams: COUNT_MAX,
            max_watch_streams_per_tenant: COUNT_MAX,
            token_cache_ttl: TOKEN_CACHE_TTL_MAX,
            ..Config::default()
        };
        assert_eq!(edge.clone().validated(), Ok(edge));
    }

    #[test]
    fn limits_out_of_bounds_are_refused_by_name() {
        let check = |config: Config, field: &str| {
            assert_eq!(config.validated().expect_err(field).field, field);
        };
        let base = Config::default;
        check(
            Config {
                rpc_timeout: RPC_TIMEOUT_MIN - Duration::from_millis(1),
                ..base()
            },
            "rpc_timeout",
        );
        check(
            Config {
                rpc_timeout: RPC_TIMEOUT_MAX + Duration::from_millis(1),
                ..base()
            },
            "rpc_timeout",
        );
        check(
            Config {
                max_concurrent_rpcs: 0,
                ..base()
            },
            "max_concurrent_rpcs",
        );
        check(
            Config {
                max_watch_streams: COUNT_MAX + 1,
                ..base()
            },
            "max_watch_streams",
        );
        // A tenant's cap above the total could never be reached.
        check(
            Config {
                max_watch_streams: 10,
                max_watch_streams_per_tenant: 11,
                ..base()
            },
            "max_watch_streams_per_tenant",
        );
        check(
            Config {
                token_cache_ttl: TOKEN_CACHE_TTL_MAX + Duration::from_millis(1),
                ..base()
            },
            "token_cache_ttl",
        );
    }
}
