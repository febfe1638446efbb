//! Generates the Greeter gRPC code from `proto/greeter.proto`.
//!
//! protoc comes from `protoc-bin-vendored` so a checkout builds without a
//! system protoc; it is handed to prost through its config rather than the
//! `PROTOC` environment variable, because setting env vars is `unsafe` in
//! edition 2024 and the workspace forbids unsafe code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &["proto/greeter.proto"], &["proto"])?;
    Ok(())
}
