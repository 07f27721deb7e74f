// SPDX-License-Identifier: GPL-2.0

//! Builds the guest's initramfs: a gzip'd `newc` cpio archive written here.
//!
//! The archive holds a static busybox with a link for each of its applets,
//! an `/init` script, the driver modules under `/lib/modules/`, the
//! `/bin/memhog` helper (compiled with `gcc -static` on first use) and any
//! extra files a test asks for.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;

use crate::Result;
use anyhow::anyhow;
use anyhow::bail;
use anyhow::Context;

/// The line `/init` prints on the shell port when the shell is about to start.
pub const READY_MARKER: &str = "@@VBRS_READY@@";

/// Where the static busybox comes from (Debian `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

/// The guest serial port the test shell runs on (the kernel console is ttyS0).
pub const SHELL_TTY: &str = "/dev/ttyS1";

/// Guest path of our driver module.
pub const RS_MODULE_PATH: &str = "/lib/modules/virtio_balloon_rs.ko";

/// Guest path of the in-tree C driver module.
pub const C_MODULE_PATH: &str = "/lib/modules/virtio_balloon.ko";

/// Source of the `/bin/memhog` helper.
const MEMHOG_SOURCE: &str = include_str!("../guest/memhog.c");

/// The `/init` script.
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
if ! exec 3<>/dev/ttyS1; then
	echo "vbrs-init: cannot open /dev/ttyS1, powering off"
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

/// A `newc` (SVR4, no CRC) cpio archive being written in memory.
#[derive(Debug, Default)]
pub struct Cpio {
    data: Vec<u8>,
    next_inode: u32,
    dirs: BTreeSet<String>,
}

/// File-type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    /// Starts an empty archive.
    pub fn new() -> Self {
        Self {
            data: Vec::new(),
            next_inode: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// Adds a directory (mode 0755) and any missing parents.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_string());
        self.entry(path, S_IFDIR | 0o755, 2, 0, &[]);
    }

    /// Adds a regular file with the given permission bits (e.g. `0o755`).
    pub fn file(&mut self, path: &str, perm: u32, contents: &[u8]) {
        let path = self.with_parent(path);
        self.entry(&path, S_IFREG | (perm & 0o7777), 1, 0, contents);
    }

    /// Adds a regular file copied from the host.
    pub fn file_from_host(&mut self, path: &str, perm: u32, host: &Path) -> Result<()> {
        let contents =
            std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        self.file(path, perm, &contents);
        Ok(())
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = self.with_parent(path);
        self.entry(&path, S_IFLNK | 0o777, 1, 0, target.as_bytes());
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        let path = self.with_parent(path);
        let rdev = (major << 8) | minor;
        self.entry(&path, S_IFCHR | (perm & 0o7777), 1, rdev, &[]);
    }

    /// Ends the archive with its trailer and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, 0, &[]);
        self.data
    }

    /// Creates the parent directories of `path`; returns it without leading `/`.
    fn with_parent(&mut self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        path.to_string()
    }

    /// Writes one header, name and body. `rdev` packs major << 8 | minor.
    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: u32, body: &[u8]) {
        let inode = if name == "TRAILER!!!" {
            0
        } else {
            self.next_inode += 1;
            self.next_inode
        };
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the archive is reproducible
            body.len() as u32,
            0, // devmajor
            0, // devminor
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1,
            0, // check
        ];
        self.data.extend_from_slice(b"070701");
        for field in fields {
            self.data
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    /// Pads the archive to a multiple of four bytes, as `newc` wants.
    fn pad(&mut self) {
        while self.data.len() % 4 != 0 {
            self.data.push(0);
        }
    }
}

/// Compresses `data` with `gzip -9 -n` into the file `out`.
pub fn gzip_to(data: &[u8], out: &Path) -> Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("running gzip")?;
    // gzip writes straight into the file, so feeding all of stdin first cannot
    // dead-lock on a full output pipe.
    let write_result = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(data),
        None => Ok(()),
    };
    let status = child.wait().context("waiting for gzip")?;
    write_result.context("feeding gzip")?;
    if status.success() {
        Ok(())
    } else {
        Err(anyhow!("gzip failed: {status}"))
    }
}

/// Compiles `/bin/memhog` (once per source version) and returns its path.
///
/// The binary is kept under `<target>/qemu-test/`, named after a hash of its
/// source; it is built into a temporary name and renamed, so tests running
/// at the same time never see half a file.
pub fn memhog() -> Result<PathBuf> {
    use std::hash::Hash;
    use std::hash::Hasher;

    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    MEMHOG_SOURCE.hash(&mut hasher);
    let dir = crate::target_dir().join("qemu-test");
    let binary = dir.join(format!("memhog-{:016x}", hasher.finish()));
    if binary.is_file() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let unique = format!("{}-{}", std::process::id(), crate::qemu::unique_number());
    let source = dir.join(format!("memhog-{unique}.c"));
    let partial = dir.join(format!("memhog-{unique}.tmp"));
    std::fs::write(&source, MEMHOG_SOURCE).context("writing memhog.c")?;
    let output = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&partial)
        .arg(&source)
        .output()
        .context("running gcc for memhog (is gcc installed?)")?;
    let _ = std::fs::remove_file(&source);
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "gcc -static failed for memhog ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&partial, &binary).context("renaming memhog")?;
    Ok(binary)
}

/// What goes into an initramfs besides busybox, `/init` and memhog.
#[derive(Debug, Clone, Default)]
pub struct InitramfsSpec {
    /// Files to copy: (guest path, host path), added with mode 0755.
    pub files: Vec<(String, PathBuf)>,
}

impl InitramfsSpec {
    /// Adds a host file at a guest path.
    pub fn file(mut self, guest: impl Into<String>, host: impl Into<PathBuf>) -> Self {
        self.files.push((guest.into(), host.into()));
        self
    }
}

/// The applets busybox was built with, from `busybox --list`.
fn busybox_applets() -> Result<Vec<String>> {
    let output = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .with_context(|| format!("running {BUSYBOX} --list (install Debian busybox-static)"))?;
    if !output.status.success() {
        bail!("{BUSYBOX} --list failed: {}", output.status);
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
    let mut cpio = Cpio::new();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "lib/modules", "root"] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.file_from_host("bin/busybox", 0o755, Path::new(BUSYBOX))?;
    for applet in busybox_applets()? {
        cpio.symlink(&format!("bin/{applet}"), "busybox");
    }
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes());
    cpio.file_from_host("bin/memhog", 0o755, &memhog()?)?;
    for (guest, host) in &spec.files {
        cpio.file_from_host(guest, 0o755, host)?;
    }
    gzip_to(&cpio.finish(), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_headers_are_aligned_and_terminated() {
        let mut cpio = Cpio::new();
        cpio.file("a/b/c", 0o644, b"hello");
        cpio.symlink("a/link", "b/c");
        let data = cpio.finish();
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
        assert_eq!(&header[14..22], "000081A4");
        assert_eq!(&header[54..62], "00000005");
    }

    #[test]
    fn host_cpio_reads_our_archive() {
        let mut cpio = Cpio::new();
        cpio.file("dir/file", 0o600, b"payload");
        cpio.symlink("dir/link", "file");
        let data = cpio.finish();
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
    }
}
