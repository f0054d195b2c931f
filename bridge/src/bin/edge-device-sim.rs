//! `edge-device-sim`: a device on the host. It runs device-core's runtime and session over a
//! TCP link (or TLS with a client certificate: `--tls-ca`, `--tls-cert`, `--tls-key`; or
//! UDP + DTLS with `--dtls` and `--psk HEX`, `--psk-file FILE` or those certificate flags),
//! exactly as firmware does over a UART, and reconnects when the bridge goes away.
//!
//! Serial: `--serial PATH [--baud N]` instead of `--connect` talks to the bridge's serial link
//! over a port (a USB serial adapter, or one end of a pseudo-terminal pair made by
//! `socat -d -d pty,raw,echo=0 pty,raw,echo=0`), raw 8N1 without flow control, reopened
//! with backoff when it fails or is not there yet.
//!
//! Capabilities (payloads and results in [`CAPABILITIES_HELP`], shown by `--help`): `echo`,
//! `sleep`, `fail`, `flaky`, `count`. 8 task slots.
//!
//! Locks: `--lock NAME` (repeatable) declares a lock, advertised in `Hello`, that tasks may
//! name in their submission's `locks`. The runtime takes a task's locks before its first step
//! and holds them until it ends, with priority inheritance: a P0 `sleep` naming a lock that a
//! P4 `sleep` holds waits for it (the holder running at P0) instead of preempting it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant as StdInstant};

use clap::Parser;
use device_core::Instant;
use device_core::link::Config;
use device_core::proto::Preemption;
use device_core::proto::{Deframer, MAX_FRAME};
use device_core::runtime::{Ctx, Device, Handler, Runtime, Step};
use edge_bridge::backoff::Backoff;
use edge_bridge::link::dtls::client as dtls_client;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// A simulated device for the edge bridge.
#[derive(Parser, Debug)]
// Named and described here: `version` and `about` without a value would take the package's,
// which are the bridge's (both binaries are in the edge-bridge package).
#[command(
    name = "edge-device-sim",
    version,
    about = "A simulated device for the edge bridge: device-core's runtime and session over \
             TCP, TLS, UDP + DTLS or a serial port",
    after_long_help = CAPABILITIES_HELP
)]
// Exactly one way to the bridge.
#[command(group(clap::ArgGroup::new("transport").required(true).args(["connect", "serial"])))]
struct Cli {
    /// The bridge's device link (host:port).
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// A serial port to the bridge's serial link, instead of `--connect`.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["tls_ca", "dtls"])]
    serial: Option<std::path::PathBuf>,
    /// The baud rate of `--serial` [default: 115200, as the bridge's].
    #[arg(long, value_name = "N", conflicts_with = "connect")]
    baud: Option<u32>,
    /// The device id.
    #[arg(long)]
    id: String,
    /// A capability to offer (echo, sleep, fail, flaky, count; payloads in --help); repeat
    /// for several.
    #[arg(long = "capability", required = true)]
    capabilities: Vec<String>,
    /// A lock tasks may name (lock ids in the order given); repeat for several, at most 4.
    #[arg(long = "lock")]
    locks: Vec<String>,
    /// Append "boot_id handle" to this file for every task executed (tests use it to show that
    /// nothing runs twice).
    #[arg(long)]
    exec_log: Option<std::path::PathBuf>,
    /// Take tasks and never finish them, whatever the capability (a hung firmware: it still
    /// answers the link, acknowledges and cancels).
    #[arg(long)]
    hang: bool,
    /// Connect over TLS, trusting the CA certificate(s) of this PEM file for the bridge.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate (chain) proving the device id: its CN or a DNS name must be
    /// `--id`.
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The name the bridge's certificate must carry; the address of `--connect` by default.
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Connect over UDP + DTLS 1.2 instead of TCP: with `--psk`, or with a certificate
    /// (`--tls-ca`, `--tls-cert`, `--tls-key` apply to DTLS then).
    #[arg(long)]
    dtls: bool,
    /// Hex pre-shared key for DTLS; the PSK identity is `--id`. Other users of the host see
    /// it in the process list (`ps`): prefer `--psk-file` outside a lab.
    #[arg(
        long,
        value_name = "HEX",
        requires = "dtls",
        conflicts_with_all = ["tls_cert", "psk_file"]
    )]
    psk: Option<String>,
    /// A file holding the hex pre-shared key (as `--psk` takes it; surrounding whitespace
    /// ignored), so the key stays out of the process list.
    #[arg(
        long,
        value_name = "FILE",
        requires = "dtls",
        conflicts_with = "tls_cert"
    )]
    psk_file: Option<std::path::PathBuf>,
    /// The PSK identity, when it is not `--id` (the bridge then refuses the device: for
    /// testing the identity rule).
    #[arg(long, requires = "psk")]
    psk_identity: Option<String>,
    /// The local UDP port for DTLS (a device that reboots keeps its port); any by default.
    #[arg(long, requires = "dtls")]
    local_port: Option<u16>,
    /// The boot id, instead of one drawn at start: firmware whose entropy source is nearly
    /// constant at boot draws the same one every time (tests use it to show that the bridge
    /// still sees the reboot).
    #[arg(long, value_name = "N")]
    boot_id: Option<u32>,
}

