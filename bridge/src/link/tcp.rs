//! The plain TCP device link: no credential, so any device id is accepted. For labs,
//! simulators and emulated MCUs; it exists only where the configuration lists it.

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::listener::{self, Caps};
use super::{LinkEvent, LinkId, stream};

/// Accepts connections on `listener` forever within `caps`, one [`stream::run`] task each;
/// link ids follow `base`.
pub async fn serve(listener: TcpListener, base: LinkId, caps: Caps, core: mpsc::Sender<LinkEvent>) {
    listener::serve(listener, base, caps, "TCP", move |tcp, peer, link| {
        let config = device_core::link::Config::default();
        stream::run(tcp, link, peer.to_string(), None, core.clone(), config)
    })
    .await;
}
