//! `edge-bridge submit`: submits one task (from flags) or many (JSON lines), and confirms each
//! by the bridge's own answer, not the broker's.
//!
//! A broker's PUBACK says only that the broker has the message; the task exists when the
//! bridge publishes its `queued` event (after its commit), or it was refused (`rejected`).
//! So the command keeps a window of submissions waiting for that answer, sends again, with
//! the same id, what got none within `--timeout` (the id makes that safe: the bridge never
//! creates a second task for it), and with `--wait` follows each task to its final state.
//! Submissions without an id get one (`{prefix}-{line}`), so each answer can be matched.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rumqttc::QoS;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{ConnectArgs, Incoming, connect, json_name, subscribe, token};
use crate::api::{StatusEvent, TaskState};

/// The values `--window` may take.
pub const WINDOW_RANGE: std::ops::RangeInclusive<u16> = 1..=1000;

#[derive(Debug)]
pub struct SubmitArgs {
    /// JSON lines, one submission per line (the MQTT API's JSON); `-` reads standard input.
    /// Without it, one task is made from the options below.
    pub file: Option<PathBuf>,
    /// The capability the task needs.
    pub capability: Option<String>,
    /// The task's payload, as JSON (`'{"ms":500}'`).
    pub payload: Option<String>,
    /// 0 (P0, most urgent) to 5.
    pub priority: Option<u8>,
    /// The device to run it on (otherwise any online device offering the capability).
    pub device: Option<String>,
    /// Never started later than this many milliseconds after submission.
    pub deadline_ms: Option<u64>,
    /// The task id (the idempotency key); generated if absent.
    pub id: Option<String>,
    /// A trace id carried into the task's events.
    pub trace_id: Option<String>,
    /// Submissions waiting for the bridge's answer at once, at most (in [`WINDOW_RANGE`]).
    pub window: u16,
    /// How long to wait for the bridge's answer before sending a submission again.
    pub timeout: Duration,
    /// Times a submission is sent again without an answer before it counts as unconfirmed.
    pub retries: u32,
    /// Follow every task to its final state and print that event (JSON) on standard output.
    pub wait: bool,
    pub connect: ConnectArgs,
}

impl Default for SubmitArgs {
    /// No task yet; a window of 64, answers awaited 10 s, each submission sent 3 more times.
    fn default() -> Self {
        Self {
            file: None,
            capability: None,
            payload: None,
            priority: None,
            device: None,
            deadline_ms: None,
            id: None,
            trace_id: None,
            window: 64,
            timeout: Duration::from_secs(10),
            retries: 3,
            wait: false,
            connect: ConnectArgs::default(),
        }
    }
}

/// What became of the submissions.
#[derive(Debug, Default)]
pub struct Summary {
    pub submitted: u64,
    /// Confirmed by a `queued` (or later) event.
    pub accepted: u64,
    pub rejected: u64,
    /// Lines that were not submissions (not a JSON object, a repeated id).
    pub invalid: u64,
    /// No answer after every retry.
    pub unconfirmed: u64,
    /// With `--wait`: tasks that ended `completed`, and those that ended otherwise.
    pub completed: u64,
    pub not_completed: u64,
    pub resent: u64,
}

impl Summary {
    /// Whether every submission was accepted (and, with `--wait`, completed).
    pub fn all_good(&self) -> bool {
        self.rejected == 0 && self.invalid == 0 && self.unconfirmed == 0 && self.not_completed == 0
    }
}

/// A submission waiting for the bridge's answer.
struct Pending {
    text: String,
    sent_at: Instant,
    tries: u32,
}

/// Where submissions come from, one at a time.
enum Source {
    One(Option<Value>),
    Lines {
        lines: Box<dyn Iterator<Item = std::io::Result<String>>>,
        number: u64,
    },
}

