//! Connecting: every cause that retrying cannot heal fails the first connect fast with its own
//! error (DESIGN.md §4 "Connect", §7), and the relay keeps serving everyone else.

use std::time::Duration;

use tlsro::{CaSource, Error, Security, Status};
use tlsro_relay::{GroupLimits, Overflow};
use tlsro_tests::*;
use tokio::time::Instant;

/// The connect timeout of endpoints that must fail fast: a retryable failure would keep the
/// connect going this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A permanent cause must be reported well before [`CONNECT_TIMEOUT`] (in milliseconds when
/// the machine is not loaded).
const FAST: Duration = Duration::from_secs(8);

/// Connects with `builder`, expecting an error within [`FAST`].
async fn fails_fast<T>(builder: tlsro::Builder<T>) -> Error {
    let started = Instant::now();
    let connect = builder.connect_timeout(CONNECT_TIMEOUT).connect();
    let result = within("a failing connect", CONNECT_TIMEOUT, connect).await;
    let took = started.elapsed();
    let error = match result {
        Ok(_) => panic!("connected, but it should have failed"),
        Err(e) => e,
    };
    assert!(
        took < FAST,
        "the connect failed with {error:?} only after {took:?}"
    );
    error
}

/// `a` broadcasts to "chat" and `b` (its only member) receives: the relay still serves them.
async fn still_exchanging(a: &tlsro::Endpoint<String>, b: &tlsro::Endpoint<String>, what: &str) {
    a.broadcast(&what.to_owned(), "chat")
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(expect_values(b, 1).await, [what]);
}

