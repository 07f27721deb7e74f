// SPDX-License-Identifier: GPL-2.0

//! Boots a test guest under QEMU (as [`VmConfig`] says) and drives it: shell
//! commands on a serial port ([`crate::ports`]), QMP on a socket, the kernel
//! log on another serial port; keeps the logs and checks the guest's health.
//!
//! The kernel console is the first serial port (`ttyS0`, `ttyAMA0` on
//! arm64; `console.log`); the test shell runs on the second (`shell.log`),
//! so kernel messages never mix into command output.
//! QEMU connects to sockets this side listens on, before the guest runs, so
//! no byte of either port is lost. Each VM keeps its logs in
//! `<target>/vm-logs/<name>-<timestamp>/`; a VM dropped without a clean
//! [`Vm::shutdown`] prints where they are and the tail of the kernel log.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Stdio;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use crate::artifacts;
use crate::config::Accel;
use crate::config::BootFiles;
use crate::config::VmConfig;
use crate::console::check_clean_console;
use crate::console::last_lines;
use crate::console::ConsoleRules;
use crate::driver::Driver;
use crate::initramfs;
use crate::kernel::guest_kernel;
use crate::kernel::scaled;
use crate::ports;
use crate::ports::GuestPorts;
use crate::qmp::Qmp;
use crate::shell::describe;
use crate::shell::GuestShell;
use crate::shell::KMEMLEAK;
use crate::shell::KMEMLEAK_MIN_AGE;
use crate::shell_command::parse_meminfo;
use crate::Result;
use anyhow::anyhow;
use anyhow::bail;
use anyhow::ensure;
use anyhow::Context;

/// Time [`Vm::shutdown`] waits for QEMU to exit after `poweroff -f`.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Time QEMU gets to connect its chardevs after it starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of the kernel log printed when a VM goes away uncleanly.
const TAIL_LINES: usize = 60;

/// A new, empty directory for a guest's sockets and files, `<prefix>` and
/// a random suffix, in the system's temporary directory (socket paths must
/// fit in 108 bytes: not in the repository). Its name is one no other
/// process has: a name made of the process id once met the stale socket
/// of an earlier process with the same id ("Address already in use"). The
/// caller removes it.
pub fn fresh_run_dir(prefix: &str) -> Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .with_context(|| format!("creating a {prefix}* directory in the temporary directory"))?;
    Ok(dir.keep())
}

/// Returns a number no other call in this process returns.
pub fn unique_number() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A running test guest. Dropping it always kills QEMU.
#[derive(Debug)]
pub struct Vm {
    config: VmConfig,
    child: Child,
    qmp: Qmp,
    ports: GuestPorts,
    log_dir: PathBuf,
    run_dir: PathBuf,
    boot_time: Duration,
    clean_exit: bool,
}

impl Vm {
    /// Builds the initramfs, starts QEMU and waits for the guest shell.
    ///
    /// A boot that fails before any module is loaded, for a reason the
    /// driver cannot have caused ([`is_boot_flake`]: QEMU 10.0's TCG
    /// aborting on an assertion of its own, or the debug kernel reporting a
    /// problem in its own early boot) is retried once, and said so on
    /// stderr. Any other boot failure fails at once.
    pub fn boot(config: VmConfig) -> Result<Vm> {
        match Self::boot_once(config.clone()) {
            Err(err) if is_boot_flake(&format!("{err:#}")) => {
                eprintln!(
                    "[vm {}] boot failed before any module was loaded; retrying once:\n{err:#}",
                    config.name
                );
                Self::boot_once(config)
            }
            other => other,
        }
    }

