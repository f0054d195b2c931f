//! The plain TCP device link: no credential, so any device id is accepted. For labs,
//! simulators and emulated MCUs; it exists only where the configuration lists it.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::{LinkEvent, LinkId, stream};

/// Accepts connections on `listener` forever, one [`stream::run`] task each; link ids
/// follow `base`.
pub async fn serve(listener: TcpListener, base: LinkId, core: mpsc::Sender<LinkEvent>) {
    let mut n = base;
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                n += 1;
                let config = device_core::link::Config::default();
                tokio::spawn(stream::run(
                    tcp,
                    n,
                    peer.to_string(),
                    None,
                    core.clone(),
                    config,
                ));
            }
            Err(e) => {
                // Out of file descriptors, mostly: wait a little rather than spin.
                tracing::warn!(addr = ?listener.local_addr().ok(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
