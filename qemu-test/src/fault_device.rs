// SPDX-License-Identifier: GPL-2.0

//! A guest whose balloon is a vhost-user device served by
//! `balloon-fault-device` (`qemu-test/fault-device`), a host that behaves as
//! QEMU's balloon or misbehaves on command, under the fault tests' QEMU
//! (`qemu-test/fault-qemu.sh`: `vhost-user-test-device-pci` with
//! virtio-id 5). QMP's `balloon` does not reach such a device: targets,
//! stats requests, faults and the host's counters go through the
//! device's control socket ([`FaultDevice::command`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::anyhow;
use anyhow::bail;
use anyhow::Context;

use crate::artifacts::FAULT_DEVICE;
use crate::artifacts::FAULT_QEMU;
use crate::qemu::unique_number;
use crate::Result;
use crate::Vm;
use crate::VmConfig;

/// Time the device gets to create its sockets.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How the device is started: features offered, faults, queue size.
#[derive(Debug, Clone)]
pub struct FaultOptions {
    /// `--features` (QEMU's default balloon: `stats,page-poison`).
    pub features: String,
    /// `--fault` specs, `QUEUE:KIND[=VALUE][@COUNT]`.
    pub faults: Vec<String>,
    /// QEMU's `vq_size`: every queue's size (QEMU's balloon uses 128).
    pub queue_size: u32,
}

impl Default for FaultOptions {
    fn default() -> Self {
        FaultOptions {
            features: "stats,page-poison".to_string(),
            faults: Vec::new(),
            queue_size: 128,
        }
    }
}

impl FaultOptions {
    /// Sets the features offered (comma separated names).
    pub fn features(mut self, features: &str) -> Self {
        self.features = features.to_string();
        self
    }

    /// Adds a fault present from the start.
    pub fn fault(mut self, spec: &str) -> Self {
        self.faults.push(spec.to_string());
        self
    }

    /// Sets the size of every queue.
    pub fn queue_size(mut self, size: u32) -> Self {
        self.queue_size = size;
        self
    }
}

/// A running `balloon-fault-device`; dropping it kills it.
#[derive(Debug)]
pub struct FaultDevice {
    child: Child,
    socket: PathBuf,
    control: PathBuf,
    log: PathBuf,
    run_dir: PathBuf,
    queue_size: u32,
}

/// The device's counters, `key=value` from its `counters` command.
pub type Counters = BTreeMap<String, String>;

