//! Compiles every `.proto` under `proto/` with protox (no system `protoc`), generates the tonic
//! clients and servers, and writes the encoded descriptor set that server reflection serves.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = Path::new("proto");
    let mut files = Vec::new();
    collect_protos(proto_root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");

    let mut compiler = protox::Compiler::new([proto_root])?;
    compiler.include_source_info(true).include_imports(true);
    for file in &files {
        compiler.open_file(file.strip_prefix(proto_root)?)?;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("quintet_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // `bytes` fields as `Bytes`: chunks pass through streams without copies.
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;

    // The Sui ledger API messages the market's payment verifier calls: a client (and a server,
    // for the stand-in ledger of tests and walkthroughs), kept out of the reflection set.
    let sui_root = Path::new("proto-sui");
    println!("cargo:rerun-if-changed=proto-sui");
    let mut sui = protox::Compiler::new([sui_root])?;
    sui.include_imports(true);
    sui.open_file("sui/rpc/v2/ledger_service.proto")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(sui.file_descriptor_set())?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
