// SPDX-License-Identifier: GPL-2.0

//! What a test VM is booted with: the accelerator, the machine and the
//! [`VmConfig`] builder (architecture, memory, CPUs, balloon options,
//! modules, extra arguments).

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::bail;
use anyhow::ensure;

use crate::arch::Arch;
use crate::driver::Driver;
use crate::Result;

/// Time a guest may take from QEMU start to the init ready marker (on the
/// test kernel: every timeout here goes through [`crate::scaled`]).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The PCIe root port of [`VmConfig::balloon_on_root_port`].
pub const ROOT_PORT: &str = "rp1";

/// The id of the `n`th (from 1) empty root port of
/// [`VmConfig::spare_root_ports`]: `rp2`, `rp3`, ... ([`ROOT_PORT`] is `rp1`).
pub fn spare_root_port(n: u32) -> String {
    format!("rp{}", n + 1)
}

/// How QEMU runs the guest CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (`-accel kvm -cpu host`).
    Kvm,
    /// Emulation (`-accel tcg -cpu max`).
    Tcg,
}

impl Accel {
    /// Chooses the accelerator for a guest of `arch`: `VBRS_ACCEL=kvm|tcg`
    /// if set, else KVM only for an x86_64 guest on an x86_64 host where
    /// `/dev/kvm` exists and the CPU has `vmx` or `svm`, else TCG.
    ///
    /// The CPU-flag test matters: a nested `/dev/kvm` without those flags
    /// (as on the build machines here) opens fine but cannot run a guest.
    pub fn detect(arch: Arch) -> Result<Self> {
        match std::env::var("VBRS_ACCEL").ok().as_deref() {
            Some("kvm") => return Ok(Accel::Kvm),
            Some("tcg") => return Ok(Accel::Tcg),
            Some("") | None => {}
            Some(other) => bail!("VBRS_ACCEL={other}: expected kvm or tcg"),
        }
        let cpu_flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has_vt = cpu_flags
            .lines()
            .filter(|line| line.starts_with("flags"))
            .any(|line| line.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        // KVM runs a guest of the host's own architecture only.
        let native = cfg!(target_arch = "x86_64") && arch == Arch::X86_64;
        if native && has_vt && Path::new("/dev/kvm").exists() {
            Ok(Accel::Kvm)
        } else {
            Ok(Accel::Tcg)
        }
    }

    /// The QEMU arguments that select this accelerator for a guest of
    /// `arch` (under TCG, [`Arch::tcg_cpu`]).
    pub fn qemu_args(self, arch: Arch) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", arch.tcg_cpu()],
        }
    }
}

/// QEMU's machine, which decides the balloon's transport; what it is made
/// of depends on the [`Arch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Machine {
    /// The balloon is `virtio-balloon-pci` on the machine's PCIe bus
    /// `pcie.0` (or on a root port, [`VmConfig::balloon_on_root_port`]):
    /// `q35` on x86_64, `virt` on arm64.
    #[default]
    Pci,
    /// The balloon is `virtio-balloon-device` on a virtio-mmio transport.
    ///
    /// On arm64, `virt` with its virtio-mmio transports, which the device
    /// tree describes.
    ///
    /// On x86_64, `microvm,acpi=off`: no PCI, no ACPI; QEMU names the
    /// transport on the kernel command line
    /// (`virtio_mmio.device=512@<base>:<irq>`, microvm's
    /// `auto-kernel-cmdline`), the CPUs and interrupts come from the MP
    /// table. The machine makes one ISA serial port, the console; the shell
    /// gets a second `isa-serial` device. Why not microvm's default
    /// `acpi=on`: its MADT has no override for ISA IRQ 0 while QEMU's
    /// IOAPIC raises the PIT on pin 2, so under TCG (no kvmclock) the
    /// kernel never gets a timer tick and hangs calibrating the local APIC
    /// timer. Without ACPI there is no power-off either: the guest leaves
    /// with `reboot -f` (a triple fault, `reboot=t`), which `-no-reboot`
    /// turns into QEMU's exit.
    Mmio,
}

