// SPDX-License-Identifier: GPL-2.0

//! Builds the guest's initramfs: a gzip'd `newc` cpio archive (the `cpio`
//! and `flate2` crates).
//!
//! The archive holds a static busybox with a link for each of its applets,
//! an `/init` script, the driver modules under `/lib/modules/`, the
//! `/bin/memhog` helper (built static by `build.rs` with the `cc` crate) and any
//! extra files a test asks for.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufWriter;
use std::io::ErrorKind;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

use crate::arch::Arch;
use crate::Result;
use anyhow::bail;
use anyhow::ensure;
use anyhow::Context;
use cpio::newc::ModeFileType;
use cpio::NewcBuilder;
use flate2::write::GzEncoder;
use flate2::Compression;

/// The line `/init` prints on the shell port when the shell is about to start.
pub const READY_MARKER: &str = "@@VBRS_READY@@";

/// Guest path of our driver module.
pub const RS_MODULE_PATH: &str = "/lib/modules/virtio_balloon_rs.ko";

/// Guest path of the in-tree C driver module.
pub const C_MODULE_PATH: &str = "/lib/modules/virtio_balloon.ko";

/// The `/init` script; `@SHELL_TTY@` stands for the shell's serial port
/// ([`Arch::shell_tty`]).
///
/// It mounts the usual file systems, makes the shell port quiet (no echo, no
/// CR added to output) and runs a shell on it for ever. Init keeps the port
/// open on fd 3, so input sent after the ready marker waits in the tty buffer
/// until the shell reads it. The shell reads its commands through a pipe so
/// that it is not interactive (no banner, prompts or line editing), and it
/// gets no controlling tty on purpose: the exit of a controlling shell would
/// hang the port up under init.
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin
export HOME=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp
echo "vbrs-init: file systems mounted"
if ! exec 3<>@SHELL_TTY@; then
	echo "vbrs-init: cannot open @SHELL_TTY@, powering off"
	poweroff -f
fi
stty -echo -onlcr <&3
cd /tmp
while true; do
	echo "@@VBRS_READY@@" >&3
	while IFS= read -r line; do printf '%s\n' "$line"; done <&3 | sh >&3 2>&3
	echo "vbrs-init: shell exited with $?, restarting it"
done
"#;

/// A `newc` cpio archive being written to `out`: the [`cpio`] crate writes
/// each entry (header, name, body, padding, trailer); this adds the missing
/// parent directories and numbers the inodes.
///
/// Owner, group and modification time are 0, so the archive is reproducible.
#[derive(Debug)]
pub struct Cpio<W: Write> {
    out: W,
    last_inode: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Cpio<W> {
    /// Starts an empty archive written to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            last_inode: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// Adds a directory (mode 0755) and any missing parents.
    pub fn dir(&mut self, path: &str) -> std::io::Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(path.to_string());
        let entry = NewcBuilder::new(path)
            .mode(0o755)
            .set_mode_file_type(ModeFileType::Directory)
            .nlink(2);
        self.entry(entry, &[])
    }

    /// Adds a regular file with the given permission bits (e.g. `0o755`).
    pub fn file(&mut self, path: &str, perm: u32, contents: &[u8]) -> std::io::Result<()> {
        let path = self.with_parent(path)?;
        let entry = NewcBuilder::new(&path)
            .mode(perm & 0o7777)
            .set_mode_file_type(ModeFileType::Regular);
        self.entry(entry, contents)
    }

    /// Adds a regular file copied from the host.
    pub fn file_from_host(&mut self, path: &str, perm: u32, host: &Path) -> Result<()> {
        let contents =
            std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        self.file(path, perm, &contents)
            .with_context(|| format!("adding {} to the initramfs", host.display()))
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> std::io::Result<()> {
        let path = self.with_parent(path)?;
        let entry = NewcBuilder::new(&path)
            .mode(0o777)
            .set_mode_file_type(ModeFileType::Symlink);
        self.entry(entry, target.as_bytes())
    }

    /// Adds a character device node.
    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> std::io::Result<()> {
        let path = self.with_parent(path)?;
        let entry = NewcBuilder::new(&path)
            .mode(perm & 0o7777)
            .set_mode_file_type(ModeFileType::Char)
            .rdev_major(major)
            .rdev_minor(minor);
        self.entry(entry, &[])
    }

    /// Ends the archive with its trailer and returns the writer.
    pub fn finish(self) -> std::io::Result<W> {
        cpio::newc::trailer(self.out)
    }

    /// Creates the parent directories of `path`; returns it without leading `/`.
    fn with_parent(&mut self, path: &str) -> std::io::Result<String> {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(path.to_string())
    }

    /// Writes one entry with the next inode number.
    fn entry(&mut self, entry: NewcBuilder, body: &[u8]) -> std::io::Result<()> {
        let size = u32::try_from(body.len()).map_err(|_| {
            std::io::Error::new(ErrorKind::InvalidInput, "file too large for a newc archive")
        })?;
        self.last_inode += 1;
        let mut writer = entry.ino(self.last_inode).write(&mut self.out, size);
        writer.write_all(body)?;
        writer.finish().map(|_| ())
    }
}

/// `/bin/memhog` for `arch`, built with the crate (`build.rs`).
pub fn memhog(arch: Arch) -> Result<PathBuf> {
    guest_helper(arch, "memhog")
}

/// The `scatter` helper for the guest kernel's architecture, built with
/// the crate: `scatter <MiB> <keep_every>` fragments the guest's free
/// memory (the bench's fragmented guests; added to an initramfs with
/// [`crate::VmConfig::file`]).
pub fn scatter() -> Result<PathBuf> {
    guest_helper(crate::kernel::guest_kernel()?.arch, "scatter")
}

/// The static guest helper `name` for `arch`, which `build.rs` built
/// from `guest/<name>.c` if the architecture's compiler was installed.
fn guest_helper(arch: Arch, name: &str) -> Result<PathBuf> {
    let binary = Path::new(env!("OUT_DIR")).join(format!("{name}-{}", arch.kernel_name()));
    ensure!(
        binary.is_file(),
        "no {name} for {}: {} was not installed when qemu-test was built (`make setup`, or `make test-arm64` for arm64, installs it; cargo then builds it)",
        arch.kernel_name(),
        arch.static_cc()
    );
    Ok(binary)
}

/// What goes into an initramfs besides busybox, `/init` and memhog.
#[derive(Debug, Clone, Default)]
pub struct InitramfsSpec {
    /// The guest's architecture: busybox's, memhog's and the shell port's.
    pub arch: Arch,
    /// Files to copy: (guest path, host path), added with mode 0755.
    pub files: Vec<(String, PathBuf)>,
}

impl InitramfsSpec {
    /// An initramfs for a guest of `arch` with nothing extra.
    pub fn new(arch: Arch) -> Self {
        Self {
            arch,
            files: Vec::new(),
        }
    }

