//! Placeholder: `netd` is not built yet (the network daemon).

fn main() {
    eprintln!("netd: not built yet: the network daemon lands with issue 3");
    std::process::exit(2);
}
