//! Generates tonic/prost code for `tutti/v1/*.proto` into OUT_DIR, a descriptor set for gRPC
//! reflection, and the proto3 JSON mapping (serde, via pbjson) that the studio's HTTP gateway
//! speaks. protoc comes from `protoc-bin-vendored`, so no system package is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "tutti/v1/generation.proto",
        "tutti/v1/batches.proto",
        "tutti/v1/operator.proto",
        "tutti/v1/usage.proto",
        "tutti/v1/webhooks.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = out.join("tutti_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        // Well-known types with serde support, so every message has a JSON form.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(&protos, &["."])?;
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        // Field names as in the .proto (the validator's field errors name them so).
        .preserve_proto_field_names()
        .build(&[".tutti.v1"])?;
    Ok(())
}