#[tokio::test]
async fn wrong_password_fails_fast_and_the_relay_serves_the_others() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let a = creds.connect::<String>(addr, &[]).await;
        let b = creds.connect::<String>(addr, &["chat"]).await;
        let mut a_events = a.events();
        let mut b_events = b.events();
        still_exchanging(&a, &b, "before").await;

        let error = fails_fast(
            quick(tlsro::Endpoint::<String>::builder(
                addr.to_string(),
                "not the password",
            ))
            .security(creds.security())
            .groups(["chat"]),
        )
        .await;
        assert!(matches!(error, Error::WrongPassword), "{error:?}");
        assert!(error.to_string().contains("password"), "{error}");
        assert!(error.is_permanent());

        // Several at once, while the others keep exchanging.
        let mut attempts = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let builder = quick(tlsro::Endpoint::<String>::builder(addr.to_string(), "nope"))
                .security(creds.security());
            attempts.spawn(builder.connect());
        }
        still_exchanging(&a, &b, "during").await;
        while let Some(result) = attempts.join_next().await {
            assert!(matches!(result.unwrap(), Err(Error::WrongPassword)));
        }
        still_exchanging(&a, &b, "after").await;
        assert!(matches!(a.status(), Status::Connected));
        // The good endpoints were never disconnected.
        assert!(never_disconnected(&mut a_events));
        assert!(never_disconnected(&mut b_events));
        assert!(relay.stats().await.auth_failures >= 6);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn wrong_password_on_a_plain_relay_too() {
    bounded(async {
        let relay = plain_relay(b"right").start().await.unwrap();
        let error = fails_fast(plain_endpoint::<String>(relay.local_addr(), b"wrong")).await;
        assert!(matches!(error, Error::WrongPassword), "{error:?}");
        let ok = within(
            "connect",
            PROMPTLY,
            plain_endpoint::<String>(relay.local_addr(), b"right").connect(),
        )
        .await;
        assert!(ok.is_ok());
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_group_not_on_the_allow_list_is_refused() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds
            .relay()
            .group("chat", GroupLimits::default())
            .start()
            .await
            .unwrap();
        let addr = relay.local_addr();
        let error = fails_fast(creds.endpoint::<String>(addr).groups(["chat", "secret"])).await;
        match &error {
            Error::GroupRefused(detail) => {
                assert!(
                    detail.contains("secret"),
                    "the detail names the group: {detail:?}"
                )
            }
            other => panic!("expected GroupRefused, got {other:?}"),
        }
        assert!(error.is_permanent());

        // The listed group is fine; publishing to an unlisted group is refused per publish.
        let a = creds.connect::<String>(addr, &["chat"]).await;
        match a.broadcast(&"x".to_owned(), "secret").unwrap().wait().await {
            Err(tlsro::PublishError::Rejected(r)) => {
                assert_eq!(r[0].group, "secret");
                assert_eq!(r[0].reason, tlsro::RejectReason::GroupRefused);
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        a.broadcast(&"y".to_owned(), "chat")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&a, 1).await, ["y"]);
        // To several groups: refused for the unlisted one only, delivered to the other.
        match a
            .broadcast_to(&"z".to_owned(), &["secret", "chat"])
            .unwrap()
            .wait()
            .await
        {
            Err(tlsro::PublishError::Rejected(r)) => {
                assert_eq!(r.len(), 1);
                assert_eq!(r[0].group, "secret");
            }
            other => panic!("expected a rejection for \"secret\" only, got {other:?}"),
        }
        assert_eq!(expect_values(&a, 1).await, ["z"]);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_full_group_is_refused() {
    bounded(async {
        let creds = Creds::generate();
        let limits = GroupLimits {
            max_members: Some(2),
            max_queue: 10,
            overflow: Overflow::Reject,
        };
        let relay = creds.relay().group("team", limits).start().await.unwrap();
        let addr = relay.local_addr();
        let first = creds.connect::<String>(addr, &["team"]).await;
        let second = creds.connect::<String>(addr, &["team"]).await;
        let error = fails_fast(creds.endpoint::<String>(addr).groups(["team"])).await;
        assert!(matches!(error, Error::GroupFull(_)), "{error:?}");
        assert!(error.is_permanent());

        // A member leaves: there is room again.
        within("stop", PROMPTLY, second.stop()).await.unwrap();
        let third = creds.connect::<String>(addr, &["team"]).await;
        first
            .broadcast(&"hi".to_owned(), "team")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&third, 1).await, ["hi"]);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_plain_endpoint_on_the_tls_port_is_told_so() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let error = fails_fast(plain_endpoint::<String>(
            relay.local_addr(),
            &creds.password,
        ))
        .await;
        match &error {
            Error::TlsMismatch(message) => {
                assert!(message.contains("TLS"), "{message}")
            }
            other => panic!("expected TlsMismatch, got {other:?}"),
        }
        // The relay still serves TLS endpoints.
        let a = creds.connect::<String>(relay.local_addr(), &["chat"]).await;
        let b = creds.connect::<String>(relay.local_addr(), &["chat"]).await;
        still_exchanging(&a, &b, "fine").await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_tls_endpoint_on_a_plain_relay_is_told_so() {
    bounded(async {
        let creds = Creds::generate();
        let relay = plain_relay(&creds.password).start().await.unwrap();
        let error = fails_fast(creds.endpoint::<String>(relay.local_addr())).await;
        match &error {
            Error::TlsMismatch(message) => {
                assert!(message.contains("plain"), "{message}")
            }
            other => panic!("expected TlsMismatch, got {other:?}"),
        }
        let a = within(
            "connect",
            PROMPTLY,
            plain_endpoint::<String>(relay.local_addr(), &creds.password)
                .groups(["chat"])
                .connect(),
        )
        .await
        .unwrap();
        a.broadcast(&"plain works".to_owned(), "chat")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&a, 1).await, ["plain works"]);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_relay_certificate_from_another_ca_is_rejected() {
    bounded(async {
        let creds = Creds::generate();
        let other = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        // Same password, but trusting another credentials directory's CA.
        let error = fails_fast(
            quick(tlsro::Endpoint::<String>::builder(
                relay.local_addr().to_string(),
                creds.password.clone(),
            ))
            .security(other.security()),
        )
        .await;
        assert!(matches!(error, Error::CertificateRejected(_)), "{error:?}");
        assert!(error.is_permanent());
        // A CA given as a file works the same way.
        let error = fails_fast(
            quick(tlsro::Endpoint::<String>::builder(
                relay.local_addr().to_string(),
                creds.password.clone(),
            ))
            .security(Security::Tls {
                ca: CaSource::File(other.dir.join("ca.pem")),
                server_name: Some("localhost".into()),
            }),
        )
        .await;
        assert!(matches!(error, Error::CertificateRejected(_)), "{error:?}");
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_relay_certificate_for_another_name_is_rejected() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let error = fails_fast(
            creds
                .endpoint::<String>(addr)
                .security(creds.security_for(Some("relay.example.org"))),
        )
        .await;
        match &error {
            Error::CertificateRejected(message) => {
                assert!(!message.is_empty());
            }
            other => panic!("expected CertificateRejected, got {other:?}"),
        }
        // The IP address in the certificate is accepted when no server name is given.
        let by_ip = within(
            "connect by IP",
            PROMPTLY,
            creds
                .endpoint::<String>(addr)
                .security(creds.security_for(None))
                .connect(),
        )
        .await;
        assert!(by_ip.is_ok(), "{by_ip:?}");
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn an_unreachable_relay_is_retried_until_the_connect_timeout() {
    bounded(async {
        let creds = Creds::generate();
        let started = Instant::now();
        let error = creds
            .endpoint::<String>(closed_addr())
            .connect_timeout(Duration::from_millis(600))
            .connect()
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(error, Error::RelayUnreachable { .. }), "{error:?}");
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(3),
            "{took:?}"
        );
    })
    .await
}

#[tokio::test]
async fn an_oversize_object_is_refused_locally_and_the_connection_keeps_working() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds
            .relay()
            .configure(|c| c.max_frame = 4096)
            .start()
            .await
            .unwrap();
        let addr = relay.local_addr();
        let sender = creds.connect::<String>(addr, &["chat"]).await;
        let mut events = sender.events();

        let large = "x".repeat(8192);
        for result in [
            sender.broadcast(&large, "chat"),
            sender.produce(&large, "chat"),
        ] {
            match result {
                Err(Error::FrameTooLarge { size, max }) => {
                    assert!(size > 8192, "{size}");
                    assert_eq!(max, 4096);
                }
                other => panic!("expected FrameTooLarge, got {other:?}"),
            }
        }
        // Just below the limit is fine, and nothing was disconnected.
        let fits = "y".repeat(3900);
        sender
            .broadcast(&fits, "chat")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&sender, 1).await, [fits]);
        sender
            .broadcast(&"after".to_owned(), "chat")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&sender, 1).await, ["after"]);
        assert!(matches!(sender.status(), Status::Connected));
        assert!(never_disconnected(&mut events), "no disconnect");
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_relay_at_its_connection_limit_says_so() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds
            .relay()
            .configure(|c| c.max_connections = 2)
            .start()
            .await
            .unwrap();
        let addr = relay.local_addr();
        let _a = creds.connect::<String>(addr, &[]).await;
        let _b = creds.connect::<String>(addr, &[]).await;
        // Refused connections are retried until the connect timeout, then reported with the
        // last reason that says something (an attempt the deadline cuts short says only that
        // time ran out); the timeout leaves room for the first refusal on a loaded machine (at
        // 500 ms, a debug build under parallel tests sometimes timed out first).
        let error = creds
            .endpoint::<String>(addr)
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("too many connections"),
            "{error:?}: {error}"
        );
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn bad_settings_are_refused_before_dialling() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        for builder in [
            creds.endpoint::<String>(addr).max_frame(100),
            creds.endpoint::<String>(addr).groups([""]),
            creds.endpoint::<String>(addr).groups(["x".repeat(65)]),
            creds
                .endpoint::<String>(addr)
                .groups((0..17).map(|i| i.to_string())),
            creds.endpoint::<String>("no port"),
        ] {
            let error = fails_fast(builder).await;
            assert!(matches!(error, Error::InvalidConfig(_)), "{error:?}");
        }
        let a = creds.connect::<String>(addr, &[]).await;
        let many: Vec<String> = (0..17).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(a.broadcast_to(&"x".to_owned(), &many).is_err());
        assert!(a.broadcast_to(&"x".to_owned(), &[]).is_err());
        assert_eq!(relay.stats().await.accepted, 1);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn the_first_connect_waits_for_a_relay_that_starts_late() {
    bounded(async {
        let creds = Creds::generate();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let connecting = tokio::spawn(
            creds
                .endpoint::<String>(addr)
                .groups(["chat"])
                .connect_timeout(Duration::from_secs(5))
                .connect(),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let relay = creds.relay_on(addr).start().await.unwrap();
        let endpoint = within("connect", PROMPTLY, connecting)
            .await
            .unwrap()
            .expect("connects once the relay is up");
        endpoint
            .broadcast(&"hi".to_owned(), "chat")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&endpoint, 1).await, ["hi"]);
        relay.stop().await;
    })
    .await
}
