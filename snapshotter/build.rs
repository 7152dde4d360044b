//! Generates the Snapshots gRPC service from `proto/` with protox (pure Rust): the build needs no
//! `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["containerd/services/snapshots/v1/snapshots.proto"], ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(files)?;
    Ok(())
}
