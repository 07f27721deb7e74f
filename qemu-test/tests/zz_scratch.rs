use qemu_test::*;
#[test]
fn scratch() -> Result<()> {
    let mut vm = Vm::boot(VmConfig::new("scratch").rs_module(false))?;
    for cmd in [
        "ls /proc/sys /proc/sys/vm; cat /proc/sys/kernel/tainted",
        "stty -a",
        "printf abc",
        "false",
        "echo err >&2; exit_code=3; (exit 3)",
        "memhog 100 0",
        "ls /sys/kernel/debug",
        "cat /proc/cmdline; uname -a",
    ] {
        let r = vm.run(cmd, std::time::Duration::from_secs(20))?;
        println!("== {cmd} -> {r:?}");
    }
    let t = std::time::Instant::now();
    for _ in 0..20 {
        vm.sh_ok("true")?;
    }
    println!("20 cmds {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let big = vm.sh_ok("cat /proc/kallsyms | head -c 200000")?;
    println!("200k output {:?} {}", t.elapsed(), big.len());
    vm.check_clean()?;
    vm.shutdown()
}
