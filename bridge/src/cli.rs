//! The `edge-bridge` command line: its commands, their options and their help.
//!
//! Parsed by hand rather than with clap: clap's parser, help renderer and derived code took
//! about 150 KiB of the gateway binary (4 MB is the goal for gateways' flash), for six
//! commands whose options are plain `--name VALUE` pairs and flags. What users rely on stays:
//! `--name VALUE` and `--name=VALUE`, the short forms `-f`, `-c` and `-p`, options before or
//! after the positional argument, `--` before a value that starts with `-`, `--help` (or
//! `help COMMAND`) on every command, `--version`, and exit status 2 with a message naming the
//! option for anything the parser refuses.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use edge_bridge::client::ConnectArgs;
use edge_bridge::client::submit::{self, SubmitArgs};
use edge_bridge::client::tasks::TasksArgs;
use edge_bridge::client::watch::WatchArgs;
use edge_bridge::logging::LogFormat;

/// A command, with its options.
#[derive(Debug)]
pub(crate) enum Command {
    Run(RunArgs),
    GenConfig { data_dir: Option<String> },
    Submit(SubmitArgs),
    Watch(WatchArgs),
    Tasks(TasksArgs),
    CheckConfig { file: PathBuf },
}

/// `edge-bridge run`'s options.
#[derive(Debug, Default)]
pub(crate) struct RunArgs {
    pub(crate) config: Option<PathBuf>,
    pub(crate) bridge_id: Option<String>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) mqtt_listen: Option<SocketAddr>,
    pub(crate) device_listen: Option<SocketAddr>,
    pub(crate) log_format: Option<LogFormat>,
}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Parsed {
    Command(Box<Command>),
    /// `--help`, `-h` or `help`: the text to print on stdout (exit 0).
    Help(String),
    /// `--version` or `-V`.
    Version,
}

/// A command line the parser refuses: printed on stderr, exit status 2.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UsageError {
    /// The command it was parsing (`""` before one was named).
    command: &'static str,
    message: String,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cmd = if self.command.is_empty() {
            "edge-bridge".to_owned()
        } else {
            format!("edge-bridge {}", self.command)
        };
        write!(
            f,
            "{cmd}: {}\n(`{cmd} --help` lists the options)",
            self.message
        )
    }
}

const ABOUT: &str =
    "MQTT edge bridge: durable task queue and capability proxy for constrained devices";

const MAIN_HELP: &str = "\
Usage: edge-bridge <COMMAND> [OPTIONS]

Commands:
  run           Run the bridge (with the embedded MQTT broker unless the configuration
                names another)
  gen-config    Print the commented default configuration
  submit        Submit tasks and confirm each by the bridge's `queued` event
  watch         Follow status events: of one task until its final state, or of all
  tasks         List the queued and running tasks of a running bridge with the reason
                each waits, or show one task
  check-config  Check a configuration file whole, as `run` does before it opens anything
  help          Print this message or the help of the given command

Options:
  -h, --help     Print help (of a command: edge-bridge COMMAND --help)
  -V, --version  Print version
";

const RUN_HELP: &str = "\
Run the bridge (with the embedded MQTT broker unless the configuration names another).

Usage: edge-bridge run [OPTIONS]

Options:
      --config <FILE>          Configuration file (TOML); without it every setting has its
                               default
      --bridge-id <ID>         Overrides `bridge_id`
      --data-dir <DIR>         Overrides `data_dir`
      --mqtt-listen <ADDR>     Overrides the embedded broker's listener (port 0: any free
                               port)
      --device-listen <ADDR>   Replaces the device links with one plain TCP listener (port
                               0: any free port)
      --log-format <FORMAT>    Log lines on stderr as text, or as one JSON object per line
                               for log collectors: text or json [default: text, or
                               $EDGE_BRIDGE_LOG_FORMAT]
  -h, --help                   Print help
";

const GEN_CONFIG_HELP: &str = "\
Print the commented default configuration.

Usage: edge-bridge gen-config [OPTIONS]

Options:
      --data-dir <DIR>  Sets `data_dir` in the printed file (as the gateway packages do)
  -h, --help            Print help
