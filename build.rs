//! Link-time layout of the `chorus` binary in optimised builds (`release`, `dist`).
//!
//! The kernel maps a binary's text in 64 KiB windows around each page the process touches, and
//! those pages count in its resident memory. Left in the compiler's order, the 4 MiB of
//! functions a running server calls were spread over most of the 21 MiB of text, and a server
//! with 200 clients had 13.5 MiB of it mapped. `scripts/text-order.txt` lists the functions it ran
//! (y-websocket documents, a publish/subscribe fan-out, chat), made by
//! `scripts/text-order.sh`; the linker (rust-lld, the default on x86_64 Linux) places them
//! first, together. Names it does not find (the list drifts as the code changes) are skipped:
//! the layout only gets less compact until the list is remade.

use std::path::Path;

fn main() {
    const ORDER: &str = "scripts/text-order.txt";
    println!("cargo:rerun-if-changed={ORDER}");
    println!("cargo:rerun-if-changed=build.rs");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let linux_x86_64 = var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_ENV") == "gnu";
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join(ORDER);
    if var("PROFILE") == "release" && linux_x86_64 && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=chorus=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=chorus=-Wl,--no-warn-symbol-ordering");
    }
}
