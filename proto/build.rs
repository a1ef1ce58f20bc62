// Compiles the API with the protoc that ships inside `protoc-bin-vendored`, so that a fresh
// machine builds without installing protoc; $PROTOC, when set, wins.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=leasehold");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .file_descriptor_set_path(out_dir.join("leasehold_descriptor.bin"))
        .compile_with_config(
            config,
            &[PathBuf::from("leasehold/v1/leasehold.proto")],
            &[PathBuf::from("."), include],
        )?;
    Ok(())
}
