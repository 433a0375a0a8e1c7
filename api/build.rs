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
    // The shared messages are generated once, into `crate::common`; the other files refer to
    // them there (the module tree does not mirror the packages).
    let (common, rest) = PROTOS.split_at(1);
    tonic_prost_build::configure().compile_protos(common, &["proto"])?;
    tonic_prost_build::configure()
        .extern_path(".backroom.common.v1", "crate::common")
        .compile_protos(rest, &["proto"])?;
    Ok(())
}
