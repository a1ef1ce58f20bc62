// `embed_migrations!` reads the folder at compile time but does not tell Cargo about it, so an
// added migration would be missing until something else rebuilt the crate.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
