//! What the `openssl` crate does not wrap: the DTLS timer and the stateless cookie exchange.
//!
//! Most of the workspace's `unsafe` code (the rest is one line in `broker::nodelay`), kept in
//! this one file so that it can be audited on its own: each `unsafe` block says why it is
//! sound.
#![allow(unsafe_code)]

use std::os::raw::{c_int, c_long, c_void};
use std::time::Duration;

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;

// From OpenSSL's ssl.h: DTLSv1_get_timeout and DTLSv1_handle_timeout are macros over
// SSL_ctrl with these commands.
const DTLS_CTRL_GET_TIMEOUT: c_int = 73;
const DTLS_CTRL_HANDLE_TIMEOUT: c_int = 74;

/// OpenSSL's opaque `BIO_ADDR`.
#[repr(C)]
struct BioAddr {
    _opaque: [u8; 0],
}

// Declared in OpenSSL's ssl.h and bio.h; libssl and libcrypto are linked by openssl-sys.
unsafe extern "C" {
    fn DTLSv1_listen(ssl: *mut openssl_sys::SSL, client: *mut BioAddr) -> c_int;
    fn BIO_ADDR_new() -> *mut BioAddr;
    fn BIO_ADDR_free(addr: *mut BioAddr);
}

/// How long until OpenSSL wants [`handle_timeout`] called (a flight to retransmit), if
/// a timer runs.
pub fn timeout(ssl: &SslRef) -> Option<Duration> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: `ssl` is a live SSL object (borrowed for the call); DTLS_CTRL_GET_TIMEOUT
    // writes one `struct timeval` through the pointer, which points at `tv`.
    let running = unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_GET_TIMEOUT,
            0,
            (&raw mut tv).cast::<c_void>(),
        )
    };
    (running > 0).then(|| {
        Duration::from_secs(tv.tv_sec.max(0) as u64)
            + Duration::from_micros(tv.tv_usec.max(0) as u64)
    })
}

/// Lets OpenSSL retransmit its last flight if the timer expired. `false` when it gave up
/// (too many retransmissions).
pub fn handle_timeout(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is a live SSL object; DTLS_CTRL_HANDLE_TIMEOUT takes no argument.
    let r = unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_HANDLE_TIMEOUT,
            0 as c_long,
            std::ptr::null_mut(),
        )
    };
    r >= 0
}

/// What [`listen`] made of the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A ClientHello with a valid cookie: continue with `SSL_accept`.
    Verified,
    /// Answered (HelloVerifyRequest written to the BIO) or ignored; nothing kept.
    NotYet,
    /// OpenSSL failed (malformed input among others).
    Failed,
}

/// `DTLSv1_listen` on the datagram(s) queued in `ssl`'s BIO: answers a ClientHello without
/// a valid cookie with a HelloVerifyRequest (written to the BIO), keeping no state, and
/// says [`Listen::Verified`] once a ClientHello carries a valid cookie: `ssl` is then
/// ready for `SSL_accept` to continue that handshake.
pub fn listen(ssl: &SslRef) -> Listen {
    // SAFETY: BIO_ADDR_new returns an owned, zeroed address or null (checked); it is
    // freed below on every path. `ssl` is a live SSL object whose BIOs are set (the
    // `SslStream` that owns it installed them).
    unsafe {
        let addr = BIO_ADDR_new();
        if addr.is_null() {
            return Listen::Failed;
        }
        let r = DTLSv1_listen(ssl.as_ptr(), addr);
        BIO_ADDR_free(addr);
        match r {
            1 => Listen::Verified,
            0 => Listen::NotYet,
            _ => Listen::Failed,
        }
    }
}
