//! Placeholder: the central server is not built yet (issue 6).

fn main() {
    eprintln!("central: not built yet: the central server lands with issue 6");
    std::process::exit(2);
}
