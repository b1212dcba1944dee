//! Compiles `csrc/shim.cpp` (host code only: no nvcc) against the libtorch that torch-sys links
//! (the PyPI torch wheel's `torch/` folder under `LIBTORCH_USE_PYTORCH=1`, or a `LIBTORCH`
//! folder), with the CUDA headers the wheel ships under `site-packages/nvidia/*/include` (or
//! `$CUDA_HOME/include`), and links `torch_cuda` and `c10_cuda`.
//!
//! Where any of that is missing (a CPU-only libtorch), nothing is compiled and the crate builds
//! its fallback: every call answers `Error::Unavailable` with the reason found here. The
//! `tutti_cuda_shim` cfg tells the crate which one it is.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo::rustc-check-cfg=cfg(tutti_cuda_shim)");
    match find() {
        Ok(found) => build(&found),
        Err(why) => {
            println!("cargo:warning=tutti-cuda-graph builds without CUDA graphs: {why}");
            println!("cargo:rustc-env=TUTTI_CUDA_SHIM_MISSING={why}");
        }
    }
}

struct Found {
    lib: PathBuf,
    includes: Vec<PathBuf>,
}

fn find() -> Result<Found, String> {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .map(PathBuf::from)
        .map_err(|_| {
            "torch-sys did not say where libtorch is (DEP_TCH_LIBTORCH_LIB)".to_string()
        })?;
    for so in ["libtorch_cuda.so", "libc10_cuda.so"] {
        if !lib.join(so).exists() {
            return Err(format!(
                "{} has no {so} (a CPU-only libtorch)",
                lib.display()
            ));
        }
    }
    let torch = lib
        .parent()
        .ok_or_else(|| format!("{} has no parent folder", lib.display()))?;
    let include = torch.join("include");
    if !include.join("ATen/cuda/CUDAGraph.h").exists() {
        return Err(format!(
            "{} has no ATen/cuda/CUDAGraph.h",
            include.display()
        ));
    }
    let mut includes = vec![include.clone(), include.join("torch/csrc/api/include")];
    // The wheel's CUDA headers: site-packages/nvidia/<component>/include.
    if let Some(site) = torch.parent() {
        includes.extend(nvidia_includes(&site.join("nvidia")));
    }
    if let Ok(home) = std::env::var("CUDA_HOME") {
        includes.push(Path::new(&home).join("include"));
    }
    includes.push(PathBuf::from("/usr/local/cuda/include"));
    if !includes
        .iter()
        .any(|d| d.join("cuda_runtime_api.h").exists())
    {
        return Err(
            "no cuda_runtime_api.h in the wheel's nvidia/*/include, $CUDA_HOME or /usr/local/cuda"
                .into(),
        );
    }
    // The nvidia-cuda-runtime wheel ships cuda_runtime_api.h without the crt/ folder it
    // includes; nvidia-cuda-crt (scripts/setup installs it) adds it.
    if !includes
        .iter()
        .any(|d| d.join("crt/host_defines.h").exists())
    {
        return Err("the CUDA headers lack crt/host_defines.h: pip install nvidia-cuda-crt==13.0.88 into the venv (scripts/setup does)".into());
    }
    Ok(Found { lib, includes })
}

fn nvidia_includes(nvidia: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(nvidia) else {
        return vec![];
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("include"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn build(found: &Found) {
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        // libtorch's headers warn a lot under -Wall; our own file is small enough to read.
        .warnings(false)
        .file("csrc/shim.cpp");
    for dir in found.includes.iter().filter(|d| d.is_dir()) {
        b.include(dir);
    }
    b.compile("tutti_cuda_graph");
    // After the static library, so that the linker resolves its symbols in these.
    let lib = found.lib.display();
    println!("cargo:rustc-link-search=native={lib}");
    for l in ["torch_cuda", "c10_cuda", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
    // This crate's own test binaries run without LD_LIBRARY_PATH, as the workspace's do.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-cfg=tutti_cuda_shim");
}
