//! [`Config::check`]: the whole configuration, checked before the bridge opens anything.
//!
//! [`Config::validate`] stops at the first wrong value, which makes an operator fix a file one
//! line per start. The check goes on to the end and looks beyond the values: the files the
//! configuration names can be opened (and the users and PSK files parse; certificates and keys
//! are parsed by the bridge, which has the TLS libraries), no two listeners take the same port,
//! the data directory is or can be made writable. It changes nothing on disk, so
//! `edge-bridge check-config` can run against a live gateway's file.

use std::net::SocketAddr;
use std::path::Path;

use crate::{BrokerConfig, Config, ConfigError, DtlsLink, InvalidValues, LinkConfig};

/// One thing wrong with a configuration: its key as the file spells it (`link[2].cert_file`,
/// the `[[link]]` tables counted from 0 in the order of the file), the value there, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {reason}")]
pub struct Problem {
    pub key: String,
    /// As TOML writes it (strings quoted); `(hidden)` for a key or password, `(not set)` for
    /// a key the configuration leaves out.
    pub value: String,
    pub reason: String,
}

/// What [`Config::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// What keeps the bridge from starting.
    pub errors: Vec<Problem>,
    /// What the bridge starts with, but an operator should hear of (a serial port not plugged
    /// in yet: the link keeps trying it).
    pub warnings: Vec<Problem>,
}

impl Checked {
    /// Adds an error.
    pub fn error(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.errors.push(Problem {
            key: key.into(),
            value: value.into(),
            reason: reason.into(),
        });
    }

    /// Whether an error names `key` or a key under it (`link[2]` covers `link[2].cert_file`):
    /// the bridge parses a link's certificates only once the files open.
    pub fn has_error_under(&self, key: &str) -> bool {
        self.errors.iter().any(|p| {
            p.key
                .strip_prefix(key)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
    }
}

/// `text` as TOML writes a string (a path, a cipher list, an address).
pub fn quoted(text: impl std::fmt::Display) -> String {
    toml::Value::String(text.to_string()).to_string()
}

impl Config {
    /// Checks the whole configuration without changing anything: every invalid value (not
    /// only the first), the files it names, listeners that would take the same port, and the
    /// data directory. Each problem names its key and its value.
    pub fn check(&self) -> Checked {
        let mut checked = Checked::default();
        // The values as the file has them, to show the value of a key validation refused.
        let table = toml::Value::try_from(self).ok();
        let InvalidValues { found, in_links } = self.invalid_values();
        for e in found {
            checked.errors.push(problem(table.as_ref(), None, e));
        }
        for (i, e) in in_links {
            checked.errors.push(problem(table.as_ref(), Some(i), e));
        }
        self.check_files(&mut checked);
        self.check_listeners(&mut checked);
        self.check_data_dir(&mut checked);
        checked
    }

    fn check_files(&self, c: &mut Checked) {
        match &self.broker {
            BrokerConfig::Embedded {
                users_file, tls, ..
            } => {
                if let Some(path) = users_file {
                    if let Err(e) = crate::load_users_file(path) {
                        c.error(
                            "broker.users_file",
                            quoted(path.display()),
                            file_reason(path, e),
                        );
                    }
                }
                if let Some(t) = tls {
                    openable(c, "broker.tls.cert_file", &t.cert_file);
                    openable(c, "broker.tls.key_file", &t.key_file);
                }
            }
            BrokerConfig::External { tls: Some(t), .. } => {
                openable(c, "broker.tls.ca_file", &t.ca_file);
                if let Some(path) = &t.client_cert {
                    openable(c, "broker.tls.client_cert", path);
                }
                if let Some(path) = &t.client_key {
                    openable(c, "broker.tls.client_key", path);
                }
            }
            BrokerConfig::External { tls: None, .. } => {}
        }
        for (i, link) in self.links.iter().enumerate() {
            let key = |name: &str| format!("link[{i}].{name}");
            match link {
                LinkConfig::Tcp { .. } => {}
                LinkConfig::Tls {
                    cert_file,
                    key_file,
                    client_ca_file,
                    ..
                } => {
                    openable(c, &key("cert_file"), cert_file);
                    openable(c, &key("key_file"), key_file);
                    openable(c, &key("client_ca_file"), client_ca_file);
                }
                LinkConfig::Dtls(DtlsLink {
                    psk_file,
                    cert_file,
                    key_file,
                    client_ca_file,
                    ..
                }) => {
                    if let Some(path) = psk_file {
                        if let Err(e) = crate::load_psk_file(path) {
                            c.error(
                                key("psk_file"),
                                quoted(path.display()),
                                file_reason(path, e),
                            );
                        }
                    }
                    for (name, path) in [
                        ("cert_file", cert_file),
                        ("key_file", key_file),
                        ("client_ca_file", client_ca_file),
                    ] {
                        if let Some(path) = path {
                            openable(c, &key(name), path);
                        }
                    }
                }
                LinkConfig::Serial { path, .. } => {
                    // Not an error: a USB adapter plugged in after the bridge started is
                    // opened then (the link retries with backoff).
                    if !path.as_os_str().is_empty() && std::fs::metadata(path).is_err() {
                        c.warnings.push(Problem {
                            key: key("path"),
                            value: quoted(path.display()),
                            reason: "no such port (yet): the link keeps trying to open it".into(),
                        });
                    }
                }
            }
        }
    }

    /// Two listeners on the same port of the same protocol, on the same address or one of
    /// them on every address: the second could not listen.
    fn check_listeners(&self, c: &mut Checked) {
        let mut listeners: Vec<(String, &str, SocketAddr, bool)> = Vec::new();
        if let BrokerConfig::Embedded { listen, tls, .. } = &self.broker {
            listeners.push(("broker.listen".into(), "tcp", *listen, false));
            if let Some(t) = tls {
                listeners.push(("broker.tls.listen".into(), "tcp", t.listen, false));
            }
        }
        for (i, link) in self.links.iter().enumerate() {
            let proto = match link {
                LinkConfig::Dtls(_) => "udp",
                _ => "tcp",
            };
            if let Some(listen) = link.listen() {
                listeners.push((format!("link[{i}].listen"), proto, listen, true));
            }
        }
        for (n, (key, proto, addr, is_link)) in listeners.iter().enumerate() {
            let earlier = listeners[..n].iter().find(|(_, p, a, l)| {
                p == proto
                    && addr.port() != 0
                    && a.port() == addr.port()
                    && overlap(*a, *addr)
                    // Two links on the very same address: validation reported it.
                    && !(*l && *is_link && a == addr)
            });
            if let Some((other, _, other_addr, _)) = earlier {
                c.error(
                    key.clone(),
                    quoted(addr),
                    format!(
                        "{proto} port {} is taken by {other} ({other_addr}) already",
                        addr.port()
                    ),
                );
            }
        }
    }

    /// The data directory exists and is writable, or can be created.
    fn check_data_dir(&self, c: &mut Checked) {
        let dir = &self.data_dir;
        if dir.as_os_str().is_empty() {
            return; // validation reported it
        }
        let value = quoted(dir.display());
        match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => c.error("data_dir", value, "not a directory"),
            Ok(_) => {
                if let Err(e) = writable(dir) {
                    c.error("data_dir", value, format!("not writable: {e}"));
                }
            }
            // Not there, or a file where a parent directory should be.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                // Created at start: the nearest directory that exists must take it.
                let parent = dir
                    .ancestors()
                    .skip(1)
                    .map(|a| {
                        if a.as_os_str().is_empty() {
                            Path::new(".")
                        } else {
                            a
                        }
                    })
                    .find(|a| std::fs::symlink_metadata(a).is_ok());
                let Some(parent) = parent else { return };
                if !parent.is_dir() {
                    c.error(
                        "data_dir",
                        value,
                        format!("cannot be created: {} is not a directory", parent.display()),
                    );
                } else if let Err(e) = writable(parent) {
                    c.error(
                        "data_dir",
                        value,
                        format!("cannot be created in {}: {e}", parent.display()),
                    );
                }
            }
            Err(e) => c.error("data_dir", value, format!("cannot be read: {e}")),
        }
    }
}

