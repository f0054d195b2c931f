//! The serial device link: a UART (a USB serial adapter, a gateway's own UART) carrying the
//! same framing as plain TCP, one device per port. A cable is the credential: any device id is
//! accepted, as on plain TCP.
//!
//! A port has no connections to accept, so the link opens it once and runs one
//! [`stream::run`] session after another on it, each with a link id of its own. A session
//! starts with the first bytes the device sends: a port with nothing attached stays quiet
//! instead of opening and timing out a session every liveness period. A session that ends
//! (the device went silent, or the bridge closed it) leaves the port open for the next one; a
//! port that fails (end of file or an I/O error: the adapter was unplugged) is closed and
//! reopened, and one that cannot be opened (not there yet) is retried, both after [`REOPEN`]'s
//! delays.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_serial::{
    ClearBuffer, DataBits, ErrorKind, FlowControl, Parity, SerialPort, SerialStream, StopBits,
};

use super::{LinkEvent, LinkId, stream};
use crate::backoff::Backoff;

/// Opens `path` as a raw 8N1 port without flow control at `baud`. Exclusively (TIOCEXCL, which
/// root may override, and an advisory lock): a second opener, another bridge or a terminal
/// program, gets an error instead of half of the bytes. Whatever arrived before is discarded:
/// it belongs to no session of ours.
///
/// The path is handed to the OS as UTF-8 (device paths are ASCII in practice).
pub fn open(path: &Path, baud: u32) -> tokio_serial::Result<SerialStream> {
    let builder = tokio_serial::new(path.to_string_lossy(), baud)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .exclusive(true);
    let port = SerialStream::open(&builder)?;
    port.clear(ClearBuffer::Input)?;
    Ok(port)
}

/// Serves the device on the port at `path` until the core goes away: opens the port (retrying
/// while it cannot be opened), then runs one session after another on it, reopening it when it
/// fails. Link ids follow `base`.
pub async fn serve(path: PathBuf, baud: u32, base: LinkId, core: mpsc::Sender<LinkEvent>) {
    let name = path.display().to_string();
    let mut last_link = base;
    // Failures since the last port that lasted (the attempt number for `REOPEN`).
    let mut failures = 0u32;
    // Why the last attempt to open failed: a reason is logged as a warning once, not at every
    // retry (a port may be missing for days).
    let mut open_error: Option<String> = None;
    loop {
        let port = match open(&path, baud) {
            Ok(port) => port,
            Err(e) => {
                failures = failures_after(failures, None);
                let delay = REOPEN.delay(failures, 0);
                let reason = e.to_string();
                if open_error.as_deref() == Some(reason.as_str()) {
                    tracing::debug!(port = %name, error = %reason, retry_in = ?delay, "serial port still cannot be opened");
                } else if e.kind() == ErrorKind::Io(std::io::ErrorKind::NotFound) {
                    tracing::warn!(port = %name, "serial port does not exist (yet); retrying until it appears (a USB adapter may be plugged in later)");
                } else {
                    tracing::warn!(port = %name, error = %reason, "cannot open the serial port; retrying with backoff");
                }
                open_error = Some(reason);
                if !pause(delay, &core).await {
                    return;
                }
                continue;
            }
        };
        open_error = None;
        tracing::info!(port = %name, baud, "serial port open; waiting for a device");
        let opened = Instant::now();
        let mut port = Port::new(port);
        let failure = loop {
            tokio::select! {
                () = core.closed() => return,
                input = port.wait_for_input() => if let Err(why) = input { break why },
            }
            last_link += 1;
            tracing::debug!(port = %name, link = last_link, "device speaking; session starting");
            let config = device_core::link::Config::default();
            stream::run(
                &mut port,
                last_link,
                name.clone(),
                None,
                core.clone(),
                config,
            )
            .await;
            if core.is_closed() {
                return;
            }
            if let Some(why) = port.failure.take() {
                break why;
            }
        };
        failures = failures_after(failures, Some(opened.elapsed()));
        let delay = REOPEN.delay(failures, 0);
        tracing::warn!(port = %name, reason = %failure, retry_in = ?delay, "serial port failed (device unplugged?); reopening");
        drop(port);
        if !pause(delay, &core).await {
            return;
        }
    }
}

