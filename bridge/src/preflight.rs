//! What `edge-bridge run` and `edge-bridge check-config` do before anything opens: the whole
//! configuration checked ([`check`]), and the data directory taken for this bridge alone
//! ([`DataDirLock`]).
//!
//! broker-config checks the values and that the files open; here the certificates, keys and
//! cipher lists are built exactly as the links and the broker build them at start, so a file
//! that opens but does not parse, a key that is not its certificate's or a cipher list naming
//! a suite the DTLS stack does not have are reported with every other problem, each naming
//! its key.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use broker_config::{BrokerConfig, Checked, Config, LinkConfig, quoted};

use crate::link::dtls::LinkDtlsError;
use crate::link::dtls::session::ContextError;
use crate::link::tls::LinkTlsError;
use crate::tls::TlsError;

/// Checks the whole configuration ([`Config::check`]), then builds the TLS and DTLS settings
/// of every part whose files opened. Reads files, changes nothing.
pub fn check(config: &Config) -> Checked {
    let mut checked = config.check();
    check_broker_tls(config, &mut checked);
    for (i, link) in config.links.iter().enumerate() {
        let key = format!("link[{i}]");
        // A file that does not open was reported; parsing the others tells nothing more.
        if checked.has_error_under(&key) {
            continue;
        }
        match link {
            LinkConfig::Tls {
                listen,
                cert_file,
                key_file,
                client_ca_file,
                ..
            } => {
                let Err(e) =
                    crate::link::tls::acceptor(*listen, cert_file, key_file, client_ca_file)
                else {
                    continue;
                };
                match e {
                    LinkTlsError::File {
                        field,
                        path,
                        source,
                        ..
                    } => checked.error(
                        format!("{key}.{field}"),
                        quoted(path.display()),
                        source.to_string(),
                    ),
                    LinkTlsError::NoUsableCa { path, ignored, .. } => checked.error(
                        format!("{key}.client_ca_file"),
                        quoted(path.display()),
                        format!("none of its {ignored} certificates is a usable CA certificate"),
                    ),
                    LinkTlsError::Config { reason, .. } => {
                        checked.error(
                            format!("{key}.key_file"),
                            quoted(key_file.display()),
                            reason,
                        );
                    }
                }
            }
            LinkConfig::Dtls(d) => {
                let built = crate::link::dtls::settings(d)
                    .and_then(|s| crate::link::dtls::context(&s).map(drop));
                let Err(e) = built else {
                    continue;
                };
                let (name, value, reason) = match e {
                    LinkDtlsError::Context { source, .. } => match source {
                        ContextError::Ciphers(unknown) => (
                            "ciphers",
                            quoted(&d.ciphers),
                            format!(
                                "no such cipher suite {:?} (known: {})",
                                unknown.0,
                                crate::link::dtls::session::known_suites()
                            ),
                        ),
                        ContextError::File { setting, source } => {
                            (setting, quoted(source.path().display()), source.to_string())
                        }
                        other => ("listen", d.listen.to_string(), other.to_string()),
                    },
                    // Validation and the file check report these first; kept for safety.
                    other => ("listen", d.listen.to_string(), other.to_string()),
                };
                checked.error(format!("{key}.{name}"), value, reason);
            }
            LinkConfig::Tcp { .. } | LinkConfig::Serial { .. } => {}
        }
    }
    checked
}

/// The embedded broker's TLS listener, or TLS towards an external broker, built as at start.
fn check_broker_tls(config: &Config, checked: &mut Checked) {
    if checked.has_error_under("broker.tls") {
        return;
    }
    let (files, result): (Vec<(&str, &Path)>, _) = match &config.broker {
        BrokerConfig::Embedded { tls: Some(t), .. } => (
            vec![
                ("broker.tls.cert_file", t.cert_file.as_path()),
                ("broker.tls.key_file", t.key_file.as_path()),
            ],
            crate::broker::tls::acceptor(t).map(drop),
        ),
        BrokerConfig::External { tls: Some(t), .. } => {
            let mut files = vec![("broker.tls.ca_file", t.ca_file.as_path())];
            files.extend(
                t.client_cert
                    .as_deref()
                    .map(|p| ("broker.tls.client_cert", p)),
            );
            files.extend(
                t.client_key
                    .as_deref()
                    .map(|p| ("broker.tls.client_key", p)),
            );
            (files, crate::tls::client_config(t).map(drop))
        }
        _ => return,
    };
    let Err(e) = result else { return };
    // The error names the file; the key is the one that names that file.
    let key_of = |path: &Path| {
        files
            .iter()
            .find(|(_, p)| *p == path)
            .map_or("broker.tls", |(k, _)| k)
    };
    match e {
        TlsError::File { path, source } => {
            checked.error(key_of(&path), quoted(path.display()), source.to_string());
        }
        TlsError::NoUsableCa { path, ignored } => checked.error(
            key_of(&path),
            quoted(path.display()),
            format!("none of its {ignored} certificates is a usable CA certificate"),
        ),
        TlsError::Config(reason) => {
            let (key, path) = files
                .last()
                .copied()
                .unwrap_or(("broker.tls", Path::new("")));
            checked.error(key, quoted(path.display()), reason);
        }
    }
}

