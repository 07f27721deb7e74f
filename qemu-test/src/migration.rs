// SPDX-License-Identifier: GPL-2.0

//! Live migration of a test VM, and what free page hinting saves on it.
//!
//! A migration goes to `exec:cat > /dev/null` at a capped bandwidth, so
//! that it takes seconds (the guest's hints have time to matter) and
//! QMP `query-migrate`'s `ram.transferred` says what it cost. The hint
//! scenario is the one of issue 16: a 2 GiB guest with QEMU's
//! `free-page-hint=on` (and an iothread) writes 1200 MiB of random data to a
//! tmpfs and frees it, then is migrated at 256 MiB/s, once with no balloon
//! driver loaded (the baseline: nobody hints) and once with the driver.

use std::sync::Condvar;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::anyhow;
use anyhow::bail;
use anyhow::ensure;
use qapi::qmp;
use qapi::qmp::MigrationStatus;

use crate::scaled;
use crate::shell::GuestShell;
use crate::Driver;
use crate::Result;
use crate::Vm;
use crate::VmConfig;
use crate::MIB;

/// The bandwidth cap of the hint scenario's migrations, in bytes/s.
pub const HINT_BANDWIDTH: u64 = 256 * MIB;

/// MiB of random data the hint scenario writes to a tmpfs and frees.
pub const HINT_FILL_MIB: u64 = 1200;

/// How long a migration may take on the test kernel ([`scaled`] for others).
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(180);

/// What one migration cost.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Bytes of guest RAM sent (`ram.transferred`).
    pub transferred: u64,
    /// Dirty-bitmap syncs (`ram.dirty-sync-count`): QEMU's passes over RAM.
    pub dirty_syncs: i64,
    /// From the `migrate` command until `query-migrate` said completed.
    pub duration: Duration,
}

impl Migration {
    /// [`Migration::transferred`] in MiB.
    pub fn transferred_mib(&self) -> u64 {
        self.transferred / MIB
    }
}

