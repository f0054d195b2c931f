//! `TCP_NODELAY` for the embedded broker's connections.
//!
//! rumqttd accepts its connections without `TCP_NODELAY`, so a PUBACK or a small publication it
//! writes waits behind Nagle's algorithm for the client's delayed ACK (up to 40 ms on Linux),
//! which was most of a task's submit-to-`completed` time at light load (edge-bench phase 2b:
//! BENCHMARKS.md has the figures before and after). rumqttd has no setting for it and binds
//! its listener on its own thread. Linux copies `TCP_NODELAY` from a listening socket to every
//! connection it accepts, so the bridge finds the broker's listener among the process's
//! descriptors and sets the option there, once, before the first client connects.
//!
//! The only `unsafe` of the bridge is here: borrowing a descriptor by number, just
//! long enough to duplicate it.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use socket2::SockRef;

/// Sets `TCP_NODELAY` on the process's listening TCP socket bound to `addr`. Returns whether
/// one was found.
pub fn set_on_listener(addr: SocketAddr) -> io::Result<bool> {
    let mut found = false;
    for fd in sockets()? {
        let socket = SockRef::from(&fd);
        if socket.is_listener().unwrap_or(false) && local(&socket) == Some(addr) {
            socket.set_tcp_nodelay(true)?;
            found = true;
        }
    }
    Ok(found)
}

/// Whether the connection from `peer` that the process accepted on `listener`'s address has
/// `TCP_NODELAY`; `None` if there is no such connection.
pub fn of_accepted(listener: SocketAddr, peer: SocketAddr) -> io::Result<Option<bool>> {
    for fd in sockets()? {
        let socket = SockRef::from(&fd);
        let remote = socket.peer_addr().ok().and_then(|a| a.as_socket());
        if remote == Some(peer) && local(&socket) == Some(listener) {
            return socket.tcp_nodelay().map(Some);
        }
    }
    Ok(None)
}

fn local(socket: &SockRef<'_>) -> Option<SocketAddr> {
    socket.local_addr().ok()?.as_socket()
}

/// A duplicate of each socket descriptor the process has open. Each is checked and changed
/// through its own duplicate, so a descriptor number that another thread closes and reuses
/// meanwhile cannot make the check and the change apply to different sockets.
fn sockets() -> io::Result<Vec<OwnedFd>> {
    let mut sockets = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // The directory's own descriptor and files are skipped by their link target.
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the borrow lives for one `fcntl(F_DUPFD_CLOEXEC)` call, which reads no
        // memory through it. If another thread closed `fd` a moment ago the call fails with
        // EBADF (skipped); if the number was reused, the duplicate is of that newer object,
        // which the callers check (a TCP listener or connection on the broker's address)
        // before they change anything, on the duplicate itself.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Ok(owned) = borrowed.try_clone_to_owned() {
            sockets.push(owned);
        }
    }
    Ok(sockets)
}