impl Machine {
    /// The `-machine` value.
    pub fn qemu_name(self, arch: Arch) -> &'static str {
        match (arch, self) {
            (Arch::X86_64, Machine::Pci) => "q35",
            (Arch::X86_64, Machine::Mmio) => "microvm,acpi=off",
            // GICv3 with its ITS, as arm64 servers have: PCIe devices get
            // MSIs (GICv2, virt's default, has none, and pciehp on INTx
            // never saw a device plugged into an emptied root port).
            (Arch::Arm64, _) => "virt,gic-version=3",
        }
    }

    /// What this machine adds to the kernel command line.
    pub fn cmdline(self, arch: Arch) -> &'static str {
        match (arch, self) {
            // acpi=off: no search for an RSDP that is not there.
            (Arch::X86_64, Machine::Mmio) => "acpi=off reboot=t",
            _ => "",
        }
    }

    /// The shell command that makes QEMU exit (with `-no-reboot`).
    pub fn shutdown_command(self, arch: Arch) -> &'static str {
        match (arch, self) {
            (Arch::X86_64, Machine::Mmio) => "reboot -f",
            // ACPI on q35, PSCI's SYSTEM_OFF on virt.
            _ => "poweroff -f",
        }
    }

    /// The QEMU arguments that connect the test shell's serial port to the
    /// chardev `shell` (the console is the first `-serial`).
    pub fn shell_serial_args(self, arch: Arch) -> [&'static str; 2] {
        match (arch, self) {
            // microvm makes one ISA serial port, from the first `-serial`;
            // COM2 is added as a device.
            (Arch::X86_64, Machine::Mmio) => ["-device", "isa-serial,index=1,chardev=shell"],
            // q35: COM2 (0x2f8, IRQ 3); virt (QEMU >= 9.1): a second PL011.
            _ => ["-serial", "chardev:shell"],
        }
    }

    /// Whether the machine has PCIe (a root port for hot unplug).
    pub fn has_pcie(self, arch: Arch) -> bool {
        !(arch == Arch::X86_64 && self == Machine::Mmio)
    }

    /// The QEMU device type of the balloon on this machine.
    pub fn balloon_device(self) -> &'static str {
        match self {
            Machine::Pci => "virtio-balloon-pci",
            Machine::Mmio => "virtio-balloon-device",
        }
    }
}

/// What to boot: machine, memory, CPUs, balloon options, modules, extra arguments.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Name of the VM, used in the log directory name.
    pub name: String,
    /// The guest architecture (default: the guest kernel's,
    /// [`crate::kernel::GuestKernel::arch`]).
    pub arch: Arch,
    /// QEMU's machine type (default [`Machine::Pci`]).
    pub machine: Machine,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub smp: u32,
    /// Extra options of the balloon device (`-device
    /// <Machine::balloon_device>,id=balloon0`), such as
    /// `deflate-on-oom=on` (comma-separated, no leading comma).
    pub balloon_options: String,
    /// Extra kernel command line, appended to the defaults.
    pub cmdline: String,
    /// Extra QEMU arguments.
    pub qemu_args: Vec<String>,
    /// Put our module at [`crate::initramfs::RS_MODULE_PATH`].
    pub rs_module: bool,
    /// Put the C driver at [`crate::initramfs::C_MODULE_PATH`].
    pub c_module: bool,
    /// Extra files: (guest path, host path).
    pub files: Vec<(String, PathBuf)>,
    /// Accelerator; `None` means [`Accel::detect`].
    pub accel: Option<Accel>,
    /// Time allowed for the boot on the test kernel (see [`crate::scaled`]).
    pub boot_timeout: Duration,
    /// Puts the balloon on its own PCIe root port (`rp1`), where QMP
    /// `device_del` can hot-unplug it.
    pub balloon_on_root_port: bool,
    /// Empty PCIe root ports to hot-plug devices into
    /// ([`spare_root_port`] names them).
    pub spare_root_ports: u32,
    /// The QEMU binary, instead of the architecture's
    /// ([`crate::Arch::qemu_binary`]): the fault tests' QEMU.
    pub qemu: Option<PathBuf>,
    /// The balloon's whole `-device` value (type and options, without
    /// `id=`), instead of QEMU's own balloon: a vhost-user balloon
    /// ([`crate::fault_device`]).
    pub balloon_device: Option<String>,
}

