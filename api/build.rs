//! Generates the tonic code of the protobuf files listed here (explicitly: a new file is a
//! decision, not an accident).

const PROTOS: &[&str] = &[
    "proto/backroom/common.proto",
    "proto/backroom/netd.proto",
    "proto/backroom/vmd.proto",
    "proto/backroom/nodeagent.proto",
    "proto/backroom/node.proto",
    "proto/backroom/operator.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure().compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
