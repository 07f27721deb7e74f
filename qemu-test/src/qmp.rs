// SPDX-License-Identifier: GPL-2.0

//! The QMP connection to a test VM's QEMU: the `qapi` crate's synchronous
//! client with its typed commands, plus timeouts, a transcript and the
//! balloon helpers the tests use.
//!
//! Every message in both directions goes to a transcript file; the
//! asynchronous events (`BALLOON_CHANGE`, `DEVICE_DELETED`, ...) read while
//! waiting for replies are kept.

use std::fs::File;
use std::io::BufRead;
use std::io::BufReader;
use std::io::ErrorKind;
use std::io::Read;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::anyhow;
use anyhow::bail;
use anyhow::Context;
use qapi::qmp;
use qapi::ExecuteError;
use serde_json::Value;

use crate::Result;

pub use qapi::qmp::Event;

/// How long one QMP command may take before the client gives up.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`Qmp::wait_actual`] polls `query-balloon`.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// QOM path of the balloon device (`-device virtio-balloon-pci,id=balloon0`,
/// or `virtio-balloon-device` on microvm).
pub const BALLOON_QOM_PATH: &str = "/machine/peripheral/balloon0";

/// The socket, as the `qapi` client reads and writes it.
type Client = qapi::Qmp<qapi::Stream<BufReader<Logged>, Logged>>;

/// A QMP connection in command mode.
pub struct Qmp {
    client: Client,
    timeout: Duration,
    events: Vec<Event>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("timeout", &self.timeout)
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Takes a connected stream, reads the greeting and leaves negotiation
    /// mode; every message is copied to `transcript`.
    pub fn handshake(stream: UnixStream, transcript: Option<File>) -> Result<Self> {
        let timeout = crate::scaled(COMMAND_TIMEOUT);
        // A read that waits longer fails: the client then reports a timeout.
        stream
            .set_read_timeout(Some(timeout))
            .context("setting the QMP read timeout")?;
        let transcript = Arc::new(Transcript {
            file: Mutex::new(transcript),
            started: Instant::now(),
        });
        let reader = Logged::new(&stream, "<-", &transcript)?;
        let writer = Logged::new(&stream, "->", &transcript)?;
        let mut client = qapi::Qmp::new(qapi::Stream::new(BufReader::new(reader), writer));
        // The client panics on a connection closed before the greeting.
        let greeting = client.inner_mut().fill_buf();
        if greeting.map_or(true, |bytes| bytes.is_empty()) {
            bail!("QMP: QEMU closed the connection before its greeting");
        }
        client
            .handshake()
            .map_err(|e| command_error("qmp_capabilities", timeout, e))?;
        Ok(Self {
            client,
            timeout,
            events: Vec::new(),
        })
    }

    /// Runs a command (`qapi::qmp::query_status {}`, ...) and returns its
    /// reply.
    ///
    /// Events read while waiting are kept (see [`Qmp::events`]); a QMP error
    /// reply becomes an error with its class and description.
    pub fn execute<C: qapi::Command>(&mut self, command: &C) -> Result<C::Ok> {
        let reply = self.client.execute(command);
        self.events.extend(self.client.events());
        reply.map_err(|e| command_error(C::NAME, self.timeout, e))
    }

    /// Asks for a guest size of `bytes` (QMP `balloon`: the wanted guest
    /// memory, not the balloon size).
    pub fn balloon(&mut self, bytes: u64) -> Result<()> {
        let value = i64::try_from(bytes).context("balloon target")?;
        self.execute(&qmp::balloon { value }).map(drop)
    }

    /// Returns `actual` from `query-balloon`: guest RAM minus the balloon, in bytes.
    pub fn query_balloon(&mut self) -> Result<u64> {
        let reply = self.execute(&qmp::query_balloon {})?;
        u64::try_from(reply.actual).with_context(|| format!("query-balloon: actual {reply:?}"))
    }

    /// Sets a QOM property (`qom-set`).
    pub fn qom_set(&mut self, path: &str, property: &str, value: Value) -> Result<()> {
        self.execute(&qmp::qom_set {
            path: path.to_string(),
            property: property.to_string(),
            value,
        })
        .map(drop)
    }

    /// Reads a QOM property (`qom-get`).
    pub fn qom_get(&mut self, path: &str, property: &str) -> Result<Value> {
        self.execute(&qmp::qom_get {
            path: path.to_string(),
            property: property.to_string(),
        })
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
}

/// Says why `command` failed: QEMU's error class and description, no reply
/// in time, or the connection.
fn command_error(command: &str, timeout: Duration, error: ExecuteError) -> anyhow::Error {
    match error {
        ExecuteError::Qapi(e) => anyhow!("QMP {command} failed: {:?}: {}", e.class, e.desc),
        ExecuteError::Io(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            anyhow!("QMP {command}: no reply within {timeout:?}")
        }
        ExecuteError::Io(e) => anyhow!("QMP {command}: {e}"),
    }
}

/// The transcript file and the time its lines count from.
#[derive(Debug)]
struct Transcript {
    file: Mutex<Option<File>>,
    started: Instant,
}

/// One direction of the QMP socket, copying each complete line to the
/// transcript (the `qapi` client writes a command in many small pieces).
#[derive(Debug)]
struct Logged {
    stream: UnixStream,
    direction: &'static str,
    line: Vec<u8>,
    transcript: Arc<Transcript>,
}

impl Logged {
    fn new(
        stream: &UnixStream,
        direction: &'static str,
        transcript: &Arc<Transcript>,
    ) -> Result<Self> {
        Ok(Self {
            stream: stream.try_clone().context("cloning the QMP socket")?,
            direction,
            line: Vec::new(),
            transcript: Arc::clone(transcript),
        })
    }

    /// Adds `bytes` to the current line; logs each line that ends.
    fn note(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let at = self.transcript.started.elapsed().as_secs_f64();
            let text = String::from_utf8_lossy(&self.line);
            if let Ok(mut file) = self.transcript.file.lock() {
                if let Some(file) = file.as_mut() {
                    // The transcript is a debugging aid: losing a line is not an error.
                    let _ = writeln!(file, "[{at:10.3}] {} {}", self.direction, text.trim());
                }
            }
            self.line.clear();
        }
    }
}

impl Read for Logged {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let count = self.stream.read(buf)?;
        self.note(&buf[..count]);
        Ok(count)
    }
}

impl Write for Logged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.note(buf);
        self.stream.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}