    /// Adds a host file at a guest path.
    pub fn file(mut self, guest: impl Into<String>, host: impl Into<PathBuf>) -> Self {
        self.files.push((guest.into(), host.into()));
        self
    }
}

/// The applets busybox was built with, from `busybox --list` of the
/// host's busybox.
///
/// An arm64 busybox cannot run here to list its own: the host's is Debian's
/// `busybox-static` of the same release, built from the same source with
/// the same configuration, so its list is the arm64 one's too (an applet
/// missing there would show as "applet not found" in a test, not pass).
fn busybox_applets() -> Result<Vec<String>> {
    let host = Arch::X86_64.busybox();
    let output = Command::new(&host)
        .arg("--list")
        .output()
        .with_context(|| {
            format!(
                "running {} --list (install Debian busybox-static)",
                host.display()
            )
        })?;
    if !output.status.success() {
        bail!("{} --list failed: {}", host.display(), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.contains('/') && *name != "busybox")
        .map(str::to_string)
        .collect())
}

/// Builds the initramfs for `spec` and writes it, gzip'd, to `out`.
pub fn build(spec: &InitramfsSpec, out: &Path) -> Result<()> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cpio = Cpio::new(GzEncoder::new(BufWriter::new(file), Compression::best()));
    let writing = || format!("writing {}", out.display());
    for dir in ["bin", "dev", "proc", "sys", "tmp", "lib/modules", "root"] {
        cpio.dir(dir).with_context(writing)?;
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    cpio.char_dev("dev/console", 0o600, 5, 1)
        .with_context(writing)?;
    let busybox = spec.arch.busybox();
    if !busybox.is_file() {
        bail!(
            "no {} busybox at {}: `make setup` (arm64: `make arm64-kernel`) fetches it",
            spec.arch.kernel_name(),
            busybox.display()
        );
    }
    cpio.file_from_host("bin/busybox", 0o755, &busybox)?;
    for applet in busybox_applets()? {
        cpio.symlink(&format!("bin/{applet}"), "busybox")
            .with_context(writing)?;
    }
    let init = INIT_SCRIPT.replace("@SHELL_TTY@", spec.arch.shell_tty());
    cpio.file("init", 0o755, init.as_bytes())
        .with_context(writing)?;
    cpio.file_from_host("bin/memhog", 0o755, &memhog(spec.arch)?)?;
    for (guest, host) in &spec.files {
        cpio.file_from_host(guest, 0o755, host)?;
    }
    cpio.finish()
        .and_then(GzEncoder::finish)
        .and_then(|mut file| file.flush())
        .with_context(writing)
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;

    #[test]
    fn newc_headers_are_aligned_and_terminated() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.file("a/b/c", 0o644, b"hello").expect("file");
        cpio.symlink("a/link", "b/c").expect("symlink");
        let data = cpio.finish().expect("trailer");
        assert_eq!(data.len() % 4, 0);
        assert!(data.starts_with(b"070701"));
        // Parent directories come first.
        let text = String::from_utf8_lossy(&data);
        let dir_a = text.find("a\0").expect("dir a");
        let dir_ab = text.find("a/b\0").expect("dir a/b");
        let file = text.find("a/b/c\0").expect("file");
        assert!(dir_a < dir_ab && dir_ab < file);
        assert!(text.contains("TRAILER!!!\0"));
        // The file header says mode 0100644 and size 5.
        let header = &text[file - 110..file];
        assert_eq!(&header[14..22], "000081a4");
        assert_eq!(&header[54..62], "00000005");
    }

    #[test]
    fn host_cpio_reads_our_archive() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.file("dir/file", 0o600, b"payload").expect("file");
        cpio.symlink("dir/link", "file").expect("symlink");
        cpio.char_dev("dev/console", 0o600, 5, 1).expect("device");
        let data = cpio.finish().expect("trailer");
        let mut child = match Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            // No host cpio: the format test above still covers the layout.
            Err(_) => return,
        };
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(&data)
            .expect("write to cpio");
        let output = child.wait_with_output().expect("cpio runs");
        assert!(output.status.success());
        let listing = String::from_utf8_lossy(&output.stdout);
        assert!(listing.contains("dir/file"), "{listing}");
        assert!(listing.contains("dir/link -> file"), "{listing}");
        assert!(listing.contains("crw-------"), "{listing}");
        assert!(listing.contains("5,   1"), "{listing}");
    }
}