/// DTLS towards the bridge.
struct Dtls {
    context: std::sync::Arc<edge_dtls::ClientConfig>,
    settings: dtls_client::ClientSettings,
}

impl Dtls {
    /// The DTLS settings of the command line, if any; the error names the flag or file.
    fn from_cli(cli: &Cli) -> Result<Option<Self>, String> {
        use dtls_client::Credential;
        if !cli.dtls {
            return Ok(None);
        }
        let psk = match (&cli.psk, &cli.psk_file) {
            (Some(hex), _) => {
                Some(broker_config::parse_psk(hex).map_err(|e| format!("--psk: {e}"))?)
            }
            (None, Some(path)) => Some(psk_from_file(path)?),
            (None, None) => None,
        };
        let credential = match (psk, &cli.tls_ca, &cli.tls_cert, &cli.tls_key) {
            (Some(key), None, None, None) => Credential::Psk {
                identity: cli.psk_identity.clone().unwrap_or_else(|| cli.id.clone()),
                key,
            },
            (None, Some(ca), Some(cert), Some(key)) => Credential::Certificate {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
                server_name: cli.tls_server_name.clone(),
            },
            _ => {
                return Err(
                    "--dtls needs --psk HEX or --psk-file FILE, or --tls-ca, --tls-cert and --tls-key"
                        .into(),
                );
            }
        };
        let settings = dtls_client::ClientSettings {
            credential,
            ciphers: broker_config::DEFAULT_DTLS_CIPHERS.to_owned(),
            mtu: 1200,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        let context = dtls_client::context(&settings).map_err(|e| e.to_string())?;
        Ok(Some(Self { context, settings }))
    }
}

/// The key of `--psk-file`: the file's text, hex as `--psk` takes it. The error names the
/// flag and the file, never the key.
fn psk_from_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--psk-file {}: {e}", path.display()))?;
    broker_config::parse_psk(text.trim()).map_err(|e| format!("--psk-file {}: {e}", path.display()))
}