";

const CONNECT_HELP: &str = "\
Where the bridge is:
      --config <FILE>      The bridge's configuration file: its broker address, login and
                           topic root are used (the options below override them)
      --broker <HOST:PORT> The MQTT broker the bridge uses [default: the configuration's,
                           or 127.0.0.1:1883]
      --root <TOPIC>       The bridge's topic root [default: the configuration's, or
                           edge/{bridge-id}]
      --bridge-id <ID>     The bridge's id, for the default topic root edge/{bridge-id}
      --username <NAME>    MQTT user name; the password is read from the environment
                           variable EDGE_BRIDGE_PASSWORD (not from the command line, where
                           `ps` shows it)
";

const SUBMIT_HELP: &str = "\
Submit tasks and confirm each by the bridge's `queued` event. Exit status 1 if any was
rejected or never confirmed (with --wait, also if any did not complete), 2 if the command
could not do its work.

Usage: edge-bridge submit [OPTIONS] (--capability <NAME> | --file <FILE>)

Options:
  -f, --file <FILE>          JSON lines, one submission per line (the MQTT API's JSON);
                             `-` reads standard input. Without it, one task is made from
                             the options below
  -c, --capability <NAME>    The capability the task needs
  -p, --payload <JSON>       The task's payload, as JSON ('{\"ms\":500}')
      --priority <0-5>       0 (P0, most urgent) to 5
      --device <ID>          The device to run it on (otherwise any online device offering
                             the capability)
      --deadline-ms <MS>     Never started later than this many milliseconds after
                             submission
      --id <ID>              The task id (the idempotency key); generated if absent
      --trace-id <ID>        A trace id carried into the task's events
      --window <N>           Submissions waiting for the bridge's answer at once, at most
                             (1 to 1000) [default: 64]
      --timeout <DURATION>   How long to wait for the bridge's answer before sending a
                             submission again [default: 10s]
      --retries <N>          Times a submission is sent again without an answer before it
                             counts as unconfirmed [default: 3]
      --wait                 Follow every task to its final state and print that event
                             (JSON) on standard output
  -h, --help                 Print help
";

const WATCH_HELP: &str = "\
Follow status events: of one task until its final state (exit status 1 unless it
completed), or of all.

Usage: edge-bridge watch [OPTIONS] [ID]

Arguments:
  [ID]  One task: its current state, then its events until its final state

Options:
      --json                Print each event as the JSON the bridge published
      --count <N>           Stop after this many events
      --timeout <DURATION>  How long to wait for the broker (and, with an id, for the
                            bridge's answer) [default: 5s]
  -h, --help                Print help
";

const TASKS_HELP: &str = "\
List the queued and running tasks of a running bridge with the reason each waits, or show
one task (asked over MQTT: works from any host that reaches the broker).

Usage: edge-bridge tasks [OPTIONS] [ID]

Arguments:
  [ID]  One task (live or finished) instead of the list

Options:
      --limit <N>           Most tasks listed (on a device first, then queued in dispatch
                            order) [default: 100]
      --json                Print the bridge's answer as JSON
      --timeout <DURATION>  How long to wait for the bridge's answer [default: 5s]
  -h, --help                Print help
";

const CHECK_CONFIG_HELP: &str = "\
Check a configuration file whole, as `run` does before it opens anything: every value, the
files it names (certificates, keys, users and PSK files), listen addresses that collide,
the data directory. Prints every problem with its key and value; changes nothing.

Usage: edge-bridge check-config <FILE>

Arguments:
  <FILE>  The configuration file (TOML)

Options:
  -h, --help  Print help
";

/// The help of `command` (`""`: the bridge's own), as `--help` prints it.
fn help(command: &str) -> Option<String> {
    let text = match command {
        "" => return Some(format!("{ABOUT}\n\n{MAIN_HELP}")),
        "run" => RUN_HELP.to_owned(),
        "gen-config" => GEN_CONFIG_HELP.to_owned(),
        "submit" => format!("{SUBMIT_HELP}\n{CONNECT_HELP}"),
        "watch" => format!("{WATCH_HELP}\n{CONNECT_HELP}"),
        "tasks" => format!("{TASKS_HELP}\n{CONNECT_HELP}"),
        "check-config" => CHECK_CONFIG_HELP.to_owned(),
        _ => return None,
    };
    Some(text)
}

/// One word of the command line, as the parser sees it.
#[derive(Debug, PartialEq, Eq)]
enum Word {
    /// `--name` (its `=value`, if any, is kept for [`Words::value`]).
    Long(String),
    /// `-x` (with `-xVALUE`, the rest is kept for [`Words::value`]).
    Short(char),
    /// Anything else, and everything after `--`.
    Positional(String),
}

/// The command line's words after the command's name.
struct Words {
    command: &'static str,
    rest: std::vec::IntoIter<String>,
    /// The value glued to the last option (`--name=value`, `-xvalue`).
    glued: Option<String>,
    /// The last option, for messages about its value.
    last: String,
    after_dashes: bool,
    /// The options read so far (by their long names): each may be given once.
    seen: Vec<String>,
}

impl Words {
    fn new(command: &'static str, rest: Vec<String>) -> Self {
        Self {
            command,
            rest: rest.into_iter(),
            glued: None,
            last: String::new(),
            after_dashes: false,
            seen: Vec::new(),
        }
    }

    fn error(&self, message: impl Into<String>) -> UsageError {
        UsageError {
            command: self.command,
            message: message.into(),
        }
    }

    /// The next word; an error when the previous option was given a value it does not take.
    fn next(&mut self) -> Result<Option<Word>, UsageError> {
        if let Some(value) = self.glued.take() {
            return Err(self.error(format!("{} takes no value (got {value:?})", self.last)));
        }
        let Some(word) = self.rest.next() else {
            return Ok(None);
        };
        if self.after_dashes {
            return Ok(Some(Word::Positional(word)));
        }
        if word == "--" {
            self.after_dashes = true;
            return self.next();
        }
        if let Some(long) = word.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (long, None),
            };
            self.last = format!("--{name}");
            self.glued = value;
            return Ok(Some(Word::Long(name.to_owned())));
        }
        let mut chars = word.chars();
        if chars.next() == Some('-') {
            if let Some(c) = chars.next() {
                self.last = format!("-{c}");
                // `-fFILE` and `-f=FILE` alike.
                let rest = chars.as_str();
                let rest = rest.strip_prefix('=').unwrap_or(rest);
                self.glued = (!rest.is_empty()).then(|| rest.to_owned());
                return Ok(Some(Word::Short(c)));
            }
        }
        Ok(Some(Word::Positional(word)))
    }

    /// The value of the option just read: glued to it, or the next word. A next word that
    /// looks like an option is not taken as a value (`-c --wait` forgot the capability):
    /// such a value is given glued, `--payload=-1`.
    fn value(&mut self) -> Result<String, UsageError> {
        if let Some(value) = self.glued.take() {
            return Ok(value);
        }
        match self.rest.as_slice().first() {
            Some(next) if !next.starts_with('-') || next == "-" => {
                Ok(self.rest.next().unwrap_or_default())
            }
            _ => Err(self.error(format!("{} needs a value", self.last))),
        }
    }

    /// Refuses `name` (an option's long name) the second time it is given.
    fn once(&mut self, name: &str) -> Result<(), UsageError> {
        if self.seen.iter().any(|n| n == name) {
            return Err(self.error(format!("--{name} is given twice")));
        }
        self.seen.push(name.to_owned());
        Ok(())
    }

    /// The value of the option just read, converted by `parse`.
    fn parsed<T, E: fmt::Display>(
        &mut self,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, UsageError> {
        let value = self.value()?;
        parse(&value).map_err(|e| self.error(format!("{} {value:?}: {e}", self.last)))
    }

    fn value_as<T: FromStr>(&mut self) -> Result<T, UsageError>
    where
        T::Err: fmt::Display,
    {
        self.parsed(T::from_str)
    }

    fn duration(&mut self) -> Result<Duration, UsageError> {
        self.parsed(humantime_serde::re::humantime::parse_duration)
    }

    /// The error for a word the command does not take.
    fn unexpected(&self, word: Word) -> UsageError {
        match word {
            Word::Long(name) => self.error(format!("no option --{name}")),
            Word::Short(c) => self.error(format!("no option -{c}")),
            Word::Positional(p) => self.error(format!("unexpected argument {p:?}")),
        }
    }

    /// Sets `slot` to the one positional argument the command takes.
    fn positional(&self, slot: &mut Option<String>, word: String) -> Result<(), UsageError> {
        if slot.is_some() {
            return Err(self.error(format!("unexpected argument {word:?}")));
        }
        *slot = Some(word);
        Ok(())
    }
}

/// Whether `word` asks for help.
fn is_help(word: &Word) -> bool {
    matches!(word, Word::Long(n) if n == "help") || *word == Word::Short('h')
}

/// Reads an option of [`ConnectArgs`]; `false` when `name` is none of them.
fn connect_option(
    words: &mut Words,
    args: &mut ConnectArgs,
    name: &str,
) -> Result<bool, UsageError> {
    match name {
        "config" => args.config = Some(words.value()?.into()),
        "broker" => args.broker = Some(words.value()?),
        "root" => args.root = Some(words.value()?),
        "bridge-id" => args.bridge_id = Some(words.value()?),
        "username" => args.username = Some(words.value()?),
        _ => return Ok(false),
    }
    Ok(true)
}

/// Parses the arguments after the program's name.
pub(crate) fn parse(args: Vec<String>) -> Result<Parsed, UsageError> {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Err(UsageError {
            command: "",
            message: format!("no command given\n\n{MAIN_HELP}"),
        });
    };
    let rest: Vec<String> = args.collect();
    let command: &'static str = match first.as_str() {
        "-h" | "--help" => return Ok(Parsed::Help(help("").unwrap_or_default())),
        "-V" | "--version" => return Ok(Parsed::Version),
        "help" => {
            return match rest.first() {
                None => Ok(Parsed::Help(help("").unwrap_or_default())),
                Some(c) => help(c).map(Parsed::Help).ok_or_else(|| UsageError {
                    command: "",
                    message: format!("no command {c:?}"),
                }),
            };
        }
        "run" => "run",
        "gen-config" => "gen-config",
        "submit" => "submit",
        "watch" => "watch",
        "tasks" => "tasks",
        "check-config" => "check-config",
        other => {
            return Err(UsageError {
                command: "",
                message: format!(
                    "no command {other:?}: run, gen-config, submit, watch, tasks or check-config"
                ),
            });
        }
    };
    let mut words = Words::new(command, rest);
    let parsed = match command {
        "run" => run(&mut words),
        "gen-config" => gen_config(&mut words),
        "submit" => submit(&mut words),
        "watch" => watch(&mut words),
        "tasks" => tasks(&mut words),
        _ => check_config(&mut words),
    }?;
    Ok(match parsed {
        Some(command) => Parsed::Command(Box::new(command)),
        None => Parsed::Help(help(command).unwrap_or_default()),
    })
}

