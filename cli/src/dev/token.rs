//! Dev mode's admin token: made on the first start, kept in the data folder (readable by its
//! owner only), shown in the banner, and saved in the credentials file so that client commands
//! on this machine find it without being told.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use leasehold_core::ids::TenantId;
use leasehold_core::store::{NewToken, Role, Secret, Store, TokenError};

use crate::credentials;

/// The name dev's token acts under: the actor of what client commands do through it.
pub const NAME: &str = "leasehold-dev";

/// The token and where it was saved.
pub struct DevToken {
    /// The default tenant's admin token.
    pub secret: Secret,
    /// The credentials file it was saved in.
    pub credentials: PathBuf,
}

/// The admin token of the default tenant that dev serves with: the one kept in `kept` (the data
/// folder's token file), or, without a data folder, the one the credentials file holds for
/// `endpoint`, if it still works on this database; else a new one, kept there. Either way it is
/// saved in the credentials file for `endpoint`.
pub async fn admin_token(
    store: &Store,
    kept: Option<&Path>,
    endpoint: &str,
) -> anyhow::Result<DevToken> {
    let earlier = match kept {
        Some(path) => read_kept(path),
        // A broken credentials file is replaced below, like a token that no longer works.
        None => credentials::lookup(endpoint).ok().flatten(),
    };
    let reusable = match earlier {
        Some(token) => usable(store, &token).await?.then_some(token),
        None => None,
    };
    let secret = match reusable {
        Some(token) => token,
        None => {
            let (made, secret) = store
                .create_token(&NewToken {
                    tenant: TenantId::default(),
                    role: Role::Admin,
                    name: Some(NAME.to_owned()),
                    expires_in: None,
                })
                .await
                .context("creating dev mode's API token")?;
            eprintln!("dev: created the admin API token {}", made.id);
            if let Some(path) = kept {
                keep(path, &secret)?;
            }
            secret
        }
    };
    let credentials =
        credentials::save(endpoint, &secret).context("saving the API token for client commands")?;
    Ok(DevToken {
        secret,
        credentials,
    })
}

/// Whether `token` is still the default tenant's admin on this database: a `--fresh` cluster,
/// another `--database-url`, or a revocation leave a kept token useless.
async fn usable(store: &Store, token: &Secret) -> anyhow::Result<bool> {
    match store.authenticate(token).await {
        Ok(found) => Ok(found.tenant == TenantId::default() && found.role == Role::Admin),
        Err(TokenError::Store(e)) => Err(e).context("checking dev mode's API token"),
        Err(_) => Ok(false),
    }
}

/// The token kept in the data folder, if there is a usable one.
fn read_kept(path: &Path) -> Option<Secret> {
    let text = fs::read_to_string(path).ok()?;
    Secret::parse(text.trim()).ok()
}

/// Writes the token readable by its owner only, replacing an earlier one.
fn keep(path: &Path, token: &Secret) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("replacing {}", path.display()));
        }
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| writeln!(file, "{}", token.expose()))
        .with_context(|| format!("writing {}", path.display()))
}
