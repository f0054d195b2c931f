//! Both sides of this crate against each other in memory: every suite, lost datagrams, wrong
//! keys, certificates that do not verify.

mod common;

use common::*;
use edge_dtls::{Error, PeerIdentity, Suite};

fn never(_: u64) -> bool {
    false
}

#[test]
fn a_psk_handshake_completes_and_carries_data_both_ways() {
    for suite in [
        Suite::PskAes128Ccm8,
        Suite::PskAes128GcmSha256,
        Suite::PskAes256GcmSha384,
    ] {
        let mut p = Pair::new(psk_client(&[suite], &PSK), psk_server(&Suite::ALL));
        p.run(50, &mut never);
        assert!(
            p.client.is_established(),
            "{suite:?}: {:?}",
            p.client.error()
        );
        assert!(p.server().is_established(), "{suite:?}");
        assert_eq!(p.client.suite(), Some(suite));
        assert_eq!(p.server().suite(), Some(suite));
        assert_eq!(
            p.server().peer_identity(),
            Some(&PeerIdentity::Psk(PSK_ID.to_vec()))
        );
        assert_eq!(
            p.client_to_server(b"hello\0").as_deref(),
            Some(&b"hello\0"[..])
        );
        assert_eq!(
            p.server_to_client(b"world\0").as_deref(),
            Some(&b"world\0"[..])
        );
        assert_eq!(p.client.poll_timeout(), None, "no timer once established");
    }
}

#[test]
fn a_wrong_psk_never_completes_and_says_why() {
    let mut p = Pair::new(
        psk_client(&[Suite::PskAes128Ccm8], b"another key 1234"),
        psk_server(&Suite::ALL),
    );
    p.run(8, &mut never);
    assert!(!p.server().is_established());
    assert!(!p.client.is_established());
    assert!(p.server().stall_reason().is_some(), "{:?}", p.server());
}

#[test]
fn an_unknown_psk_identity_fails_the_handshake_with_an_alert() {
    let mut client = psk_client(&[Suite::PskAes128Ccm8], &PSK);
    client.psk = Some((b"intruder".to_vec(), PSK.to_vec()));
    let mut p = Pair::new(client, psk_server(&Suite::ALL));
    p.run(50, &mut never);
    assert_eq!(
        p.server().error(),
        Some(&Error::UnknownPskIdentity("intruder".into()))
    );
    assert_eq!(p.client.error(), Some(&Error::Alert(115)));
}

#[test]
fn no_shared_suite_fails_with_handshake_failure() {
    let mut p = Pair::new(
        psk_client(&[Suite::PskAes128GcmSha256], &PSK),
        psk_server(&[Suite::PskAes128Ccm8]),
    );
    p.run(50, &mut never);
    assert_eq!(p.server().error(), Some(&Error::NoSharedSuite));
    assert_eq!(p.client.error(), Some(&Error::Alert(40)));
}

#[test]
fn the_handshake_completes_over_a_link_that_loses_every_third_datagram() {
    for offset in 0..3 {
        let mut p = Pair::new(
            psk_client(&[Suite::PskAes128Ccm8], &PSK),
            psk_server(&Suite::ALL),
        );
        p.run(200, &mut |n| n % 3 == offset);
        assert!(p.client.is_established(), "offset {offset}: {:?}", p.client);
        assert!(p.server().is_established(), "offset {offset}");
        assert_eq!(p.client_to_server(b"x\0").as_deref(), Some(&b"x\0"[..]));
    }
}

#[test]
fn a_lost_server_finished_is_sent_again_when_the_client_retransmits() {
    // Datagrams: 1 hello, 2 hello with cookie, 3 server flight, 4 client flight,
    // 5 server CCS+Finished (lost).
    let mut p = Pair::new(
        psk_client(&[Suite::PskAes128Ccm8], &PSK),
        psk_server(&Suite::ALL),
    );
    p.run(200, &mut |n| n == 5);
    assert!(p.client.is_established(), "{:?}", p.client);
    assert!(p.server().is_established());
    assert_eq!(p.server_to_client(b"y\0").as_deref(), Some(&b"y\0"[..]));
}

#[test]
fn a_replayed_record_is_delivered_once() {
    let mut p = Pair::new(
        psk_client(&[Suite::PskAes128Ccm8], &PSK),
        psk_server(&Suite::ALL),
    );
    p.run(50, &mut never);
    p.client.send(b"once\0").unwrap();
    let d = p.client.poll_datagram().unwrap();
    let now = p.now;
    p.server().handle_datagram(&d, now);
    p.server().handle_datagram(&d, now);
    assert_eq!(p.server().poll_app().as_deref(), Some(&b"once\0"[..]));
    assert_eq!(p.server().poll_app(), None);
}

