//! Generates containerd's gRPC services from `proto/` with protox (pure Rust): the build needs no
//! `protoc`. Snapshots is served (and called by tests); content, images, leases and diff are called by
//! `ferry pull`; version and introspection by `ferry doctor`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let services = ["snapshots", "content", "images", "leases", "diff", "version", "introspection"];
    let protos: Vec<String> = services.iter().map(|s| format!("containerd/services/{s}/v1/{s}.proto")).collect();
    let files = protox::compile(&protos, ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(files)?;
    Ok(())
}