// Each command's parser returns `None` when asked for help.

fn run(words: &mut Words) -> Result<Option<Command>, UsageError> {
    let mut args = RunArgs::default();
    while let Some(word) = words.next()? {
        match &word {
            w if is_help(w) => return Ok(None),
            Word::Long(name) => {
                words.once(name)?;
                match name.as_str() {
                    "config" => args.config = Some(words.value()?.into()),
                    "bridge-id" => args.bridge_id = Some(words.value()?),
                    "data-dir" => args.data_dir = Some(words.value()?.into()),
                    "mqtt-listen" => args.mqtt_listen = Some(words.value_as()?),
                    "device-listen" => args.device_listen = Some(words.value_as()?),
                    "log-format" => args.log_format = Some(words.value_as()?),
                    _ => return Err(words.unexpected(word)),
                }
            }
            _ => return Err(words.unexpected(word)),
        }
    }
    Ok(Some(Command::Run(args)))
}

fn gen_config(words: &mut Words) -> Result<Option<Command>, UsageError> {
    let mut data_dir = None;
    while let Some(word) = words.next()? {
        match &word {
            w if is_help(w) => return Ok(None),
            Word::Long(name) if name == "data-dir" => {
                words.once(name)?;
                data_dir = Some(words.value()?);
            }
            _ => return Err(words.unexpected(word)),
        }
    }
    Ok(Some(Command::GenConfig { data_dir }))
}

