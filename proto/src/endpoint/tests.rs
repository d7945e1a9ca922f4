//! The endpoint session against a relay played by hand: every frame the relay sends is built
//! with `Frame::encode`, its proofs with `AuthKey`, and time is virtual.

use super::*;
use crate::frame::{Challenge, Confirm, Deliver, PublishRejected, Skipped, Welcome};

const KEY: [u8; 32] = [0x4b; 32];
const SESSION: [u8; 16] = [0x5e; 16];
const GROUPS: &[&str] = &["jobs", "logs"];
/// The limit the scripted relay states in `Welcome` unless a test says otherwise.
const RELAY_MAX: u32 = 64 * 1024;

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn key() -> AuthKey {
    AuthKey::from_bytes(KEY)
}

fn config() -> EndpointConfig {
    EndpointConfig::new(key(), SESSION, GROUPS).unwrap()
}

fn session() -> EndpointSession {
    EndpointSession::new(config())
}

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = vec![0; frame.encoded_len()];
    let n = frame.encode(&mut out).unwrap();
    out.truncate(n);
    out
}

fn detail(s: &str) -> Detail {
    Detail::try_from(s).unwrap()
}

/// Feeds one whole frame from the relay, as a driver would. The bytes are leaked so that the
/// event, which borrows them, outlives this call.
fn feed(
    s: &mut EndpointSession,
    now: Instant,
    frame: &Frame<'_>,
) -> Result<Option<Event<'static>>, Error> {
    let bytes: &'static [u8] = encode(frame).leak();
    match s.handle_input(now, bytes)? {
        Input::Frame { consumed, event } => {
            assert_eq!(consumed, bytes.len(), "one whole frame consumed");
            Ok(event)
        }
        Input::NeedMore => panic!("a whole frame was fed"),
    }
}

/// Everything the endpoint has to send now, decoded frame by frame.
fn sent(s: &mut EndpointSession) -> Vec<Frame<'static>> {
    let mut out = vec![0; 4096];
    let n = s.poll_transmit(&mut out).unwrap();
    let mut bytes: &'static [u8] = out[..n].to_vec().leak();
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let n = frame::frame_len(bytes, u32::MAX)
            .unwrap()
            .expect("only whole frames");
        frames.push(frame::decode(&bytes[..n]).unwrap());
        bytes = &bytes[n..];
    }
    frames
}

