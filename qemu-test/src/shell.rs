// SPDX-License-Identifier: GPL-2.0

//! The guest shell every way of running a test guest offers ([`crate::Vm`]
//! under QEMU, [`crate::libvirt::Domain`] under libvirt): commands on the
//! shell port with the marker protocol ([`crate::ports`]), the kernel log
//! on the console port, and what tests build on them. One implementation,
//! so the two cannot drift (the libvirt domain's command timeout once was
//! not scaled on the debug kernel).

use std::time::Duration;
use std::time::Instant;

use anyhow::anyhow;
use anyhow::bail;

use crate::console::last_lines;
use crate::console::ConsoleRules;
use crate::kernel::guest_kernel;
use crate::kernel::scaled;
use crate::ports::GuestPorts;
use crate::serial::find_bytes;
use crate::serial::WaitEnd;
use crate::shell_command::meminfo_field;
use crate::shell_command::output_if_ok;
use crate::shell_command::MEMINFO;
use crate::Result;

/// Time [`GuestShell::sh_ok`] and the other helpers give one shell command
/// (scaled on slow kernels, [`crate::scaled`]).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The kmemleak control file (debug kernels).
pub(crate) const KMEMLEAK: &str = "/sys/kernel/debug/kmemleak";

/// kmemleak reports an object only once it is this old.
pub(crate) const KMEMLEAK_MIN_AGE: Duration = Duration::from_secs(5);

/// A running test guest's shell and kernel log.
pub trait GuestShell {
    /// The console and shell ports.
    fn ports(&mut self) -> &mut GuestPorts;

    /// The console and shell ports, to read.
    fn ports_ref(&self) -> &GuestPorts;

    /// An error that says `what` went wrong, with what a reader needs to
    /// find out why (the tails of the logs, where they are kept).
    fn failure(&mut self, what: &str) -> anyhow::Error;

    /// Runs `command` in the guest shell; returns its exit code and output.
    ///
    /// The command runs as `{ command; } </dev/null` in a long-lived
    /// `sh` (so `cd` and variables persist), stdout and stderr mixed. The
    /// output is what the guest printed between two markers; output of
    /// background jobs may land in it. Lines must stay under 4 KiB (the tty
    /// line limit). After a timeout the shell is still busy: treat the
    /// guest as broken.
    fn run(&mut self, command: &str, timeout: Duration) -> Result<(i32, String)> {
        match self.ports().run(command, Instant::now() + timeout)? {
            Ok(done) => Ok(done),
            Err(end) => Err(self.failure(&format!(
                "guest command `{command}` did not finish ({})",
                describe(end, timeout)
            ))),
        }
    }

    /// Runs `command`, fails unless it exits with 0, returns its output.
    fn sh_ok(&mut self, command: &str) -> Result<String> {
        output_if_ok(command, self.run(command, scaled(COMMAND_TIMEOUT))?)
    }

    /// Starts `command` (one simple or compound command, e.g. `( a; b )`)
    /// in the background with its output in the guest file `log`; returns
    /// its process id, the process to kill to stop it.
    ///
    /// The log is created before the job starts, so a reader that comes
    /// right after this returns finds the file (empty, perhaps) rather than
    /// racing the background shell's redirection: `cat` of a log that did
    /// not exist yet once failed a test at random.
    fn spawn(&mut self, command: &str, log: &str) -> Result<u32> {
        let out = self.sh_ok(&format!(
            ": > {log}; {command} >> {log} 2>&1 </dev/null & echo $!"
        ))?;
        out.trim()
            .parse()
            .map_err(|_| anyhow!("no process id from `{command}` in the background: {out:?}"))
    }

    /// Reads a `/proc/meminfo` field (e.g. `MemTotal`) in kB, exact
    /// ([`MEMINFO`] folds the per-CPU counters first).
    fn meminfo(&mut self, field: &str) -> Result<u64> {
        meminfo_field(&self.sh_ok(MEMINFO)?, field)
    }

    /// The guest's kernel log, from `dmesg`.
    fn dmesg(&mut self) -> Result<String> {
        self.sh_ok("dmesg")
    }

    /// Loads a module from a guest path with `insmod`.
    fn insmod(&mut self, guest_path: &str, params: &str) -> Result<()> {
        self.sh_ok(&format!("insmod {guest_path} {params}"))
            .map(|_| ())
    }

    /// Unloads a module with `rmmod`.
    fn rmmod(&mut self, name: &str) -> Result<()> {
        self.sh_ok(&format!("rmmod {name}")).map(|_| ())
    }

    /// The kernel taint mask, from `/proc/sys/kernel/tainted`.
    fn tainted(&mut self) -> Result<u64> {
        let text = self.sh_ok("cat /proc/sys/kernel/tainted")?;
        text.trim()
            .parse()
            .map_err(|_| anyhow!("bad /proc/sys/kernel/tainted: {text:?}"))
    }

    /// Checks the kernel log so far with `rules` and the taint mask (only
    /// `O` and `E`, out-of-tree and unsigned modules, are allowed); on a
    /// kernel with kmemleak, first scans for leaks (twice, once every
    /// object is old enough to count) and fails on any.
    fn check_console(&mut self, rules: ConsoleRules) -> Result<()> {
        /// TAINT_OOT_MODULE (O) and TAINT_UNSIGNED_MODULE (E).
        const ALLOWED_TAINT: u64 = (1 << 12) | (1 << 13);
        if guest_kernel()?.config.has_kmemleak() {
            std::thread::sleep(KMEMLEAK_MIN_AGE);
            let leaks = self.sh_ok(&format!(
                "echo scan > {KMEMLEAK} && echo scan > {KMEMLEAK} && cat {KMEMLEAK}"
            ))?;
            if !leaks.trim().is_empty() {
                bail!("kmemleak reports leaks:\n{}", last_lines(&leaks, 80));
            }
        }
        let tainted = self.tainted()?;
        rules
            .check(&self.console_log())
            .map_err(anyhow::Error::msg)?;
        if tainted & !ALLOWED_TAINT != 0 {
            bail!("kernel taint mask {tainted:#x} has more than out-of-tree/unsigned module");
        }
        Ok(())
    }

    /// [`GuestShell::check_console`] with the strict rules.
    fn check_clean(&mut self) -> Result<()> {
        self.check_console(ConsoleRules::strict())
    }

    /// Waits until the kernel log contains `text`; returns the whole log.
    fn wait_console(&mut self, text: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        match self
            .ports()
            .console
            .wait_for(deadline, |data| find_bytes(data, text.as_bytes(), 0))
        {
            Ok(_) => Ok(self.console_log()),
            Err(end) => Err(self.failure(&format!(
                "the kernel log did not show {text:?} ({})",
                describe(end, timeout)
            ))),
        }
    }

    /// The kernel log (serial console) so far.
    fn console_log(&self) -> String {
        self.ports_ref().console.text()
    }

    /// Everything the guest shell printed so far.
    fn shell_log(&self) -> String {
        self.ports_ref().shell.text()
    }
}

/// How a wait ended, for an error message.
pub(crate) fn describe(end: WaitEnd, timeout: Duration) -> String {
    match end {
        WaitEnd::Timeout => format!("timed out after {timeout:?}"),
        WaitEnd::Closed => "the guest serial port closed: the VM exited".to_string(),
    }
}