impl Source {
    fn open(args: &SubmitArgs) -> anyhow::Result<Self> {
        let Some(path) = &args.file else {
            let mut task = Map::new();
            let mut put = |k: &str, v: Value| {
                task.insert(k.to_owned(), v);
            };
            put(
                "capability",
                args.capability.clone().unwrap_or_default().into(),
            );
            if let Some(p) = &args.payload {
                let v: Value = serde_json::from_str(p)
                    .with_context(|| format!("--payload {p:?} is not JSON"))?;
                put("payload", v);
            }
            if let Some(p) = args.priority {
                put("priority", p.into());
            }
            if let Some(d) = &args.device {
                put("device", d.clone().into());
            }
            if let Some(d) = args.deadline_ms {
                put("deadline_ms", d.into());
            }
            if let Some(i) = &args.id {
                put("id", i.clone().into());
            }
            if let Some(t) = &args.trace_id {
                put("trace_id", t.clone().into());
            }
            return Ok(Self::One(Some(Value::Object(task))));
        };
        let lines: Box<dyn Iterator<Item = std::io::Result<String>>> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock().lines())
        } else {
            let file =
                std::fs::File::open(path).with_context(|| format!("--file {}", path.display()))?;
            Box::new(std::io::BufReader::new(file).lines())
        };
        Ok(Self::Lines { lines, number: 0 })
    }

    /// The next submission with its line number, `Err` for a line that is not one; `None`
    /// at the end.
    fn next(&mut self) -> Option<anyhow::Result<(u64, Value)>> {
        match self {
            Self::One(task) => task.take().map(|t| Ok((1, t))),
            Self::Lines { lines, number } => loop {
                let line = match lines.next()? {
                    Ok(l) => l,
                    Err(e) => return Some(Err(anyhow::anyhow!("reading the input: {e}"))),
                };
                *number += 1;
                if line.trim().is_empty() {
                    continue;
                }
                return Some(match serde_json::from_str::<Value>(&line) {
                    Ok(v @ Value::Object(_)) => Ok((*number, v)),
                    Ok(_) => Err(anyhow::anyhow!("line {number}: not a JSON object")),
                    Err(e) => Err(anyhow::anyhow!("line {number}: not JSON ({e})")),
                });
            },
        }
    }
}

