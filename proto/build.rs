//! Generates tonic/prost code for `tutti/v1/*.proto` into OUT_DIR, plus a descriptor set for
//! gRPC reflection. protoc comes from `protoc-bin-vendored`, so no system package is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["tutti/v1/generation.proto", "tutti/v1/batches.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("tutti_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
