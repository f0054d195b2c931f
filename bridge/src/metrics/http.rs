//! The metrics endpoint's HTTP/1.1 responder: `GET /metrics` (or `HEAD`) on a TCP listener,
//! one request per connection, closed after the response. Written by hand rather than with
//! an HTTP library: one route, one method, no bodies, no keep-alive, and a gateway binary that
//! stays small.
//!
//! Bounded, since whoever reaches the port can connect: at most [`MAX_SCRAPES`] connections are
//! served at once (one beyond is closed as soon as it is accepted), a request head is read for
//! at most [`READ_TIMEOUT`] and [`MAX_HEAD_BYTES`], and a response is written within
//! [`WRITE_TIMEOUT`]. Answers: 200 with the text format; 404 for another path; 405 for
//! another method on `/metrics`; 400 for what is not an HTTP/1.x request; 408 and 431 for a
//! head too slow or too large; 503 when the run loop gave no snapshot in time.
//!
//! Parsing a head ([`head_end`], [`route`]) and writing a response ([`response`]) are plain
//! functions; [`serve`] only moves bytes and arms timers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{LinkKind, Snapshot, handshake_failures, text};
use crate::throttle::Throttle;

/// Connections served at once. Prometheus scrapes one at a time; a few more leave room for a
/// person with curl beside it, and each costs the run loop one snapshot.
pub const MAX_SCRAPES: usize = 4;

/// The largest request head read (request line and headers); Prometheus sends about 250 bytes.
pub const MAX_HEAD_BYTES: usize = 4096;

/// How long a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the run loop may take to hand over a snapshot: it answers between two turns, so
/// only a stalled bridge (a commit stuck on its disk) takes this long, and then a 503 says so.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client may take to read the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A scrape's request to the run loop: the snapshot goes back on it.
pub type SnapshotRequest = oneshot::Sender<Snapshot>;

/// Connections closed unserved (beyond [`MAX_SCRAPES`]) and failed accepts, for every
/// endpoint of the process: logged within a budget.
static REFUSALS: Throttle = Throttle::remote_events();
static ACCEPT_ERRORS: Throttle = Throttle::remote_events();

/// Binds the endpoint on `listen` and serves it in a task of its own; returns the address it
/// got (port 0 resolved) and where its scrapes ask for snapshots (the run loop answers).
pub async fn start(
    listen: std::net::SocketAddr,
) -> std::io::Result<(std::net::SocketAddr, mpsc::Receiver<SnapshotRequest>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    // As many requests as scrapes served at once: a scrape never waits for room.
    let (snapshots, scrapes) = mpsc::channel(MAX_SCRAPES);
    tokio::spawn(serve(listener, snapshots));
    Ok((addr, scrapes))
}

/// Serves `listener` forever, asking for snapshots on `snapshots`.
pub async fn serve(listener: TcpListener, snapshots: mpsc::Sender<SnapshotRequest>) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    let mut refused = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(suppressed) = ACCEPT_ERRORS.admit(Instant::now()) {
                    tracing::warn!(error = %e, suppressed, "accepting a metrics connection failed");
                }
                // Out of file descriptors, mostly: wait a little rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            drop(stream);
            if let Some(suppressed) = REFUSALS.admit(Instant::now()) {
                tracing::warn!(%peer, refused, suppressed, "metrics connection closed: {MAX_SCRAPES} scrapes in progress");
            }
            continue;
        };
        let snapshots = snapshots.clone();
        tokio::spawn(async move {
            scrape(stream, &snapshots).await;
            drop(slot);
        });
    }
}

/// One connection: its request head, the answer, then the connection is closed.
async fn scrape(mut stream: TcpStream, snapshots: &mpsc::Sender<SnapshotRequest>) {
    let answer = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => response(
            408,
            "text/plain",
            b"request head not received in time\n",
            false,
        ),
        Ok(Head::Closed) => return,
        Ok(Head::TooLarge) => response(431, "text/plain", b"request head too large\n", false),
        Ok(Head::Complete(head)) => match route(&head) {
            Route::Metrics { head_only } => match snapshot(snapshots).await {
                Some(s) => {
                    let failures = LinkKind::ALL.map(handshake_failures);
                    let body = text::render(&s, failures);
                    response(200, text::CONTENT_TYPE, body.as_bytes(), head_only)
                }
                None => response(
                    503,
                    "text/plain",
                    b"the bridge gave no figures in time\n",
                    false,
                ),
            },
            Route::NotFound => response(404, "text/plain", b"not found; try /metrics\n", false),
            Route::MethodNotAllowed => response(405, "text/plain", b"GET or HEAD\n", false),
            Route::BadRequest => response(400, "text/plain", b"not an HTTP/1 request\n", false),
        },
    };
    let write = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    };
    // A client that does not read its answer in time just loses it.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write).await;
}

