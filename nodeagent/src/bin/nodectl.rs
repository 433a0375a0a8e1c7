//! Placeholder: `nodectl` is not built yet (the node's local CLI and recovery console).

fn main() {
    eprintln!(
        "nodectl: not built yet: the node's local CLI and recovery console lands with issue 5"
    );
    std::process::exit(2);
}