impl FaultDevice {
    /// Starts the device for a VM named `name` and waits for its sockets.
    pub fn start(name: &str, options: &FaultOptions) -> Result<FaultDevice> {
        let binary = FAULT_DEVICE.find()?;
        let run_dir = crate::qemu::fresh_run_dir("vbrs-fault-")?;
        let log_dir = crate::target_dir().join("vm-logs");
        std::fs::create_dir_all(&log_dir)?;
        let log = log_dir.join(format!(
            "{name}-fault-device-{}-{}.log",
            std::process::id(),
            unique_number()
        ));
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let socket = run_dir.join("vhost-user.sock");
        let control = run_dir.join("control.sock");
        let mut command = Command::new(&binary);
        command
            .arg("--socket")
            .arg(&socket)
            .arg("--control")
            .arg(&control)
            .arg("--features")
            .arg(&options.features);
        for fault in &options.faults {
            command.arg("--fault").arg(fault);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut device = FaultDevice {
            child,
            socket,
            control,
            log,
            run_dir,
            queue_size: options.queue_size,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !(device.socket.exists() && device.control.exists()) {
            if let Some(status) = device.child.try_wait()? {
                bail!(
                    "balloon-fault-device exited ({status}) before it listened:\n{}",
                    device.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "balloon-fault-device made no sockets in {START_TIMEOUT:?}:\n{}",
                    device.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(device)
    }

    /// The device's log (its stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the device's log is.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// Runs one control command; the text after `ok` (an `err` answer is
    /// an error).
    pub fn command(&self, line: &str) -> Result<String> {
        let mut stream = UnixStream::connect(&self.control)
            .with_context(|| format!("connecting to {}", self.control.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        writeln!(stream, "{line}")?;
        let mut answer = String::new();
        BufReader::new(stream)
            .read_line(&mut answer)
            .with_context(|| format!("control command `{line}`: no answer"))?;
        let answer = answer.trim_end();
        match answer.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim_start().to_string()),
            None => Err(anyhow!("control command `{line}`: {answer}")),
        }
    }

    /// Every counter of the device.
    pub fn counters(&self) -> Result<Counters> {
        Ok(parse_pairs(&self.command("counters")?))
    }

    /// One numeric counter (`pages_inflated`, `inflate.returned`, ...).
    pub fn counter(&self, key: &str) -> Result<u64> {
        number(&self.counters()?, key)
    }

    /// Sets the target, in 4 KiB balloon pages.
    pub fn set_target_pages(&self, pages: u64) -> Result<()> {
        self.command(&format!("target {pages}")).map(drop)
    }

    /// The balloon's `actual` as the guest last wrote it, in 4 KiB pages.
    pub fn actual_pages(&self) -> Result<u64> {
        number(&parse_pairs(&self.command("config")?), "actual")
    }

    /// Waits until `actual` is `pages`; how long it took.
    pub fn wait_actual(&self, pages: u64, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let actual = self.actual_pages()?;
            if actual == pages {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "actual is {actual} pages after {timeout:?}, expected {pages}; device: {}",
                    self.command("counters")?
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `done` holds for the counters; the counters then.
    pub fn wait_counters(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Counters) -> Result<bool>,
    ) -> Result<Counters> {
        let start = Instant::now();
        loop {
            let counters = self.counters()?;
            if done(&counters)? {
                return Ok(counters);
            }
            if start.elapsed() > timeout {
                bail!("{what}: not after {timeout:?}; device counters: {counters:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Bytes allocated on the host in guest RAM's memfd.
    pub fn ram_bytes(&self) -> Result<u64> {
        let text = self.command("ram")?;
        text.parse().map_err(|_| anyhow!("`ram` answered {text:?}"))
    }

    /// The last stats the guest sent: tag -> value, and how many came.
    pub fn last_stats(&self) -> Result<(u64, BTreeMap<u16, u64>)> {
        let pairs = parse_pairs(&self.command("last-stats")?);
        let received = number(&pairs, "received")?;
        let mut stats = BTreeMap::new();
        for (key, value) in &pairs {
            if let (Ok(tag), Ok(value)) = (key.parse::<u16>(), value.parse::<u64>()) {
                stats.insert(tag, value);
            }
        }
        Ok((received, stats))
    }

    /// The `-device` value and the QEMU arguments that give a VM of
    /// `memory_mib` MiB this device as its balloon: guest RAM in a shared
    /// memfd (the device maps it, and punches holes in it), the vhost-user
    /// socket, the test device with virtio id 5, five queues and the
    /// balloon's 16-byte config.
    fn qemu_setup(&self, memory_mib: u64) -> (String, Vec<String>) {
        let device = format!(
            "vhost-user-test-device-pci,chardev=balloon-vu,virtio-id=5,num_vqs=5,config_size=16,vq_size={}",
            self.queue_size
        );
        let args = vec![
            "-chardev".to_string(),
            format!("socket,id=balloon-vu,path={}", self.socket.display()),
            "-object".to_string(),
            format!("memory-backend-memfd,id=guest-ram,size={memory_mib}M,share=on"),
            "-machine".to_string(),
            "memory-backend=guest-ram".to_string(),
        ];
        (device, args)
    }
}

impl Drop for FaultDevice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// `key=value` pairs of a control answer.
pub fn parse_pairs(text: &str) -> Counters {
    text.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A numeric value of `counters` (decimal or 0x-hex).
pub fn number(counters: &Counters, key: &str) -> Result<u64> {
    let value = counters
        .get(key)
        .ok_or_else(|| anyhow!("no {key} in the device's answer: {counters:?}"))?;
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    }
    .map_err(|_| anyhow!("{key}={value} is not a number"))
}

/// A guest with a [`FaultDevice`] as its balloon. The VM goes first when
/// dropped, then the device.
#[derive(Debug)]
pub struct FaultVm {
    /// The guest.
    pub vm: Vm,
    /// Its balloon's host side.
    pub device: FaultDevice,
}

impl FaultVm {
    /// Starts the device with `options`, then boots `config` (its memory
    /// size set first) under the fault tests' QEMU with that device as
    /// the balloon.
    pub fn boot(config: VmConfig, options: &FaultOptions) -> Result<FaultVm> {
        let device = FaultDevice::start(&config.name, options)?;
        let (balloon, args) = device.qemu_setup(config.memory_mib);
        let mut config = config.qemu_args(args);
        config.qemu = Some(FAULT_QEMU.find()?);
        config.balloon_device = Some(balloon);
        let vm = Vm::boot(config).map_err(|e| {
            anyhow!(
                "{e:#}\nfault device log ({}):\n{}",
                device.log_path().display(),
                device.log_text()
            )
        })?;
        Ok(FaultVm { vm, device })
    }
}