/// Sleeps for `delay`; `false` when the core went away meanwhile (the bridge is stopping).
async fn pause(delay: Duration, core: &mpsc::Sender<LinkEvent>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = core.closed() => false,
    }
}

/// Delays between attempts to open a port: 100 ms doubling to 5 s, so a device plugged in is
/// served within 5 s. No jitter: a port has one opener.
pub const REOPEN: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
    jitter_percent: 0,
};

/// A port open at least this long worked: its failure starts the delays over.
pub const STABLE: Duration = Duration::from_secs(10);

/// The failure count (the attempt number for [`REOPEN`]) after one more failure: of a port
/// that was open for `open_for`, or, for `None`, of an attempt to open it. A port that lasted
/// [`STABLE`] counts as the first failure again. It reads no clock: the caller says how long a
/// port lasted.
pub fn failures_after(failures: u32, open_for: Option<Duration>) -> u32 {
    match open_for {
        Some(lasted) if lasted >= STABLE => 1,
        _ => failures.saturating_add(1),
    }
}

/// A port as the byte-stream driver sees it: the bytes that started a session are read first,
/// a failure of the port itself (not of a session) is remembered, and flushing is immediate.
#[derive(Debug)]
struct Port<S> {
    inner: S,
    /// Received while waiting for a device to speak; read before anything else.
    first: Vec<u8>,
    /// Why the port itself failed (end of file, I/O error): the session ends on it and the
    /// link reopens the port, whereas a session that merely ends leaves the port open.
    failure: Option<PortFailure>,
}