/// Migrates the VM to nowhere at `max_bandwidth` bytes/s, waits until the
/// migration completes, resumes the source (it stays paused after a
/// migration) and returns what the migration cost.
pub fn migrate_to_nowhere(vm: &mut Vm, max_bandwidth: u64) -> Result<Migration> {
    vm.qmp()
        .execute(&qmp::migrate_set_parameters(qmp::MigrateSetParameters {
            max_bandwidth: Some(max_bandwidth),
            ..Default::default()
        }))?;
    vm.qmp().execute(&qmp::migrate {
        uri: Some("exec:cat > /dev/null".into()),
        channels: None,
        detach: None,
        resume: None,
    })?;
    let start = Instant::now();
    let timeout = scaled(MIGRATION_TIMEOUT);
    let info = loop {
        let info = vm.qmp().execute(&qmp::query_migrate {})?;
        match info.status {
            Some(MigrationStatus::completed) => break info,
            Some(MigrationStatus::failed | MigrationStatus::cancelled) => {
                bail!("migration failed: {info:?}")
            }
            _ => {}
        }
        ensure!(
            start.elapsed() < timeout,
            "migration not done in {timeout:?}: {info:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let duration = start.elapsed();
    let Some(ram) = info.ram.as_ref() else {
        bail!("query-migrate has no ram statistics: {info:?}")
    };
    vm.qmp().execute(&qmp::cont {})?;
    Ok(Migration {
        transferred: u64::try_from(ram.transferred)
            .map_err(|_| anyhow!("negative ram.transferred: {}", ram.transferred))?,
        dirty_syncs: ram.dirty_sync_count,
        duration,
    })
}

/// The environment variable naming QEMU trace events (comma-separated,
/// e.g. `virtqueue_pop,migration_bitmap_sync_end`) to log, with
/// timestamps, into the hint scenario's `qemu.log`.
pub const TRACE_ENV: &str = "VBRS_HINT_TRACE";

/// The hint scenario's VM: QEMU's balloon with `free-page-hint=on` on an
/// iothread, carrying only `driver`.
pub fn hint_vm_config(name: &str, driver: Driver) -> VmConfig {
    let mut trace = Vec::new();
    if let Ok(events) = std::env::var(TRACE_ENV) {
        trace.extend(["-msg".to_string(), "timestamp=on".to_string()]);
        for event in events.split(',').filter(|e| !e.is_empty()) {
            trace.extend(["-trace".to_string(), event.to_string()]);
        }
    }
    VmConfig::new(name)
        .only(driver)
        .qemu_args(["-object", "iothread,id=io0"])
        .qemu_args(trace)
        .balloon_options("free-page-hint=on,iothread=io0")
}

/// Writes `mib` MiB of random data to a tmpfs of its own and frees it
/// again: guest memory a migration must send unless the guest hints it.
pub fn fill_and_free(vm: &mut Vm, mib: u64) -> Result<()> {
    let command = format!(
        "mkdir -p /mnt/fill && mount -t tmpfs -o size={}m fill /mnt/fill && \
         dd if=/dev/urandom of=/mnt/fill/data bs=1M count={mib} 2>&1 && \
         rm /mnt/fill/data && umount /mnt/fill",
        mib + 16
    );
    let (rc, out) = vm.run(&command, scaled(Duration::from_secs(600)))?;
    ensure!(rc == 0, "filling {mib} MiB of tmpfs failed: {out}");
    Ok(())
}

/// Our driver's debugfs counters of free page hinting, as `name value`
/// lines (empty for the C driver, which has none).
pub const HINT_COUNTERS: &[&str] = &["hint_rounds", "hinted_blocks"];

/// What one driver saved in the hint scenario.
#[derive(Debug)]
pub struct HintSavings {
    pub driver: Driver,
    /// The migration with no driver loaded: nobody hints.
    pub baseline: Migration,
    /// The migration with the driver loaded.
    pub hinted: Migration,
    /// Our driver's counters after the hinted migration ([`HINT_COUNTERS`]).
    pub counters: Vec<(String, u64)>,
    /// QEMU's view of each hint round, when traced ([`TRACE_ENV`]).
    pub windows: Vec<HintWindow>,
}

impl HintSavings {
    /// MiB the hints saved against the baseline (0 if they cost).
    pub fn saved_mib(&self) -> u64 {
        self.baseline
            .transferred_mib()
            .saturating_sub(self.hinted.transferred_mib())
    }
}

/// Reads our driver's hint counters from debugfs.
fn rs_counters(vm: &mut Vm) -> Result<Vec<(String, u64)>> {
    let mut counters = Vec::new();
    for name in HINT_COUNTERS {
        let text = vm.sh_ok(&format!(
            "cat /sys/kernel/debug/virtio_balloon_rs/virtio*/{name}"
        ))?;
        let value = text
            .trim()
            .parse()
            .map_err(|_| anyhow!("debugfs {name}: not a number: {text:?}"))?;
        counters.push((name.to_string(), value));
    }
    Ok(counters)
}

/// Runs the hint scenario for each of `drivers` at once, a fresh VM each,
/// in lockstep: the migrations without hints start together, and so do
/// those with hints. Each VM fills and frees its memory, is migrated
/// without a driver, loads its driver and is migrated again; then the
/// driver is unloaded and the kernel log checked.
///
/// Side by side, both drivers hint under the same load: on a shared
/// machine the guests' speed under TCG changes by a factor of two from one
/// minute to the next, which decides how much a hint round gets done
/// before the migration reaches the freed memory.
pub fn measure_hint_savings(drivers: &[Driver]) -> Result<Vec<HintSavings>> {
    let lockstep = Lockstep::new(drivers.len());
    std::thread::scope(|scope| {
        let runs: Vec<_> = drivers
            .iter()
            .map(|&driver| {
                let lockstep = &lockstep;
                scope.spawn(move || {
                    let result = measure_in_step(driver, lockstep);
                    if result.is_err() {
                        lockstep.fail();
                    }
                    result
                })
            })
            .collect();
        runs.into_iter()
            .zip(drivers)
            .map(|(run, driver)| {
                run.join()
                    .map_err(|_| anyhow!("the {} run panicked", driver.label()))?
            })
            .collect()
    })
}

/// One VM of [`measure_hint_savings`].
fn measure_in_step(driver: Driver, lockstep: &Lockstep) -> Result<HintSavings> {
    let mut vm = Vm::boot(hint_vm_config(
        &format!("hint_savings_{}", driver.label()),
        driver,
    ))?;
    fill_and_free(&mut vm, HINT_FILL_MIB)?;
    lockstep.wait()?;
    let baseline = migrate_to_nowhere(&mut vm, HINT_BANDWIDTH)?;
    vm.load(driver)?;
    // The device must have negotiated hinting with the driver.
    let features = vm.sh_ok("cat /sys/bus/virtio/devices/virtio*/features")?;
    ensure!(
        features
            .lines()
            .any(|bits| bits.trim().as_bytes().get(3) == Some(&b'1')),
        "{} did not negotiate FREE_PAGE_HINT: {features:?}",
        driver.module_name()
    );
    lockstep.wait()?;
    let hinted = migrate_to_nowhere(&mut vm, HINT_BANDWIDTH)?;
    let counters = match driver {
        Driver::Rs => rs_counters(&mut vm)?,
        Driver::C => Vec::new(),
    };
    vm.rmmod(driver.module_name())?;
    vm.check_clean()?;
    let windows = match std::env::var_os(TRACE_ENV) {
        Some(_) => HintWindow::parse(
            &std::fs::read_to_string(vm.log_dir().join("qemu.log")).unwrap_or_default(),
        ),
        None => Vec::new(),
    };
    vm.shutdown()?;
    Ok(HintSavings {
        driver,
        baseline,
        hinted,
        counters,
        windows,
    })
}

/// A barrier that a failed party breaks: the others stop waiting.
struct Lockstep {
    parties: usize,
    state: Mutex<LockstepState>,
    changed: Condvar,
}

#[derive(Default)]
struct LockstepState {
    arrived: usize,
    generation: u64,
    failed: bool,
}

impl Lockstep {
    fn new(parties: usize) -> Self {
        Self {
            parties,
            state: Mutex::new(LockstepState::default()),
            changed: Condvar::new(),
        }
    }

    /// Waits until every party arrived; fails if one of them failed.
    fn wait(&self) -> Result<()> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| anyhow!("lockstep poisoned"))?;
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == self.parties {
            state.arrived = 0;
            state.generation += 1;
            self.changed.notify_all();
        }
        while state.generation == generation && !state.failed {
            state = self
                .changed
                .wait(state)
                .map_err(|_| anyhow!("lockstep poisoned"))?;
        }
        ensure!(!state.failed, "the other VM of the comparison failed");
        Ok(())
    }

    /// A party failed: wake and fail every wait.
    fn fail(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.failed = true;
        }
        self.changed.notify_all();
    }
}

