//! Generates the Core ML protobuf types from `proto/` without a system `protoc`:
//! `protox` (a pure-Rust protobuf compiler) produces the descriptor set and
//! `prost-build` turns it into Rust.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["Model.proto"], ["proto"])?;
    prost_build::Config::new()
        // Ordered maps: prost writes map entries in iteration order, and a BTreeMap
        // makes that order (and so the serialized bytes) reproducible.
        .btree_map(["."])
        .include_file("coreml_proto.rs")
        .compile_fds(fds)?;
    Ok(())
}