/// TLS towards the bridge: rustls with its ring provider.
struct Tls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl Tls {
    /// The TLS settings of the command line, if any; the error names the file.
    fn from_cli(cli: &Cli) -> Result<Option<Self>, String> {
        use edge_bridge::tls::{pem_certificates, pem_private_key};
        use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
        // With --dtls the certificate flags are DTLS's, not TLS's.
        if cli.dtls {
            return Ok(None);
        }
        let Some(ca) = &cli.tls_ca else {
            return Ok(None);
        };
        let named = |flag: &str, path: &std::path::Path| {
            let path = path.display().to_string();
            let flag = flag.to_owned();
            move |e: edge_bridge::tls::PemError| format!("{flag} {path}: {e}")
        };
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(pem_certificates(ca).map_err(named("--tls-ca", ca))?);
        let builder = ClientConfig::builder_with_provider(ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match (&cli.tls_cert, &cli.tls_key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    pem_certificates(cert).map_err(named("--tls-cert", cert))?,
                    pem_private_key(key).map_err(named("--tls-key", key))?,
                )
                .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?,
            // Only to show that the bridge refuses it.
            _ => builder.with_no_client_auth(),
        };
        let server_name = match &cli.tls_server_name {
            Some(name) => ServerName::try_from(name.clone())
                .map_err(|e| format!("--tls-server-name {name}: {e}"))?,
            None => match cli.connect {
                Some(bridge) => ServerName::IpAddress(bridge.ip().into()),
                None => return Err("--tls-ca applies to --connect".into()),
            },
        };
        Ok(Some(Self {
            connector: TlsConnector::from(std::sync::Arc::new(config)),
            server_name,
        }))
    }
}

