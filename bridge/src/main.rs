//! The `edge-bridge` binary: command line, logging, and exit codes around [`edge_bridge::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use broker_config::{BrokerConfig, Config, LinkConfig};
use clap::{Parser, Subcommand};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// MQTT edge bridge for constrained devices.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the bridge (with the embedded MQTT broker unless the configuration names another).
    Run {
        /// Configuration file (TOML); without it every setting has its default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `bridge_id`.
        #[arg(long)]
        bridge_id: Option<String>,
        /// Overrides `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Overrides the embedded broker's listener (port 0: any free port).
        #[arg(long)]
        mqtt_listen: Option<SocketAddr>,
        /// Replaces the device links with one plain TCP listener (port 0: any free port).
        #[arg(long)]
        device_listen: Option<SocketAddr>,
    },
    /// Print the commented default configuration.
    GenConfig {
        /// Sets `data_dir` in the printed file (as the gateway packages do).
        #[arg(long)]
        data_dir: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::GenConfig { data_dir } => {
            match data_dir {
                Some(dir) => print!("{}", broker_config::default_config_with_data_dir(&dir)),
                None => print!("{}", broker_config::DEFAULT_CONFIG),
            }
            ExitCode::SUCCESS
        }
        Command::Run {
            config,
            bridge_id,
            data_dir,
            mqtt_listen,
            device_listen,
        } => {
            // rumqttd logs every client disconnect as an error; a broker that dies is reported
            // by the bridge itself. RUST_LOG=info,rumqttd=info shows them.
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=off".into());
            let log = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter);
            // The embedded broker reports dropped messages only in its own log events, which
            // the log above leaves out: this layer reads them, whatever RUST_LOG says.
            let (losses, jumps) = edge_bridge::broker::loss::layer();
            tracing_subscriber::registry().with(log).with(losses).init();
            match run(
                config,
                bridge_id,
                data_dir,
                mqtt_listen,
                device_listen,
                jumps,
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("edge-bridge: {}", report(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
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

fn run(
    file: Option<PathBuf>,
    bridge_id: Option<String>,
    data_dir: Option<PathBuf>,
    mqtt_listen: Option<SocketAddr>,
    device_listen: Option<SocketAddr>,
    jumps: tokio::sync::mpsc::UnboundedReceiver<edge_bridge::broker::loss::CursorJump>,
) -> anyhow::Result<()> {
    let mut config = match &file {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(id) = bridge_id {
        config.bridge_id = id;
    }
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    if let Some(addr) = mqtt_listen {
        match &mut config.broker {
            BrokerConfig::Embedded { listen, .. } => *listen = addr,
            BrokerConfig::External { .. } => anyhow::bail!(
                "--mqtt-listen applies to the embedded broker, but the configuration names an external one"
            ),
        }
    }
    if let Some(addr) = device_listen {
        config.links = vec![LinkConfig::tcp(addr)];
    }
    config
        .validate()
        .context("invalid configuration after command-line overrides")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(edge_bridge::run::run(config, jumps, |ready| {
        let devices: Vec<String> = ready.devices.iter().map(ToString::to_string).collect();
        // The metrics endpoint's address only when it is on.
        let metrics = ready
            .metrics
            .map(|addr| format!(" metrics={addr}"))
            .unwrap_or_default();
        // One line on stdout for scripts and tests; logs go to stderr.
        println!(
            "edge-bridge ready: mqtt={} devices={}{metrics}",
            ready.mqtt,
            devices.join(",")
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
