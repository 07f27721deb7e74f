use qemu_test::*;
use std::time::{Duration, Instant};
#[test]
fn panic_fast() {
    let mut vm = Vm::boot(VmConfig::new("scratch-panic").rs_module(false)).unwrap();
    let t = Instant::now();
    let r = vm.run("echo c > /proc/sysrq-trigger", Duration::from_secs(60));
    println!(
        "PANIC RESULT after {:?}: {}",
        t.elapsed(),
        r.unwrap_err()
            .0
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let log = vm.console_log();
    println!(
        "CHECK: {:?}",
        check_clean_console(&log)
            .err()
            .map(|e| e.lines().take(3).collect::<Vec<_>>().join("|"))
    );
}
#[test]
fn timeout() {
    let mut vm = Vm::boot(VmConfig::new("scratch-timeout").rs_module(false)).unwrap();
    let t = Instant::now();
    let r = vm.run("sleep 5", Duration::from_secs(1));
    println!(
        "TIMEOUT RESULT after {:?}: {}",
        t.elapsed(),
        r.unwrap_err().0.lines().next().unwrap()
    );
    let t = Instant::now();
    drop(vm);
    println!("drop took {:?}", t.elapsed());
}
#[test]
#[should_panic(expected = "boom")]
fn panicking_drop() {
    let _vm = Vm::boot(VmConfig::new("scratch-drop").rs_module(false)).unwrap();
    panic!("boom");
}
