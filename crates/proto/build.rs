//! Generates the Rust code of the etcd v3 API and the Chorus peer protocol.
//!
//! `protox`, a protobuf compiler written in Rust, turns the `.proto` files into a
//! `FileDescriptorSet`; `tonic-prost-build` turns that into prost messages and tonic clients and
//! servers. No system `protoc` is involved (DESIGN.md, "Contracts").

use std::path::PathBuf;

use prost::Message as _;

/// The files to compile, relative to `proto/`. Their imports are found there too.
const PROTO_FILES: &[&str] = &[
    "etcd/kv.proto",
    "etcd/auth.proto",
    "etcd/rpc.proto",
    "etcd/v3lock.proto",
    "etcd/v3election.proto",
    "chorus/peer.proto",
    "chorus/internal.proto",
];

/// Name of the encoded descriptor set in `OUT_DIR`, included by `src/lib.rs`.
const DESCRIPTOR_SET_FILE: &str = "chorus_descriptor_set.bin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let include_dir = manifest_dir.join("proto");
    println!("cargo:rerun-if-changed={}", include_dir.display());

    // Source info carries the comments of the .proto files into the generated docs.
    let descriptors = protox::Compiler::new([&include_dir])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTO_FILES)?
        .file_descriptor_set();

    // The exported set serves reflection, which needs no comments or source positions.
    let mut exported = descriptors.clone();
    for file in &mut exported.file {
        file.source_code_info = None;
    }
    std::fs::write(out_dir.join(DESCRIPTOR_SET_FILE), exported.encode_to_vec())?;

    tonic_prost_build::configure()
        // The crates that open sockets choose the transport; the stubs work over any channel.
        .build_transport(false)
        // Keys, values and log entries are shared without copying.
        .bytes(".")
        // tonic's prost codec, encoding each message into room reserved for all of it.
        .codec_path("crate::codec::Codec")
        .compile_fds(descriptors)?;
    Ok(())
}