/// The built-in capabilities, for `--help` (kept beside the handlers below, which parse these
/// payloads and build these results).
const CAPABILITIES_HELP: &str = "\
Capabilities (--capability NAME; the task's payload and result are JSON):
  echo   payload: anything. Result: the payload, unchanged.
  sleep  payload: {\"ms\":N}. Runs N milliseconds, one step per millisecond (preemption and
         cancellation land between steps). Result: {\"slept_ms\":N}.
  fail   payload: anything. Fails with error code 7.
  flaky  payload: anything. Every other execution fails with a transient code (0x8001, so
         the bridge tries again); the others succeed as echo.
  count  payload: {\"steps\":N}. Counts N steps, at most one per millisecond; may be
         preempted and resumes from its checkpoint, on this device or another. Result:
         {\"counted\":N,\"first_step_here\":S}, S being the step this device started at
         (0 unless it resumed a checkpoint).
  A payload without its number (sleep, count) fails with code 2; a result too large for
  the device fails with code 1. --hang makes every capability take its task and never end.

DTLS keys: --psk HEX shows the key to every user of the host (ps, /proc); --psk-file FILE
reads it from a file instead (hex, as --psk takes it).";

/// Where executions are logged, with this boot's id.
static EXEC_LOG: std::sync::OnceLock<(std::sync::Mutex<std::fs::File>, u32)> =
    std::sync::OnceLock::new();

/// Records one execution of `handle` (handlers are plain functions, hence the static).
fn log_execution(handle: u32) {
    use std::io::Write;
    if let Some((file, boot)) = EXEC_LOG.get() {
        if let Ok(mut f) = file.lock() {
            let _ = writeln!(f, "{boot} {handle}");
        }
    }
}

const SLOTS: usize = 8;
/// Locks in the scheduler, every one of which `--lock` can name.
const LOCKS: usize = device_core::proto::MAX_LOCKS;
type Sim = Device<SLOTS, LOCKS, 4, 8, 4>;

fn echo(ctx: &mut Ctx<'_>) -> Step {
    log_execution(ctx.handle);
    match ctx.result.extend_from_slice(ctx.payload) {
        Ok(()) => Step::Done,
        Err(_) => Step::Fail(1),
    }
}

/// Sleeps `{"ms":N}` in steps: the first step notes the start time in the scratch bytes.
fn sleep(ctx: &mut Ctx<'_>) -> Step {
    if ctx.step == 0 {
        log_execution(ctx.handle);
        ctx.scratch[..8].copy_from_slice(&ctx.now.as_millis().to_le_bytes());
    }
    let mut start = [0u8; 8];
    start.copy_from_slice(&ctx.scratch[..8]);
    let ms = serde_json::from_slice::<serde_json::Value>(ctx.payload)
        .ok()
        .and_then(|v| v.get("ms").and_then(serde_json::Value::as_u64));
    let Some(ms) = ms else { return Step::Fail(2) };
    if ctx
        .now
        .as_millis()
        .saturating_sub(u64::from_le_bytes(start))
        < ms
    {
        return Step::Continue;
    }
    let result = format!("{{\"slept_ms\":{ms}}}");
    match ctx.result.extend_from_slice(result.as_bytes()) {
        Ok(()) => Step::Done,
        Err(_) => Step::Fail(1),
    }
}

/// Runs for ever (`--hang`).
fn hang(ctx: &mut Ctx<'_>) -> Step {
    if ctx.step == 0 {
        log_execution(ctx.handle);
    }
    Step::Continue
}

fn fail(_: &mut Ctx<'_>) -> Step {
    Step::Fail(7)
}

/// Executions of `flaky` so far (in this process).
static FLAKY_RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Fails every other execution with a transient code (as a busy bus would), succeeds with
/// the payload otherwise: the bridge's retry of transient failures is observable.
fn flaky(ctx: &mut Ctx<'_>) -> Step {
    if FLAKY_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2 == 0 {
        return Step::Fail(device_core::proto::TRANSIENT_ERROR + 1);
    }
    echo(ctx)
}

/// Counts `{"steps":N}` steps, at most one per millisecond, and may be preempted and resumed
/// from its checkpoint (declared `Resume`): the count lives in the scratch bytes, so it
/// survives a move to another device. The result, `{"counted":N,"first_step_here":S}`, says at
/// which step this process first ran the execution: 0 for a task that started here, the
/// checkpoint's step count for one resumed here.
fn count(ctx: &mut Ctx<'_>) -> Step {
    let n = serde_json::from_slice::<serde_json::Value>(ctx.payload)
        .ok()
        .and_then(|v| v.get("steps").and_then(serde_json::Value::as_u64));
    let Some(n) = n else { return Step::Fail(2) };
    let first_here = {
        let mut seen = FIRST_STEPS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *seen.entry(ctx.handle).or_insert_with(|| {
            // An execution (or its resumed part) starts here: one line per handle.
            log_execution(ctx.handle);
            ctx.step
        })
    };
    let mut word = [0u8; 8];
    word.copy_from_slice(&ctx.scratch[8..16]);
    let last_ms = u64::from_le_bytes(word);
    // At most one counted step per millisecond of this device's clock (a checkpoint from
    // another device carries that device's clock: any other value counts).
    if ctx.now.as_millis() == last_ms {
        return Step::Continue;
    }
    ctx.scratch[8..16].copy_from_slice(&ctx.now.as_millis().to_le_bytes());
    let mut counted = [0u8; 4];
    counted.copy_from_slice(&ctx.scratch[..4]);
    let counted = u32::from_le_bytes(counted) + 1;
    ctx.scratch[..4].copy_from_slice(&counted.to_le_bytes());
    if u64::from(counted) < n {
        return Step::Continue;
    }
    let result = format!("{{\"counted\":{counted},\"first_step_here\":{first_here}}}");
    match ctx.result.extend_from_slice(result.as_bytes()) {
        Ok(()) => Step::Done,
        Err(_) => Step::Fail(1),
    }
}

/// The first step this process ran of each handle (see `count`).
static FIRST_STEPS: std::sync::Mutex<std::collections::BTreeMap<u32, u32>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match edge_bridge::logging::filter_from_env("info") {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("edge-device-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(edge_bridge::logging::stderr_colour())
        .finish()
        .with(filter)
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edge-device-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let epoch = StdInstant::now();
    let now = move || Instant::from_millis(epoch.elapsed().as_millis() as u64);
    // A fresh boot id per process start, as firmware would draw one at boot.
    let boot_id = cli.boot_id.unwrap_or(
        (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()) as u32)
            | 1,
    );
    if let Some(path) = &cli.exec_log {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => {
                let _ = EXEC_LOG.set((std::sync::Mutex::new(f), boot_id));
            }
            Err(e) => {
                eprintln!("edge-device-sim: --exec-log {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let mut rt: Runtime<SLOTS, LOCKS, 4> = Runtime::new();
    for name in &cli.locks {
        if let Err(e) = rt.declare_lock(name) {
            eprintln!("edge-device-sim: --lock {name:?}: {e}");
            return ExitCode::FAILURE;
        }
    }
    for cap in &cli.capabilities {
        let (handler, preemption): (Handler, _) = match cap.as_str() {
            "echo" => (echo, Preemption::Never),
            "sleep" => (sleep, Preemption::Never),
            "fail" => (fail, Preemption::Never),
            "flaky" => (flaky, Preemption::Never),
            "count" => (count, Preemption::Resume),
            other => {
                eprintln!(
                    "edge-device-sim: unknown capability {other:?} (echo, sleep, fail, flaky, count)"
                );
                return ExitCode::FAILURE;
            }
        };
        let handler = if cli.hang { hang } else { handler };
        if rt.register_with(cap, handler, preemption).is_err() {
            eprintln!("edge-device-sim: too many capabilities");
            return ExitCode::FAILURE;
        }
    }
    // One device for the whole process, like firmware between reboots: its tasks, results
    // and unacknowledged reports survive link loss (the bridge trusts the boot id for that).
    let Some(mut device) = Sim::new(&cli.id, boot_id, rt, Config::default(), now()) else {
        eprintln!("edge-device-sim: device id too long");
        return ExitCode::FAILURE;
    };
    let bridge = match (&cli.serial, cli.connect) {
        (Some(path), _) => {
            let baud = cli.baud.unwrap_or(115_200);
            return serve_serial(path, baud, &mut device, now).await;
        }
        (None, Some(bridge)) => bridge,
        (None, None) => {
            eprintln!("edge-device-sim: --connect ADDR or --serial PATH is required");
            return ExitCode::FAILURE;
        }
    };
    let tls = match Tls::from_cli(&cli) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("edge-device-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dtls = match Dtls::from_cli(&cli) {
        Ok(dtls) => dtls,
        Err(e) => {
            eprintln!("edge-device-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Connections in a row that opened no session (refused, failed handshakes, a bridge that
    // closed the link at the Hello): each doubles the delay before the next try, so a device
    // the bridge will not take does not knock every 100 ms.
    let mut failures = 0u32;
    loop {
        let sessions_before = device.session().stats().sessions;
        if let Some(dtls) = &dtls {
            match dtls_connect(dtls, bridge, cli.local_port).await {
                Ok(connected) => {
                    tracing::info!(bridge = %bridge, id = %cli.id, "connected over DTLS");
                    let why = serve(connected.pipe, &mut device, now).await;
                    // The relay ends once the pipe is gone (a close_notify to the bridge).
                    let _ = connected.task.await;
                    tracing::warn!(%why, "link lost; reconnecting");
                    device.link_lost(now());
                }
                Err(e) => {
                    tracing::warn!(bridge = %bridge, error = %e, "DTLS connection failed");
                }
            }
        } else {
            match TcpStream::connect(bridge).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    tracing::info!(bridge = %bridge, id = %cli.id, tls = tls.is_some(), "connected");
                    let why = match &tls {
                        None => serve(stream, &mut device, now).await,
                        Some(tls) => {
                            match tls.connector.connect(tls.server_name.clone(), stream).await {
                                Ok(stream) => serve(stream, &mut device, now).await,
                                Err(e) => format!("TLS handshake failed: {e}"),
                            }
                        }
                    };
                    tracing::warn!(%why, "link lost; reconnecting");
                    device.link_lost(now());
                }
                Err(e) => {
                    tracing::warn!(bridge = %bridge, error = %e, "cannot connect");
                }
            }
        }
        if device.session().stats().sessions > sessions_before {
            failures = 0;
        } else {
            failures = failures.saturating_add(1);
        }
        tokio::time::sleep(RECONNECT.delay(failures.saturating_add(1), 0)).await;
    }
}

/// Delays before reconnecting to the bridge (attempt `failures + 1`): 100 ms after a link
/// that opened a session, doubling per connection in a row that opened none, to 5 s.
const RECONNECT: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
    jitter_percent: 0,
};

/// One DTLS session to the bridge, from `local_port` if given.
async fn dtls_connect(
    dtls: &Dtls,
    bridge: SocketAddr,
    local_port: Option<u16>,
) -> Result<dtls_client::Connected, String> {
    let Some(port) = local_port else {
        return dtls_client::connect(&dtls.context, &dtls.settings, bridge)
            .await
            .map_err(|e| e.to_string());
    };
    let local = SocketAddr::new(
        if bridge.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        },
        port,
    );
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| format!("UDP bind {local}: {e}"))?;
    dtls_client::connect_on(&dtls.context, &dtls.settings, bridge, socket)
        .await
        .map_err(|e| e.to_string())
}

/// Talks to the bridge over the serial port at `path` forever, reopening it with backoff
/// when it fails (unplugged) or cannot be opened (not there yet).
async fn serve_serial(
    path: &std::path::Path,
    baud: u32,
    device: &mut Sim,
    now: impl Fn() -> Instant + Copy,
) -> ExitCode {
    use edge_bridge::link::serial;
    // Failures since the last port that lasted, as the bridge's serial link counts them.
    let mut failures = 0u32;
    loop {
        let open_for = match serial::open(path, baud) {
            Ok(port) => {
                let opened = StdInstant::now();
                tracing::info!(port = %path.display(), baud, "serial port open");
                let why = serve(port, device, now).await;
                tracing::warn!(%why, "link lost; reopening the port");
                device.link_lost(now());
                Some(opened.elapsed())
            }
            Err(e) => {
                tracing::warn!(port = %path.display(), error = %e, "cannot open the serial port");
                None
            }
        };
        failures = serial::failures_after(failures, open_for);
        tokio::time::sleep(serial::REOPEN.delay(failures, 0)).await;
    }
}

async fn serve(
    stream: impl AsyncRead + AsyncWrite,
    device: &mut Sim,
    now: impl Fn() -> Instant,
) -> String {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut deframer: Deframer<MAX_FRAME> = Deframer::new();
    let mut input = vec![0u8; 4096];
    let mut out = [0u8; MAX_FRAME];
    loop {
        // Run one step per pass (more urgent tasks preempt at step boundaries), then send.
        let busy = device.step(now());
        while let Some(n) = device.poll_transmit(now(), &mut out) {
            if let Err(e) = wr.write_all(&out[..n]).await {
                return format!("write: {e}");
            }
        }
        let wake = device
            .poll_timeout()
            .map_or(1_000, |t| t.as_millis().saturating_sub(now().as_millis()));
        let wait = if busy {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(wake.clamp(1, 1_000))
        };
        tokio::select! {
            read = rd.read(&mut input) => {
                let n = match read {
                    Ok(0) => return "bridge closed the connection".into(),
                    Ok(n) => n,
                    Err(e) => return format!("read: {e}"),
                };
                let mut rest = &input[..n];
                while !rest.is_empty() {
                    let (used, frame) = deframer.push_raw(rest);
                    rest = &rest[used..];
                    if let Some(Ok(bytes)) = frame {
                        let bytes = bytes.to_vec();
                        if let Err(e) = device.handle_bytes(&bytes, now()) {
                            tracing::warn!(error = %e, "bad frame from the bridge");
                        }
                    }
                }
            }
            () = tokio::time::sleep(wait) => {
                if device.handle_timeout(now()).is_some() {
                    tracing::warn!("bridge silent; handshaking again");
                }
            }
        }
    }
}