fn submit(words: &mut Words) -> Result<Option<Command>, UsageError> {
    let mut args = SubmitArgs::default();
    // The options that make one task, which --file replaces.
    let mut one_task: Option<String> = None;
    while let Some(word) = words.next()? {
        let name = match &word {
            w if is_help(w) => return Ok(None),
            Word::Long(name) => name.clone(),
            Word::Short('f') => "file".to_owned(),
            Word::Short('c') => "capability".to_owned(),
            Word::Short('p') => "payload".to_owned(),
            _ => return Err(words.unexpected(word)),
        };
        words.once(&name)?;
        match name.as_str() {
            "file" => args.file = Some(words.value()?.into()),
            "capability" => args.capability = Some(words.value()?),
            "payload" => args.payload = Some(words.value()?),
            "priority" => args.priority = Some(words.value_as()?),
            "device" => args.device = Some(words.value()?),
            "deadline-ms" => args.deadline_ms = Some(words.value_as()?),
            "id" => args.id = Some(words.value()?),
            "trace-id" => args.trace_id = Some(words.value()?),
            "window" => {
                args.window = words.parsed(|v| match v.parse::<u16>() {
                    Ok(n) if submit::WINDOW_RANGE.contains(&n) => Ok(n),
                    _ => Err(format!(
                        "not a number from {} to {}",
                        submit::WINDOW_RANGE.start(),
                        submit::WINDOW_RANGE.end()
                    )),
                })?;
            }
            "timeout" => args.timeout = words.duration()?,
            "retries" => args.retries = words.value_as()?,
            "wait" => args.wait = true,
            _ if connect_option(words, &mut args.connect, &name)? => {}
            _ => return Err(words.unexpected(word)),
        }
        if matches!(
            name.as_str(),
            "capability" | "payload" | "priority" | "device" | "deadline-ms" | "id" | "trace-id"
        ) {
            one_task.get_or_insert(format!("--{name}"));
        }
    }
    match (&args.file, one_task) {
        (Some(_), Some(option)) => Err(words.error(format!(
            "--file and {option} cannot be used together: a file's lines are whole submissions"
        ))),
        (None, _) if args.capability.is_none() => {
            Err(words.error("--capability (one task) or --file (JSON lines) is required"))
        }
        _ => Ok(Some(Command::Submit(args))),
    }
}

