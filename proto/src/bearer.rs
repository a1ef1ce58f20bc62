//! The client side of authentication: every call carries `authorization: Bearer <token>`.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A channel whose every call carries a token.
pub type AuthedChannel = InterceptedService<Channel, Bearer>;

/// Adds the token to every call, marked sensitive so that HTTP/2 never puts it in a shared
/// compression table and debug output of the headers hides it.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

/// A token that cannot be sent in a header. Its text is never shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token holds characters a header cannot carry")]
pub struct InvalidToken;

impl Bearer {
    /// Sends `token`.
    pub fn new(token: &str) -> Result<Self, InvalidToken> {
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| InvalidToken)?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }

    /// Sends no token: for calls the server answers without one (health, reflection), and to
    /// see the server refuse a call.
    pub fn none() -> Self {
        Self(None)
    }

    /// `channel`, with every call carrying this token.
    pub fn channel(self, channel: Channel) -> AuthedChannel {
        InterceptedService::new(channel, self)
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(***)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
