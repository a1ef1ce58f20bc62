//! Leasehold's gRPC API, generated from `leasehold/v1/leasehold.proto`. Servers enable the
//! `server` feature, clients the `client` feature.

/// The `leasehold.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("leasehold.v1");
}

#[cfg(feature = "client")]
pub mod bearer;
pub mod checks;
pub mod codes;

/// The encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("leasehold_descriptor");
