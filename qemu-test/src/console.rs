// SPDX-License-Identifier: GPL-2.0

//! Checks of the guest kernel log: no warning, bug, oops or bad taint.
//!
//! The only taint a test may cause is the one every out-of-tree module
//! causes (`O`, plus `E` for an unsigned module); anything else, and any
//! kernel splat, fails the check. OOM-killer reports can be allowed for the
//! tests that provoke them.

/// Markers of a kernel splat: any line containing one fails the check.
const SPLAT_MARKERS: &[&str] = &[
    "WARNING:",
    "BUG:",
    "kernel BUG at",
    "Oops",
    "Call Trace",
    "Kernel panic",
    "general protection fault",
    "Unable to handle kernel",
    "UBSAN:",
    "soft lockup",
    "hard LOCKUP",
    "detected stalls",
    "blocked for more than",
    "list_add corruption",
    "list_del corruption",
    "Disabling lock debugging due to kernel taint",
    // Printed by /proc/sys/vm/stat_refresh for a counter below zero: an
    // accounting imbalance, e.g. of nr_balloon_pages.
    "vmstat_refresh:",
    // Debug kernels: KASAN, lockdep (most of its reports also start with
    // "WARNING:" or "BUG:"), debugobjects and kmemleak.
    "KASAN:",
    "possible circular locking dependency",
    "possible recursive locking",
    "inconsistent lock state",
    "suspicious RCU usage",
    "ODEBUG:",
    "suspected memory leak",
    "Kernel memory leak detector disabled",
];

/// Taint flags a test may cause: `G` (only GPL modules, shown when there is
/// any taint), `O` (out-of-tree module), `E` (unsigned module).
const ALLOWED_TAINT_FLAGS: &[char] = &['G', 'O', 'E'];

/// Rules for [`ConsoleRules::check`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleRules {
    /// Accepts OOM-killer reports: the lines from `invoked oom-killer` to the
    /// `Killed process` line are not checked for splats (the report carries
    /// a `Call Trace`), but their taint still is. So are the allocation
    /// failure reports of the killed task (from `page allocation failure`
    /// to the `pages reserved` line that ends the memory dump): a victim
    /// that is dying fails its last allocations by design.
    pub allow_oom_kills: bool,
    /// Accepts allocation failure reports (from `page allocation failure`
    /// to the `pages reserved` line), as fault injection provokes them;
    /// implied by `allow_oom_kills`.
    pub allow_allocation_failures: bool,
}

impl ConsoleRules {
    /// The strict rules: no splat and no taint but out-of-tree/unsigned.
    pub fn strict() -> Self {
        Self::default()
    }

    /// Rules that also accept OOM-killer reports.
    pub fn allowing_oom_kills() -> Self {
        Self {
            allow_oom_kills: true,
            allow_allocation_failures: true,
        }
    }

    /// Rules that also accept allocation failure reports (not OOM kills).
    pub fn allowing_allocation_failures() -> Self {
        Self {
            allow_oom_kills: false,
            allow_allocation_failures: true,
        }
    }