/// The trace events [`HintWindow::parse`] reads.
pub const HINT_TRACE_EVENTS: &str =
    "migration_bitmap_sync_start,migration_bitmap_sync_end,virtqueue_pop";

/// One hinting window of a migration, as QEMU's trace shows it: QEMU asks
/// for hints right after a dirty-bitmap sync and stops the round at the
/// next sync; hints that arrive later save nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HintWindow {
    /// From the end of the sync (the host's request) to the next sync.
    pub window: Duration,
    /// From the request until QEMU took the guest's start id.
    pub start_id: Option<Duration>,
    /// From the request until QEMU took the first hint.
    pub first_hint: Option<Duration>,
    /// Hints QEMU took before it stopped the round.
    pub hints: u64,
    /// From the first to the last of those.
    pub hinting: Duration,
    /// Hints taken after the round was stopped (wasted).
    pub late_hints: u64,
}

impl HintWindow {
    /// The windows in which the guest answered, from a `qemu.log` traced
    /// with [`HINT_TRACE_EVENTS`] (`-msg timestamp=on`).
    pub fn parse(log: &str) -> Vec<HintWindow> {
        // (seconds, event, arguments) of each trace line.
        let events: Vec<(f64, &str, &str)> = log
            .lines()
            .filter_map(|line| {
                let (_, rest) = line.split_once('@')?;
                let (time, rest) = rest.split_once(':')?;
                let (event, args) = rest.split_once(' ').unwrap_or((rest, ""));
                Some((time.parse().ok()?, event, args))
            })
            .collect();
        let arg = |args: &str, name: &str| -> Option<String> {
            let mut words = args.split_whitespace();
            words.find(|w| *w == name)?;
            words.next().map(str::to_string)
        };
        // The hint queue: the one the guest gives device-writable buffers.
        let Some(hint_vq) = events.iter().find_map(|(_, event, args)| {
            (*event == "virtqueue_pop" && arg(args, "in_num").is_some_and(|n| n != "0"))
                .then(|| arg(args, "vq"))
                .flatten()
        }) else {
            return Vec::new();
        };
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
        let mut windows = Vec::new();
        let mut open: Option<(f64, HintWindow, f64, f64)> = None;
        for &(time, event, args) in &events {
            match event {
                "migration_bitmap_sync_end" => {
                    if let Some((_, window, ..)) = open.take() {
                        windows.push(window);
                    }
                    let window = HintWindow {
                        window: Duration::ZERO,
                        start_id: None,
                        first_hint: None,
                        hints: 0,
                        hinting: Duration::ZERO,
                        late_hints: 0,
                    };
                    open = Some((time, window, f64::NAN, f64::NAN));
                }
                "migration_bitmap_sync_start" => {
                    if let Some((request, window, ..)) = open.as_mut() {
                        if window.window.is_zero() {
                            window.window = secs(time - *request);
                        }
                    }
                }
                "virtqueue_pop" if arg(args, "vq").as_deref() == Some(hint_vq.as_str()) => {
                    let Some((request, window, first, _)) = open.as_mut() else {
                        continue;
                    };
                    let is_hint = arg(args, "in_num").is_some_and(|n| n != "0");
                    let stopped = !window.window.is_zero();
                    if !is_hint {
                        if window.start_id.is_none() && !stopped {
                            window.start_id = Some(secs(time - *request));
                        }
                    } else if stopped {
                        window.late_hints += 1;
                    } else {
                        if window.first_hint.is_none() {
                            window.first_hint = Some(secs(time - *request));
                            *first = time;
                        }
                        window.hints += 1;
                        window.hinting = secs(time - *first);
                    }
                }
                _ => {}
            }
        }
        if let Some((_, window, ..)) = open {
            windows.push(window);
        }
        windows.retain(|w| w.start_id.is_some() || w.hints > 0 || w.late_hints > 0);
        windows
    }
}