/// Why a port itself failed, not merely a session on it: the link closes and reopens it.
#[derive(Debug, thiserror::Error)]
enum PortFailure {
    /// End of file: a tty reads it only when it hung up.
    #[error("end of file (the port hung up)")]
    HungUp,
    /// Reading failed (an unplugged USB adapter: EIO).
    #[error("read: {0}")]
    Read(#[source] std::io::Error),
    /// Writing failed.
    #[error("write: {0}")]
    Write(#[source] std::io::Error),
    /// A write of some bytes took none.
    #[error("write: the port took no bytes")]
    WroteNothing,
}

impl<S: AsyncRead + Unpin> Port<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            first: Vec::new(),
            failure: None,
        }
    }

    /// Waits until the device sends something (kept for the session to read); `Err(why)`
    /// when the port fails instead. Cancel-safe: bytes read are kept.
    async fn wait_for_input(&mut self) -> Result<(), PortFailure> {
        let mut buf = [0u8; 256];
        while self.first.is_empty() {
            match self.inner.read(&mut buf).await {
                Ok(0) => return Err(PortFailure::HungUp),
                Ok(n) => self.first.extend_from_slice(&buf[..n]),
                Err(e) => return Err(PortFailure::Read(e)),
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Port<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.first.is_empty() {
            let n = this.first.len().min(buf.remaining());
            buf.put_slice(&this.first[..n]);
            this.first.drain(..n);
            return Poll::Ready(Ok(()));
        }
        let wanted = buf.remaining() > 0;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Err(e)) => {
                this.failure = Some(PortFailure::Read(std::io::Error::new(
                    e.kind(),
                    e.to_string(),
                )));
            }
            Poll::Ready(Ok(())) if wanted && buf.filled().len() == before => {
                this.failure = Some(PortFailure::HungUp);
            }
            _ => {}
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Port<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        match &polled {
            Poll::Ready(Err(e)) => {
                this.failure = Some(PortFailure::Write(std::io::Error::new(
                    e.kind(),
                    e.to_string(),
                )));
            }
            Poll::Ready(Ok(0)) if !data.is_empty() => {
                this.failure = Some(PortFailure::WroteNothing);
            }
            _ => {}
        }
        polled
    }

    /// Not the port's flush: a tty's (tcdrain) blocks the thread until the UART has sent
    /// everything, and forever on a pseudo-terminal nobody reads. Written bytes are with the
    /// kernel already.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// A port stays open between sessions: nothing to shut down.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// The delay after one more failure, as `serve` computes it.
    fn next_delay(failures: &mut u32, open_for: Option<Duration>) -> Duration {
        *failures = failures_after(*failures, open_for);
        REOPEN.delay(*failures, 0)
    }

    #[test]
    fn delays_double_from_100_ms_to_5_s() {
        let mut failures = 0;
        let delays: Vec<u64> = (0..9)
            .map(|_| next_delay(&mut failures, None).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000]
        );
        // However long a port stays missing.
        for _ in 0..100 {
            assert_eq!(next_delay(&mut failures, None), REOPEN.max);
        }
        assert_eq!(REOPEN.delay(u32::MAX, u64::MAX), REOPEN.max);
    }

    #[test]
    fn a_port_that_lasted_starts_the_delays_over_and_a_short_lived_one_does_not() {
        let mut failures = 0;
        for _ in 0..4 {
            next_delay(&mut failures, None);
        }
        let short = Some(STABLE - Duration::from_millis(1));
        assert_eq!(
            next_delay(&mut failures, short),
            Duration::from_millis(1_600)
        );
        assert_eq!(next_delay(&mut failures, Some(STABLE)), REOPEN.initial);
        assert_eq!(next_delay(&mut failures, None), Duration::from_millis(200));
    }

    #[tokio::test]
    async fn the_bytes_that_started_a_session_are_read_first() {
        let (inner, mut device) = tokio::io::duplex(64);
        let mut port = Port::new(inner);
        device.write_all(b"hello").await.unwrap();
        port.wait_for_input().await.unwrap();
        device.write_all(b" world").await.unwrap();
        let mut got = [0u8; 3];
        port.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hel");
        let mut rest = Vec::new();
        drop(device);
        port.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"lo world");
        // The end of the bytes is the port's failure, not just a session's end.
        assert!(
            matches!(port.failure, Some(PortFailure::HungUp)),
            "{:?}",
            port.failure
        );
    }

    #[tokio::test]
    async fn a_port_that_ends_while_waiting_for_a_device_fails() {
        let (inner, device) = tokio::io::duplex(64);
        let mut port = Port::new(inner);
        drop(device);
        let failure = port.wait_for_input().await;
        assert!(matches!(failure, Err(PortFailure::HungUp)), "{failure:?}");
    }

    #[tokio::test]
    async fn a_session_on_a_port_that_works_records_no_failure_and_flushing_is_immediate() {
        let (inner, mut device) = tokio::io::duplex(8);
        let mut port = Port::new(inner);
        port.write_all(b"12345678").await.unwrap();
        // The peer has read nothing and the buffer is full: a tty's flush would wait here.
        port.flush().await.unwrap();
        port.shutdown().await.unwrap();
        let mut got = [0u8; 8];
        device.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"12345678");
        assert!(port.failure.is_none(), "{:?}", port.failure);
    }

    #[test]
    fn a_port_failure_says_what_failed_for_the_log() {
        assert_eq!(
            PortFailure::HungUp.to_string(),
            "end of file (the port hung up)"
        );
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        let read = PortFailure::Read(eio);
        assert!(read.to_string().starts_with("read: "), "{read}");
        assert!(std::error::Error::source(&read).is_some());
        assert_eq!(
            PortFailure::WroteNothing.to_string(),
            "write: the port took no bytes"
        );
    }

    #[tokio::test]
    async fn a_missing_port_is_an_error_that_says_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(&dir.path().join("ttyUSB9"), 115_200).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io(std::io::ErrorKind::NotFound), "{e}");
    }
}