#[test]
fn a_tampered_record_is_dropped_and_the_session_goes_on() {
    let mut p = Pair::new(
        psk_client(&[Suite::PskAes128Ccm8], &PSK),
        psk_server(&Suite::ALL),
    );
    p.run(50, &mut never);
    p.client.send(b"data\0").unwrap();
    let mut d = p.client.poll_datagram().unwrap();
    let last = d.len() - 1;
    d[last] ^= 1;
    let now = p.now;
    p.server().handle_datagram(&d, now);
    assert_eq!(p.server().poll_app(), None);
    assert!(p.server().is_established());
    assert_eq!(
        p.client_to_server(b"next\0").as_deref(),
        Some(&b"next\0"[..])
    );
}

#[test]
fn close_notify_ends_the_peer() {
    let mut p = Pair::new(
        psk_client(&[Suite::PskAes128Ccm8], &PSK),
        psk_server(&Suite::ALL),
    );
    p.run(50, &mut never);
    p.client.close();
    let d = p.client.poll_datagram().unwrap();
    let now = p.now;
    p.server().handle_datagram(&d, now);
    assert_eq!(p.server().error(), Some(&Error::Closed));
}

#[test]
fn certificate_suites_complete_with_ecdsa_and_rsa_keys() {
    for (key, suites) in [
        (
            "ec",
            vec![
                Suite::EcdheEcdsaAes128Ccm8,
                Suite::EcdheEcdsaAes128GcmSha256,
                Suite::EcdheEcdsaAes256GcmSha384,
            ],
        ),
        ("rsa:2048", vec![Suite::EcdheRsaAes128GcmSha256]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path(), key);
        for suite in suites {
            let mut p = Pair::new(
                cert_client(dir.path(), &[suite]),
                cert_server(dir.path(), &Suite::ALL),
            );
            p.run(50, &mut never);
            assert!(
                p.client.is_established(),
                "{suite:?}: {:?}",
                p.client.error()
            );
            assert!(
                p.server().is_established(),
                "{suite:?}: {:?}",
                p.server().error()
            );
            let client_der = std::fs::read_to_string(dir.path().join("client.pem")).unwrap();
            assert!(
                matches!(
                    p.server().peer_identity(),
                    Some(PeerIdentity::Certificate(_))
                ),
                "{client_der:.0}"
            );
            assert_eq!(p.client_to_server(b"c\0").as_deref(), Some(&b"c\0"[..]));
        }
    }
}

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    certificates(ours.path(), "ec");
    certificates(theirs.path(), "ec");
    let mut client = cert_client(ours.path(), &[Suite::EcdheEcdsaAes128Ccm8]);
    client.certificate = cert_client(theirs.path(), &[]).certificate;
    let mut p = Pair::new(client, cert_server(ours.path(), &Suite::ALL));
    p.run(50, &mut never);
    assert!(
        matches!(p.server().error(), Some(Error::Certificate(_))),
        "{:?}",
        p.server().error()
    );
    assert_eq!(p.client.error(), Some(&Error::Alert(42)));
}

#[test]
fn a_server_certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), "ec");
    let mut client = cert_client(dir.path(), &[Suite::EcdheEcdsaAes128Ccm8]);
    client.server_name = Some("bridge.example".try_into().unwrap());
    let mut p = Pair::new(client, cert_server(dir.path(), &Suite::ALL));
    p.run(50, &mut never);
    assert!(
        matches!(p.client.error(), Some(Error::Certificate(_))),
        "{:?}",
        p.client.error()
    );
}

#[test]
fn the_handshake_state_is_gone_once_established() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), "ec");
    let mut p = Pair::new(
        cert_client(dir.path(), &[Suite::EcdheEcdsaAes128Ccm8]),
        cert_server(dir.path(), &Suite::ALL),
    );
    p.run(50, &mut never);
    assert!(p.server().is_established());
    let shown = format!("{:?}", p.server());
    assert!(shown.contains("handshake: None"), "{shown}");
}

#[test]
fn a_client_offers_only_the_suites_it_has_credentials_for() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), "ec");
    // The server prefers PSK and has both; the client has only a certificate.
    let server = edge_dtls::ServerConfig {
        psk: psk_server(&[]).psk,
        ..cert_server(dir.path(), &Suite::ALL)
    };
    let mut p = Pair::new(cert_client(dir.path(), &Suite::ALL), server);
    p.run(50, &mut never);
    assert_eq!(
        p.client.suite(),
        Some(Suite::EcdheEcdsaAes128Ccm8),
        "{:?}",
        p.client.error()
    );
    assert!(p.server().is_established());
    // A PSK-only client with only certificate suites configured cannot offer anything.
    let e = edge_dtls::Connection::connect(
        std::sync::Arc::new(psk_client(&[Suite::EcdheEcdsaAes128Ccm8], &PSK)),
        std::time::Instant::now(),
    )
    .unwrap_err();
    assert_eq!(e, Error::NoSharedSuite);
}

