//! Embeds the schema migrations: writes `$OUT_DIR/migrations.rs`, the list of every
//! `migrations/V{n}__{name}.sql` file with its text, which `store/migrate` includes. Cargo is told
//! to watch the folder, so an added migration rebuilds the crate.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("../migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<(String, PathBuf)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a UTF-8 file name")
                .to_owned();
            println!("cargo:rerun-if-changed={}", path.display());
            (name, path.canonicalize().expect("an existing file"))
        })
        .collect();
    files.sort();
    let mut out = String::from("&[\n");
    for (name, path) in &files {
        out.push_str(&format!(
            "    EmbeddedFile {{ file_name: {name:?}, text: include_str!({:?}) }},\n",
            path.display().to_string()
        ));
    }
    out.push_str("]\n");
    let target = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("migrations.rs");
    fs::write(&target, out).unwrap_or_else(|e| panic!("writing {}: {e}", target.display()));
}
