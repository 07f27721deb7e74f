// SPDX-License-Identifier: GPL-2.0

//! `make demo`: boots the test guest with `virtio_balloon_rs.ko`, shows it
//! bound to the balloon device, drives the balloon through several targets
//! over QMP with a live table of target, `actual` and guest `MemTotal`, then
//! unloads the module and shows that everything came back.

use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use qemu_test::qmp::BALLOON_QOM_PATH;
use qemu_test::Driver;
use qemu_test::GuestShell;
use qemu_test::Result;
use qemu_test::Vm;
use qemu_test::VmConfig;
use qemu_test::MIB;

const GUEST_MIB: u64 = 2048;
const TARGETS_MIB: [u64; 4] = [1536, 1024, 768, GUEST_MIB];
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    if let Err(err) = run() {
        eprintln!("demo failed: {err:#}");
        std::process::exit(1);
    }
}

fn row(vm: &mut Vm, start: Instant, target: u64) -> Result<u64> {
    let actual = vm.qmp().query_balloon()? / MIB;
    let memtotal = vm.meminfo("MemTotal")?;
    let balloon = vm.meminfo("Balloon")?;
    println!(
        "{:>8.2}  {:>10}  {:>10}  {:>13}  {:>12}",
        start.elapsed().as_secs_f64(),
        target,
        actual,
        memtotal,
        balloon
    );
    Ok(actual)
}

fn run() -> Result<()> {
    println!("== booting a {GUEST_MIB} MiB guest under QEMU (virtio-balloon-pci)");
    let mut vm = Vm::boot(VmConfig::new("demo").memory_mib(GUEST_MIB).only(Driver::Rs))?;
    println!("   booted in {:.1} s", vm.boot_time().as_secs_f64());
    let memtotal = vm.meminfo("MemTotal")?;

    println!("== insmod virtio_balloon_rs.ko");
    vm.load(Driver::Rs)?;
    let dmesg = vm.dmesg()?;
    for line in dmesg.lines().filter(|l| l.contains("virtio_balloon_rs")) {
        println!("   dmesg: {}", line.trim());
    }
    let bound = vm.sh_ok("ls /sys/bus/virtio/drivers/virtio_balloon_rs/ | grep virtio")?;
    let dev = bound.trim().to_string();
    println!("   /sys/bus/virtio/drivers/virtio_balloon_rs/{dev} -> bound");
    let features = vm.sh_ok(&format!("cat /sys/bus/virtio/devices/{dev}/features"))?;
    println!(
        "   negotiated feature bits (sysfs, bit 0 first): {}",
        features.trim()
    );

    println!("== driving the balloon over QMP");
    println!(
        "{:>8}  {:>10}  {:>10}  {:>13}  {:>12}",
        "time s", "target MiB", "actual MiB", "MemTotal kB", "Balloon kB"
    );
    let start = Instant::now();
    for target in TARGETS_MIB {
        vm.qmp().balloon(target * MIB)?;
        let step = Instant::now();
        loop {
            if row(&mut vm, start, target)? == target {
                break;
            }
            if step.elapsed() > STEP_TIMEOUT {
                bail!("target {target} MiB not reached in {STEP_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    println!("== memory statistics over the stats queue (QMP guest-stats, polled every 2 s)");
    vm.qmp().qom_set(
        BALLOON_QOM_PATH,
        "guest-stats-polling-interval",
        serde_json::json!(2),
    )?;
    let start_stats = Instant::now();
    let stats = loop {
        let stats = vm.qmp().qom_get(BALLOON_QOM_PATH, "guest-stats")?;
        if stats["last-update"].as_u64().unwrap_or(0) > 0 {
            break stats;
        }
        if start_stats.elapsed() > Duration::from_secs(10) {
            bail!("no guest-stats within 10 s: {stats}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if let Some(map) = stats["stats"].as_object() {
        for (name, value) in map {
            println!("   {name:<28} {value}");
        }
    }

    println!("== the guest-side view: /sys/kernel/debug/virtio_balloon_rs/{dev}/status");
    let status = vm.sh_ok(&format!(
        "cat /sys/kernel/debug/virtio_balloon_rs/{dev}/status"
    ))?;
    for line in status.lines() {
        println!("   {line}");
    }

    println!("== inflate to 1024 MiB, then rmmod with the balloon full");
    vm.qmp().balloon_and_wait(1024 * MIB, STEP_TIMEOUT)?;
    row(&mut vm, start, 1024)?;
    vm.rmmod(Driver::Rs.module_name())?;
    let after = vm.meminfo("MemTotal")?;
    let actual = vm.qmp().query_balloon()? / MIB;
    println!(
        "   after rmmod: MemTotal {after} kB (at load: {memtotal} kB), host actual {actual} MiB"
    );
    for line in vm.dmesg()?.lines().filter(|l| l.contains("balloon empty")) {
        println!("   dmesg: {}", line.trim());
    }
    if after != memtotal || actual != GUEST_MIB {
        bail!("memory did not all come back");
    }
    vm.check_clean()?;
    println!("== everything came back; console clean");
    vm.shutdown()
}
