// SPDX-License-Identifier: GPL-2.0

//! A minimal QMP client: JSON lines over a Unix socket, with timeouts.
//!
//! It reads the greeting, negotiates `qmp_capabilities`, runs commands and
//! keeps the asynchronous events (`BALLOON_CHANGE`, ...) it meets on the way.
//! Every message in both directions goes to a transcript file.

use std::fs::File;
use std::io::BufRead;
use std::io::BufReader;
use std::io::ErrorKind;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;
use std::time::Instant;

use serde_json::json;
use serde_json::Value;

use crate::Result;
use anyhow::anyhow;
use anyhow::bail;
use anyhow::Context;

/// How long one QMP command may take before the client gives up.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`Qmp::wait_actual`] polls `query-balloon`.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// QOM path of the balloon device (`-device virtio-balloon-pci,id=balloon0`).
pub const BALLOON_QOM_PATH: &str = "/machine/peripheral/balloon0";

/// An asynchronous QMP event, with the time the client read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Time since the client was created.
    pub at: Duration,
    /// The event name, e.g. `BALLOON_CHANGE`.
    pub name: String,
    /// The whole event object.
    pub json: Value,
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    /// Bytes of a line whose end has not arrived yet.
    pending: Vec<u8>,
    transcript: Option<File>,
    started: Instant,
    next_id: u64,
    events: Vec<Event>,
}

impl Qmp {
    /// Connects to a QMP server socket, retrying until `timeout`.
    pub fn connect(
        path: &std::path::Path,
        timeout: Duration,
        transcript: Option<File>,
    ) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => return Self::handshake(stream, transcript),
                Err(e) if Instant::now() >= deadline => {
                    bail!("connecting to QMP at {}: {e}", path.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Takes a connected stream, reads the greeting and leaves negotiation mode.
    pub fn handshake(stream: UnixStream, transcript: Option<File>) -> Result<Self> {
        let writer = stream.try_clone().context("cloning the QMP socket")?;
        let mut qmp = Self {
            writer,
            reader: BufReader::new(stream),
            pending: Vec::new(),
            transcript,
            started: Instant::now(),
            next_id: 1,
            events: Vec::new(),
        };
        let deadline = Instant::now() + crate::scaled(COMMAND_TIMEOUT);
        let greeting = qmp.read_message(deadline)?;
        if greeting.get("QMP").is_none() {
            bail!("QMP greeting expected, got {greeting}");
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value.
    ///
    /// Events read while waiting are kept (see [`Qmp::events`]); a QMP error
    /// reply becomes an error with its class and description.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let line = request.to_string();
        self.log("->", &line);
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("sending QMP {command}"))?;
        let deadline = Instant::now() + crate::scaled(COMMAND_TIMEOUT);
        loop {
            let message = self.read_message(deadline)?;
            if message.get("event").is_some() {
                continue;
            }
            if message.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                bail!(
                    "QMP {command} failed: {}: {}",
                    error["class"].as_str().unwrap_or("?"),
                    error["desc"].as_str().unwrap_or("?")
                );
            }
            bail!("QMP {command}: unexpected reply {message}");
        }
    }

    /// Asks for a guest size of `bytes` (QMP `balloon`: the wanted guest
    /// memory, not the balloon size).
    pub fn balloon(&mut self, bytes: u64) -> Result<()> {
        self.execute("balloon", Some(json!({ "value": bytes })))
            .map(|_| ())
    }

    /// Returns `actual` from `query-balloon`: guest RAM minus the balloon, in bytes.
    pub fn query_balloon(&mut self) -> Result<u64> {
        let reply = self.execute("query-balloon", None)?;
        reply["actual"]
            .as_u64()
            .ok_or_else(|| anyhow!("query-balloon: no actual in {reply}"))
    }

    /// Sets a QOM property (`qom-set`).
    pub fn qom_set(&mut self, path: &str, property: &str, value: Value) -> Result<()> {
        self.execute(
            "qom-set",
            Some(json!({ "path": path, "property": property, "value": value })),
        )
        .map(|_| ())
    }

    /// Reads a QOM property (`qom-get`).
    pub fn qom_get(&mut self, path: &str, property: &str) -> Result<Value> {
        self.execute(
            "qom-get",
            Some(json!({ "path": path, "property": property })),
        )
    }

    /// Polls `query-balloon` every 20 ms until `actual` equals `target`
    /// bytes; returns the time that took.
    ///
    /// Fails after `timeout` with the last `actual` seen.
    pub fn wait_actual(&mut self, target: u64, timeout: Duration) -> Result<Duration> {
        self.wait_actual_since(Instant::now(), target, timeout)
    }

    /// Asks for a guest size of `target` bytes and waits until `actual` gets
    /// there; the time is measured from just before the request.
    pub fn balloon_and_wait(&mut self, target: u64, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        self.balloon(target)?;
        self.wait_actual_since(start, target, timeout)
    }

    fn wait_actual_since(
        &mut self,
        start: Instant,
        target: u64,
        timeout: Duration,
    ) -> Result<Duration> {
        let deadline = start + timeout;
        loop {
            let actual = self.query_balloon()?;
            if actual == target {
                return Ok(start.elapsed());
            }
            if Instant::now() >= deadline {
                bail!(
                    "balloon actual did not reach {target} bytes ({} MiB) in {timeout:?}: last actual {actual} bytes ({} MiB)",
                    target / crate::MIB,
                    actual / crate::MIB
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The asynchronous events read so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Removes and returns the events read so far.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Reads one JSON message, recording it if it is an event.
    fn read_message(&mut self, deadline: Instant) -> Result<Value> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                bail!("QMP: no reply before the timeout");
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.reader
                .get_ref()
                .set_read_timeout(Some(wait))
                .context("setting the QMP read timeout")?;
            match self.reader.read_until(b'\n', &mut self.pending) {
                Ok(0) => bail!("QMP: connection closed by QEMU"),
                Ok(_) if self.pending.ends_with(b"\n") => {}
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => bail!("QMP: reading: {e}"),
            }
            let line = String::from_utf8_lossy(&self.pending).trim().to_string();
            self.pending.clear();
            if line.is_empty() {
                continue;
            }
            self.log("<-", &line);
            let message: Value =
                serde_json::from_str(&line).with_context(|| format!("QMP: bad JSON {line:?}"))?;
            if let Some(name) = message.get("event").and_then(Value::as_str) {
                self.events.push(Event {
                    at: self.started.elapsed(),
                    name: name.to_string(),
                    json: message.clone(),
                });
            }
            return Ok(message);
        }
    }

    fn log(&mut self, direction: &str, line: &str) {
        let at = self.started.elapsed().as_secs_f64();
        if let Some(file) = self.transcript.as_mut() {
            // The transcript is a debugging aid: losing a line is not an error.
            let _ = writeln!(file, "[{at:10.3}] {direction} {line}");
        }
    }
}