fn watch(words: &mut Words) -> Result<Option<Command>, UsageError> {
    let mut args = WatchArgs::default();
    let WatchArgs {
        id,
        json,
        count,
        timeout,
        connect,
    } = &mut args;
    let query = Query {
        id,
        json,
        timeout,
        connect,
    };
    let read = query.read(words, |words, name| {
        if name != "count" {
            return Ok(false);
        }
        *count = Some(words.value_as()?);
        Ok(true)
    })?;
    Ok(read.then_some(Command::Watch(args)))
}

fn tasks(words: &mut Words) -> Result<Option<Command>, UsageError> {
    let mut args = TasksArgs::default();
    let TasksArgs {
        id,
        limit,
        json,
        timeout,
        connect,
    } = &mut args;
    let query = Query {
        id,
        json,
        timeout,
        connect,
    };
    let read = query.read(words, |words, name| {
        if name != "limit" {
            return Ok(false);
        }
        *limit = words.value_as()?;
        Ok(true)
    })?;
    Ok(read.then_some(Command::Tasks(args)))
}

/// What `watch` and `tasks` both take: at most one task id, `--json`, `--timeout` and the
/// connection's options.
struct Query<'a> {
    id: &'a mut Option<String>,
    json: &'a mut bool,
    timeout: &'a mut Duration,
    connect: &'a mut ConnectArgs,
}