    /// Checks a kernel log; the error lists the offending lines.
    pub fn check(&self, log: &str) -> Result<(), String> {
        let mut bad = Vec::new();
        let mut in_oom_report = false;
        for line in log.lines() {
            if (self.allow_oom_kills && line.contains("invoked oom-killer"))
                || (self.allow_allocation_failures && line.contains("page allocation failure"))
            {
                in_oom_report = true;
            }
            let reason = if let Some(flags) = bad_taint(line) {
                Some(format!("taint {flags}"))
            } else if in_oom_report {
                None
            } else {
                line_problem(line)
            };
            if let Some(reason) = reason {
                bad.push(format!("[{reason}] {}", line.trim_end()));
            }
            if in_oom_report
                && (line.contains("Killed process")
                    || line.contains("oom_reaper")
                    || line.contains("pages reserved"))
            {
                in_oom_report = false;
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            let total = bad.len();
            bad.truncate(30);
            Err(format!(
                "kernel log is not clean ({total} bad lines):\n{}",
                bad.join("\n")
            ))
        }
    }
}

/// Checks a kernel log with the strict rules, see [`ConsoleRules::strict`].
///
/// Fails on `WARNING:`, `BUG:`, `Oops`, `Call Trace`, `Kernel panic` and
/// other splats, and on any taint other than `O`/`E`. The error message
/// lists the offending lines.
pub fn check_clean_console(log: &str) -> Result<(), String> {
    ConsoleRules::strict().check(log)
}

/// Says why a line is a problem (not counting taint), if it is one.
fn line_problem(line: &str) -> Option<String> {
    if let Some(marker) = SPLAT_MARKERS.iter().find(|m| line.contains(*m)) {
        return Some((*marker).to_string());
    }
    let taints = line.contains("taints kernel") || line.contains("tainting kernel");
    let allowed_taint =
        line.contains("out-of-tree module") || line.contains("module verification failed");
    if taints && !allowed_taint {
        return Some("taints kernel".to_string());
    }
    None
}

/// Returns the taint flags of a `Tainted:` line if any of them is not allowed.
///
/// Understands both the flag column (`Tainted: G        W  O  7.3.0 #1`) and
/// the verbose form (`Tainted: [W]=WARN, [O]=OOT_MODULE`).
fn bad_taint(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("Tainted:")?;
    let flags: Vec<char> = if rest.contains("]=") {
        rest.split('[')
            .skip(1)
            .filter_map(|part| part.split_once(']').map(|(flag, _)| flag))
            .filter_map(|flag| {
                let mut chars = flag.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Some(c),
                    _ => None,
                }
            })
            .collect()
    } else {
        // The flag column ends where the kernel version (a digit) starts.
        rest.chars()
            .take_while(|c| !c.is_ascii_digit())
            .filter(|c| c.is_ascii_alphabetic())
            .collect()
    };
    if flags.iter().all(|f| ALLOWED_TAINT_FLAGS.contains(f)) {
        None
    } else {
        Some(flags.into_iter().collect())
    }
}