impl VmConfig {
    /// A 2 GiB, 2-vCPU guest with both driver modules in its initramfs.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            arch: crate::kernel::guest_kernel()
                .map(|kernel| kernel.arch)
                .unwrap_or_default(),
            machine: Machine::default(),
            memory_mib: 2048,
            smp: 2,
            balloon_options: String::new(),
            cmdline: String::new(),
            qemu_args: Vec::new(),
            rs_module: true,
            c_module: true,
            files: Vec::new(),
            accel: None,
            boot_timeout: BOOT_TIMEOUT,
            balloon_on_root_port: false,
            spare_root_ports: 0,
            qemu: None,
            balloon_device: None,
        }
    }

    /// Sets QEMU's machine type.
    pub fn machine(mut self, machine: Machine) -> Self {
        self.machine = machine;
        self
    }

    /// Sets the guest RAM in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Sets the number of vCPUs.
    pub fn smp(mut self, cpus: u32) -> Self {
        self.smp = cpus;
        self
    }

    /// Sets the extra balloon device options, e.g. `deflate-on-oom=on`.
    pub fn balloon_options(mut self, options: &str) -> Self {
        self.balloon_options = options.trim_start_matches(',').to_string();
        self
    }

    /// Appends to the kernel command line.
    pub fn cmdline(mut self, extra: &str) -> Self {
        if !self.cmdline.is_empty() {
            self.cmdline.push(' ');
        }
        self.cmdline.push_str(extra);
        self
    }

    /// Appends QEMU arguments.
    pub fn qemu_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.qemu_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Chooses whether our module is in the initramfs (default: yes).
    pub fn rs_module(mut self, include: bool) -> Self {
        self.rs_module = include;
        self
    }

    /// Chooses whether the C driver is in the initramfs (default: yes).
    pub fn c_module(mut self, include: bool) -> Self {
        self.c_module = include;
        self
    }

    /// Puts only `driver`'s module in the initramfs.
    pub fn only(self, driver: Driver) -> Self {
        self.rs_module(driver == Driver::Rs)
            .c_module(driver == Driver::C)
    }

    /// Adds a host file to the initramfs at `guest` (mode 0755).
    pub fn file(mut self, guest: &str, host: impl Into<PathBuf>) -> Self {
        self.files.push((guest.to_string(), host.into()));
        self
    }

    /// Forces an accelerator instead of [`Accel::detect`].
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = Some(accel);
        self
    }

    /// Sets the boot timeout (on the test kernel; see [`crate::scaled`]).
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }

    /// Puts the balloon on a hot-pluggable PCIe root port (`rp1`).
    pub fn balloon_on_root_port(mut self) -> Self {
        self.balloon_on_root_port = true;
        self
    }

    /// Adds `count` empty root ports, each a slot unused since boot.
    ///
    /// A device goes into one of these rather than back into a port the
    /// guest has emptied: on arm64's virt (native PCIe hotplug, no ACPI) a
    /// device plugged into a slot the guest has powered off gets no
    /// presence event under QEMU 10.0 (the guest enumerates it only when
    /// told to power the slot on, and QEMU's latched attention button then
    /// powers it off again), while a slot never used takes it at once.
    pub fn spare_root_ports(mut self, count: u32) -> Self {
        self.spare_root_ports = count;
        self
    }
}

