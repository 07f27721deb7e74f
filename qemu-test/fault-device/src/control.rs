// SPDX-License-Identifier: GPL-2.0

//! The control socket: one-line commands from a test, one-line answers
//! (`ok ...` or `err ...`). QMP's `balloon` does not reach a vhost-user
//! device, so targets, stats requests and faults come this way.

use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::os::unix::net::UnixStream;
use std::thread;

use anyhow::anyhow;
use anyhow::bail;
use anyhow::Context;
use anyhow::Result;

use crate::balloon::Balloon;
use crate::balloon::CMD_ID_DONE;
use crate::balloon::CMD_ID_STOP;
use crate::faults::Fault;
use crate::faults::Role;
use crate::faults::FAULT_HELP;

/// The commands, for `help` and `--help`.
pub const COMMANDS_HELP: &str = "\
Control socket commands (one per line; the answer is one line, `ok ...`
or `err ...`):
  target PAGES        set num_pages (any u32, in 4 KiB pages), config change
  config              num_pages, actual, cmd_id and poison_val
  counters            every counter as key=value (pages inflated/deflated/
                      punched, balloon_pages the host holds, buffers seen/
                      returned/dropped/held/late per queue, ...)
  ram                 bytes allocated in guest RAM's memfd on the host
  stats               request stats (return the held stats buffer)
  last-stats          the last stats received: received=N TAG=VALUE...
  stats-storm N       return the held stats buffer and the next N at once
  config-storm N      send N config change messages back to back
  hint-start          a new free page hint command id (>= 0x80000000)
  hint-stop           cmd_id = STOP (0); hint-done: cmd_id = DONE (1)
  cmd-id N            cmd_id = N (any u32), config change
  fault SPEC          set a fault (see below); fault clear QUEUE
  release QUEUE       return every buffer held on QUEUE
  help                this text";

/// Serves the control socket at `listener` for ever, one thread per client.
pub fn serve(listener: UnixListener, balloon: Balloon) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let balloon = balloon.clone();
        thread::spawn(move || {
            if let Err(e) = client(stream, &balloon) {
                eprintln!("fault-device: control client: {e:#}");
            }
        });
    }
}

/// Answers one client's commands until it hangs up.
fn client(stream: UnixStream, balloon: &Balloon) -> Result<()> {
    let mut writer = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let answer = match command(balloon, line.trim()) {
            Ok(text) if text.is_empty() => "ok".to_string(),
            Ok(text) => format!("ok {text}"),
            Err(e) => format!("err {e:#}"),
        };
        writeln!(writer, "{}", answer.replace('\n', " | "))?;
    }
    Ok(())
}

/// Runs one command; the text after `ok`.
fn command(balloon: &Balloon, line: &str) -> Result<String> {
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or("");
    let mut number = || -> Result<u64> {
        let word = words
            .next()
            .ok_or_else(|| anyhow!("{name}: a number is missing"))?;
        parse_number(word)
    };
    Ok(match name {
        "target" => {
            let pages = u32::try_from(number()?).context("target: at most 2^32-1")?;
            balloon.set_target(pages)?;
            String::new()
        }
        "config" => balloon.lock().config_line(),
        "counters" => balloon.lock().counters(),
        "ram" => balloon.ram_allocated()?.to_string(),
        "stats" => balloon.request_stats()?.to_string(),
        "last-stats" => balloon.lock().stats_line(),
        "stats-storm" => balloon.stats_storm(number()?)?.to_string(),
        "config-storm" => {
            balloon.config_changed(number()?)?;
            String::new()
        }
        "hint-start" => balloon.start_hint()?.to_string(),
        "hint-stop" => {
            balloon.set_cmd_id(CMD_ID_STOP)?;
            String::new()
        }
        "hint-done" => {
            balloon.set_cmd_id(CMD_ID_DONE)?;
            String::new()
        }
        "cmd-id" => {
            balloon.set_cmd_id(u32::try_from(number()?).context("cmd-id: at most 2^32-1")?)?;
            String::new()
        }
        "fault" => {
            let spec = words.next().ok_or_else(|| anyhow!("fault: SPEC missing"))?;
            if spec == "clear" {
                let role: Role = words
                    .next()
                    .ok_or_else(|| anyhow!("fault clear: QUEUE missing"))?
                    .parse()?;
                balloon.set_fault(role, None);
            } else {
                let fault: Fault = spec.parse()?;
                balloon.set_fault(fault.role, Some(fault));
            }
            String::new()
        }
        "release" => {
            let role: Role = words
                .next()
                .ok_or_else(|| anyhow!("release: QUEUE missing"))?
                .parse()?;
            balloon.release(role)?.to_string()
        }
        "help" => format!("{COMMANDS_HELP}\n{FAULT_HELP}"),
        "" => bail!("empty command"),
        _ => bail!("unknown command {name:?} (help lists them)"),
    })
}

/// A decimal or 0x-prefixed hexadecimal number.
fn parse_number(word: &str) -> Result<u64> {
    match word.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => word.parse(),
    }
    .with_context(|| format!("{word:?} is not a number"))
}