/// Runs the command.
pub async fn run(args: SubmitArgs) -> anyhow::Result<Summary> {
    let target = args.connect.target()?;
    let mut source = Source::open(&args)?;
    let (client, mut events) = connect(&target, args.window.saturating_add(8));
    let status = format!("{}/tasks/+/status", target.root);
    subscribe(
        &client,
        &mut events,
        &target,
        std::slice::from_ref(&status),
        args.timeout,
    )
    .await?;
    let submit_topic = format!("{}/tasks/submit", target.root);
    let prefix = token();
    let started = Instant::now();
    let interactive = std::io::stderr().is_terminal();
    let mut progress_at = started;
    let mut summary = Summary::default();
    // Ids of this run: waiting for the bridge's answer, then (with --wait) for the end.
    let mut pending: HashMap<String, Pending> = HashMap::new();
    // With --wait: accepted and not ended, with their text, sent again after a reconnect
    // (the bridge answers a known id with its current or final state).
    let mut running: HashMap<String, String> = HashMap::new();
    let mut known: HashSet<String> = HashSet::new();
    let mut ended: HashSet<String> = HashSet::new();
    let mut exhausted = false;
    loop {
        // Fill the window.
        while !exhausted && pending.len() < usize::from(args.window) {
            match source.next() {
                None => exhausted = true,
                Some(Err(e)) => {
                    eprintln!("{e}");
                    summary.invalid += 1;
                }
                Some(Ok((line, mut task))) => {
                    let map = task.as_object_mut().expect("checked to be an object");
                    let id = match map.get("id") {
                        Some(Value::String(id)) if crate::api::valid_id(id) => id.clone(),
                        None | Some(Value::Null) => {
                            let id = format!("{prefix}-{line}");
                            map.insert("id".into(), id.clone().into());
                            id
                        }
                        // The bridge would refuse it on {root}/errors, with nothing to match
                        // its answer by.
                        Some(other) => {
                            eprintln!(
                                "line {line}: id {other} is not a task id (a string of 1 to \
                                 {} bytes, one MQTT topic level: no /, + or #)",
                                crate::api::MAX_ID
                            );
                            summary.invalid += 1;
                            continue;
                        }
                    };
                    if !known.insert(id.clone()) {
                        eprintln!("line {line}: id {id} was submitted before in this input");
                        summary.invalid += 1;
                        continue;
                    }
                    let text = task.to_string();
                    client
                        .publish(&submit_topic, QoS::AtLeastOnce, false, text.clone())
                        .await?;
                    summary.submitted += 1;
                    let sent_at = Instant::now();
                    pending.insert(
                        id,
                        Pending {
                            text,
                            sent_at,
                            tries: 0,
                        },
                    );
                }
            }
        }
        if exhausted && pending.is_empty() && running.is_empty() {
            break;
        }
        // The next answer, or the oldest submission's timeout.
        let oldest = pending.values().map(|p| p.sent_at).min();
        let wake = oldest.map_or(Instant::now() + Duration::from_secs(1), |t| {
            t + args.timeout
        });
        let wake = wake.min(Instant::now() + Duration::from_secs(1));
        match tokio::time::timeout_at(wake, events.recv()).await {
            Ok(Some(Incoming::Message { payload, .. })) => {
                let Ok(event) = serde_json::from_slice::<StatusEvent>(&payload) else {
                    continue;
                };
                if let Some(sent) = pending.remove(&event.id) {
                    if event.state == TaskState::Rejected {
                        summary.rejected += 1;
                        let why = event
                            .error
                            .as_ref()
                            .map(|e| e.message.clone())
                            .unwrap_or_default();
                        eprintln!("{} rejected: {why}", event.id);
                        if args.wait {
                            println!("{}", String::from_utf8_lossy(&payload));
                        } else {
                            println!("{}\trejected", event.id);
                        }
                        continue;
                    }
                    summary.accepted += 1;
                    if !args.wait {
                        println!("{}\t{}", event.id, json_name(&event.state));
                    } else if !event.state.is_terminal() {
                        running.insert(event.id.clone(), sent.text);
                    }
                }
                // With --wait, each task of this run ends once (a final event published
                // again, as an answer to a resubmission, is not counted twice).
                if args.wait
                    && event.state.is_terminal()
                    && known.contains(&event.id)
                    && !pending.contains_key(&event.id)
                    && ended.insert(event.id.clone())
                {
                    running.remove(&event.id);
                    println!("{}", String::from_utf8_lossy(&payload));
                    if event.state == TaskState::Completed {
                        summary.completed += 1;
                    } else {
                        summary.not_completed += 1;
                    }
                }
            }
            Ok(Some(Incoming::Lost(e))) => {
                eprintln!("connection to the broker lost ({e}); reconnecting");
            }
            Ok(Some(Incoming::Connected)) => {
                // A clean session: the subscription is made again, and every submission
                // still without an answer is sent again (its id makes that safe); so is every
                // task followed with --wait, whose final event may have gone by meanwhile.
                client.subscribe(&status, QoS::AtLeastOnce).await?;
                for p in pending.values_mut() {
                    p.sent_at = Instant::now() - args.timeout;
                }
                for text in running.values() {
                    client
                        .publish(&submit_topic, QoS::AtLeastOnce, false, text.clone())
                        .await?;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("the MQTT connection task ended"),
            Err(_) => {}
        }
        // Resend what timed out; give up on what timed out too often.
        let now = Instant::now();
        let late: Vec<String> = pending
            .iter()
            .filter(|(_, p)| now >= p.sent_at + args.timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            let p = pending.get_mut(&id).expect("listed just now");
            if p.tries >= args.retries {
                pending.remove(&id);
                summary.unconfirmed += 1;
                eprintln!(
                    "{id}: no answer from the bridge after {} tries; it may or may not be queued \
                     (`edge-bridge tasks {id}` asks)",
                    args.retries + 1
                );
                continue;
            }
            p.tries += 1;
            p.sent_at = now;
            summary.resent += 1;
            client
                .publish(&submit_topic, QoS::AtLeastOnce, false, p.text.clone())
                .await?;
        }
        if now >= progress_at + Duration::from_secs(if interactive { 1 } else { 5 }) {
            progress_at = now;
            progress(&summary, pending.len(), running.len(), started, interactive);
        }
    }
    let _ = client.disconnect().await;
    let secs = started.elapsed().as_secs_f64();
    if interactive {
        eprint!("\r\x1b[K");
    }
    eprintln!(
        "submitted {}: {} accepted, {} rejected, {} invalid, {} unconfirmed{} in {:.1}s ({:.0}/s, window {}, {} resent)",
        summary.submitted,
        summary.accepted,
        summary.rejected,
        summary.invalid,
        summary.unconfirmed,
        if args.wait {
            format!(
                "; {} completed, {} ended otherwise",
                summary.completed, summary.not_completed
            )
        } else {
            String::new()
        },
        secs,
        summary.accepted as f64 / secs.max(0.001),
        args.window,
        summary.resent,
    );
    Ok(summary)
}

fn progress(s: &Summary, waiting: usize, running: usize, started: Instant, interactive: bool) {
    let line = format!(
        "{:.0}s: submitted {}, accepted {}, rejected {}, waiting for an answer {}, running {}",
        started.elapsed().as_secs_f64(),
        s.submitted,
        s.accepted,
        s.rejected,
        waiting,
        running
    );
    if interactive {
        eprint!("\r\x1b[K{line}");
    } else {
        eprintln!("{line}");
    }
}