    fn boot_once(config: VmConfig) -> Result<Vm> {
        let started = Instant::now();
        let arch = config.arch;
        let kernel_image = artifacts::kernel_image()?;
        let mut spec = initramfs::InitramfsSpec::new(arch);
        if config.rs_module {
            spec = spec.file(initramfs::RS_MODULE_PATH, artifacts::rs_module()?);
        }
        if config.c_module {
            spec = spec.file(initramfs::C_MODULE_PATH, artifacts::c_module()?);
        }
        for (guest, host) in &config.files {
            spec = spec.file(guest.clone(), host.clone());
        }
        let accel = match config.accel {
            Some(accel) => accel,
            None => Accel::detect(arch)?,
        };

        let log_dir = make_log_dir(&config.name)?;
        let run_dir = fresh_run_dir("vbrs-")?;
        // From here on, an early return kills QEMU and removes the run dir.
        let mut starting = Starting {
            child: None,
            log_dir: log_dir.clone(),
            run_dir: run_dir.clone(),
            done: false,
        };
        let initrd = run_dir.join("initramfs.cpio.gz");
        initramfs::build(&spec, &initrd)?;

        let listen = |name: &str| -> Result<(PathBuf, UnixListener)> {
            let path = run_dir.join(format!("{name}.sock"));
            let listener = ports::listen(&path)?;
            Ok((path, listener))
        };
        let (console_path, console_listener) = listen("console")?;
        let (shell_path, shell_listener) = listen("shell")?;
        let (qmp_path, qmp_listener) = listen("qmp")?;

        let files = BootFiles {
            kernel: &kernel_image,
            initrd: &initrd,
            console: &console_path,
            shell: &shell_path,
            qmp: &qmp_path,
        };
        let mut command = config.qemu_command(accel, &files)?;
        let qemu = command.get_program().to_string_lossy().into_owned();

        let qemu_log_path = log_dir.join("qemu.log");
        let mut qemu_log = File::create(&qemu_log_path)
            .with_context(|| format!("creating {}", qemu_log_path.display()))?;
        let _ = writeln!(qemu_log, "# {command:?}");
        let stdout = qemu_log.try_clone().context("cloning qemu.log")?;
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(qemu_log)
            .spawn()
            .with_context(|| format!("starting {qemu} (is QEMU installed?)"))?;
        starting.child = Some(child);

        let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
        let console_stream = starting.accept(&console_listener, "console", connect_deadline)?;
        let shell_stream = starting.accept(&shell_listener, "shell", connect_deadline)?;
        let qmp_stream = starting.accept(&qmp_listener, "qmp", connect_deadline)?;

        let ports = GuestPorts::start(console_stream, shell_stream, &log_dir)?;
        let qmp_log = log_dir.join("qmp.log");
        let qmp_log =
            File::create(&qmp_log).with_context(|| format!("creating {}", qmp_log.display()))?;
        let qmp = Qmp::handshake(qmp_stream, Some(qmp_log)).map_err(|e| {
            anyhow!(
                "{e:#}; logs in {}\n{}",
                log_dir.display(),
                read_tail(&qemu_log_path)
            )
        })?;
        let child = starting.take_child()?;
        let mut vm = Vm {
            config,
            child,
            qmp,
            ports,
            log_dir,
            run_dir,
            boot_time: Duration::ZERO,
            clean_exit: false,
        };
        let boot_timeout = scaled(vm.config.boot_timeout);
        let deadline = started + boot_timeout;
        match vm.ports.wait_ready(deadline) {
            Ok(()) => {}
            Err(end) => {
                return Err(vm.failure(&format!(
                    "the guest did not reach the init ready marker ({})",
                    describe(end, boot_timeout)
                )))
            }
        }
        vm.boot_time = started.elapsed();
        // A splat while the kernel booted is the kernel's, not the driver's
        // (no module is loaded yet), but it would fail the test's final
        // check: say so here, so that `boot` can retry.
        if let Err(report) = ConsoleRules::strict().check(&vm.console_log()) {
            return Err(vm.failure(&format!("{BOOT_REPORT}: {report}")));
        }
        if guest_kernel()?.config.has_kmemleak() {
            // Forget what boot itself leaves unreferenced: a scan reports
            // objects once they are old enough, `clear` forgets the reported.
            std::thread::sleep(KMEMLEAK_MIN_AGE);
            vm.sh_ok(&format!(
                "echo scan > {KMEMLEAK} && echo clear > {KMEMLEAK}"
            ))?;
        }
        Ok(vm)
    }

    /// Loads `driver` from the initramfs; the VM must have been booted with it.
    pub fn load(&mut self, driver: Driver) -> Result<()> {
        let included = match driver {
            Driver::C => self.config.c_module,
            Driver::Rs => self.config.rs_module,
        };
        ensure!(
            included,
            "this VM was booted without {}.ko",
            driver.module_name()
        );
        self.insmod(driver.guest_path(), "")
    }

    /// The QMP connection.
    pub fn qmp(&mut self) -> &mut Qmp {
        &mut self.qmp
    }