/// A snapshot from the run loop, or `None` if it gave none within [`SNAPSHOT_TIMEOUT`] (or is
/// gone: the bridge is stopping).
async fn snapshot(snapshots: &mpsc::Sender<SnapshotRequest>) -> Option<Snapshot> {
    let (reply, answer) = oneshot::channel();
    let asked = async {
        snapshots.send(reply).await.ok()?;
        answer.await.ok()
    };
    tokio::time::timeout(SNAPSHOT_TIMEOUT, asked).await.ok()?
}

/// What reading a request head came to.
enum Head {
    /// The head, up to and including its blank line.
    Complete(Vec<u8>),
    /// [`MAX_HEAD_BYTES`] read and no end in sight.
    TooLarge,
    /// The client closed (or the connection failed) first.
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> Head {
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut len = 0;
    while len < buf.len() {
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(n) => len += n,
        }
        if let Some(end) = head_end(&buf[..len]) {
            buf.truncate(end);
            return Head::Complete(buf);
        }
    }
    Head::TooLarge
}

/// Where the head in `buf` ends (after its blank line), if it does; a bare LF is taken for a
/// line end, as RFC 9112 allows.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The figures; `head_only` for `HEAD` (headers, no body).
    Metrics { head_only: bool },
    /// Another path.
    NotFound,
    /// `/metrics` with a method other than `GET` or `HEAD`.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line.
    BadRequest,
}

/// The route of a request `head` (its request line decides; headers are not looked at).
pub fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Route::BadRequest;
    }
    // Prometheus may add a query (`params` in a scrape config): no parameter changes the
    // answer.
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head_only: false },
        "HEAD" => Route::Metrics { head_only: true },
        _ => Route::MethodNotAllowed,
    }
}

/// A complete response with status `code`; the body is left out for `head_only` (its length
/// is still announced, as for the `GET`).
pub fn response(code: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let allow = if code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn only_get_and_head_of_metrics_are_served() {
        let r = |line: &str| route(format!("{line}\r\nHost: gw\r\n\r\n").as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            r("GET /metrics HTTP/1.0"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            r("GET /metrics?format=text HTTP/1.1"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            r("HEAD /metrics HTTP/1.1"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(r("POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(r("DELETE /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(r("GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(r("GET /metrics/ HTTP/1.1"), Route::NotFound);
        assert_eq!(r("GET /metricsx HTTP/1.1"), Route::NotFound);
        assert_eq!(r("POST /other HTTP/1.1"), Route::NotFound);
        for bad in [
            "GET /metrics",
            "GET /metrics HTTP/2",
            "GET  /metrics HTTP/1.1",
            "GET metrics HTTP/1.1",
            "GET /metrics HTTP/1.1 extra",
            "",
        ] {
            assert_eq!(r(bad), Route::BadRequest, "{bad:?}");
        }
        assert_eq!(route(b"GET /\xff HTTP/1.1\r\n\r\n"), Route::BadRequest);
    }

    /// Sends `request` on a new connection to `addr` and reads to the end (the server closes);
    /// what came before the end, if the connection was reset (a refused connection is closed
    /// with the request unread, which resets it).
    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut answer = Vec::new();
        if c.write_all(request).await.is_err() {
            return answer;
        }
        let read = c.read_to_end(&mut answer);
        let _ = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the server closes the connection");
        answer
    }

    /// Beyond [`MAX_SCRAPES`] connections at once, one is closed unanswered; once one of them
    /// ends, scrapes are served again (with the snapshot the run loop hands over).
    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_unanswered() {
        let (addr, mut scrapes) = start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        // The run loop's part: a snapshot per request.
        tokio::spawn(async move {
            while let Some(reply) = scrapes.recv().await {
                let _ = reply.send(Snapshot::default());
            }
        });
        let get = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
        let ok = exchange(addr, get).await;
        assert!(ok.starts_with(b"HTTP/1.1 200 OK\r\n"));
        // Connections that send nothing hold every slot (for up to READ_TIMEOUT).
        let mut idle = Vec::new();
        for _ in 0..MAX_SCRAPES {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Accepted in order: the connection after them finds no slot. (The server may not
        // have taken the idle ones yet when this one connects; it takes them first.)
        assert_eq!(exchange(addr, get).await, b"");
        drop(idle);
        // Their tasks end when they see the close; until then scrapes may still be refused.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let answer = exchange(addr, get).await;
            if answer.starts_with(b"HTTP/1.1 200 OK\r\n") {
                break;
            }
            assert_eq!(answer, b"", "refused or served, nothing else");
            assert!(tokio::time::Instant::now() < deadline, "no slot came back");
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn a_response_announces_its_length_and_closes() {
        let r = response(200, "text/plain", b"abc", false);
        assert_eq!(
            r,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
              Cache-Control: no-store\r\nConnection: close\r\n\r\nabc"
        );
        let head = response(200, "text/plain", b"abc", true);
        assert!(head.ends_with(
            b"Content-Length: 3\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        ));
        let r = String::from_utf8(response(405, "text/plain", b"", false)).unwrap();
        assert!(
            r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n")
                && r.contains("\r\nAllow: GET, HEAD\r\n"),
            "{r}"
        );
    }
}
