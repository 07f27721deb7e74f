// SPDX-License-Identifier: GPL-2.0

//! Runs a test guest as a libvirt domain and drives it as an operator does:
//! `virsh setmem`, `virsh dommemstat`, `virsh qemu-monitor-command`.
//!
//! The domain is transient (`virsh create`), TCG on q35, with the test
//! kernel and an initramfs built by [`crate::initramfs`], and a
//! `<memballoon>` with `autodeflate`, `freePageReporting` and a stats period.
//! libvirt runs QEMU as its own user, so the kernel and initramfs are copied
//! into a world-readable directory, and QEMU connects its two serial ports
//! (kernel console and test shell, as in [`crate::Vm`]) to sockets this side
//! listens on. `libvirtd` must already run (`make test-libvirt` starts it);
//! if `virsh` cannot reach it, [`Domain::start`] fails.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use crate::arch::Arch;
use crate::artifacts;
use crate::console::last_lines;
use crate::initramfs;
use crate::ports;
use crate::ports::GuestPorts;
use crate::qemu::unique_number;
use crate::shell::GuestShell;
use crate::Result;
use anyhow::anyhow;
use anyhow::bail;
use anyhow::Context;

/// The libvirt connection the tests use.
pub const CONNECT_URI: &str = "qemu:///system";

/// Time a domain may take from `virsh create` to the init ready marker.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// Time QEMU gets to connect its serial ports after `virsh create`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `virsh -c qemu:///system <args>` and returns its stdout.
pub fn virsh(args: &[&str]) -> Result<String> {
    let output = Command::new("virsh")
        .arg("-c")
        .arg(CONNECT_URI)
        .args(args)
        .output()
        .context("running virsh (install libvirt-clients)")?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(anyhow!(
            "virsh {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// What to boot as a libvirt domain.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// Short name, used in the domain name and the log directory.
    pub name: String,
    /// Guest RAM in MiB (`<memory>` and `<currentMemory>`).
    pub memory_mib: u64,
    /// `<memballoon autodeflate>`: QEMU's `deflate-on-oom`.
    pub autodeflate: bool,
    /// `<memballoon freePageReporting>`.
    pub free_page_reporting: bool,
    /// `<stats period>` in seconds.
    pub stats_period_s: u32,
}

impl DomainConfig {
    /// A 2 GiB guest with `autodeflate`, `freePageReporting` and 2 s stats.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            memory_mib: 2048,
            autodeflate: true,
            free_page_reporting: true,
            stats_period_s: 2,
        }
    }

    /// Turns `autodeflate` on or off.
    pub fn autodeflate(mut self, on: bool) -> Self {
        self.autodeflate = on;
        self
    }

    /// The `<memballoon>` element.
    pub fn memballoon_xml(&self) -> String {
        let on_off = |on: bool| if on { "on" } else { "off" };
        format!(
            "<memballoon model='virtio' autodeflate='{}' freePageReporting='{}'>\
             <stats period='{}'/></memballoon>",
            on_off(self.autodeflate),
            on_off(self.free_page_reporting),
            self.stats_period_s
        )
    }
}

/// A running libvirt domain with its serial ports. Dropping it destroys it.
#[derive(Debug)]
pub struct Domain {
    name: String,
    ports: GuestPorts,
    log_dir: PathBuf,
    run_dir: PathBuf,
    destroyed: bool,
}

/// The domain XML for `config`, with files and sockets in `run_dir`.
pub fn domain_xml(config: &DomainConfig, name: &str, run_dir: &Path) -> String {
    let dir = run_dir.display();
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <currentMemory unit='MiB'>{mem}</currentMemory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{dir}/bzImage</kernel>
    <initrd>{dir}/initramfs.cpio.gz</initrd>
    <cmdline>console=ttyS0 panic=-1</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='unix'><source mode='connect' path='{dir}/console.sock'/><target port='0'/></serial>
    <serial type='unix'><source mode='connect' path='{dir}/shell.sock'/><target port='1'/></serial>
    <controller type='usb' model='none'/>
    {balloon}
  </devices>
</domain>
",
        mem = config.memory_mib,
        balloon = config.memballoon_xml(),
    )
}

