//! `edge-bench`: the bridge's benchmark (see `edge_tests::bench` for what it measures).
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo run --release -p edge-tests --bin edge-bench -- --devices 4 --tasks 5000
//! cargo run --release -p edge-tests --bin edge-bench -- --dtls-handshakes 10000 --dtls-sessions 1000
//! ```
//!
//! Progress goes to stderr, the report to stdout.

use std::process::ExitCode;

use clap::Parser;
use edge_tests::bench::{self, Options};

fn main() -> ExitCode {
    let opts = Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edge-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run(&opts)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edge-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