/// The file in the data directory a running bridge holds locked.
pub const LOCK_FILE: &str = "edge-bridge.lock";

/// Why the data directory cannot be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// Another process holds the lock: a second bridge on the same queue would corrupt its
    /// order and run tasks twice.
    #[error(
        "data directory {} is in use by another edge-bridge{} (lock held on {})",
        dir.display(),
        pid.map(|p| format!(", pid {p}")).unwrap_or_default(),
        lock.display()
    )]
    InUse {
        dir: PathBuf,
        lock: PathBuf,
        /// The holder's process id, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// The directory or its lock file cannot be made or locked.
    #[error("data directory {}: {what}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The data directory, held by this process for as long as the value lives (an advisory
/// `flock` on [`LOCK_FILE`], which the kernel releases when the process ends however it
/// ends, so a crash leaves nothing to clean up).
#[derive(Debug)]
pub struct DataDirLock {
    /// Holds the lock; closed on drop.
    _file: std::fs::File,
}

impl DataDirLock {
    /// Creates `dir` if needed and locks it, or says who holds it.
    pub fn take(dir: &Path) -> Result<Self, DataDirError> {
        let io = |what| {
            let dir = dir.to_owned();
            move |source| DataDirError::Io { dir, what, source }
        };
        std::fs::create_dir_all(dir).map_err(io("cannot create it"))?;
        let lock = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io("cannot open its lock file"))?;
        #[cfg(unix)]
        {
            use rustix::fs::{FlockOperation, flock};
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    return Err(DataDirError::InUse {
                        dir: dir.to_owned(),
                        lock,
                        pid: text.trim().parse().ok(),
                    });
                }
                Err(e) => return Err(io("cannot lock it")(e.into())),
            }
        }
        // For the message a second bridge prints: which process holds it. Only that: on a
        // full disk the write fails, and the bridge must still start (its storage reserve
        // is given back so that the queue can open), so a failure is left out.
        let pid = format!("{}\n", std::process::id());
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()));
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_is_taken_once_and_free_again_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDirLock::take(&data).unwrap();
        let e = DataDirLock::take(&data).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "data directory {} is in use by another edge-bridge, pid {} (lock held on {})",
                data.display(),
                std::process::id(),
                data.join(LOCK_FILE).display()
            )
        );
        drop(first);
        DataDirLock::take(&data).unwrap();
    }

    #[test]
    fn the_default_files_dtls_example_ciphers_are_known_suites() {
        let start = broker_config::DEFAULT_CONFIG
            .find("# ciphers = ")
            .expect("a ciphers sample line");
        let line = broker_config::DEFAULT_CONFIG[start + 2..]
            .lines()
            .next()
            .unwrap();
        let value = line
            .split_once('#')
            .map_or(line, |(value, _comment)| value)
            .trim();
        let config = Config::parse(
            &format!(
                "[[link]]\nkind = \"dtls\"\nlisten = \"127.0.0.1:0\"\n\
                 psk = {{ \"dev-1\" = \"00112233445566778899aabbccddeeff\" }}\n{value}\n"
            ),
            "sample",
        )
        .unwrap();
        let checked = check(&config);
        assert_eq!(checked.errors, [], "{line}");
        let LinkConfig::Dtls(d) = &config.links[0] else {
            unreachable!()
        };
        assert!(!d.ciphers.contains("..."), "{line}");
    }
}
