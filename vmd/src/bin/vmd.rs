//! Placeholder: `vmd` is not built yet (the VM daemon).

fn main() {
    eprintln!("vmd: not built yet: the VM daemon lands with issue 4");
    std::process::exit(2);
}
