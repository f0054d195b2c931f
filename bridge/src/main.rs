//! The `edge-bridge` binary: command line, logging, and exit codes around [`edge_bridge::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use broker_config::{BrokerConfig, Checked, Config, LinkConfig};
use edge_bridge::logging::{self, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

mod cli;

use cli::{Command, Parsed, RunArgs};

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect();
    let Ok(args) = args else {
        eprintln!("edge-bridge: an argument is not valid UTF-8");
        return ExitCode::from(2);
    };
    let command = match cli::parse(args) {
        Ok(Parsed::Command(command)) => *command,
        Ok(Parsed::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("edge-bridge {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::GenConfig { data_dir } => {
            match data_dir {
                Some(dir) => print!("{}", broker_config::default_config_with_data_dir(&dir)),
                None => print!("{}", broker_config::DEFAULT_CONFIG),
            }
            ExitCode::SUCCESS
        }
        Command::Submit(args) => client(|| async {
            let summary = edge_bridge::client::submit::run(args).await?;
            Ok(summary.all_good())
        }),
        Command::Watch(args) => {
            client(|| async { Ok(edge_bridge::client::watch::run(args).await?.unwrap_or(true)) })
        }
        Command::Tasks(args) => client(|| edge_bridge::client::tasks::run(args)),
        Command::CheckConfig { file } => check_config(&file),
        Command::Run(RunArgs {
            config,
            bridge_id,
            data_dir,
            mqtt_listen,
            device_listen,
            log_format,
        }) => {
            let format = match log_format.map(Ok).unwrap_or_else(log_format_from_env) {
                Ok(format) => format,
                Err(e) => {
                    eprintln!("edge-bridge: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // rumqttd logs every client disconnect as an error; a broker that dies is reported
            // by the bridge itself. RUST_LOG=info,rumqttd=info shows them.
            let filter = match logging::filter_from_env("info,rumqttd=off") {
                Ok(filter) => filter,
                Err(e) => {
                    eprintln!("edge-bridge: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // The embedded broker reports dropped messages only in its own log events, which
            // the log above leaves out: this layer reads them, whatever RUST_LOG says.
            let (losses, jumps) = edge_bridge::broker::loss::layer();
            tracing_subscriber::registry()
                .with(logging::stderr_layer(format, filter))
                .with(losses)
                .init();
            let overrides = Overrides {
                bridge_id,
                data_dir,
                mqtt_listen,
                device_listen,
            };
            match run(config, overrides, jumps) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("edge-bridge: {}", report(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs a client command on a small runtime: exit 0 when it says all went well, 1 when not
/// (a rejected or failed task), 2 when it could not do its work (no broker, bad input).
fn client<F, Fut>(command: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edge-bridge: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(command()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("edge-bridge: {}", report(&e));
            ExitCode::from(2)
        }
    }
}

/// `--log-format` from [`logging::FORMAT_VAR`], text when it is unset.
fn log_format_from_env() -> anyhow::Result<LogFormat> {
    match std::env::var(logging::FORMAT_VAR) {
        Ok(v) => v
            .parse::<LogFormat>()
            .map_err(|_| anyhow::anyhow!("{}={v:?}: text or json", logging::FORMAT_VAR)),
        Err(_) => Ok(LogFormat::default()),
    }
}

/// `edge-bridge check-config FILE`.
fn check_config(file: &std::path::Path) -> ExitCode {
    let config = match Config::read(file) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("edge-bridge: {}", report(&e.into()));
            return ExitCode::FAILURE;
        }
    };
    let checked = edge_bridge::preflight::check(&config);
    for warning in &checked.warnings {
        eprintln!("warning: {warning}");
    }
    if !checked.errors.is_empty() {
        eprintln!(
            "edge-bridge: {}",
            problems(&file.display().to_string(), &checked)
        );
        return ExitCode::FAILURE;
    }
    println!("{}: ok: {}", file.display(), summary(&config));
    ExitCode::SUCCESS
}

/// Every error of `checked`, one per line under a heading naming `what`.
fn problems(what: &str, checked: &Checked) -> String {
    let n = checked.errors.len();
    let mut text = format!(
        "{what}: {n} problem{} in the configuration:",
        if n == 1 { "" } else { "s" }
    );
    for p in &checked.errors {
        text.push_str("\n  ");
        text.push_str(&p.to_string());
    }
    text
}

/// What a valid configuration sets up, on one line.
fn summary(config: &Config) -> String {
    let broker = match &config.broker {
        BrokerConfig::Embedded { listen, tls, .. } => match tls {
            Some(t) => format!("embedded broker on {listen} and {} (TLS)", t.listen),
            None => format!("embedded broker on {listen}"),
        },
        BrokerConfig::External {
            host, port, tls, ..
        } => format!(
            "external broker {host}:{port}{}",
            if tls.is_some() { " (TLS)" } else { "" }
        ),
    };
    let links: Vec<String> = config.links.iter().map(configured_link).collect();
    format!(
        "bridge {}, topics under {}, {broker}, links {}, data in {}",
        config.bridge_id,
        config.root(),
        links.join(","),
        config.data_dir.display()
    )
}

/// A link as the ready line and the check show it: its kind and where it listens (or its
/// port's path).
fn configured_link(link: &LinkConfig) -> String {
    match (link, link.listen()) {
        (LinkConfig::Serial { path, .. }, _) => format!("serial:{}", path.display()),
        (_, Some(addr)) => format!("{}:{addr}", link.kind()),
        (_, None) => link.kind().to_owned(),
    }
}

/// The links with the addresses they ended up on (port 0 resolved): `addrs` holds one per
/// link that listens, in order.
fn ready_links(links: &[LinkConfig], addrs: &[SocketAddr]) -> String {
    let mut addrs = addrs.iter();
    let shown: Vec<String> = links
        .iter()
        .map(|link| match (link, link.listen().and(addrs.next())) {
            (_, Some(addr)) => format!("{}:{addr}", link.kind()),
            _ => configured_link(link),
        })
        .collect();
    shown.join(",")
}

/// The error and its causes on one line. A cause whose text the line already ends with is
/// left out: the library's errors put their source in their own message (a log line shows
/// only that message) and return it as `source()` too, which `{:#}` would print twice.
fn report(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// What the command line changes in the configuration.
#[derive(Debug)]
struct Overrides {
    bridge_id: Option<String>,
    data_dir: Option<PathBuf>,
    mqtt_listen: Option<SocketAddr>,
    device_listen: Option<SocketAddr>,
}

fn run(
    file: Option<PathBuf>,
    overrides: Overrides,
    jumps: tokio::sync::mpsc::UnboundedReceiver<edge_bridge::broker::loss::CursorJump>,
) -> anyhow::Result<()> {
    // Parsed only: the whole check below reports every invalid value, after the overrides.
    let mut config = match &file {
        Some(path) => Config::read(path)?,
        None => Config::default(),
    };
    if let Some(id) = overrides.bridge_id {
        config.bridge_id = id;
    }
    if let Some(dir) = overrides.data_dir {
        config.data_dir = dir;
    }
    if let Some(addr) = overrides.mqtt_listen {
        match &mut config.broker {
            BrokerConfig::Embedded { listen, .. } => *listen = addr,
            BrokerConfig::External { .. } => anyhow::bail!(
                "--mqtt-listen applies to the embedded broker, but the configuration names an external one"
            ),
        }
    }
    if let Some(addr) = overrides.device_listen {
        config.links = vec![LinkConfig::tcp(addr)];
    }
    // Before the data directory, the queue, the broker or any listener opens: a bad file
    // must not leave a half-started bridge, nor stop it at the first of several mistakes.
    let checked = edge_bridge::preflight::check(&config);
    for warning in &checked.warnings {
        tracing::warn!(key = %warning.key, value = %warning.value, "{}", warning.reason);
    }
    if !checked.errors.is_empty() {
        let what = file
            .as_ref()
            .map_or("the command line".to_owned(), |f| f.display().to_string());
        anyhow::bail!("{}", problems(&what, &checked));
    }
    // Held until the bridge stops: a second bridge on this directory stops here, before it
    // touches the queue or the storage reserve of the first.
    let _lock = edge_bridge::preflight::DataDirLock::take(&config.data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let links = config.links.clone();
    runtime.block_on(edge_bridge::run::run(config, jumps, |ready| {
        let links = ready_links(&links, &ready.devices);
        tracing::info!(mqtt = %ready.mqtt, links = %links, metrics = ?ready.metrics, "ready");
        // The metrics endpoint's address only when it is on.
        let metrics = ready
            .metrics
            .map(|addr| format!(" metrics={addr}"))
            .unwrap_or_default();
        // One line on stdout for scripts and tests; logs go to stderr.
        println!(
            "edge-bridge ready: mqtt={} links={links}{metrics}",
            ready.mqtt
        );
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let path = PathBuf::from("/nowhere/bridge.toml");
        let e = Config::load(&path).unwrap_err();
        let io = std::error::Error::source(&e).unwrap().to_string();
        let e = anyhow::Error::from(e);
        let line = report(&e);
        assert!(
            line.starts_with("cannot read /nowhere/bridge.toml: "),
            "{line}"
        );
        assert_eq!(line.matches(&io).count(), 1, "{line}");
        // A context that does not repeat its cause keeps it.
        let e = e.context("loading the configuration");
        assert!(
            report(&e).starts_with("loading the configuration: cannot read /nowhere/"),
            "{}",
            report(&e)
        );
    }
}
