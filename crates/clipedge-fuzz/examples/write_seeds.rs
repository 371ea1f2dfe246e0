//! Writes the seeds of every fuzz target to `<dir>/<target>/seed-<name>` (default
//! `fuzz/corpus`): `cargo run -p clipedge-fuzz --example write_seeds`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus"));
    for target in clipedge_fuzz::TARGETS {
        let dir = root.join(target.name);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in clipedge_fuzz::seeds::seeds(target.name) {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
    }
    println!("seeds written under {}", root.display());
    Ok(())
}