impl Query<'_> {
    /// Reads the command's words; `other` reads the one option of its own and says `false`
    /// for any other. `Ok(false)` when asked for help.
    fn read(
        self,
        words: &mut Words,
        mut other: impl FnMut(&mut Words, &str) -> Result<bool, UsageError>,
    ) -> Result<bool, UsageError> {
        while let Some(word) = words.next()? {
            match word {
                ref w if is_help(w) => return Ok(false),
                Word::Positional(p) => words.positional(self.id, p)?,
                Word::Long(ref name) => {
                    words.once(name)?;
                    match name.as_str() {
                        "json" => *self.json = true,
                        "timeout" => *self.timeout = words.duration()?,
                        n if other(words, n)? => {}
                        n if connect_option(words, self.connect, n)? => {}
                        _ => return Err(words.unexpected(word)),
                    }
                }
                Word::Short(_) => return Err(words.unexpected(word)),
            }
        }
        Ok(true)
    }
}

fn check_config(words: &mut Words) -> Result<Option<Command>, UsageError> {
    let mut file = None;
    while let Some(word) = words.next()? {
        match word {
            ref w if is_help(w) => return Ok(None),
            Word::Positional(path) => words.positional(&mut file, path)?,
            _ => return Err(words.unexpected(word)),
        }
    }
    match file {
        Some(file) => Ok(Some(Command::CheckConfig { file: file.into() })),
        None => Err(words.error("the configuration file to check is required")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_line(line: &str) -> Result<Parsed, UsageError> {
        parse(line.split_whitespace().map(str::to_owned).collect())
    }

    fn command(line: &str) -> Command {
        match parse_line(line) {
            Ok(Parsed::Command(c)) => *c,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn refused(line: &str) -> String {
        match parse_line(line) {
            Err(e) => e.to_string(),
            other => panic!("{line} was accepted: {other:?}"),
        }
    }

    #[test]
    fn run_reads_every_option_in_both_spellings() {
        let Command::Run(args) = command(
            "run --config /etc/b.toml --bridge-id=gw1 --data-dir /var/lib/b \
             --mqtt-listen 127.0.0.1:0 --device-listen=[::1]:7000 --log-format JSON",
        ) else {
            panic!("not run");
        };
        assert_eq!(args.config, Some(PathBuf::from("/etc/b.toml")));
        assert_eq!(args.bridge_id.as_deref(), Some("gw1"));
        assert_eq!(args.data_dir, Some(PathBuf::from("/var/lib/b")));
        assert_eq!(args.mqtt_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(args.device_listen, Some("[::1]:7000".parse().unwrap()));
        assert_eq!(args.log_format, Some(LogFormat::Json));
    }

    #[test]
    fn submit_takes_short_options_defaults_and_connection_options_anywhere() {
        let Command::Submit(args) =
            command("submit -c sleep -p{\"ms\":5} --priority 0 --broker 127.0.0.1:1 --wait")
        else {
            panic!("not submit");
        };
        assert_eq!(args.capability.as_deref(), Some("sleep"));
        assert_eq!(args.payload.as_deref(), Some("{\"ms\":5}"));
        assert_eq!(args.priority, Some(0));
        assert_eq!(args.connect.broker.as_deref(), Some("127.0.0.1:1"));
        assert!(args.wait);
        assert_eq!(args.window, 64);
        assert_eq!(args.timeout, Duration::from_secs(10));
        assert_eq!(args.retries, 3);
        // A short option's value may follow `=`, and `-` (standard input) is a value.
        let Command::Submit(args) = command("submit --payload=-1 -c=x") else {
            panic!("not submit");
        };
        assert_eq!(args.payload.as_deref(), Some("-1"));
        assert_eq!(args.capability.as_deref(), Some("x"));
        for line in ["submit -f=- --window 8", "submit -f - --window 8"] {
            let Command::Submit(args) = command(line) else {
                panic!("not submit");
            };
            assert_eq!((args.file, args.window), (Some(PathBuf::from("-")), 8));
        }
    }

    #[test]
    fn watch_and_tasks_take_an_id_before_or_after_their_options() {
        let Command::Watch(args) = command("watch --json t1 --timeout 2s --root edge/x") else {
            panic!("not watch");
        };
        assert_eq!(args.id.as_deref(), Some("t1"));
        assert!(args.json);
        assert_eq!(args.timeout, Duration::from_secs(2));
        assert_eq!(args.connect.root.as_deref(), Some("edge/x"));
        let Command::Tasks(args) = command("tasks --limit 5 -- -odd-id") else {
            panic!("not tasks");
        };
        assert_eq!(args.id.as_deref(), Some("-odd-id"));
        assert_eq!(args.limit, 5);
        assert_eq!(args.timeout, Duration::from_secs(5));
    }

    #[test]
    fn bad_command_lines_are_refused_naming_the_option() {
        for (line, needle) in [
            ("", "no command given"),
            ("serve", "no command \"serve\""),
            ("run --bogus", "no option --bogus"),
            ("run --config", "--config needs a value"),
            ("run --mqtt-listen nowhere", "--mqtt-listen \"nowhere\""),
            ("run --log-format xml", "--log-format \"xml\""),
            ("submit", "--capability (one task) or --file"),
            (
                "submit -f x.jsonl -c sleep",
                "--file and --capability cannot be used together",
            ),
            (
                "submit -c s --window 0",
                "--window \"0\": not a number from 1 to 1000",
            ),
            ("submit -c s --window 1001", "--window \"1001\""),
            ("submit -c s --priority high", "--priority \"high\""),
            ("submit -c s --timeout soon", "--timeout \"soon\""),
            ("submit -c s --wait=yes", "--wait takes no value"),
            ("watch a b", "unexpected argument \"b\""),
            ("tasks -x", "no option -x"),
            (
                "check-config",
                "the configuration file to check is required",
            ),
            ("help serve", "no command \"serve\""),
            ("submit -c --wait", "-c needs a value"),
            ("tasks --config --json", "--config needs a value"),
            ("submit -c a -c b", "--capability is given twice"),
            ("submit -f x.jsonl --file y.jsonl", "--file is given twice"),
            ("watch --json --json", "--json is given twice"),
            ("run --data-dir a --data-dir=b", "--data-dir is given twice"),
        ] {
            let message = refused(line);
            assert!(message.contains(needle), "{line:?}: {message}");
            assert!(message.contains("--help` lists the options"), "{message}");
        }
    }

    #[test]
    fn help_is_there_for_every_command_and_names_every_option_it_parses() {
        assert!(matches!(parse_line("--version"), Ok(Parsed::Version)));
        assert!(matches!(parse_line("-V"), Ok(Parsed::Version)));
        let Ok(Parsed::Help(main)) = parse_line("--help") else {
            panic!("no help");
        };
        for (command, options) in [
            (
                "run",
                &[
                    "--config",
                    "--bridge-id",
                    "--data-dir",
                    "--mqtt-listen",
                    "--device-listen",
                    "--log-format",
                ][..],
            ),
            ("gen-config", &["--data-dir"][..]),
            (
                "submit",
                &[
                    "--file",
                    "--capability",
                    "--payload",
                    "--priority",
                    "--device",
                    "--deadline-ms",
                    "--id",
                    "--trace-id",
                    "--window",
                    "--timeout",
                    "--retries",
                    "--wait",
                    "--broker",
                    "--username",
                ][..],
            ),
            (
                "watch",
                &[
                    "--json",
                    "--count",
                    "--timeout",
                    "--config",
                    "--root",
                    "--bridge-id",
                ][..],
            ),
            ("tasks", &["--limit", "--json", "--timeout", "--broker"][..]),
            ("check-config", &["<FILE>"][..]),
        ] {
            assert!(
                main.contains(&format!("\n  {command} ")),
                "{command} not in {main}"
            );
            for line in [
                format!("{command} --help"),
                format!("{command} -h"),
                format!("help {command}"),
            ] {
                let Ok(Parsed::Help(text)) = parse_line(&line) else {
                    panic!("{line}: no help");
                };
                assert!(
                    text.contains(&format!("Usage: edge-bridge {command}")),
                    "{text}"
                );
                for option in options {
                    assert!(text.contains(option), "{line}: no {option} in {text}");
                }
            }
        }
    }
}
