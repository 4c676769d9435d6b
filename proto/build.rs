//! Compiles the .proto contracts with protox (a pure-Rust protobuf compiler), so building needs
//! neither protoc nor any download. The encoded descriptor set is written beside the generated
//! code for the gRPC server-reflection service.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "featuregateway/v1/feature_service.proto",
        "featuregateway/v1/fetcher.proto",
        "featuregateway/v1/training_log.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("featuregateway_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Requests carry a handful of entity keys and context values: a BTreeMap decodes them
        // with no hashing, markedly cheaper than a SipHash HashMap at that size.
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