/// Whether two addresses of the same port take each other's place: the same address, or
/// one of them every address (IPv6's every address takes IPv4's too, as Linux binds it).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let every =
        |x: SocketAddr, y: SocketAddr| x.ip().is_unspecified() && (x.is_ipv6() || y.is_ipv4());
    a.ip() == b.ip() || every(a, b) || every(b, a)
}

/// Whether this process may create files in `dir`.
fn writable(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use rustix::fs::{Access, access};
        access(dir, Access::WRITE_OK | Access::EXEC_OK).map_err(std::io::Error::from)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Adds an error unless `path` opens as a file (its contents are the bridge's to parse).
fn openable(c: &mut Checked, key: &str, path: &Path) {
    if path.as_os_str().is_empty() {
        return; // validation reported it
    }
    let why = match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(m) if m.is_dir() => "a directory, not a file".to_owned(),
        Ok(_) => return,
        Err(e) => format!("cannot open: {e}"),
    };
    c.error(key, quoted(path.display()), why);
}

/// Why a users or PSK file cannot be used, without its path (the problem shows it as the
/// value).
fn file_reason(path: &Path, e: ConfigError) -> String {
    match e {
        ConfigError::Read { source, .. } => format!("cannot open: {source}"),
        ConfigError::PskFile { line, source, .. } => format!("line {line}: {source}"),
        ConfigError::Invalid { reason, .. } => {
            let prefix = format!("{}: ", path.display());
            reason
                .strip_prefix(&prefix)
                .map_or(reason.clone(), str::to_owned)
        }
        other => other.to_string(),
    }
}

/// A validation error as a problem: the field with its link's index, and its value.
fn problem(table: Option<&toml::Value>, link: Option<usize>, e: ConfigError) -> Problem {
    let (field, reason) = match e {
        ConfigError::Invalid { field, reason } => (field.to_owned(), reason),
        // Validation makes no other kind; named by the link at least.
        other => ("link".to_owned(), other.to_string()),
    };
    let key = match link {
        Some(i) => match field.strip_prefix("link") {
            Some(rest) => format!("link[{i}]{rest}"),
            None => field,
        },
        None => field,
    };
    let value = table.map_or_else(|| "(not set)".to_owned(), |t| value_at(t, &key));
    Problem { key, value, reason }
}

/// The value at `key` (`a.b[2].c`) of `table`, as TOML writes it.
fn value_at(table: &toml::Value, key: &str) -> String {
    let secret = key.ends_with(".psk") || key.ends_with("password");
    let mut v = Some(table);
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, i)) => (name, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        v = v.and_then(|v| v.get(name));
        if let Some(i) = index {
            v = v.and_then(|v| v.get(i));
        }
    }
    match v {
        None => "(not set)".into(),
        Some(_) if secret => "(hidden)".into(),
        Some(toml::Value::Table(_)) => "(a table)".into(),
        Some(v) => v.to_string(),
    }
}
