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
//! The workspace's second `unsafe` block lives here: borrowing a descriptor by number.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};

use socket2::SockRef;

/// Sets `TCP_NODELAY` on the process's listening TCP socket bound to `addr`. Returns whether
/// one was found.
pub fn set_on_listener(addr: SocketAddr) -> io::Result<bool> {
    let mut found = false;
    each_socket(|socket| {
        if socket.is_listener().unwrap_or(false) && local(socket) == Some(addr) {
            socket.set_tcp_nodelay(true)?;
            found = true;
        }
        Ok(())
    })?;
    Ok(found)
}

/// Whether the process's TCP connection from `peer` (accepted by one of its listeners) has
/// `TCP_NODELAY`; `None` if there is no such connection.
pub fn of_accepted(peer: SocketAddr) -> io::Result<Option<bool>> {
    let mut nodelay = None;
    each_socket(|socket| {
        if socket.peer_addr().ok().and_then(|a| a.as_socket()) == Some(peer) {
            nodelay = Some(socket.tcp_nodelay()?);
        }
        Ok(())
    })?;
    Ok(nodelay)
}

fn local(socket: &SockRef<'_>) -> Option<SocketAddr> {
    socket.local_addr().ok()?.as_socket()
}

/// Calls `visit` with each socket descriptor the process has open.
fn each_socket(mut visit: impl FnMut(&SockRef<'_>) -> io::Result<()>) -> io::Result<()> {
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
        // SAFETY: `fd` was open a moment ago. If another thread closed it since, the calls
        // below fail with EBADF; if the number was reused meanwhile, they act on that socket,
        // which is only changed when it is a TCP listener bound to the broker's address, that
        // is the broker's (two listeners cannot share an address without SO_REUSEPORT, which
        // neither the bridge nor rumqttd sets). The borrow does not outlive this iteration and
        // nothing here closes the descriptor.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        visit(&SockRef::from(&fd))?;
    }
    Ok(())
}
