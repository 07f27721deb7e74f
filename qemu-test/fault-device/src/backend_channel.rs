// SPDX-License-Identifier: GPL-2.0

//! The backend request channel (`VHOST_USER_SET_BACKEND_REQ_FD`), used for
//! the one message the `vhost` crate cannot send:
//! `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`, which makes QEMU raise a config
//! change interrupt in the guest.
//!
//! `vhost` wraps the channel's socket in a `Backend` that keeps it private,
//! so the socket is found by what it is: the one unix socket of this
//! process whose two ends are unnamed (QEMU makes it with `socketpair`;
//! every other unix socket here is bound to or accepted from a path).

use std::fs;
use std::io::Write;
use std::mem;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;

use anyhow::anyhow;
use anyhow::Context;
use anyhow::Result;

/// `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`.
const BACKEND_CONFIG_CHANGE_MSG: u32 = 2;
/// The vhost-user header's version bits.
const VHOST_USER_VERSION: u32 = 0x1;

/// The backend request channel: a duplicate of the socket QEMU sent.
#[derive(Debug)]
pub struct BackendChannel {
    socket: UnixStream,
}

impl BackendChannel {
    /// Finds the channel QEMU just sent (the newest unnamed socket pair end).
    pub fn find() -> Result<Self> {
        let mut newest = None;
        for entry in fs::read_dir("/proc/self/fd")? {
            let Ok(fd) = entry?.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if is_unnamed_unix_socket(fd) && newest.is_none_or(|n| fd > n) {
                newest = Some(fd);
            }
        }
        let fd = newest.ok_or_else(|| anyhow!("no socket pair end among this process's fds"))?;
        // SAFETY: `fd` is open (just listed) and stays open while borrowed:
        // vhost's `Backend` that owns it is alive during this call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let owned = borrowed
            .try_clone_to_owned()
            .context("dup of the backend channel")?;
        Ok(BackendChannel {
            socket: UnixStream::from(owned),
        })
    }

    /// A second handle on the same channel.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(BackendChannel {
            socket: self.socket.try_clone()?,
        })
    }

    /// Sends `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG` (no reply asked).
    pub fn config_changed(&mut self) -> Result<()> {
        let mut message = [0u8; 12];
        message[0..4].copy_from_slice(&BACKEND_CONFIG_CHANGE_MSG.to_le_bytes());
        message[4..8].copy_from_slice(&VHOST_USER_VERSION.to_le_bytes());
        self.socket
            .write_all(&message)
            .context("writing CONFIG_CHANGE_MSG on the backend channel")
    }
}

/// Whether `fd` is a unix socket with no name at either end.
fn is_unnamed_unix_socket(fd: i32) -> bool {
    let unnamed = |peer: bool| {
        // SAFETY: sockaddr_un is plain data; the kernel fills at most `len`.
        let mut address: libc::sockaddr_un = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let pointer = (&raw mut address).cast::<libc::sockaddr>();
        // SAFETY: `pointer` and `len` describe `address`; a bad fd fails.
        let rc = unsafe {
            if peer {
                libc::getpeername(fd, pointer, &mut len)
            } else {
                libc::getsockname(fd, pointer, &mut len)
            }
        };
        rc == 0
            && address.sun_family == libc::AF_UNIX as libc::sa_family_t
            && len as usize <= mem::size_of::<libc::sa_family_t>()
    };
    unnamed(false) && unnamed(true)
}
