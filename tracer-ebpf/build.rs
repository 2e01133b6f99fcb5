//! Rebuild the kernel programs when the `bpf-linker` binary changes: cargo cannot
//! see that dependency on its own (see aya-template for the same trick).
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
