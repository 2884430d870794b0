//! Compiles `bpf/*.bpf.c` with clang (Debian's `clang-19`, or `$TERN_CLANG`)
//! into `$OUT_DIR`. Without clang the crate still builds, without the XDP
//! fast path: `--mode xdp` then says how to get it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tern_bpf)");
    println!("cargo::rerun-if-changed=bpf");
    println!("cargo::rerun-if-changed=../tern-wire/include/tern_wire.h");
    println!("cargo::rerun-if-env-changed=TERN_CLANG");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("TERN_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    // Debian keeps <asm/types.h> under the multiarch include directory.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let object = out_dir.join("coordinator.bpf.o");
    let result = Command::new(&clang)
        .args([
            "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
        ])
        .arg("-I../tern-wire/include")
        .arg(format!("-I{multiarch}"))
        .args(["-c", "bpf/coordinator.bpf.c", "-o"])
        .arg(&object)
        .output();
    match result {
        Ok(output) if output.status.success() => println!("cargo::rustc-cfg=tern_bpf"),
        Ok(output) => panic!(
            "{clang} failed to compile bpf/coordinator.bpf.c:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => println!(
            "cargo::warning=building without the XDP fast path: cannot run {clang} ({error}); \
             install clang-19 and libbpf-dev (scripts/install-deps.sh does)"
        ),
    }
}