    /// The directory with this VM's logs.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The process id of QEMU.
    pub fn qemu_pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the QEMU process, in KiB (`VmRSS`): what the
    /// guest's memory costs the host.
    pub fn qemu_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        parse_meminfo(&status, "VmRSS").ok_or_else(|| anyhow!("no VmRSS in /proc/<qemu>/status"))
    }

    /// Time from [`Vm::boot`] to the ready marker.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The configuration the VM was booted with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Kills QEMU without a shutdown, for a test that expects the guest
    /// to be stuck (the C driver's rmmod waiting for a host that stopped
    /// answering, where a power-off would wait for the same device lock).
    /// The logs are kept only with `VBRS_KEEP_LOGS`, as after a clean exit.
    pub fn abandon(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.clean_exit = true;
    }

    /// Powers the guest off (`poweroff -f`; on microvm `reboot -f`, see
    /// [`crate::Machine::Mmio`]) and waits for QEMU to exit.
    ///
    /// After a clean exit the log directory is removed, unless
    /// `VBRS_KEEP_LOGS` is set. If QEMU does not exit in time it is killed
    /// and this is an error.
    pub fn shutdown(mut self) -> Result<()> {
        // What the kernel prints from here on (drivers' shutdown callbacks)
        // must be clean too.
        let console_start = self.ports.console.len();
        // The shell may already be gone; waiting for QEMU says what happened.
        self.ports
            .shut_down_with(self.config.machine.shutdown_command(self.config.arch));
        let shutdown_timeout = scaled(SHUTDOWN_TIMEOUT);
        let deadline = Instant::now() + shutdown_timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => {
                    // QEMU also exits with 0 when a panic resets the guest.
                    let _ = self
                        .ports
                        .console
                        .wait_for(Instant::now() + Duration::from_secs(2), |_| None::<()>);
                    if self.ports.console.text().contains("Kernel panic") {
                        return Err(self.failure("the guest kernel panicked"));
                    }
                    let text = self.ports.console.text();
                    let at_shutdown = text.get(console_start..).unwrap_or("");
                    if let Err(problem) = check_clean_console(at_shutdown) {
                        return Err(self.failure(&format!("at shutdown: {problem}")));
                    }
                    self.clean_exit = true;
                    return Ok(());
                }
                Ok(Some(status)) => {
                    return Err(self.failure(&format!("QEMU exited with {status} at shutdown")))
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    return Err(self.failure(&format!(
                        "QEMU did not exit within {shutdown_timeout:?} of {}",
                        self.config.machine.shutdown_command(self.config.arch)
                    )))
                }
                Err(e) => bail!("waiting for QEMU: {e}"),
            }
        }
    }
}

impl GuestShell for Vm {
    fn ports(&mut self) -> &mut GuestPorts {
        &mut self.ports
    }

    fn ports_ref(&self) -> &GuestPorts {
        &self.ports
    }

    /// An error for `what` with the state of the VM and its logs.
    fn failure(&mut self, what: &str) -> anyhow::Error {
        // A closed port means QEMU is exiting: give it a moment to be reaped
        // so the message can say how it ended.
        let patience = if self.ports.shell.is_closed() || self.ports.console.is_closed() {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        };
        let deadline = Instant::now() + patience;
        // Let the console reader catch up with the last words of the kernel.
        let _ = self.ports.console.wait_for(deadline, |_| None::<()>);
        let exited = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break format!("QEMU exited ({status})"),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => break "QEMU is running".to_string(),
            }
        };
        anyhow!(
            "{what}; {exited}; logs in {}\n--- kernel log (tail) ---\n{}\n--- shell (tail) ---\n{}\n--- qemu ---\n{}",
            self.log_dir.display(),
            last_lines(&self.ports.console.text(), 25),
            last_lines(&self.ports.shell.text(), 10),
            read_tail(&self.log_dir.join("qemu.log"))
        )
    }
}

/// What a boot failure says when the kernel reported a problem (KASAN,
/// lockdep, a warning) while booting, before any module was loaded.
const BOOT_REPORT: &str =
    "the kernel reported a problem while booting, before any module was loaded";

/// Whether a boot failure is one the driver cannot have caused: QEMU
/// aborting on one of its own assertions (TCG's `iotlb_to_section` while
/// the guest maps BARs), or a report of the debug kernel during its own boot
/// (seen: KASAN in `handle_edge_irq` from `identify_cpu`, an interrupt in
/// the moment the boot CPU's LA57 bit is clear on 5-level paging; the TCG
/// CPU now has no LA57, [`crate::config::Accel::qemu_args`], which ends
/// that one at its cause, and the retry stays for others).
pub(crate) fn is_boot_flake(message: &str) -> bool {
    (message.contains("qemu-system-") && message.contains("Assertion"))
        || message.contains(BOOT_REPORT)
        || message.contains(TIMER_CHECK_PANIC)
}

