// SPDX-License-Identifier: GPL-2.0

//! The guest's two serial ports as this side holds them: the kernel console
//! (`ttyS0`, `ttyAMA0` on arm64; `console.log`) and the test shell (`ttyS1`,
//! `ttyAMA1`; `shell.log`) with its marker protocol. [`crate::Vm`] and [`crate::libvirt::Domain`] both
//! start them here.
//!
//! QEMU connects each port to a Unix socket this side listens on before the
//! guest runs, so no byte is lost.

use std::fs::File;
use std::io::ErrorKind;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;

use crate::initramfs::READY_MARKER;
use crate::serial::find_bytes;
use crate::serial::Serial;
use crate::serial::WaitEnd;
use crate::shell_command::ShellCommand;
use crate::Result;

/// Binds a non-blocking listening socket at `path` for QEMU to connect to.
pub fn listen(path: &Path) -> Result<UnixListener> {
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    listener
        .set_nonblocking(true)
        .context("making a listener non-blocking")?;
    Ok(listener)
}

/// Accepts QEMU's connection to its `what` socket before `deadline`.
///
/// `exited` says, while waiting, whether QEMU is gone and how; the wait then
/// fails with that.
pub fn accept(
    listener: &UnixListener,
    what: &str,
    deadline: Instant,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<UnixStream> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .context("making a socket blocking")?;
                return Ok(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => bail!("accepting QEMU's {what} connection: {e}"),
        }
        if let Some(how) = exited() {
            bail!("QEMU exited before connecting its {what} socket ({how})");
        }
        if Instant::now() >= deadline {
            bail!("QEMU did not connect its {what} socket in time");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The kernel console and the test shell of one guest.
#[derive(Debug)]
pub struct GuestPorts {
    /// The kernel console, read in the background.
    pub console: Serial,
    /// The test shell's output, read in the background.
    pub shell: Serial,
    shell_input: UnixStream,
    /// Where the next search for a shell marker starts.
    shell_cursor: usize,
    next_command: u64,
}

impl GuestPorts {
    /// Starts reading both ports, into `console.log` and `shell.log` in
    /// `log_dir`.
    pub fn start(console: UnixStream, shell: UnixStream, log_dir: &Path) -> Result<Self> {
        let open_log = |name: &str| -> Result<File> {
            let path = log_dir.join(name);
            File::create(&path).with_context(|| format!("creating {}", path.display()))
        };
        let console = Serial::spawn(console, open_log("console.log")?, "console")
            .context("starting the console reader")?;
        let shell_input = shell.try_clone().context("cloning the shell socket")?;
        let shell = Serial::spawn(shell, open_log("shell.log")?, "shell")
            .context("starting the shell reader")?;
        Ok(Self {
            console,
            shell,
            shell_input,
            shell_cursor: 0,
            next_command: 0,
        })
    }

    /// Waits until `/init` says the shell is ready.
    pub fn wait_ready(&mut self, deadline: Instant) -> std::result::Result<(), WaitEnd> {
        let marker = format!("{READY_MARKER}\n");
        let at = self
            .shell
            .wait_for(deadline, |data| find_bytes(data, marker.as_bytes(), 0))?;
        self.shell_cursor = at + marker.len();
        Ok(())
    }

    /// Runs `command` in the guest shell: `Ok(Ok((exit code, output)))`, or
    /// `Ok(Err(end))` if it did not finish by `deadline` (the shell is then
    /// still busy: treat the guest as broken).
    pub fn run(
        &mut self,
        command: &str,
        deadline: Instant,
    ) -> Result<std::result::Result<(i32, String), WaitEnd>> {
        let id = self.next_command;
        self.next_command += 1;
        let marked = ShellCommand::new(id, command);
        self.shell.log_note(&format!("\n$ {command}\n"));
        self.shell_input
            .write_all(marked.script())
            .context("writing to the guest shell")?;
        let from = self.shell_cursor;
        match self
            .shell
            .wait_for(deadline, |data| marked.find(data, from))
        {
            Ok((output, code, next)) => {
                self.shell_cursor = next;
                Ok(Ok((marked.exit_code(&code)?, output)))
            }
            Err(end) => Ok(Err(end)),
        }
    }

    /// Sends `poweroff -f` to the shell, without waiting for anything (the
    /// shell may already be gone).
    pub fn power_off(&mut self) {
        self.shut_down_with("poweroff -f");
    }

    /// Sends `command` (`poweroff -f`, `reboot -f`) to the shell, which
    /// does not answer it.
    pub fn shut_down_with(&mut self, command: &str) {
        self.shell.log_note(&format!("\n$ {command}\n"));
        let _ = self
            .shell_input
            .write_all(format!("{command}\n").as_bytes());
    }
}