impl Domain {
    /// Builds the initramfs (with our module), defines and starts the
    /// domain, and waits for the guest shell. A boot that QEMU's own TCG
    /// assertion ends before the guest is up is retried once, loudly, as
    /// [`crate::Vm`] does.
    pub fn start(config: DomainConfig) -> Result<Domain> {
        match Self::start_once(&config) {
            Err(err) if crate::qemu::is_boot_flake(&format!("{err:#}")) => {
                eprintln!(
                    "[libvirt {}] boot failed before any module was loaded; retrying once:\n{err:#}",
                    config.name
                );
                Self::start_once(&config)
            }
            other => other,
        }
    }

    fn start_once(config: &DomainConfig) -> Result<Domain> {
        let started = Instant::now();
        let name = format!(
            "vbrs-{}-{}-{}",
            config.name,
            std::process::id(),
            unique_number()
        );
        let log_dir = crate::target_dir().join("vm-logs").join(&name);
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        // libvirt's QEMU user must reach the files and sockets.
        let run_dir = crate::qemu::fresh_run_dir(&format!("{name}-"))?;
        let readable = |path: &Path, mode: u32| -> Result<()> {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", path.display()))
        };
        readable(&run_dir, 0o755)?;
        std::fs::copy(artifacts::kernel_image()?, run_dir.join("bzImage"))
            .context("copying bzImage")?;
        readable(&run_dir.join("bzImage"), 0o644)?;
        let spec = initramfs::InitramfsSpec::new(Arch::X86_64)
            .file(initramfs::RS_MODULE_PATH, artifacts::rs_module()?);
        let initrd = run_dir.join("initramfs.cpio.gz");
        initramfs::build(&spec, &initrd)?;
        readable(&initrd, 0o644)?;

        let listen = |socket: &str| -> Result<UnixListener> {
            let path = run_dir.join(socket);
            let listener = ports::listen(&path)?;
            readable(&path, 0o777)?;
            Ok(listener)
        };
        let console_listener = listen("console.sock")?;
        let shell_listener = listen("shell.sock")?;
        let xml = domain_xml(config, &name, &run_dir);
        let xml_path = log_dir.join("domain.xml");
        std::fs::write(&xml_path, &xml).context("writing domain.xml")?;
        virsh(&["create", &xml_path.to_string_lossy()])?;
        // From here on the domain exists: a failure destroys it on drop.
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let accept = |listener: &UnixListener, what: &str| {
            // libvirt reports QEMU's exit itself: `virsh create` fails.
            ports::accept(listener, what, deadline, || None)
        };
        let connected = accept(&console_listener, "console").and_then(|console| {
            let shell = accept(&shell_listener, "shell")?;
            Ok((console, shell))
        });
        let (console_stream, shell_stream) = match connected {
            Ok(streams) => streams,
            Err(e) => {
                let _ = virsh(&["destroy", &name]);
                return Err(e);
            }
        };
        let mut domain = Domain {
            name,
            ports: GuestPorts::start(console_stream, shell_stream, &log_dir)?,
            log_dir,
            run_dir,
            destroyed: false,
        };
        if let Err(end) = domain
            .ports
            .wait_ready(started + crate::scaled(BOOT_TIMEOUT))
        {
            let qemu_log =
                std::fs::read_to_string(format!("/var/log/libvirt/qemu/{}.log", domain.name))
                    .unwrap_or_default();
            let qemu_tail = last_lines(&qemu_log, 3);
            return Err(domain.failure(&format!(
                "no init ready marker ({end:?}); QEMU's log ends:\n{qemu_tail}"
            )));
        }
        Ok(domain)
    }

    /// The libvirt domain name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `virsh <command> <domain> <args>`.
    pub fn virsh(&self, command: &str, args: &[&str]) -> Result<String> {
        let mut all = vec![command, self.name.as_str()];
        all.extend_from_slice(args);
        virsh(&all)
    }

