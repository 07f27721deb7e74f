// SPDX-License-Identifier: GPL-2.0

//! Builds the guest helpers (`guest/*.c`: memhog, scatter) as static
//! binaries, for each guest architecture whose C compiler is installed:
//! `gcc` for x86_64, `aarch64-linux-gnu-gcc` for arm64 (`make setup` and
//! the arm64 set-up install them; `CC_<target>` overrides, as the `cc`
//! crate reads it). `initramfs::memhog` and `initramfs::scatter` find
//! them in `OUT_DIR`.
//!
//! A compiler that is missing now is looked for again at every build
//! (its path cannot be watched before it exists), so installing it later
//! is enough.

use std::env;
use std::path::Path;
use std::path::PathBuf;

/// The helpers, by source name under `guest/`.
const HELPERS: [&str; 2] = ["memhog", "scatter"];

/// Guest architectures: the name the harness uses, the Rust target the
/// `cc` crate knows, the Debian compiler.
const ARCHES: [(&str, &str, &str); 2] = [
    ("x86_64", "x86_64-unknown-linux-gnu", "gcc"),
    (
        "arm64",
        "aarch64-unknown-linux-gnu",
        "aarch64-linux-gnu-gcc",
    ),
];

/// `program` on `PATH`, if it is there.
fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let host = env::var("HOST").expect("cargo sets HOST");
    println!("cargo:rerun-if-changed=guest");
    for (arch, target, compiler) in ARCHES {
        println!("cargo:rerun-if-env-changed=CC_{}", target.replace('-', "_"));
        let Some(path) = which(compiler) else {
            // Watching a path that does not exist reruns this every time.
            println!("cargo:rerun-if-changed=/usr/bin/{compiler}");
            continue;
        };
        println!("cargo:rerun-if-changed={}", path.display());
        let tool = cc::Build::new()
            .target(target)
            .host(&host)
            .compiler(compiler)
            .opt_level(2)
            .cargo_metadata(false)
            .get_compiler();
        for name in HELPERS {
            let source = Path::new("guest").join(format!("{name}.c"));
            let binary = out.join(format!("{name}-{arch}"));
            let status = tool
                .to_command()
                .args(["-static", "-Wall", "-o"])
                .arg(&binary)
                .arg(&source)
                .status()
                .unwrap_or_else(|e| panic!("running {compiler} for {name}: {e}"));
            assert!(
                status.success(),
                "{compiler} -static failed for {} ({status})",
                source.display()
            );
        }
    }
}