/// The files a booting VM's QEMU command line names.
#[derive(Debug, Clone, Copy)]
pub struct BootFiles<'a> {
    /// The guest kernel image.
    pub kernel: &'a Path,
    /// The initramfs.
    pub initrd: &'a Path,
    /// The console's unix socket (QEMU connects to it).
    pub console: &'a Path,
    /// The shell port's unix socket.
    pub shell: &'a Path,
    /// The QMP unix socket.
    pub qmp: &'a Path,
}

impl VmConfig {
    /// The guest kernel's command line: the console, the machine's
    /// options, then [`VmConfig::cmdline`].
    pub fn kernel_cmdline(&self) -> String {
        let mut cmdline = format!("console={} panic=-1", self.arch.console_tty());
        for extra in [self.machine.cmdline(self.arch), self.cmdline.as_str()] {
            if !extra.is_empty() {
                cmdline.push(' ');
                cmdline.push_str(extra);
            }
        }
        cmdline
    }

    /// The balloon's `-device` value: the device (QEMU's for the machine,
    /// or [`VmConfig::balloon_device`]), `id=balloon0`, its root port and
    /// [`VmConfig::balloon_options`].
    pub fn balloon_device_arg(&self) -> String {
        let mut balloon = format!(
            "{},id=balloon0",
            self.balloon_device
                .as_deref()
                .unwrap_or(self.machine.balloon_device())
        );
        if self.balloon_on_root_port {
            balloon.push_str(",bus=");
            balloon.push_str(ROOT_PORT);
        }
        if !self.balloon_options.is_empty() {
            balloon.push(',');
            balloon.push_str(&self.balloon_options);
        }
        balloon
    }

    /// The `-device pcie-root-port` arguments: [`ROOT_PORT`] for the
    /// balloon if it sits on one, then the spare ports, each its own
    /// chassis.
    pub fn root_port_args(&self) -> Vec<String> {
        let balloon_port = self.balloon_on_root_port.then(|| ROOT_PORT.to_string());
        let spare = (1..=self.spare_root_ports).map(spare_root_port);
        balloon_port
            .into_iter()
            .chain(spare)
            .zip(1..)
            .flat_map(|(id, chassis)| {
                [
                    "-device".to_string(),
                    format!("pcie-root-port,id={id},bus=pcie.0,chassis={chassis}"),
                ]
            })
            .collect()
    }

