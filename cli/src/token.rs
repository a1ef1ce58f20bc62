//! `leasehold token create|list|revoke`: API tokens, made and managed straight in the database
//! (like `migrate`), so that the first token needs no token. And where client commands take
//! their token from.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use leasehold_core::ids::TenantId;
use leasehold_core::store::{NewToken, Role, Store, TokenId, TokenRecord};
use serde_json::{Value, json};

use crate::client::Global;
use crate::client::render::{self, Table, emit, emit_json};

/// The variable client commands read their token from, unless `--token` is given.
pub const TOKEN_ENV: &str = "LEASEHOLD_TOKEN";

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make a token and print it, once: only a hash of it is kept.
    Create {
        /// The tenant every call with the token acts in.
        #[arg(long)]
        tenant: String,
        /// viewer (read and watch), operator (also start and steer runs, decide gates) or
        /// admin (also change automations and drain workers).
        #[arg(long)]
        role: Role,
        /// Who the token stands for: recorded as the actor of what it does
        /// [default: "token-" and the token's id].
        #[arg(long)]
        name: Option<String>,
        /// Refuse the token after this long (90d, 12h) [default: never].
        #[arg(long, value_name = "DURATION")]
        expires: Option<humantime::Duration>,
        #[command(flatten)]
        database: Database,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        database: Database,
    },
    /// Revoke a token: every call with it is refused from the coordinators' --token-cache-ttl
    /// (1s by default) on.
    Revoke {
        /// The token's id (see `leasehold token list`).
        id: String,
        #[command(flatten)]
        database: Database,
    },
}

#[derive(Debug, clap::Args)]
pub struct Database {
    /// PostgreSQL connection URL.
    #[arg(long, env = "LEASEHOLD_DATABASE_URL")]
    database_url: String,
}

impl Database {
    async fn store(&self) -> anyhow::Result<Store> {
        Store::connect(&self.database_url, 1)
            .await
            .context("connecting to the database")
    }
}

/// Removes [`TOKEN_ENV`] from this process's environment, once its value was read, so that no
/// child (a PostgreSQL that `dev` starts, say) inherits it. Call it before any thread starts.
pub fn forget_token_variable() {
    if std::env::var_os(TOKEN_ENV).is_some() {
        // SAFETY: changing the environment races with threads reading it; `main` calls this
        // before it builds the runtime, while this is the process's only thread.
        #[allow(unsafe_code)]
        unsafe {
            std::env::remove_var(TOKEN_ENV);
        }
    }
}

pub async fn run(command: Command, global: &Global) -> anyhow::Result<()> {
    match command {
        Command::Create {
            tenant,
            role,
            name,
            expires,
            database,
        } => {
            let expires_in = expires.map(Duration::from);
            if expires_in.is_some_and(|d| d.is_zero()) {
                anyhow::bail!("--expires must be longer than 0s");
            }
            let request = NewToken {
                tenant: TenantId(tenant),
                role,
                name,
                expires_in,
            };
            let store = database.store().await?;
            let (token, secret) = store
                .create_token(&request)
                .await
                .context("creating the token")?;
            if global.json {
                let mut shown = record_json(&token);
                shown["token"] = Value::String(secret.expose());
                emit_json(&shown)?;
            } else {
                // The token alone on stdout, so that `$(leasehold token create …)` is the token.
                emit(&format!("{}\n", secret.expose()))?;
                eprintln!(
                    "created token {} ({}, tenant {}, name {:?}, {}); it is shown only this once",
                    token.id,
                    token.role,
                    token.tenant,
                    token.name,
                    token
                        .expires_at
                        .map_or("never expires".to_owned(), |t| format!(
                            "expires {}",
                            render::rfc3339(SystemTime::from(t))
                        ))
                );
            }
        }
        Command::List { tenant, database } => {
            let store = database.store().await?;
            let tenant = tenant.map(TenantId);
            let tokens = store
                .list_tokens(tenant.as_ref())
                .await
                .context("listing the tokens")?;
            if global.json {
                emit_json(&Value::Array(tokens.iter().map(record_json).collect()))?;
            } else if tokens.is_empty() {
                emit("No tokens. Make one with `leasehold token create`.\n")?;
            } else {
                emit(&table(&tokens).render())?;
            }
        }
        Command::Revoke { id, database } => {
            let id: TokenId = id
                .parse()
                .map_err(|_| anyhow::anyhow!("{id:?} is not a token id (16 hex digits)"))?;
            let store = database.store().await?;
            let token = store
                .revoke_token(&id)
                .await
                .with_context(|| format!("revoking token {id}"))?;
            if global.json {
                emit_json(&record_json(&token))?;
            } else {
                emit(&format!(
                    "token {} ({}, tenant {}, name {:?}) is revoked: every call with it is refused once \
                     coordinators no longer keep it (--token-cache-ttl, 1s by default)\n",
                    token.id, token.role, token.tenant, token.name
                ))?;
            }
        }
    }
    Ok(())
}

fn when<T: Into<SystemTime>>(t: Option<T>) -> Option<String> {
    t.map(|t| render::rfc3339(t.into()))
}

fn record_json(token: &TokenRecord) -> Value {
    json!({
        "token_id": token.id.as_str(),
        "tenant": token.tenant.as_str(),
        "role": token.role.as_str(),
        "name": token.name,
        "created_at": when(Some(token.created_at)),
        "expires_at": when(token.expires_at),
        "revoked_at": when(token.revoked_at),
    })
}

fn table(tokens: &[TokenRecord]) -> Table {
    let mut table = Table::new(&[
        "ID", "TENANT", "ROLE", "NAME", "CREATED", "EXPIRES", "REVOKED",
    ]);
    for t in tokens {
        table.row(vec![
            t.id.to_string(),
            t.tenant.to_string(),
            t.role.to_string(),
            t.name.clone(),
            when(Some(t.created_at)).unwrap_or_default(),
            when(t.expires_at).unwrap_or_else(|| "never".to_owned()),
            when(t.revoked_at).unwrap_or_default(),
        ]);
    }
    table
}