fn notify(group: &'static str, credit: i32) -> Frame<'static> {
    Frame::Notify(Notify { group, credit })
}

fn close(code: CloseCode, detail: &'static str) -> Frame<'static> {
    Frame::Close(Close { code, detail })
}

fn produced(group: &'static str, tag: u64) -> Frame<'static> {
    Frame::Deliver(Deliver {
        group,
        delivery: Delivery::Produced { tag },
        payload: b"job",
    })
}

fn broadcast(group: &'static str, seq: u64) -> Frame<'static> {
    Frame::Deliver(Deliver {
        group,
        delivery: Delivery::Broadcast { seq },
        payload: b"state",
    })
}

fn delivered(frame: &Frame<'static>) -> Option<Event<'static>> {
    let Frame::Deliver(d) = frame else {
        panic!("not a Deliver")
    };
    Some(Event::Delivered {
        group: d.group,
        delivery: d.delivery,
        payload: d.payload,
    })
}

/// The relay's side of one handshake.
struct Script {
    key: AuthKey,
    endpoint_nonce: [u8; 32],
    relay_nonce: [u8; 32],
    session: [u8; 16],
    groups: Vec<&'static str>,
}

impl Script {
    fn transcript(&self) -> Transcript<'_> {
        Transcript {
            version: PROTOCOL_VERSION,
            endpoint_nonce: &self.endpoint_nonce,
            relay_nonce: &self.relay_nonce,
            session: &self.session,
            groups: &self.groups,
        }
    }

    fn proof(&self, role: Role) -> [u8; 32] {
        self.key.proof(role, &self.transcript())
    }

    fn welcome(&self, max_frame: u32, epoch: u64, last_seq: u64) -> Frame<'static> {
        Frame::Welcome(Welcome {
            mac: self.proof(Role::Relay),
            max_frame,
            last_seq,
            epoch,
        })
    }
}

/// Plays the relay from `Hello` up to (not including) `Welcome`: reads `Hello`, answers with a
/// `Challenge`, reads `Proof` and verifies it as the relay would.
fn handshake_until_welcome(s: &mut EndpointSession, now: Instant) -> Script {
    let frames = sent(s);
    let [Frame::Hello(hello)] = &frames[..] else {
        panic!("Hello alone comes first, got {frames:?}")
    };
    assert_eq!(hello.version, PROTOCOL_VERSION);
    let script = Script {
        key: key(),
        endpoint_nonce: hello.nonce,
        relay_nonce: hello.nonce.map(|b| !b),
        session: hello.session,
        groups: hello.groups.to_vec(),
    };
    assert_eq!(s.phase(), Phase::AwaitChallenge);
    let challenge = Frame::Challenge(Challenge {
        nonce: script.relay_nonce,
    });
    assert_eq!(feed(s, now, &challenge), Ok(None));
    let frames = sent(s);
    let [Frame::Proof(proof)] = &frames[..] else {
        panic!("Proof alone follows Challenge, got {frames:?}")
    };
    assert!(
        script
            .key
            .verify(Role::Endpoint, &script.transcript(), &proof.mac)
    );
    assert_eq!(s.phase(), Phase::AwaitWelcome);
    script
}

fn authenticate(s: &mut EndpointSession, now: Instant, nonce: u8) -> Script {
    s.start_connection(now, [nonce; 32]).unwrap();
    handshake_until_welcome(s, now)
}

/// A whole handshake; the relay states [`RELAY_MAX`].
fn connect(s: &mut EndpointSession, now: Instant, nonce: u8, epoch: u64, last_seq: u64) -> Script {
    let script = authenticate(s, now, nonce);
    let welcome = script.welcome(RELAY_MAX, epoch, last_seq);
    assert_eq!(
        feed(s, now, &welcome),
        Ok(Some(Event::Connected { last_seq }))
    );
    assert!(s.is_open());
    script
}

// ---------------------------------------------------------------------------------------------
// Handshake

#[test]
fn handshake_is_hello_challenge_proof_welcome() {
    let key = AuthKey::derive(b"correct horse battery staple");
    let mut config = EndpointConfig::new(key.clone(), SESSION, &["jobs", "logs", "jobs"]).unwrap();
    config.max_frame = 8 * 1024;
    let mut s = EndpointSession::new(config);
    assert_eq!(s.phase(), Phase::Idle);
    assert_eq!(sent(&mut s), []);

    s.start_connection(at(100), [0xe1; 32]).unwrap();
    assert_eq!(s.phase(), Phase::SendHello);
    assert_eq!(
        sent(&mut s),
        [Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            nonce: [0xe1; 32],
            session: SESSION,
            max_frame: 8 * 1024,
            keepalive_ms: 5000,
            groups: GroupList::from_slice(&["jobs", "logs"]).unwrap(),
        })]
    );
    assert_eq!(s.phase(), Phase::AwaitChallenge);
    assert_eq!(sent(&mut s), [], "nothing more until the relay answers");

    let relay_nonce = [0x5a; 32];
    let challenge = Frame::Challenge(Challenge { nonce: relay_nonce });
    assert_eq!(feed(&mut s, at(110), &challenge), Ok(None));
    assert_eq!(s.phase(), Phase::SendProof);
    let frames = sent(&mut s);
    let [Frame::Proof(proof)] = &frames[..] else {
        panic!("expected one Proof, got {frames:?}")
    };
    let groups = ["jobs", "logs"];
    let t = Transcript {
        version: PROTOCOL_VERSION,
        endpoint_nonce: &[0xe1; 32],
        relay_nonce: &relay_nonce,
        session: &SESSION,
        groups: &groups,
    };
    assert!(key.verify(Role::Endpoint, &t, &proof.mac));
    assert!(
        !key.verify(Role::Relay, &t, &proof.mac),
        "labelled as the endpoint's"
    );
    assert_eq!(s.phase(), Phase::AwaitWelcome);
    assert_eq!(sent(&mut s), []);

    let welcome = Frame::Welcome(Welcome {
        mac: key.proof(Role::Relay, &t),
        max_frame: 2048,
        last_seq: 0,
        epoch: 1,
    });
    assert_eq!(
        feed(&mut s, at(120), &welcome),
        Ok(Some(Event::Connected { last_seq: 0 }))
    );
    assert!(s.is_open());
    assert_eq!(s.error(), None);
    assert_eq!(s.relay_max_frame(), 2048);
    assert_eq!(s.generation(), 1);
    assert_eq!(sent(&mut s), [], "no credit, nothing to say");
}

/// The test vector of PROTOCOL.md ("Handshake"), computed independently of this crate.
#[test]
fn proofs_match_the_protocol_test_vector() {
    let key = AuthKey::derive(b"correct horse battery staple");
    let session_id: [u8; 16] = core::array::from_fn(|i| 0x40 + i as u8);
    let endpoint_nonce: [u8; 32] = core::array::from_fn(|i| i as u8);
    let relay_nonce: [u8; 32] = core::array::from_fn(|i| 0x20 + i as u8);
    let config = EndpointConfig::new(key, session_id, &["jobs", "logs"]).unwrap();
    let mut s = EndpointSession::new(config);
    s.start_connection(at(0), endpoint_nonce).unwrap();
    sent(&mut s);
    let challenge = Frame::Challenge(Challenge { nonce: relay_nonce });
    feed(&mut s, at(1), &challenge).unwrap();

    let mut out = [0; 64];
    let n = s.poll_transmit(&mut out).unwrap();
    let mut expected = vec![0x00, 0x00, 0x00, 0x21, 0x03];
    expected.extend_from_slice(&hex32(
        "c3a6f55d5a38cce80f7f87e9057ccd0bc9cdca746436070a833c08308cd4fed6",
    ));
    assert_eq!(out[..n], expected[..]);

    let welcome = Frame::Welcome(Welcome {
        mac: hex32("05387f3126aac1970625f45a7fe72ef4b86cea1cbb20d4dc3177d8127a6f76a8"),
        max_frame: RELAY_MAX,
        last_seq: 0,
        epoch: 1,
    });
    assert_eq!(
        feed(&mut s, at(2), &welcome),
        Ok(Some(Event::Connected { last_seq: 0 }))
    );
}

fn hex32(s: &str) -> [u8; 32] {
    core::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
}

#[test]
fn challenge_fed_byte_at_a_time() {
    let mut s = session();
    s.start_connection(at(0), [1; 32]).unwrap();
    sent(&mut s);
    let bytes = encode(&Frame::Challenge(Challenge { nonce: [2; 32] }));
    for cut in 0..bytes.len() {
        assert_eq!(s.handle_input(at(1), &bytes[..cut]), Ok(Input::NeedMore));
        assert_eq!(s.phase(), Phase::AwaitChallenge);
    }
    assert_eq!(
        s.handle_input(at(1), &bytes),
        Ok(Input::Frame {
            consumed: bytes.len(),
            event: None
        })
    );
    assert_eq!(s.phase(), Phase::SendProof);
}

/// Plays the handshake, answers with a `Welcome` carrying `mac(script)`, and checks that the
/// endpoint refuses the relay for good.
fn assert_relay_refused(mac: impl Fn(&Script) -> [u8; 32]) {
    let mut s = session();
    let script = authenticate(&mut s, at(0), 1);
    let welcome = Frame::Welcome(Welcome {
        mac: mac(&script),
        max_frame: RELAY_MAX,
        last_seq: 0,
        epoch: 1,
    });
    assert_eq!(feed(&mut s, at(1), &welcome), Err(Error::RelayProofInvalid));
    assert!(!s.is_open());
    assert_eq!(s.error(), Some(&Error::RelayProofInvalid));
    assert!(Error::RelayProofInvalid.is_permanent());
    // Permanent: no reconnect, no command, no input.
    assert_eq!(
        s.start_connection(at(2), [9; 32]),
        Err(Error::RelayProofInvalid)
    );
    assert_eq!(s.notify("jobs", 1), Err(Error::RelayProofInvalid));
    assert_eq!(
        s.publish(PublishKind::Broadcast, &["jobs"], b"x", &mut [0; 64]),
        Err(Error::RelayProofInvalid)
    );
    assert_eq!(
        s.handle_input(at(3), &encode(&Frame::Ping)),
        Err(Error::RelayProofInvalid)
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn wrong_relay_proof_is_permanent() {
    assert_relay_refused(|_| [0; 32]);
    // A relay that does not know the password.
    assert_relay_refused(|script| {
        AuthKey::from_bytes([0x99; 32]).proof(Role::Relay, &script.transcript())
    });
    // A relay proof recorded from another handshake (another relay nonce).
    assert_relay_refused(|script| {
        let recorded = Transcript {
            relay_nonce: &[0x77; 32],
            ..script.transcript()
        };
        script.key.proof(Role::Relay, &recorded)
    });
}

#[test]
fn reflected_proof_is_refused() {
    // The endpoint's own proof, sent back as if it were the relay's.
    assert_relay_refused(|script| script.proof(Role::Endpoint));
}

#[test]
fn permanent_close_during_handshake_is_rejected() {
    for code in [
        CloseCode::BadPassword,
        CloseCode::UnsupportedVersion,
        CloseCode::GroupRefused,
        CloseCode::GroupFull,
    ] {
        let mut s = session();
        authenticate(&mut s, at(0), 1);
        let expected = Error::Rejected(code, detail("proof did not verify"));
        assert_eq!(
            feed(&mut s, at(5), &close(code, "proof did not verify")),
            Err(expected.clone())
        );
        assert!(expected.is_permanent());
        assert_eq!(s.phase(), Phase::Closed);
        assert_eq!(sent(&mut s), [], "a Close is not answered with a Close");
        assert_eq!(s.start_connection(at(6), [2; 32]), Err(expected.clone()));
        assert_eq!(s.error(), Some(&expected));
    }
}

#[test]
fn shutdown_close_allows_reconnect() {
    // During the handshake.
    let mut s = session();
    s.start_connection(at(0), [1; 32]).unwrap();
    sent(&mut s);
    let expected = Error::Closed(CloseCode::Shutdown, detail(""));
    assert_eq!(
        feed(&mut s, at(1), &close(CloseCode::Shutdown, "")),
        Err(expected.clone())
    );
    assert!(!expected.is_permanent());
    // Sticky for this connection.
    assert_eq!(
        s.handle_input(at(2), &encode(&Frame::Ping)),
        Err(expected.clone())
    );
    assert_eq!(s.error(), Some(&expected));
    assert_eq!(sent(&mut s), []);
    // Gone with the next connection.
    connect(&mut s, at(10), 2, 1, 0);
    assert_eq!(s.error(), None);

    // After Welcome, with a detail, a code this version does not know, or a plain Normal.
    for (code, text) in [
        (CloseCode::Shutdown, "restarting"),
        (CloseCode::Unknown(200), "from the future"),
        (CloseCode::Normal, ""),
        (CloseCode::SessionTakenOver, ""),
    ] {
        let expected = Error::Closed(code, detail(text));
        assert_eq!(
            feed(&mut s, at(20), &close(code, text)),
            Err(expected.clone())
        );
        assert_eq!(s.handed_over("jobs", 1), Err(expected.clone()));
        assert_eq!(s.phase(), Phase::Closed);
        connect(&mut s, at(30), 3, 1, 0);
    }
}

#[test]
fn long_close_detail_is_cut_to_fit() {
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    let long = "é".repeat(100);
    let Err(Error::Closed(CloseCode::Shutdown, d)) =
        feed(&mut s, at(1), &close(CloseCode::Shutdown, long.leak()))
    else {
        panic!("expected Closed")
    };
    assert_eq!(d.as_str(), "é".repeat(48), "cut on a character boundary");
}

#[test]
fn nothing_but_the_handshake_before_welcome() {
    let script_frames = || {
        vec![
            produced("jobs", 1),
            broadcast("logs", 1),
            Frame::Confirm(Confirm { up_to: 0 }),
            Frame::PublishRejected(PublishRejected {
                seq: 1,
                group: "jobs",
                reason: RejectReason::QueueFull,
            }),
            Frame::Skipped(Skipped {
                group: "logs",
                seq: 1,
                size: 1 << 20,
            }),
            Frame::Ping,
            Frame::Pong,
            Frame::Hello(Hello {
                version: 1,
                nonce: [0; 32],
                session: [0; 16],
                max_frame: 1024,
                keepalive_ms: 0,
                groups: GroupList::new(),
            }),
            Frame::Proof(Proof { mac: [0; 32] }),
            notify("jobs", 1),
            Frame::Ack(Ack { up_to: 1 }),
            Frame::Publish(Publish {
                seq: 1,
                kind: PublishKind::Produce,
                groups: GroupList::from_slice(&["jobs"]).unwrap(),
                payload: b"x",
            }),
        ]
    };
    let welcome_too_early = Frame::Welcome(Welcome {
        mac: [0; 32],
        max_frame: RELAY_MAX,
        last_seq: 0,
        epoch: 1,
    });
    let challenge_again = Frame::Challenge(Challenge { nonce: [3; 32] });

    // Waiting for Challenge: a Welcome is as unexpected as the rest.
    let mut cases: Vec<(bool, Frame<'static>)> =
        script_frames().into_iter().map(|f| (false, f)).collect();
    cases.push((false, welcome_too_early));
    // Waiting for Welcome: a second Challenge is unexpected.
    cases.extend(script_frames().into_iter().map(|f| (true, f)));
    cases.push((true, challenge_again));

    for (challenged, frame) in cases {
        let mut s = session();
        s.start_connection(at(0), [1; 32]).unwrap();
        if challenged {
            handshake_until_welcome(&mut s, at(0));
        } else {
            sent(&mut s);
        }
        let expected = Error::Unexpected(frame.kind());
        assert_eq!(
            feed(&mut s, at(1), &frame),
            Err(expected.clone()),
            "{frame:?}"
        );
        assert_eq!(sent(&mut s), [close(CloseCode::ProtocolViolation, "")]);
        assert_eq!(sent(&mut s), []);
        assert_eq!(s.error(), Some(&expected));
        assert!(!expected.is_permanent());
    }
}

#[test]
fn welcome_before_the_proof_left_is_unexpected() {
    // A relay cannot accept a proof it has not received, even with a valid-looking Welcome.
    let mut s = session();
    s.start_connection(at(0), [1; 32]).unwrap();
    sent(&mut s);
    let script = Script {
        key: key(),
        endpoint_nonce: [1; 32],
        relay_nonce: [2; 32],
        session: SESSION,
        groups: GROUPS.to_vec(),
    };
    let challenge = Frame::Challenge(Challenge {
        nonce: script.relay_nonce,
    });
    assert_eq!(feed(&mut s, at(1), &challenge), Ok(None));
    assert_eq!(s.phase(), Phase::SendProof);
    assert_eq!(
        feed(&mut s, at(1), &script.welcome(RELAY_MAX, 1, 0)),
        Err(Error::Unexpected(Kind::Welcome))
    );
}

#[test]
fn endpoint_bound_frames_only_after_welcome() {
    let refused = [
        Frame::Challenge(Challenge { nonce: [0; 32] }),
        Frame::Welcome(Welcome {
            mac: [0; 32],
            max_frame: RELAY_MAX,
            last_seq: 0,
            epoch: 1,
        }),
        Frame::Proof(Proof { mac: [0; 32] }),
        notify("jobs", 1),
        Frame::Ack(Ack { up_to: 1 }),
    ];
    for frame in refused {
        let mut s = session();
        connect(&mut s, at(0), 1, 1, 0);
        assert_eq!(
            feed(&mut s, at(1), &frame),
            Err(Error::Unexpected(frame.kind()))
        );
        assert_eq!(sent(&mut s), [close(CloseCode::ProtocolViolation, "")]);
    }
}

// ---------------------------------------------------------------------------------------------
// Credit and acknowledgements

#[test]
fn notify_accumulates_and_deliveries_spend_it() {
    let mut s = session();
    // Credit granted before the first connection waits for Welcome.
    s.notify("jobs", 4).unwrap();
    assert_eq!(s.outstanding_credit("jobs"), Some(4));
    assert_eq!(sent(&mut s), []);
    connect(&mut s, at(0), 1, 1, 0);
    assert_eq!(sent(&mut s), [notify("jobs", 4)]);
    assert_eq!(sent(&mut s), [], "sent once");

    s.notify("jobs", 2).unwrap();
    s.notify("jobs", 3).unwrap();
    s.notify("jobs", 0).unwrap();
    assert_eq!(s.outstanding_credit("jobs"), Some(9));
    assert_eq!(
        sent(&mut s),
        [notify("jobs", 5)],
        "accumulated into one Notify"
    );

    // Negative: everything queued now, no standing credit.
    s.notify("logs", -1).unwrap();
    s.notify("jobs", -7).unwrap();
    assert_eq!(sent(&mut s), [notify("jobs", -1), notify("logs", -1)]);
    assert_eq!(s.outstanding_credit("logs"), Some(0));
    assert_eq!(s.outstanding_credit("jobs"), Some(9));

    // Notify is for members only.
    assert_eq!(s.notify("consumers", 1), Err(Error::NotMember));
    assert_eq!(s.outstanding_credit("consumers"), None);

    // Each produced object spends one credit.
    for tag in 1..=3 {
        let frame = produced("jobs", tag);
        assert_eq!(feed(&mut s, at(1), &frame), Ok(delivered(&frame)));
    }
    assert_eq!(s.outstanding_credit("jobs"), Some(6));
    assert_eq!(sent(&mut s), []);
}

#[test]
fn produced_tags_must_follow_on() {
    for (group, tag) in [("jobs", 2), ("jobs", 0), ("nobody", 1)] {
        let mut s = session();
        connect(&mut s, at(0), 1, 1, 0);
        assert_eq!(
            feed(&mut s, at(1), &produced(group, tag)),
            Err(Error::Unexpected(Kind::Deliver)),
            "{group} {tag}"
        );
        assert_eq!(sent(&mut s), [close(CloseCode::ProtocolViolation, "")]);
    }
    // Tags count per connection across groups.
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    for (group, tag) in [("jobs", 1), ("logs", 2), ("jobs", 3)] {
        let frame = produced(group, tag);
        assert_eq!(feed(&mut s, at(1), &frame), Ok(delivered(&frame)));
    }
}

#[test]
fn outstanding_credit_is_regranted_after_reconnect() {
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    s.notify("jobs", 5).unwrap();
    s.notify("logs", 2).unwrap();
    assert_eq!(sent(&mut s), [notify("jobs", 5), notify("logs", 2)]);
    for tag in 1..=3 {
        feed(&mut s, at(1), &produced("jobs", tag)).unwrap();
    }
    s.handed_over("jobs", 1).unwrap();
    assert_eq!(s.outstanding_credit("jobs"), Some(2));

    // The Ack for tag 1 never left; tags 2 and 3 were not handed over, the relay requeues them.
    s.connection_lost();
    s.connection_lost();
    // granted 5 - received 3 + received but not handed over 2
    assert_eq!(s.outstanding_credit("jobs"), Some(4));
    assert_eq!(s.outstanding_credit("logs"), Some(2));

    let script = authenticate(&mut s, at(1000), 2);
    // Credit granted during the handshake joins the re-grant.
    s.notify("logs", 1).unwrap();
    assert_eq!(sent(&mut s), [], "nothing but the handshake before Welcome");
    assert_eq!(
        feed(&mut s, at(1001), &script.welcome(RELAY_MAX, 1, 0)),
        Ok(Some(Event::Connected { last_seq: 0 }))
    );
    assert_eq!(
        sent(&mut s),
        [notify("jobs", 4), notify("logs", 3)],
        "one Notify per group, and no stale Ack"
    );

    // Tags start again at 1; a reconnect re-grants the same amount, not more.
    let frame = produced("jobs", 1);
    assert_eq!(feed(&mut s, at(1002), &frame), Ok(delivered(&frame)));
    s.start_connection(at(2000), [3; 32]).unwrap();
    let script = handshake_until_welcome(&mut s, at(2000));
    feed(&mut s, at(2001), &script.welcome(RELAY_MAX, 1, 0)).unwrap();
    assert_eq!(sent(&mut s), [notify("jobs", 4), notify("logs", 3)]);
}

#[test]
fn handed_over_sends_one_cumulative_ack() {
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    assert_eq!(
        s.handed_over("jobs", 1),
        Err(Error::AckUnknown { tag: 1, highest: 0 })
    );
    s.notify("jobs", 3).unwrap();
    s.notify("logs", 1).unwrap();
    sent(&mut s);
    for (group, tag) in [("jobs", 1), ("logs", 2), ("jobs", 3)] {
        feed(&mut s, at(1), &produced(group, tag)).unwrap();
    }
    s.handed_over("jobs", 1).unwrap();
    s.handed_over("logs", 2).unwrap();
    s.handed_over("jobs", 3).unwrap();
    assert_eq!(sent(&mut s), [Frame::Ack(Ack { up_to: 3 })]);
    assert_eq!(sent(&mut s), []);

    assert_eq!(
        s.handed_over("jobs", 4),
        Err(Error::AckUnknown { tag: 4, highest: 3 })
    );
    assert_eq!(
        s.handed_over("jobs", 0),
        Err(Error::AckUnknown { tag: 0, highest: 3 })
    );
    assert_eq!(s.handed_over("nobody", 1), Err(Error::NotMember));
    // A wrong tag is the caller's mistake, not the relay's: the connection goes on.
    assert_eq!(s.error(), None);
    assert_eq!(sent(&mut s), []);
    let frame = produced("jobs", 4);
    assert_eq!(feed(&mut s, at(2), &frame), Ok(delivered(&frame)));
    s.handed_over("jobs", 4).unwrap();
    assert_eq!(sent(&mut s), [Frame::Ack(Ack { up_to: 4 })]);
}

#[test]
fn retained_broadcast_is_not_delivered_twice() {
    let mut s = session();
    connect(&mut s, at(0), 1, 7, 0);
    for seq in [4, 5] {
        let frame = broadcast("logs", seq);
        assert_eq!(feed(&mut s, at(1), &frame), Ok(delivered(&frame)));
    }

    // Same relay (same epoch): the retained value comes again on rejoin.
    s.connection_lost();
    connect(&mut s, at(100), 2, 7, 0);
    assert_eq!(feed(&mut s, at(101), &broadcast("logs", 5)), Ok(None));
    let frame = broadcast("logs", 6);
    assert_eq!(feed(&mut s, at(102), &frame), Ok(delivered(&frame)));
    // Numbers are per group.
    let frame = broadcast("jobs", 1);
    assert_eq!(feed(&mut s, at(103), &frame), Ok(delivered(&frame)));

    // A skipped broadcast counts as seen.
    let skipped = Frame::Skipped(Skipped {
        group: "logs",
        seq: 7,
        size: 70_000,
    });
    assert_eq!(
        feed(&mut s, at(104), &skipped),
        Ok(Some(Event::Skipped {
            group: "logs",
            seq: 7,
            size: 70_000
        }))
    );
    assert_eq!(feed(&mut s, at(105), &broadcast("logs", 7)), Ok(None));

    // A restarted relay (new epoch) numbers from 1 again.
    s.connection_lost();
    connect(&mut s, at(200), 3, 8, 0);
    let frame = broadcast("logs", 1);
    assert_eq!(feed(&mut s, at(201), &frame), Ok(delivered(&frame)));
    let frame = broadcast("jobs", 1);
    assert_eq!(feed(&mut s, at(202), &frame), Ok(delivered(&frame)));
}

// ---------------------------------------------------------------------------------------------
// Timers

#[test]
fn handshake_deadline() {
    let mut s = session();
    assert_eq!(s.poll_timeout(), None);
    s.start_connection(at(1000), [1; 32]).unwrap();
    assert_eq!(s.poll_timeout(), Some(at(11_000)));
    sent(&mut s);
    // The deadline covers the whole handshake, not each step.
    let challenge = Frame::Challenge(Challenge { nonce: [2; 32] });
    feed(&mut s, at(9000), &challenge).unwrap();
    sent(&mut s);
    assert_eq!(s.poll_timeout(), Some(at(11_000)));
    s.handle_timeout(at(10_999));
    assert_eq!(s.error(), None);
    s.handle_timeout(at(11_000));
    assert_eq!(s.error(), Some(&Error::HandshakeTimeout));
    s.handle_timeout(at(11_001));
    assert_eq!(
        s.error(),
        Some(&Error::HandshakeTimeout),
        "extra calls are harmless"
    );
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(sent(&mut s), []);
    assert_eq!(
        s.handle_input(at(11_002), &encode(&Frame::Ping)),
        Err(Error::HandshakeTimeout)
    );
    // Not permanent: the next connection has its own deadline.
    connect(&mut s, at(20_000), 2, 1, 0);
}

#[test]
fn keepalive_pings_then_gives_up() {
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    assert_eq!(s.poll_timeout(), Some(at(5000)));
    s.handle_timeout(at(4999));
    assert_eq!(sent(&mut s), []);
    s.handle_timeout(at(5000));
    assert_eq!(sent(&mut s), [Frame::Ping]);
    assert_eq!(s.poll_timeout(), Some(at(15_000)));
    s.handle_timeout(at(10_000));
    assert_eq!(sent(&mut s), [], "one Ping per silence");

    // Anything from the relay restarts the clock.
    assert_eq!(feed(&mut s, at(12_000), &Frame::Pong), Ok(None));
    assert_eq!(s.poll_timeout(), Some(at(17_000)));
    s.handle_timeout(at(17_000));
    assert_eq!(sent(&mut s), [Frame::Ping]);
    s.handle_timeout(at(26_999));
    assert_eq!(s.error(), None);
    s.handle_timeout(at(27_000));
    assert_eq!(s.error(), Some(&Error::RelaySilent));
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(sent(&mut s), []);
    connect(&mut s, at(30_000), 2, 1, 0);
}

#[test]
fn relay_ping_is_answered() {
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    assert_eq!(feed(&mut s, at(1), &Frame::Ping), Ok(None));
    assert_eq!(feed(&mut s, at(2), &Frame::Ping), Ok(None));
    assert_eq!(sent(&mut s), [Frame::Pong, Frame::Pong]);
    assert_eq!(sent(&mut s), []);
    // Hearing the relay counts as activity.
    assert_eq!(s.poll_timeout(), Some(at(5002)));
}

// ---------------------------------------------------------------------------------------------
// Close

#[test]
fn close_waits_for_the_relays_close() {
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    let mut buf = [0; 64];
    s.publish(PublishKind::Produce, &["jobs"], b"last", &mut buf)
        .unwrap();
    s.close(at(1000));
    assert_eq!(s.phase(), Phase::Closing);
    assert_eq!(sent(&mut s), [close(CloseCode::Normal, "")]);
    assert_eq!(s.poll_timeout(), Some(at(11_000)));
    assert_eq!(
        s.publish(PublishKind::Produce, &["jobs"], b"late", &mut buf),
        Err(Error::Stopped)
    );
    // What the relay still has to say arrives before its Close.
    assert_eq!(
        feed(&mut s, at(1001), &Frame::Confirm(Confirm { up_to: 1 })),
        Ok(Some(Event::Confirmed { up_to: 1 }))
    );
    assert_eq!(
        feed(&mut s, at(1002), &close(CloseCode::Normal, "")),
        Ok(Some(Event::Stopped))
    );
    assert_eq!(s.phase(), Phase::Closed);
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.start_connection(at(2000), [2; 32]), Err(Error::Stopped));
}

#[test]
fn close_leaves_after_the_acks_owed() {
    // An object handed over just before close must not be redelivered to another consumer.
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    s.notify("jobs", 1).unwrap();
    sent(&mut s);
    feed(&mut s, at(1), &produced("jobs", 1)).unwrap();
    s.handed_over("jobs", 1).unwrap();
    s.close(at(2));
    assert_eq!(
        sent(&mut s),
        [Frame::Ack(Ack { up_to: 1 }), close(CloseCode::Normal, "")]
    );
}

#[test]
fn nothing_follows_the_close() {
    // PROTOCOL.md §7.7: `Close { Normal }` is the endpoint's last frame; a `Ping` that arrives
    // while it waits for the relay's answer is accepted, not answered (the relay reads nothing
    // after the endpoint's `Close`), and neither is an object handed over since.
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    s.notify("jobs", 1).unwrap();
    sent(&mut s);
    s.close(at(1));
    assert_eq!(sent(&mut s), [close(CloseCode::Normal, "")]);
    assert_eq!(feed(&mut s, at(2), &Frame::Ping), Ok(None));
    feed(&mut s, at(3), &produced("jobs", 1)).unwrap();
    s.handed_over("jobs", 1).unwrap();
    assert_eq!(sent(&mut s), []);
    assert_eq!(
        feed(&mut s, at(4), &close(CloseCode::Normal, "")),
        Ok(Some(Event::Stopped))
    );
}

#[test]
fn close_deadline() {
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    s.close(at(1000));
    sent(&mut s);
    s.handle_timeout(at(10_999));
    assert_eq!(s.error(), None);
    s.handle_timeout(at(11_000));
    assert_eq!(s.error(), Some(&Error::RelaySilent));
}

#[test]
fn close_during_handshake_finishes_it_first() {
    let mut s = session();
    s.start_connection(at(0), [1; 32]).unwrap();
    s.close(at(1));
    // Hello still comes first: a Close is no valid first frame.
    let script = handshake_until_welcome(&mut s, at(2));
    assert_eq!(
        feed(&mut s, at(3), &script.welcome(RELAY_MAX, 1, 0)),
        Ok(Some(Event::Connected { last_seq: 0 }))
    );
    assert_eq!(s.phase(), Phase::Closing);
    assert_eq!(sent(&mut s), [close(CloseCode::Normal, "")]);
    assert_eq!(
        feed(&mut s, at(4), &close(CloseCode::Normal, "")),
        Ok(Some(Event::Stopped))
    );
}

// ---------------------------------------------------------------------------------------------
// Publish and confirms

fn decoded_publish(bytes: &[u8]) -> Frame<'_> {
    assert_eq!(frame::frame_len(bytes, u32::MAX), Ok(Some(bytes.len())));
    frame::decode(bytes).unwrap()
}

#[test]
fn publish_numbers_increase_by_one() {
    let mut s = session();
    let mut buf = [0; 128];
    // Works while disconnected; membership is not needed to send.
    assert_eq!(s.next_seq(), 1);
    let (seq, n) = s
        .publish(PublishKind::Broadcast, &["consumers"], b"one", &mut buf)
        .unwrap();
    assert_eq!(seq, 1);
    assert_eq!(
        decoded_publish(&buf[..n]),
        Frame::Publish(Publish {
            seq: 1,
            kind: PublishKind::Broadcast,
            groups: GroupList::from_slice(&["consumers"]).unwrap(),
            payload: b"one",
        })
    );
    let (seq, _) = s
        .publish(PublishKind::Produce, &["jobs"], b"", &mut buf)
        .unwrap();
    assert_eq!(seq, 2);

    // Header only, payload appended by the caller.
    let payload = b"three";
    let (seq, n) = s
        .publish_header(PublishKind::Produce, &["a", "b"], payload.len(), &mut buf)
        .unwrap();
    assert_eq!(seq, 3);
    buf[n..n + payload.len()].copy_from_slice(payload);
    let expected = encode(&Frame::Publish(Publish {
        seq: 3,
        kind: PublishKind::Produce,
        groups: GroupList::from_slice(&["a", "b"]).unwrap(),
        payload,
    }));
    assert_eq!(&buf[..n + payload.len()], &expected[..]);
    assert_eq!(s.next_seq(), 4);

    // Refusals do not use up a number.
    assert_eq!(
        s.publish(PublishKind::Produce, &[], b"x", &mut buf),
        Err(Error::NoGroup)
    );
    assert_eq!(
        s.publish(PublishKind::Produce, &[""], b"x", &mut buf),
        Err(Error::BadGroupName)
    );
    let names: Vec<std::string::String> = (0..=MAX_GROUPS).map(|i| std::format!("g{i}")).collect();
    let many: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    assert_eq!(
        s.publish_header(PublishKind::Produce, &many, 1, &mut buf),
        Err(Error::TooManyGroups)
    );
    let needed = Frame::Publish(Publish {
        seq: 4,
        kind: PublishKind::Produce,
        groups: GroupList::from_slice(&["jobs"]).unwrap(),
        payload: b"x",
    })
    .encoded_len();
    assert_eq!(
        s.publish(
            PublishKind::Produce,
            &["jobs"],
            b"x",
            &mut buf[..needed - 1]
        ),
        Err(Error::Frame(FrameError::BufferTooSmall { needed }))
    );
    assert_eq!(s.next_seq(), 4);
    let (seq, n) = s
        .publish(PublishKind::Produce, &["jobs"], b"x", &mut buf[..needed])
        .unwrap();
    assert_eq!((seq, n), (4, needed));
    // Naming a group twice means it once.
    let (_, n) = s
        .publish_header(PublishKind::Produce, &["g", "g"], 0, &mut buf)
        .unwrap();
    match frame::decode(&buf[..n]) {
        Ok(Frame::Publish(p)) => assert_eq!(p.groups.as_slice(), &["g"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn payload_limit_comes_from_welcome() {
    let mut s = session();
    assert_eq!(s.relay_max_frame(), DEFAULT_RELAY_MAX_FRAME);
    let script = authenticate(&mut s, at(0), 1);
    feed(&mut s, at(1), &script.welcome(1024, 1, 0)).unwrap();
    assert_eq!(s.relay_max_frame(), 1024);

    let header = Frame::Publish(Publish {
        seq: s.next_seq(),
        kind: PublishKind::Produce,
        groups: GroupList::from_slice(&["jobs"]).unwrap(),
        payload: &[],
    })
    .encoded_len();
    let mut buf = vec![0; 2048];
    let fits = vec![7; 1024 - header];
    let too_big = vec![7; 1024 - header + 1];
    assert_eq!(
        s.publish(PublishKind::Produce, &["jobs"], &too_big, &mut buf),
        Err(Error::PayloadTooLarge {
            size: 1025,
            max: 1024
        })
    );
    assert_eq!(
        s.publish_header(PublishKind::Produce, &["jobs"], too_big.len(), &mut buf),
        Err(Error::PayloadTooLarge {
            size: 1025,
            max: 1024
        })
    );
    assert_eq!(s.error(), None, "a local refusal, not a connection error");
    assert_eq!(
        s.publish(PublishKind::Produce, &["jobs"], &fits, &mut buf),
        Ok((1, 1024))
    );
}

#[test]
fn confirms_and_rejections() {
    let mut s = session();
    let mut buf = [0; 64];
    for _ in 0..3 {
        s.publish(PublishKind::Produce, &["jobs"], b"x", &mut buf)
            .unwrap();
    }
    // A reconnect's Welcome says what the relay already handled for this session.
    connect(&mut s, at(0), 1, 1, 0);
    s.connection_lost();
    connect(&mut s, at(0), 2, 1, 1);
    assert_eq!(s.confirmed(), 1);
    let rejected = Frame::PublishRejected(PublishRejected {
        seq: 2,
        group: "jobs",
        reason: RejectReason::QueueFull,
    });
    assert_eq!(
        feed(&mut s, at(1), &rejected),
        Ok(Some(Event::Rejected {
            seq: 2,
            group: "jobs",
            reason: RejectReason::QueueFull
        }))
    );
    assert_eq!(
        feed(&mut s, at(2), &Frame::Confirm(Confirm { up_to: 3 })),
        Ok(Some(Event::Confirmed { up_to: 3 }))
    );
    assert_eq!(s.confirmed(), 3);
    // Nothing beyond what was published can be confirmed.
    assert_eq!(
        feed(&mut s, at(3), &Frame::Confirm(Confirm { up_to: 4 })),
        Err(Error::Unexpected(Kind::Confirm))
    );
    assert_eq!(sent(&mut s), [close(CloseCode::ProtocolViolation, "")]);
    assert_eq!(s.confirmed(), 3);
}

// ---------------------------------------------------------------------------------------------
// Input framing and bad input

#[test]
fn split_frame_needs_more_until_whole() {
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    let deliver = produced("jobs", 1);
    let mut bytes = encode(&deliver);
    for cut in 0..bytes.len() {
        assert_eq!(
            s.handle_input(at(1), &bytes[..cut]),
            Ok(Input::NeedMore),
            "cut at {cut}"
        );
    }
    let len = bytes.len();
    // Two frames in one buffer: one at a time.
    bytes.extend_from_slice(&encode(&Frame::Ping));
    assert_eq!(
        s.handle_input(at(1), &bytes),
        Ok(Input::Frame {
            consumed: len,
            event: delivered(&deliver),
        })
    );
    assert_eq!(
        s.handle_input(at(1), &bytes[len..]),
        Ok(Input::Frame {
            consumed: 5,
            event: None
        })
    );
    assert_eq!(sent(&mut s), [Frame::Pong]);
}

#[test]
fn oversize_frame_is_refused_from_its_prefix() {
    let mut config = config();
    config.max_frame = frame::MIN_MAX_FRAME;
    let mut s = EndpointSession::new(config);
    connect(&mut s, at(0), 1, 1, 0);
    // A 2000-byte Deliver announced; only its prefix has arrived.
    let prefix = 1996u32.to_be_bytes();
    let expected = Error::Frame(FrameError::TooLarge {
        size: 2000,
        max: 1024,
    });
    assert_eq!(s.handle_input(at(1), &prefix), Err(expected.clone()));
    assert_eq!(sent(&mut s), [close(CloseCode::FrameTooLarge, "")]);
    assert_eq!(sent(&mut s), []);
    assert_eq!(s.handle_input(at(2), &prefix), Err(expected.clone()));
    assert_eq!(s.error(), Some(&expected));
    assert!(!expected.is_permanent());
    connect(&mut s, at(10), 2, 1, 0);
}

#[test]
fn frames_before_welcome_are_kept_small() {
    let big = frame::RELAY_HANDSHAKE_MAX_FRAME + 1;
    let prefix = (big - 4).to_be_bytes();
    let expected = Error::Frame(FrameError::TooLarge {
        size: u64::from(big),
        max: frame::RELAY_HANDSHAKE_MAX_FRAME,
    });
    // Waiting for the Challenge, and again for the Welcome: refused from the prefix alone.
    let mut s = session();
    s.start_connection(at(0), [1; 32]).unwrap();
    sent(&mut s);
    assert_eq!(s.receive_limit(), frame::RELAY_HANDSHAKE_MAX_FRAME);
    assert_eq!(s.handle_input(at(1), &prefix), Err(expected.clone()));
    assert_eq!(sent(&mut s), [close(CloseCode::FrameTooLarge, "")]);
    assert!(!expected.is_permanent());
    authenticate(&mut s, at(10), 2);
    assert_eq!(s.handle_input(at(11), &prefix), Err(expected));

    // A long Close detail still fits; after Welcome the endpoint's own limit applies.
    authenticate(&mut s, at(20), 3);
    let long = "x".repeat(4000);
    let Err(Error::Rejected(CloseCode::GroupRefused, _)) =
        feed(&mut s, at(21), &close(CloseCode::GroupRefused, long.leak()))
    else {
        panic!("expected Rejected")
    };
    let mut s = session();
    connect(&mut s, at(30), 4, 1, 0);
    assert_eq!(s.receive_limit(), s.config().max_frame);
    assert_eq!(s.handle_input(at(31), &prefix), Ok(Input::NeedMore));
}

#[test]
fn garbage_from_the_relay_is_a_protocol_violation() {
    for (bytes, error) in [
        (vec![0, 0, 0, 1, 0xff], FrameError::UnknownKind(0xff)),
        (vec![0, 0, 0, 0], FrameError::ZeroLength),
        (vec![0, 0, 0, 2, 0x06, 0], FrameError::Malformed(Kind::Ping)),
        (vec![0, 0, 0, 4, 0x20, 0, 0, 1], FrameError::BadGroupName),
    ] {
        let mut s = session();
        connect(&mut s, at(0), 1, 1, 0);
        assert_eq!(s.handle_input(at(1), &bytes), Err(Error::Frame(error)));
        assert_eq!(sent(&mut s), [close(CloseCode::ProtocolViolation, "")]);
    }
}

#[test]
fn input_without_a_connection_is_refused() {
    let mut s = session();
    assert_eq!(
        s.handle_input(at(0), &encode(&Frame::Ping)),
        Err(Error::NotConnected)
    );
    connect(&mut s, at(0), 1, 1, 0);
    s.connection_lost();
    assert_eq!(s.phase(), Phase::Closed);
    assert_eq!(
        s.handle_input(at(1), &encode(&Frame::Ping)),
        Err(Error::NotConnected)
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn small_transmit_buffer_loses_nothing() {
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    s.notify("jobs", 1).unwrap();
    s.notify("logs", 1).unwrap();
    feed(&mut s, at(1), &Frame::Ping).unwrap();
    let notify_len = encode(&notify("jobs", 1)).len();
    assert_eq!(
        s.poll_transmit(&mut [0; 4]),
        Err(Error::Frame(FrameError::BufferTooSmall {
            needed: notify_len
        }))
    );
    assert_eq!(s.error(), None);
    let mut out = vec![0; notify_len];
    assert_eq!(s.poll_transmit(&mut out), Ok(notify_len));
    assert_eq!(frame::decode(&out), Ok(notify("jobs", 1)));
    assert_eq!(sent(&mut s), [notify("logs", 1), Frame::Pong]);
}

/// A `Welcome` whose `last_seq` is at or beyond the next sequence number claims publishes this
/// session never made (a relay bug, or another endpoint with the same session id): taken as
/// is, the kept publishes up to it would count as confirmed and the relay would drop every
/// later one up to it as a resend, confirming it: silently lost.
#[test]
fn welcome_claiming_publishes_never_made_is_refused() {
    let mut s = session();
    let mut buf = [0; 64];
    connect(&mut s, at(0), 1, 1, 0);
    s.publish(PublishKind::Produce, &["jobs"], b"x", &mut buf)
        .unwrap();
    s.connection_lost();
    let script = authenticate(&mut s, at(10), 2);
    let welcome = script.welcome(RELAY_MAX, 1, 5);
    let err = feed(&mut s, at(11), &welcome).unwrap_err();
    assert_eq!(
        err,
        Error::RelayAhead {
            last_seq: 5,
            next_seq: 2
        }
    );
    assert!(err.to_string().contains("session"), "{err}");
    assert_eq!(s.confirmed(), 0, "nothing counts as confirmed");
    assert_eq!(sent(&mut s), [close(CloseCode::ProtocolViolation, "")]);
    // Everything published so far, exactly, is fine.
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    s.publish(PublishKind::Produce, &["jobs"], b"x", &mut buf)
        .unwrap();
    s.connection_lost();
    connect(&mut s, at(10), 2, 1, 1);
    assert_eq!(s.confirmed(), 1);
}

/// Before its first `Welcome` a session has sent the relay nothing, so a first `Welcome` with
/// `last_seq` above 0 means the relay knows the session id from another endpoint (one reused
/// after a reboot, say). Once this endpoint had published past that number, the check above
/// could not tell; this one can, before anything is lost.
#[test]
fn a_first_welcome_that_knows_the_session_is_refused() {
    let mut s = session();
    let mut buf = [0; 64];
    for payload in [&b"a"[..], b"b", b"c"] {
        s.publish(PublishKind::Produce, &["jobs"], payload, &mut buf)
            .unwrap();
    }
    let script = authenticate(&mut s, at(0), 1);
    let welcome = script.welcome(RELAY_MAX, 1, 2);
    let err = feed(&mut s, at(1), &welcome).unwrap_err();
    assert_eq!(err, Error::SessionReused { last_seq: 2 });
    assert!(err.to_string().contains("reused"), "{err}");
    assert_eq!(s.confirmed(), 0, "nothing counts as confirmed");
    assert_eq!(sent(&mut s), [close(CloseCode::ProtocolViolation, "")]);
}

/// Publishes the driver dropped unsent (too large for the relay after a reconnect) are never
/// asked to be confirmed: the relay cannot confirm what it never got, so each `Pong` would
/// bring another `Ping`. A later publish can be confirmed again.
#[test]
fn dropped_publishes_are_not_asked_to_be_confirmed() {
    let mut s = session();
    connect(&mut s, at(0), 1, 1, 0);
    let mut buf = [0; 64];
    s.publish(PublishKind::Produce, &["jobs"], b"a", &mut buf)
        .unwrap();
    s.publish(PublishKind::Produce, &["jobs"], b"dropped", &mut buf)
        .unwrap();
    sent(&mut s);
    feed(&mut s, at(1), &Frame::Confirm(Confirm { up_to: 1 })).unwrap();
    s.publishes_dropped(1);
    s.request_confirm();
    assert_eq!(sent(&mut s), [], "a Ping for a publish the relay never got");
    let (seq, _) = s
        .publish(PublishKind::Produce, &["jobs"], b"b", &mut buf)
        .unwrap();
    assert_eq!(seq, 3);
    sent(&mut s);
    s.request_confirm();
    assert_eq!(sent(&mut s), [Frame::Ping]);
}