    /// `virsh dommemstat` as (field, KiB) pairs.
    pub fn dommemstat(&self) -> Result<Vec<(String, u64)>> {
        let text = self.virsh("dommemstat", &[])?;
        Ok(parse_dommemstat(&text))
    }

    /// `virsh qemu-monitor-command --hmp <command>`.
    pub fn hmp(&self, command: &str) -> Result<String> {
        self.virsh("qemu-monitor-command", &["--hmp", command])
    }

    /// The balloon's `actual` in KiB, from `virsh dommemstat`.
    pub fn actual_kib(&self) -> Result<u64> {
        self.dommemstat()?
            .into_iter()
            .find_map(|(name, value)| (name == "actual").then_some(value))
            .ok_or_else(|| anyhow!("virsh dommemstat has no actual"))
    }

    /// `virsh setmem --live`, then waits until `actual` is `kib`.
    pub fn setmem_and_wait(&self, kib: u64, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        self.virsh("setmem", &[&kib.to_string(), "--live"])?;
        loop {
            let actual = self.actual_kib()?;
            if actual == kib {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("virsh setmem {kib}: actual still {actual} KiB after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Powers the guest off and waits until libvirt no longer lists the
    /// domain; checks that the kernel log of the shutdown is clean.
    pub fn shutdown(mut self) -> Result<()> {
        let console_start = self.ports.console.len();
        self.ports.power_off();
        let deadline = Instant::now() + Duration::from_secs(60);
        while virsh(&["domstate", &self.name]).is_ok() {
            if Instant::now() > deadline {
                return Err(self.failure("the domain is still there 60 s after poweroff -f"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.destroyed = true;
        let text = self.ports.console.text();
        if text.contains("Kernel panic") {
            return Err(self.failure("the guest kernel panicked"));
        }
        crate::check_clean_console(text.get(console_start..).unwrap_or(""))
            .map_err(|problem| self.failure(&format!("at shutdown: {problem}")))?;
        let _ = std::fs::remove_dir_all(&self.log_dir);
        Ok(())
    }
}

impl GuestShell for Domain {
    fn ports(&mut self) -> &mut GuestPorts {
        &mut self.ports
    }

    fn ports_ref(&self) -> &GuestPorts {
        &self.ports
    }

    /// An error for `what` with the tails of the logs.
    fn failure(&mut self, what: &str) -> anyhow::Error {
        anyhow!(
            "{what}; domain {}; logs in {}\n--- kernel log (tail) ---\n{}\n--- shell (tail) ---\n{}",
            self.name,
            self.log_dir.display(),
            last_lines(&self.ports.console.text(), 25),
            last_lines(&self.ports.shell.text(), 10),
        )
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        if !self.destroyed {
            let _ = virsh(&["destroy", &self.name]);
            eprintln!(
                "=== domain {} did not shut down cleanly; logs in {} ===\n{}",
                self.name,
                self.log_dir.display(),
                last_lines(&self.ports.console.text(), 40)
            );
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Parses `virsh dommemstat` output (`name value` lines).
pub fn parse_dommemstat(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            let value = words.next()?.parse().ok()?;
            Some((name.to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dommemstat_lines_parse() {
        let text = "actual 2097152\nswap_in 0\nlast_update 1764470000\nrss 391232\n\n";
        let stats = parse_dommemstat(text);
        assert_eq!(stats.len(), 4);
        assert_eq!(stats[0], ("actual".to_string(), 2_097_152));
        assert_eq!(stats[3], ("rss".to_string(), 391_232));
    }

    #[test]
    fn domain_xml_has_the_balloon_and_both_ports() {
        let xml = domain_xml(&DomainConfig::new("x"), "vbrs-x", Path::new("/tmp/d"));
        assert!(xml.contains("autodeflate='on' freePageReporting='on'"));
        assert!(xml.contains("<stats period='2'/>"));
        assert!(xml.contains("path='/tmp/d/shell.sock'/><target port='1'/>"));
        assert!(xml.contains("<kernel>/tmp/d/bzImage</kernel>"));
    }
}
