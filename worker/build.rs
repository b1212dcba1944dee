//! Embeds the libtorch `lib/` folder as an rpath so the binaries run without LD_LIBRARY_PATH, and
//! keeps libtorch_cuda linked where the torch wheel has it: no Rust symbol refers to it, so the
//! linker's default `--as-needed` would drop it and CUDA would read as unavailable at run time
//! (on a GPU machine, with LD_LIBRARY_PATH at that machine's torch `lib/`).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
