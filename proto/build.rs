//! Compiles the .proto contracts with protox (a pure-Rust protobuf compiler), so building needs
//! neither protoc nor any download. Encoded descriptor sets are written beside the generated code
//! for the gRPC server-reflection service: every file, and one per service with only the files
//! it needs, so each server describes what it serves.

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
    for (file, name) in [
        ("featuregateway/v1/feature_service.proto", "feature_service"),
        ("featuregateway/v1/fetcher.proto", "fetcher"),
    ] {
        std::fs::write(
            out.join(format!("{name}_descriptor.bin")),
            prost::Message::encode_to_vec(&needed_by(&fds, file)),
        )?;
    }
    tonic_prost_build::configure()
        // Requests carry a handful of entity keys and context values: a BTreeMap decodes them
        // with no hashing, markedly cheaper than a SipHash HashMap at that size.
        .btree_map(".")
        // Written by hand (src/response.rs): its feature names are encoded once per plan.
        .extern_path(
            ".featuregateway.v1.GetFeaturesResponse",
            "crate::response::GetFeaturesResponse",
        )
        // Decodes each message from one slice (src/codec.rs).
        .codec_path("crate::codec::SliceCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

/// The files of `fds` that `file` needs: itself and its imports, transitively, in `fds`'s order.
fn needed_by(fds: &prost_types::FileDescriptorSet, file: &str) -> prost_types::FileDescriptorSet {
    let mut needed = vec![file.to_owned()];
    let mut i = 0;
    while let Some(name) = needed.get(i) {
        let deps = fds
            .file
            .iter()
            .find(|f| f.name() == name)
            .map(|f| f.dependency.clone())
            .unwrap_or_default();
        for dep in deps {
            if !needed.contains(&dep) {
                needed.push(dep);
            }
        }
        i += 1;
    }
    prost_types::FileDescriptorSet {
        file: fds
            .file
            .iter()
            .filter(|f| needed.iter().any(|n| n == f.name()))
            .cloned()
            .collect(),
    }
}
