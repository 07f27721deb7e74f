// SPDX-License-Identifier: GPL-2.0

//! A guest serial port read by a thread into a shared buffer and a log file.
//!
//! Waits on the buffer always have a deadline and end early when QEMU closes
//! the port, so a dead or hung guest can never block a test for ever.

use std::fs::File;
use std::io::ErrorKind;
use std::io::Read;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Instant;

/// Why a wait on a serial port ended without its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// The deadline passed.
    Timeout,
    /// QEMU closed the port (it exited).
    Closed,
}

#[derive(Debug, Default)]
struct State {
    /// Everything read so far, with carriage returns removed.
    data: Vec<u8>,
    /// The port was closed.
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A reader thread that panicked left consistent data: keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// One serial port of the guest, read in the background.
#[derive(Debug)]
pub struct Serial {
    shared: Arc<Shared>,
    log: Arc<Mutex<File>>,
}

impl Serial {
    /// Starts a thread that reads `stream` until it closes, appending to the
    /// buffer and to `log`.
    pub fn spawn(mut stream: UnixStream, log: File, name: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let log = Arc::new(Mutex::new(log));
        let thread_shared = Arc::clone(&shared);
        let thread_log = Arc::clone(&log);
        std::thread::Builder::new()
            .name(format!("serial-{name}"))
            .spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    let count = match stream.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(count) => count,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    let bytes: Vec<u8> = chunk[..count]
                        .iter()
                        .copied()
                        .filter(|&b| b != b'\r')
                        .collect();
                    if let Ok(mut file) = thread_log.lock() {
                        // The log is a debugging aid; the buffer is what counts.
                        let _ = file.write_all(&bytes);
                    }
                    thread_shared.lock().data.extend_from_slice(&bytes);
                    thread_shared.changed.notify_all();
                }
                thread_shared.lock().closed = true;
                thread_shared.changed.notify_all();
            })?;
        Ok(Self { shared, log })
    }

    /// Everything read so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.shared.lock().data).into_owned()
    }

    /// Number of bytes read so far.
    pub fn len(&self) -> usize {
        self.shared.lock().data.len()
    }

    /// Whether nothing has been read yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether QEMU closed the port.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Waits until `check` finds what it looks for in the buffer.
    ///
    /// `check` sees all bytes read so far each time new ones arrive.
    pub fn wait_for<T>(
        &self,
        deadline: Instant,
        mut check: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<T, WaitEnd> {
        let mut state = self.shared.lock();
        loop {
            if let Some(found) = check(&state.data) {
                return Ok(found);
            }
            if state.closed {
                return Err(WaitEnd::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitEnd::Timeout);
            }
            state = match self.shared.changed.wait_timeout(state, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poison) => poison.into_inner().0,
            };
        }
    }

    /// Appends a note (e.g. a command sent) to the port's log file.
    pub fn log_note(&self, note: &str) {
        if let Ok(mut file) = self.log.lock() {
            let _ = file.write_all(note.as_bytes());
        }
    }
}

/// Finds `needle` in `haystack` at or after `from`.
pub fn find_bytes(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > haystack.len() || needle.is_empty() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|pos| pos + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_bytes_respects_start() {
        assert_eq!(find_bytes(b"abcabc", b"bc", 0), Some(1));
        assert_eq!(find_bytes(b"abcabc", b"bc", 2), Some(4));
        assert_eq!(find_bytes(b"abcabc", b"bc", 5), None);
        assert_eq!(find_bytes(b"abc", b"x", 9), None);
    }

    #[test]
    fn waits_see_data_and_close() {
        let (mut ours, theirs) = UnixStream::pair().expect("socket pair");
        let log = tempfile_in_target();
        let serial = Serial::spawn(theirs, log, "test").expect("spawn");
        ours.write_all(b"hello\r\nworld\n").expect("write");
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let at = serial.wait_for(deadline, |data| find_bytes(data, b"world", 0));
        assert_eq!(at, Ok(6));
        assert_eq!(serial.text(), "hello\nworld\n");
        drop(ours);
        let end = serial.wait_for(deadline, |data| find_bytes(data, b"never", 0));
        assert_eq!(end, Err(WaitEnd::Closed));
    }

    fn tempfile_in_target() -> File {
        let dir = crate::target_dir().join("qemu-test");
        std::fs::create_dir_all(&dir).expect("target dir");
        let path = dir.join(format!("serial-test-{}.log", std::process::id()));
        let file = File::create(&path).expect("log file");
        let _ = std::fs::remove_file(&path);
        file
    }
}
