//! Link option for the sidecar binary: `-z pack-relative-relocs` stores its ~19,000 relative
//! relocations (position-independent code, so ASLR still applies) as a compact RELR table
//! instead of 24-byte RELA entries — about 440 KB less that the loader reads, and keeps
//! resident, in every sidecar process. Needs binutils ≥ 2.38 to link and glibc ≥ 2.36 to run
//! (Debian 12, the image's base, has both).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
