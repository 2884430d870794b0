//! Writes `crates/tern-wire/include/tern_wire.h` from the Rust definitions.
use std::path::Path;

fn main() -> std::io::Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(tern_wire::c_header::COMMITTED_PATH);
    std::fs::write(&path, tern_wire::c_header::generate())?;
    println!("wrote {}", path.display());
    Ok(())
}