#[test]
fn a_spoofed_plaintext_record_changes_nothing_on_an_established_session() {
    let mut p = Pair::new(
        psk_client(&[Suite::PskAes128Ccm8], &PSK),
        psk_server(&Suite::ALL),
    );
    p.run(50, &mut never);
    let now = p.now;
    // A truncated handshake fragment, an alert and application data, all in epoch 0.
    for spoofed in [
        &[0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x63, 0, 1, 0xff][..],
        &[0x15, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x64, 0, 2, 2, 40][..],
        &[0x17, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x65, 0, 1, 0][..],
    ] {
        assert!(
            !p.server().handle_datagram(spoofed, now),
            "not authenticated"
        );
        assert!(!p.client.handle_datagram(spoofed, now), "not authenticated");
    }
    assert!(p.server().is_established(), "{:?}", p.server().error());
    assert!(p.client.is_established(), "{:?}", p.client.error());
    assert_eq!(
        p.client_to_server(b"still\0").as_deref(),
        Some(&b"still\0"[..])
    );
}

#[test]
fn only_authenticated_records_count_as_hearing_from_the_peer() {
    let mut p = Pair::new(
        psk_client(&[Suite::PskAes128Ccm8], &PSK),
        psk_server(&Suite::ALL),
    );
    p.run(50, &mut never);
    p.client.send(b"real\0").unwrap();
    let mut d = p.client.poll_datagram().unwrap();
    let now = p.now;
    let mut forged = d.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(!p.server().handle_datagram(&forged, now));
    assert!(p.server().handle_datagram(&d, now));
    // The same record again is a replay.
    assert!(!p.server().handle_datagram(&d, now));
    d.truncate(5);
    assert!(!p.server().handle_datagram(&d, now));
}

#[test]
fn the_psk_identity_is_not_told_before_the_handshake_proves_it() {
    let mut p = Pair::new(
        psk_client(&[Suite::PskAes128Ccm8], b"another key 1234"),
        psk_server(&Suite::ALL),
    );
    p.run(8, &mut never);
    assert!(!p.server().is_established());
    assert_eq!(p.server().peer_identity(), None);
}

#[test]
fn a_hello_with_a_huge_message_sequence_is_not_taken() {
    // A ClientHello whose message_seq is 0xffff: no server can be made of it, and nothing
    // overflows.
    let mut c = edge_dtls::Connection::connect(
        std::sync::Arc::new(psk_client(&[Suite::PskAes128Ccm8], &PSK)),
        std::time::Instant::now(),
    )
    .unwrap();
    let mut hello = c.poll_datagram().unwrap();
    // Record header (13 bytes), then the handshake header: type, length (3), message_seq.
    hello[17] = 0xff;
    hello[18] = 0xff;
    assert_eq!(edge_dtls::cookie::client_hello(&hello), None);
    let server = edge_dtls::Connection::accept(
        std::sync::Arc::new(psk_server(&Suite::ALL)),
        &hello,
        std::time::Instant::now(),
    );
    assert!(server.is_ended());
}

#[test]
fn a_server_without_a_common_group_picks_a_psk_suite_the_client_also_offers() {
    use edge_dtls::messages::ClientHello;
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), "ec");
    // The server prefers the ECDHE suite.
    let server = edge_dtls::ServerConfig {
        psk: psk_server(&[]).psk,
        ..cert_server(
            dir.path(),
            &[Suite::EcdheEcdsaAes128Ccm8, Suite::PskAes128Ccm8],
        )
    };
    // A client offering the ECDHE suite first, but only an unknown group, and a PSK suite.
    let mut c = edge_dtls::Connection::connect(
        std::sync::Arc::new(psk_client(&[Suite::PskAes128Ccm8], &PSK)),
        std::time::Instant::now(),
    )
    .unwrap();
    let first = c.poll_datagram().unwrap();
    let body = &first[13 + 12..];
    let mut hello = ClientHello::read(body).unwrap();
    hello.suites = vec![Suite::EcdheEcdsaAes128Ccm8.id(), Suite::PskAes128Ccm8.id()];
    hello.groups = Some(vec![0x0101]);
    hello.cookie = b"cookie".to_vec();
    let body = hello.write();
    let message = edge_dtls::handshake::whole(1, 1, &body);
    let mut datagram = Vec::new();
    edge_dtls::record::Header {
        content_type: 22,
        version: edge_dtls::record::DTLS12,
        epoch: 0,
        sequence: 1,
        length: message.len() as u16,
    }
    .write(&mut datagram);
    datagram.extend_from_slice(&message);
    let s = edge_dtls::Connection::accept(
        std::sync::Arc::new(server),
        &datagram,
        std::time::Instant::now(),
    );
    assert!(!s.is_ended(), "{:?}", s.error());
    assert_eq!(s.suite(), Some(Suite::PskAes128Ccm8));
}