    /// The QEMU command that boots this VM with `accel` from `files`: no
    /// default devices, the console, the shell port and QMP on their
    /// sockets, the root ports, the balloon, then
    /// [`VmConfig::qemu_args`].
    pub fn qemu_command(&self, accel: Accel, files: &BootFiles<'_>) -> Result<Command> {
        let arch = self.arch;
        ensure!(
            !(self.balloon_on_root_port || self.spare_root_ports > 0)
                || self.machine.has_pcie(arch),
            "root ports need PCIe: the microvm machine has none"
        );
        let qemu = match &self.qemu {
            Some(qemu) => qemu.display().to_string(),
            None => arch.qemu_binary(),
        };
        let socket = |id: &str, path: &Path| format!("socket,id={id},path={}", path.display());
        let mut command = Command::new(qemu);
        command
            .arg("-name")
            .arg(format!("vbrs-{}", self.name))
            .args(["-machine", self.machine.qemu_name(arch)])
            .args(accel.qemu_args(arch))
            .arg("-m")
            .arg(self.memory_mib.to_string())
            .arg("-smp")
            .arg(self.smp.to_string())
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(files.kernel)
            .arg("-initrd")
            .arg(files.initrd)
            .arg("-append")
            .arg(self.kernel_cmdline())
            .arg("-chardev")
            .arg(socket("console", files.console))
            .args(["-serial", "chardev:console"])
            .arg("-chardev")
            .arg(socket("shell", files.shell))
            .args(self.machine.shell_serial_args(arch))
            .arg("-chardev")
            .arg(socket("qmp", files.qmp))
            .args(["-mon", "chardev=qmp,mode=control"])
            .args(self.root_port_args())
            .arg("-device")
            .arg(self.balloon_device_arg())
            .args(&self.qemu_args);
        Ok(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_builder_sets_fields() {
        let config = VmConfig::new("x")
            .memory_mib(512)
            .smp(1)
            .balloon_options(",deflate-on-oom=on")
            .cmdline("a=1")
            .cmdline("b=2")
            .qemu_args(["-s"])
            .rs_module(false);
        assert_eq!(config.memory_mib, 512);
        assert_eq!(config.balloon_options, "deflate-on-oom=on");
        assert_eq!(config.cmdline, "a=1 b=2");
        assert_eq!(config.qemu_args, vec!["-s".to_string()]);
        assert!(!config.rs_module && config.c_module);
        assert_eq!(config.machine, Machine::Pci);
        let mmio = VmConfig::new("y").machine(Machine::Mmio);
        assert_eq!(mmio.machine.balloon_device(), "virtio-balloon-device");
        assert_eq!(Machine::Mmio.qemu_name(Arch::X86_64), "microvm,acpi=off");
        assert_eq!(Machine::Mmio.qemu_name(Arch::Arm64), "virt,gic-version=3");
        assert!(Machine::Mmio.has_pcie(Arch::Arm64));
        assert!(!Machine::Mmio.has_pcie(Arch::X86_64));
    }

    /// The arguments of `command`, as strings.
    fn args(command: &Command) -> Vec<String> {
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn qemu_command_names_files_balloon_and_ports() {
        let files = BootFiles {
            kernel: Path::new("/k/bzImage"),
            initrd: Path::new("/r/initrd"),
            console: Path::new("/r/console.sock"),
            shell: Path::new("/r/shell.sock"),
            qmp: Path::new("/r/qmp.sock"),
        };
        let mut config = VmConfig::new("cmd")
            .memory_mib(1024)
            .smp(1)
            .balloon_options("deflate-on-oom=on")
            .cmdline("quiet")
            .qemu_args(["-s"])
            .balloon_on_root_port()
            .spare_root_ports(1);
        config.arch = Arch::X86_64;
        let command = config.qemu_command(Accel::Tcg, &files).unwrap();
        assert_eq!(command.get_program(), Arch::X86_64.qemu_binary().as_str());
        let args = args(&command);
        let after = |flag: &str| {
            let at = args.iter().position(|a| a == flag).unwrap();
            args[at + 1].clone()
        };
        assert_eq!(after("-m"), "1024");
        assert_eq!(after("-smp"), "1");
        assert_eq!(after("-kernel"), "/k/bzImage");
        assert_eq!(after("-initrd"), "/r/initrd");
        assert_eq!(after("-append"), "console=ttyS0 panic=-1 quiet");
        assert!(args.contains(&"socket,id=qmp,path=/r/qmp.sock".to_string()));
        assert!(args.contains(&"pcie-root-port,id=rp1,bus=pcie.0,chassis=1".to_string()));
        assert!(args.contains(&"pcie-root-port,id=rp2,bus=pcie.0,chassis=2".to_string()));
        assert!(
            args.contains(&"virtio-balloon-pci,id=balloon0,bus=rp1,deflate-on-oom=on".to_string())
        );
        assert_eq!(args.last().unwrap(), "-s");
        // The balloon comes after its root port.
        let port = args
            .iter()
            .position(|a| a.starts_with("pcie-root-port,id=rp1"));
        let balloon = args
            .iter()
            .position(|a| a.starts_with("virtio-balloon-pci"));
        assert!(port < balloon);
    }

    #[test]
    fn root_ports_need_pcie() {
        let files = BootFiles {
            kernel: Path::new("k"),
            initrd: Path::new("i"),
            console: Path::new("c"),
            shell: Path::new("s"),
            qmp: Path::new("q"),
        };
        let mut config = VmConfig::new("mmio")
            .machine(Machine::Mmio)
            .balloon_on_root_port();
        config.arch = Arch::X86_64;
        assert!(config.qemu_command(Accel::Tcg, &files).is_err());
    }
}
