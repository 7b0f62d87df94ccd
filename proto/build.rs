//! Generates the Rust message and gRPC service code from `protos/*.proto` without a system
//! `protoc`: parse with protobuf-parse (pure Rust), hand the descriptors to protobuf-codegen 2
//! (messages, the runtime grpcio's `protobuf-codec` uses) and grpcio-compiler (service stubs).

use std::fs;
use std::path::{Path, PathBuf};

use protobuf3::Message as _;

const PROTOS: &[&str] = &["common.proto", "guest.proto", "host.proto"];

fn main() {
    let proto_dir = PathBuf::from("protos");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in PROTOS {
        println!("cargo:rerun-if-changed=protos/{name}");
    }

    let inputs: Vec<PathBuf> = PROTOS.iter().map(|p| proto_dir.join(p)).collect();
    let set_v3 = protobuf_parse::Parser::new()
        .pure()
        .include(&proto_dir)
        .inputs(&inputs)
        .file_descriptor_set()
        .expect("parse protos/*.proto");
    // protobuf-parse speaks protobuf 3; the code generators speak protobuf 2. The descriptor
    // wire format is the same, so re-encode and decode.
    let bytes = set_v3.write_to_bytes().expect("encode descriptor set");
    let set_v2: protobuf::descriptor::FileDescriptorSet =
        protobuf::Message::parse_from_bytes(&bytes).expect("decode descriptor set");
    let files = set_v2.get_file();
    let to_generate: Vec<String> = PROTOS.iter().map(|s| s.to_string()).collect();

    let mut results =
        protobuf_codegen::gen(files, &to_generate, &protobuf_codegen::Customize::default());
    results.extend(grpcio_compiler::codegen::gen(files, &to_generate));

    let mut mod_rs = String::new();
    for result in results {
        let path = out_dir.join(&result.name);
        fs::write(&path, &result.content).expect("write generated file");
        let module = Path::new(&result.name)
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("generated file name");
        // `include!`d `mod` items resolve relative to the including file, so name the path.
        mod_rs.push_str(&format!(
            "#[path = {:?}]\npub mod {module};\n",
            path.display().to_string()
        ));
    }
    fs::write(out_dir.join("mod.rs"), mod_rs).expect("write mod.rs");
}