/// Returns the last `count` lines of `text`.
pub fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(count);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &str = "\
[    0.000000] Linux version 7.3.0 (root@host) #1 SMP
[    0.512345] virtio-pci 0000:00:02.0: enabling device (0000 -> 0003)
vbrs-init: file systems mounted
";

    #[test]
    fn clean_boot_passes() {
        assert_eq!(check_clean_console(BOOT), Ok(()));
        assert_eq!(check_clean_console(""), Ok(()));
    }

    #[test]
    fn out_of_tree_taint_is_allowed() {
        let log = format!(
            "{BOOT}[    5.1] virtio_balloon_rs: loading out-of-tree module taints kernel.\n\
             [    5.2] virtio_balloon_rs: module verification failed: signature and/or required key missing - tainting kernel\n\
             [    6.0] CPU: 1 UID: 0 PID: 90 Comm: insmod Tainted: G           OE      7.3.0 #1\n\
             [    6.0] Tainted: [O]=OOT_MODULE, [E]=UNSIGNED_MODULE\n"
        );
        assert_eq!(check_clean_console(&log), Ok(()));
    }

    #[test]
    fn splats_fail() {
        for splat in [
            "[ 9.1] WARNING: CPU: 0 PID: 1 at mm/page_alloc.c:4000 __alloc_pages+0x1/0x2",
            "[ 9.1] BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "[ 9.1] kernel BUG at mm/balloon_compaction.c:42!",
            "[ 9.1] Oops: general protection fault, probably for non-canonical address",
            "[ 9.1] Call Trace:",
            "[ 9.1] Kernel panic - not syncing: System is deadlocked on memory",
            "[ 9.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s!",
            "[ 9.1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            "[ 9.1] BUG: KASAN: slab-use-after-free in balloon_page_enqueue+0x1/0x2",
            "[ 9.1] WARNING: possible circular locking dependency detected",
            "[ 9.1] WARNING: inconsistent lock state",
            "[ 9.1] BUG: sleeping function called from invalid context at mm/page_alloc.c:4000",
            "[ 9.1] ODEBUG: free active (active state 0) object: 0000 object type: work_struct",
            "[ 9.1] kmemleak: 2 new suspected memory leaks (see /sys/kernel/debug/kmemleak)",
        ] {
            let log = format!("{BOOT}{splat}\n");
            let err = check_clean_console(&log).expect_err(splat);
            assert!(err.contains(splat), "{err}");
        }
    }

    #[test]
    fn other_taints_fail() {
        for line in [
            "[ 6.0] CPU: 0 PID: 1 Comm: sh Tainted: G        W  O       7.3.0 #1",
            "[ 6.0] CPU: 0 PID: 1 Comm: sh Tainted: P                  7.3.0 #1",
            "[ 6.0] Tainted: [W]=WARN, [O]=OOT_MODULE",
            "[ 6.0] Tainted: [D]=DIE",
            "[ 6.0] foo: module is from the staging directory, the quality is unknown, you have been warned. taints kernel.",
        ] {
            let log = format!("{BOOT}{line}\n");
            assert!(check_clean_console(&log).is_err(), "{line}");
        }
    }

    #[test]
    fn not_tainted_lines_pass() {
        let log = "[ 6.0] CPU: 0 UID: 0 PID: 1 Comm: sh Not tainted 7.3.0 #1\n";
        // "Not tainted" has no "Tainted:" so the taint check does not apply.
        assert_eq!(check_clean_console(log), Ok(()));
    }

    #[test]
    fn oom_reports_pass_only_when_allowed() {
        let log = format!(
            "{BOOT}[ 20.0] memhog invoked oom-killer: gfp_mask=0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_COMP|__GFP_ZERO), order=0, oom_score_adj=0\n\
             [ 20.0] CPU: 0 UID: 0 PID: 99 Comm: memhog Tainted: G           O       7.3.0 #1\n\
             [ 20.0] Call Trace:\n\
             [ 20.0]  <TASK>\n\
             [ 20.1] Out of memory: Killed process 99 (memhog) total-vm:1050000kB\n"
        );
        assert!(check_clean_console(&log).is_err());
        assert_eq!(ConsoleRules::allowing_oom_kills().check(&log), Ok(()));
        assert!(ConsoleRules::allowing_allocation_failures()
            .check(&log)
            .is_err());
        // A splat after the report still fails.
        let later = format!("{log}[ 30.0] WARNING: CPU: 1 PID: 5 at foo.c:1 bar+0x1/0x2\n");
        assert!(ConsoleRules::allowing_oom_kills().check(&later).is_err());
        // A bad taint inside the report still fails.
        let tainted = log.replace("G           O", "G        W  O");
        assert!(ConsoleRules::allowing_oom_kills().check(&tainted).is_err());
    }

    #[test]
    fn a_dying_victims_allocation_failure_passes_only_when_allowed() {
        let log = format!(
            "{BOOT}[ 13.5] memhog: page allocation failure: order:0, mode:0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_ZERO|__GFP_COMP), nodemask=(null)\n\
             [ 13.5] CPU: 1 UID: 0 PID: 50 Comm: memhog Tainted: G           O        7.3.4 #1\n\
             [ 13.5] Call Trace:\n\
             [ 13.5]  ? warn_alloc+0xe6/0x106\n\
             [ 13.5] Mem-Info:\n\
             [ 13.5] 273152 pages reserved\n"
        );
        assert!(check_clean_console(&log).is_err());
        assert_eq!(ConsoleRules::allowing_oom_kills().check(&log), Ok(()));
        assert_eq!(
            ConsoleRules::allowing_allocation_failures().check(&log),
            Ok(())
        );
        let later = format!("{log}[ 14.0] Call Trace:\n");
        assert!(ConsoleRules::allowing_oom_kills().check(&later).is_err());
    }

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
    }
}
