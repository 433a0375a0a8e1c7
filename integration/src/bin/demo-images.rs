//! demo-images: builds the demo store's container images (busybox-static web servers standing
//! in for the menu and orders services) and pushes them to a registry; prints one
//! `NAME=REFERENCE` line per image (reference with digest), for `make run`.

use backroom_integration::ociimage::TestImage;
use clap::Parser;

/// Builds and pushes the demo store's images (no downloads: busybox-static from Debian).
#[derive(Parser)]
#[command(name = "demo-images", version, about)]
struct Cli {
    /// A registry reached over plain HTTP, e.g. 127.0.0.1:5000.
    #[arg(long, default_value = "127.0.0.1:5000")]
    registry: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let menu = TestImage::busybox(
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
        "Beanery menu: espresso 2.80, flat white 3.60, croissant 2.40\n",
        "backroom-demo-menu",
    );
    let orders = TestImage::busybox(
        &["/bin/busybox", "httpd", "-f", "-p", "8443", "-h", "/www"],
        "Beanery orders service: ready\n",
        "backroom-demo-orders",
    );
    println!("MENU_IMAGE={}", menu.push_to(&cli.registry, "demo/retail/menu", "1.4.1").await);
    println!("ORDERS_IMAGE={}", orders.push_to(&cli.registry, "demo/retail/orders", "3.2.0").await);
}