/// The kernel's panic when its timer check finds no timer interrupt in
/// the time it allows (`check_timer`), seen under TCG with the machine's
/// two cores busy with other VMs: a boot failure of the kernel's own.
const TIMER_CHECK_PANIC: &str = "IO-APIC + timer doesn't work";

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let keep = std::env::var_os("VBRS_KEEP_LOGS").is_some();
        if self.clean_exit && !keep {
            let _ = std::fs::remove_dir_all(&self.log_dir);
            return;
        }
        if !self.clean_exit || std::thread::panicking() {
            eprintln!(
                "=== VM {} did not shut down cleanly; logs in {} ===\n--- last {TAIL_LINES} kernel log lines ---\n{}\n--- end of kernel log ---",
                self.config.name,
                self.log_dir.display(),
                last_lines(&self.ports.console.text(), TAIL_LINES)
            );
        }
    }
}

/// A VM being started: until [`Starting::take_child`], dropping it kills
/// QEMU and removes the run directory.
struct Starting {
    child: Option<Child>,
    log_dir: PathBuf,
    run_dir: PathBuf,
    done: bool,
}

impl Starting {
    /// Accepts QEMU's connection on `listener`, failing if QEMU exits.
    fn accept(
        &mut self,
        listener: &UnixListener,
        what: &str,
        deadline: Instant,
    ) -> Result<UnixStream> {
        let child = &mut self.child;
        let exited = || match child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(e.to_string()),
            None => Some("not started".into()),
        };
        ports::accept(listener, what, deadline, exited).map_err(|e| {
            anyhow!(
                "{e:#}; logs in {}\n{}",
                self.log_dir.display(),
                read_tail(&self.log_dir.join("qemu.log"))
            )
        })
    }

    fn take_child(&mut self) -> Result<Child> {
        let child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("QEMU was not started"))?;
        self.done = true;
        Ok(child)
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        eprintln!("VM failed to start; logs in {}", self.log_dir.display());
    }
}

/// Reads the last lines of a small log file, or says why it cannot.
fn read_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => last_lines(&text, 20),
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// Creates `<target>/vm-logs/<name>-<UTC timestamp>-<pid>-<n>/`.
fn make_log_dir(name: &str) -> Result<PathBuf> {
    let safe_name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = crate::target_dir().join("vm-logs").join(format!(
        "{safe_name}-{}-{}-{}",
        utc_timestamp(SystemTime::now()),
        std::process::id(),
        unique_number()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Formats a time as `YYYYmmdd-HHMMSS` in UTC.
fn utc_timestamp(time: SystemTime) -> String {
    let at = time::OffsetDateTime::from(time);
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_failures_before_any_module_are_retried() {
        use super::is_boot_flake;
        assert!(is_boot_flake(
            "qemu-system-x86_64: system/physmem.c:2678: iotlb_to_section: Assertion `x' failed."
        ));
        assert!(is_boot_flake(&format!(
            "{}: BUG: KASAN: wild-memory-access",
            super::BOOT_REPORT
        )));
        assert!(is_boot_flake(
            "the guest did not reach the init ready marker (the guest serial port closed: \
             QEMU exited)\n[    0.004000] Kernel panic - not syncing: IO-APIC + timer doesn't \
             work!  Boot with apic=debug and send a report."
        ));
        assert!(!is_boot_flake(
            "the guest did not reach the init ready marker (timed out after 60 s)"
        ));
        assert!(!is_boot_flake(
            "BUG: KASAN: use-after-free in virtio_balloon_rs"
        ));
    }

    use super::*;

    #[test]
    fn root_ports_get_ids_and_chassis_of_their_own() {
        let config = VmConfig::new("x")
            .balloon_on_root_port()
            .spare_root_ports(2);
        assert_eq!(
            config.root_port_args(),
            [
                "-device",
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=1",
                "-device",
                "pcie-root-port,id=rp2,bus=pcie.0,chassis=2",
                "-device",
                "pcie-root-port,id=rp3,bus=pcie.0,chassis=3",
            ]
        );
        assert!(VmConfig::new("y").root_port_args().is_empty());
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let at = |secs| utc_timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "19700101-000000");
        assert_eq!(at(951_782_400), "20000229-000000");
        assert_eq!(at(1_767_225_599), "20251231-235959");
    }
}
