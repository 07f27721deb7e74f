// SPDX-License-Identifier: GPL-2.0

//! The marker protocol of the guest's test shell: what is sent for one
//! command, and how its output and exit status are found in what the shell
//! printed. [`crate::Vm`] and [`crate::libvirt::Domain`] both speak it.

use crate::serial::find_bytes;
use crate::Result;
use anyhow::anyhow;

/// One command for the test shell, with its begin and end markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    command: String,
    begin: String,
    done: String,
    script: String,
}

impl ShellCommand {
    /// Wraps `command` as the shell's `id`-th command.
    ///
    /// It runs as `{ command; } </dev/null` between two echoed markers; the
    /// markers are split by quotes in what is sent, so an echo of the input
    /// could never look like them.
    pub fn new(id: u64, command: &str) -> Self {
        Self {
            command: command.to_string(),
            begin: format!("@@BEGIN_{id}@@\n"),
            done: format!("@@DONE_{id} "),
            script: format!(
                "echo '@@BEG''IN_{id}@@'; {{ {command}\n}} </dev/null; echo \"@@DO\"\"NE_{id} $?\"\n"
            ),
        }
    }

    /// The bytes to write to the shell.
    pub fn script(&self) -> &[u8] {
        self.script.as_bytes()
    }

    /// Finds the command's output and exit status in `data`, searching from
    /// `from`: `(output, status text, where the next search starts)`.
    pub fn find(&self, data: &[u8], from: usize) -> Option<(String, String, usize)> {
        let start = find_bytes(data, self.begin.as_bytes(), from)? + self.begin.len();
        let end = find_bytes(data, self.done.as_bytes(), start)?;
        let code_start = end + self.done.len();
        let code_end = find_bytes(data, b"\n", code_start)?;
        let output = String::from_utf8_lossy(&data[start..end]).into_owned();
        let code = String::from_utf8_lossy(&data[code_start..code_end]).into_owned();
        Some((output, code, code_end + 1))
    }

    /// Parses the exit status text [`ShellCommand::find`] returned.
    pub fn exit_code(&self, text: &str) -> Result<i32> {
        text.trim()
            .parse()
            .map_err(|_| anyhow!("guest command `{}`: bad exit status {text:?}", self.command))
    }
}

/// The command that prints `/proc/meminfo` after folding the per-CPU vmstat
/// deltas (`/proc/sys/vm/stat_refresh`): without that, counters such as
/// `Balloon:` lag by a few pages per CPU for up to a second.
pub const MEMINFO: &str = "echo 1 >/proc/sys/vm/stat_refresh 2>/dev/null; cat /proc/meminfo";

/// The output of `command` if it exited with 0, else an error with both.
pub fn output_if_ok(command: &str, (code, output): (i32, String)) -> Result<String> {
    if code == 0 {
        Ok(output)
    } else {
        Err(anyhow!(
            "guest command `{command}` exited with {code}; output:\n{output}"
        ))
    }
}

/// Finds `field` in `/proc/meminfo` text and returns its value in kB.
pub fn parse_meminfo(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name.trim() != field {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Field `field` (in kB) of a `/proc/meminfo` text.
pub fn meminfo_field(meminfo: &str, field: &str) -> Result<u64> {
    parse_meminfo(meminfo, field).ok_or_else(|| anyhow!("/proc/meminfo has no {field}:\n{meminfo}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_parse() {
        let text =
            "MemTotal:        2052964 kB\nMemFree:         1990000 kB\nHugePages_Total:       0\n";
        assert_eq!(parse_meminfo(text, "MemTotal"), Some(2_052_964));
        assert_eq!(parse_meminfo(text, "MemFree"), Some(1_990_000));
        assert_eq!(parse_meminfo(text, "HugePages_Total"), Some(0));
        assert_eq!(parse_meminfo(text, "Mem"), None);
    }

    #[test]
    fn output_and_status_are_found_after_the_cursor() {
        let command = ShellCommand::new(7, "cat /x");
        let printed = b"old @@BEGIN_7@@\nnoise\n@@BEGIN_7@@\nhello\n@@DONE_7 3\nnext";
        let (output, code, next) = command.find(printed, 10).expect("found");
        assert_eq!(output, "hello\n");
        assert_eq!(command.exit_code(&code).expect("a number"), 3);
        assert_eq!(&printed[next..], b"next");
        assert!(command.find(b"@@BEGIN_7@@\nhalf", 0).is_none());
        assert!(!String::from_utf8_lossy(command.script()).contains("@@BEGIN_7@@"));
    }
}
