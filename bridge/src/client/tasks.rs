//! `edge-bridge tasks [ID]`: the live tasks of a running bridge, each with the reason it
//! waits, asked on `{root}/query/tasks` and answered on `{root}/query/replies/{token}`.

use std::time::Duration;

use super::{ConnectArgs, ask, connect, human_ms, json_name, subscribe, token};
use crate::api::{QueryAnswer, TaskView};

#[derive(Debug)]
pub struct TasksArgs {
    /// One task (live or finished) instead of the list.
    pub id: Option<String>,
    /// Most tasks listed (on a device first, then queued in dispatch order).
    pub limit: usize,
    /// Print the bridge's answer as JSON.
    pub json: bool,
    /// How long to wait for the bridge's answer.
    pub timeout: Duration,
    pub connect: ConnectArgs,
}

impl Default for TasksArgs {
    /// The list, at most 100 tasks, as a table, the answer awaited 5 s.
    fn default() -> Self {
        Self {
            id: None,
            limit: 100,
            json: false,
            timeout: Duration::from_secs(5),
            connect: ConnectArgs::default(),
        }
    }
}

/// Runs the command; `Ok(false)` when the task asked for is unknown.
pub async fn run(args: TasksArgs) -> anyhow::Result<bool> {
    let target = args.connect.target()?;
    let reply = token();
    let reply_topic = format!("{}/query/replies/{reply}", target.root);
    let (client, mut events) = connect(&target, 8);
    subscribe(
        &client,
        &mut events,
        &target,
        std::slice::from_ref(&reply_topic),
        args.timeout,
    )
    .await?;
    let asked = ask(
        &client,
        &mut events,
        &target,
        &reply,
        args.id.as_deref(),
        Some(args.limit),
        args.timeout,
    )
    .await?;
    let _ = client.disconnect().await;
    if args.json {
        println!("{}", String::from_utf8_lossy(&asked.raw));
    }
    let answer = asked.answer;
    if answer.truncated && !args.json {
        eprintln!(
            "the list was cut to fit one MQTT message: {} of {} shown (--limit)",
            answer.tasks.len(),
            answer.live
        );
    }
    if let Some(e) = &answer.error {
        if !args.json {
            eprintln!("edge-bridge: {}", e.message);
        }
        return Ok(false);
    }
    if args.json {
        return Ok(true);
    }
    if let Some(done) = &answer.finished {
        let outcome = match (&done.result, &done.error) {
            (Some(r), _) => format!(" result {r}"),
            (None, Some(e)) => format!(" ({}: {})", json_name(&e.code), e.message),
            (None, None) => String::new(),
        };
        println!(
            "{} finished: {} on {} after {} attempt(s){outcome}",
            done.id,
            json_name(&done.state),
            done.device.as_deref().unwrap_or("no device"),
            done.attempt
        );
        return Ok(true);
    }
    match &args.id {
        Some(_) => {
            for t in &answer.tasks {
                print_one(t);
            }
        }
        None => print_table(&answer),
    }
    Ok(true)
}

fn print_one(t: &TaskView) {
    println!("id:         {}", t.id);
    println!("state:      {}", json_name(&t.state));
    println!("capability: {}", t.capability);
    println!("device:     {}", t.device.as_deref().unwrap_or("-"));
    println!("priority:   {}", t.priority);
    println!("attempt:    {}", t.attempt);
    println!("age:        {}", human_ms(t.age_ms));
    if let Some(trace) = &t.trace_id {
        println!("trace_id:   {trace}");
    }
    println!(
        "waiting:    {}: {}",
        json_name(&t.waiting.code),
        t.waiting.message
    );
}

fn print_table(answer: &QueryAnswer) {
    let width = |f: &dyn Fn(&TaskView) -> usize, title: usize| {
        answer.tasks.iter().map(f).max().unwrap_or(0).max(title)
    };
    let wid = width(&|t| t.id.len(), 2);
    let wcap = width(&|t| t.capability.len(), 10);
    let wdev = width(&|t| t.device.as_deref().map_or(1, str::len), 6);
    println!(
        "{:wid$}  {:10}  {:4}  {:wcap$}  {:wdev$}  {:>7}  WHY",
        "ID", "STATE", "PRIO", "CAPABILITY", "DEVICE", "AGE"
    );
    for t in &answer.tasks {
        println!(
            "{:wid$}  {:10}  {:4}  {:wcap$}  {:wdev$}  {:>7}  {}: {}",
            t.id,
            json_name(&t.state),
            t.priority,
            t.capability,
            t.device.as_deref().unwrap_or("-"),
            human_ms(t.age_ms),
            json_name(&t.waiting.code),
            t.waiting.message
        );
    }
    println!(
        "{} of {} live task(s) shown",
        answer.tasks.len(),
        answer.live
    );
}
