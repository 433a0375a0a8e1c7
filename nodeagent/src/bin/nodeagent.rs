//! Placeholder: `nodeagent` is not built yet (the node agent).

fn main() {
    eprintln!("nodeagent: not built yet: the node agent lands with issue 5");
    std::process::exit(2);
}