impl std::fmt::Display for HintWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| {
                format!("{:.1}", d.as_secs_f64() * 1000.0)
            })
        };
        let rate = if self.hinting.is_zero() {
            "-".to_string()
        } else {
            format!("{:.0}", self.hints as f64 / self.hinting.as_secs_f64())
        };
        write!(
            f,
            "window {} ms: start id at {} ms, first hint at {} ms, {} hints ({} per s), {} late",
            ms(Some(self.window)),
            ms(self.start_id),
            ms(self.first_hint),
            self.hints,
            rate,
            self.late_hints
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_party_breaks_the_lockstep() {
        let lockstep = Lockstep::new(2);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| lockstep.wait());
            lockstep.fail();
            assert!(waiter.join().unwrap().is_err());
        });
        let lockstep = Lockstep::new(2);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| lockstep.wait().and_then(|()| lockstep.wait()));
            assert!(lockstep.wait().is_ok());
            assert!(lockstep.wait().is_ok());
            assert!(waiter.join().unwrap().is_ok());
        });
    }

    #[test]
    fn hint_windows_from_a_trace() {
        let log = "\
1@10.000000:migration_bitmap_sync_start \n\
1@10.001000:migration_bitmap_sync_end dirty_pages 0\n\
2@10.002000:virtqueue_pop vq 0xb elem 0x1 in_num 0 out_num 1\n\
2@10.003000:virtqueue_pop vq 0xa elem 0x1 in_num 0 out_num 1\n\
2@10.004000:virtqueue_pop vq 0xa elem 0x1 in_num 1 out_num 0\n\
2@10.006000:virtqueue_pop vq 0xa elem 0x1 in_num 1 out_num 0\n\
1@10.011000:migration_bitmap_sync_start \n\
2@10.012000:virtqueue_pop vq 0xa elem 0x1 in_num 1 out_num 0\n\
2@10.013000:virtqueue_pop vq 0xa elem 0x1 in_num 0 out_num 1\n\
1@10.014000:migration_bitmap_sync_end dirty_pages 3\n";
        let windows = HintWindow::parse(log);
        assert_eq!(windows.len(), 1, "{windows:?}");
        let w = windows[0];
        assert_eq!(w.hints, 2);
        assert_eq!(w.late_hints, 1);
        assert_eq!(w.window.as_micros(), 10_000);
        assert_eq!(w.start_id.map(|d| d.as_micros()), Some(2_000));
        assert_eq!(w.first_hint.map(|d| d.as_micros()), Some(3_000));
        assert_eq!(w.hinting.as_micros(), 2_000);
    }
}
