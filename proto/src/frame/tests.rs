//! Scripted byte tests of the wire format: exact bytes, every prefix of a stream, and every kind
//! of bad input with its typed error.

use super::*;

/// A limit far above every sample frame.
const MAX: u32 = 64 * 1024;

/// Bytes from a hex literal; whitespace is ignored so layouts can be spaced by field.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| {
            let text = core::str::from_utf8(pair).unwrap();
            u8::from_str_radix(text, 16).unwrap()
        })
        .collect()
}

fn groups<'a>(names: &[&'a str]) -> GroupList<'a> {
    GroupList::from_slice(names).unwrap()
}

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = vec![0; frame.encoded_len()];
    let n = frame.encode(&mut out).unwrap();
    assert_eq!(n, out.len(), "encoded_len is exact for {frame:?}");
    out
}

/// Builds a frame by hand: the length prefix counts the kind byte and `body`.
fn raw(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// One frame of every kind, payload-carrying kinds with empty and non-empty payloads, and codes
/// this version does not know.
fn samples() -> Vec<Frame<'static>> {
    vec![
        Frame::Hello(Hello {
            version: 1,
            nonce: [0x11; 32],
            session: [0x22; 16],
            max_frame: 4096,
            keepalive_ms: 5000,
            groups: groups(&["a", "bc"]),
        }),
        Frame::Hello(Hello {
            version: u16::MAX,
            nonce: [0; 32],
            session: [0xff; 16],
            max_frame: u32::MAX,
            keepalive_ms: 0,
            groups: GroupList::new(),
        }),
        Frame::Challenge(Challenge { nonce: [0x5a; 32] }),
        Frame::Proof(Proof { mac: [0xa5; 32] }),
        Frame::Welcome(Welcome {
            mac: [0x3c; 32],
            max_frame: MIN_MAX_FRAME,
            last_seq: u64::MAX,
            epoch: 0x0123_4567_89ab_cdef,
        }),
        Frame::Close(Close {
            code: CloseCode::Normal,
            detail: "",
        }),
        Frame::Close(Close {
            code: CloseCode::SlowConsumer,
            detail: "fell 2 MiB behind — ünïcode",
        }),
        Frame::Close(Close {
            code: CloseCode::Unknown(200),
            detail: "from a newer relay",
        }),
        Frame::Ping,
        Frame::Pong,
        Frame::Publish(Publish {
            seq: 1,
            kind: PublishKind::Broadcast,
            groups: groups(&["consumers"]),
            payload: &[],
        }),
        Frame::Publish(Publish {
            seq: 300,
            kind: PublishKind::Produce,
            groups: groups(&["a", "b", "c"]),
            payload: b"\x00postcard bytes\xff",
        }),
        Frame::Notify(Notify {
            group: "jobs",
            credit: 3,
        }),
        Frame::Notify(Notify {
            group: "jobs",
            credit: -1,
        }),
        Frame::Notify(Notify {
            group: "jobs",
            credit: i32::MIN,
        }),
        Frame::Ack(Ack { up_to: 0 }),
        Frame::Ack(Ack { up_to: 1 << 40 }),
        Frame::Deliver(Deliver {
            group: "g",
            delivery: Delivery::Broadcast { seq: 7 },
            payload: &[],
        }),
        Frame::Deliver(Deliver {
            group: "g",
            delivery: Delivery::Produced { tag: 300 },
            payload: b"hi",
        }),
        Frame::Confirm(Confirm { up_to: 42 }),
        Frame::PublishRejected(PublishRejected {
            seq: 9,
            group: "jobs",
            reason: RejectReason::QueueFull,
        }),
        Frame::PublishRejected(PublishRejected {
            seq: 10,
            group: "jobs",
            reason: RejectReason::Unknown(99),
        }),
        Frame::Skipped(Skipped {
            group: "video",
            seq: 12,
            size: 70_000,
        }),
    ]
}

#[test]
fn samples_cover_every_known_kind() {
    let samples = samples();
    for byte in 0..=u8::MAX {
        let kind = Kind::from(byte);
        assert_eq!(u8::from(kind), byte, "kind byte kept");
        if let Kind::Unknown(b) = kind {
            assert_eq!(b, byte);
            continue;
        }
        assert!(
            samples.iter().any(|f| f.kind() == kind),
            "no sample of {kind:?}"
        );
    }
}

#[test]
fn every_kind_round_trips() {
    for frame in samples() {
        let bytes = encode(&frame);
        assert_eq!(frame_len(&bytes, MAX), Ok(Some(bytes.len())), "{frame:?}");
        assert_eq!(
            u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize,
            bytes.len() - 4,
            "the prefix counts everything after itself"
        );
        assert_eq!(bytes[4], u8::from(frame.kind()));
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded, frame);
        assert_eq!(decoded.payload(), frame.payload());

        // A frame followed by the start of the next one still measures the same.
        let mut followed = bytes.clone();
        followed.extend_from_slice(&[0, 0, 0, 1, 0x06]);
        assert_eq!(frame_len(&followed, MAX), Ok(Some(bytes.len())));

        // Header then payload, written separately, is the same frame.
        let payload = frame.payload();
        let mut out = vec![0xee; bytes.len() + 8];
        let n = frame.encode_header(payload.len(), &mut out).unwrap();
        assert_eq!(n, bytes.len() - payload.len());
        out[n..n + payload.len()].copy_from_slice(payload);
        assert_eq!(&out[..n + payload.len()], &bytes[..], "{frame:?}");
    }
}

#[test]
fn encode_header_ignores_the_frames_own_payload() {
    let deliver = Deliver {
        group: "g",
        delivery: Delivery::Broadcast { seq: 1 },
        payload: b"ignored",
    };
    let with = Frame::Deliver(deliver.clone());
    let without = Frame::Deliver(Deliver {
        payload: &[],
        ..deliver
    });
    let mut a = [0; 64];
    let mut b = [0; 64];
    let na = with.encode_header(3, &mut a).unwrap();
    let nb = without.encode_header(3, &mut b).unwrap();
    assert_eq!(a[..na], b[..nb]);
    assert_eq!(
        u32::from_be_bytes(a[..4].try_into().unwrap()) as usize,
        na - 4 + 3
    );
}

#[test]
fn ping_and_pong_exact_bytes() {
    assert_eq!(encode(&Frame::Ping), hex("00000001 06"));
    assert_eq!(encode(&Frame::Pong), hex("00000001 07"));
}

#[test]
fn notify_exact_bytes() {
    // group: varint length + UTF-8; credit: zigzag varint (3 -> 6, -1 -> 1).
    let notify = |credit| {
        Frame::Notify(Notify {
            group: "jobs",
            credit,
        })
    };
    assert_eq!(encode(&notify(3)), hex("00000007 11 04 6a6f6273 06"));
    assert_eq!(encode(&notify(-1)), hex("00000007 11 04 6a6f6273 01"));
    assert_eq!(encode(&notify(64)), hex("00000008 11 04 6a6f6273 8001"));
}

#[test]
fn hello_exact_bytes() {
    let hello = Frame::Hello(Hello {
        version: 1,
        nonce: [0x11; 32],
        session: [0x22; 16],
        max_frame: 4096,
        keepalive_ms: 5000,
        groups: groups(&["a", "bc"]),
    });
    let expected = hex("0000003c 01
         01
         1111111111111111111111111111111111111111111111111111111111111111
         22222222222222222222222222222222
         8020
         8827
         02 01 61 02 6263");
    assert_eq!(encode(&hello), expected);
}

#[test]
fn close_deliver_and_welcome_exact_bytes() {
    // Close: the code is one raw byte, the detail a varint-length string.
    let close = Frame::Close(Close {
        code: CloseCode::Shutdown,
        detail: "bye",
    });
    assert_eq!(encode(&close), hex("00000006 05 0a 03 627965"));
    // Deliver: group, delivery (variant index, then seq/tag varint), then the raw payload.
    let deliver = Frame::Deliver(Deliver {
        group: "g",
        delivery: Delivery::Produced { tag: 300 },
        payload: b"hi",
    });
    assert_eq!(encode(&deliver), hex("00000008 20 01 67 01 ac02 6869"));
    let broadcast = Frame::Deliver(Deliver {
        group: "g",
        delivery: Delivery::Broadcast { seq: 1 },
        payload: &[],
    });
    assert_eq!(encode(&broadcast), hex("00000005 20 01 67 00 01"));
    // Publish: seq, kind (0 broadcast, 1 produce), groups, payload.
    let publish = Frame::Publish(Publish {
        seq: 2,
        kind: PublishKind::Produce,
        groups: groups(&["q"]),
        payload: b"x",
    });
    assert_eq!(encode(&publish), hex("00000007 10 02 01 01 01 71 78"));
    // Welcome: mac (32 raw bytes), max_frame, last_seq, epoch as varints.
    let welcome = Frame::Welcome(Welcome {
        mac: [0; 32],
        max_frame: 1024,
        last_seq: 0,
        epoch: 1,
    });
    let mut expected = hex("00000025 04");
    expected.extend_from_slice(&[0; 32]);
    expected.extend_from_slice(&hex("8008 00 01"));
    assert_eq!(encode(&welcome), expected);
}

#[test]
fn stream_fed_byte_at_a_time_and_every_prefix() {
    let frames = samples();
    let mut stream = Vec::new();
    let mut bounds = Vec::new();
    for f in &frames {
        let start = stream.len();
        stream.extend_from_slice(&encode(f));
        bounds.push((start, stream.len()));
    }

    // Every prefix of every frame: nothing until it is whole.
    for &(start, end) in &bounds {
        for cut in start..end {
            assert_eq!(
                frame_len(&stream[start..cut], MAX),
                Ok(None),
                "cut at {cut}"
            );
        }
        assert_eq!(frame_len(&stream[start..end], MAX), Ok(Some(end - start)));
        assert_eq!(frame_len(&stream[start..], MAX), Ok(Some(end - start)));
    }

    // A deframer fed one byte at a time gets the same frames out, in order.
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for &byte in &stream {
        buf.push(byte);
        while let Some(n) = frame_len(&buf, MAX).unwrap() {
            // Re-encoding owns the bytes, so the buffer can be drained.
            out.push(encode(&decode(&buf[..n]).unwrap()));
            buf.drain(..n);
        }
    }
    assert!(buf.is_empty());
    let expected: Vec<Vec<u8>> = frames.iter().map(encode).collect();
    assert_eq!(out, expected);
}

#[test]
fn garbage_is_refused() {
    // An HTTP request: "GET " read as a length is a gigabyte.
    assert_eq!(
        frame_len(b"GET / HTTP/1.1\r\n", MAX),
        Err(FrameError::TooLarge {
            size: 4 + 0x4745_5420,
            max: MAX
        })
    );
    // A TLS ClientHello sent to a plain-TCP relay.
    assert_eq!(
        frame_len(&hex("16030100 f4 01 0000f0"), MAX),
        Err(FrameError::TooLarge {
            size: 4 + 0x1603_0100,
            max: MAX
        })
    );
    // A plausible length with a kind byte nobody knows.
    let junk = hex("00000004 ff 123456");
    assert_eq!(frame_len(&junk, MAX), Ok(Some(8)));
    assert_eq!(decode(&junk), Err(FrameError::UnknownKind(0xff)));
    // A known kind with a body that is not its header.
    assert_eq!(
        decode(&raw(0x04, &hex("deadbeef"))),
        Err(FrameError::Malformed(Kind::Welcome))
    );
}

#[test]
fn oversize_prefix_is_refused_before_the_body_exists() {
    // Three bytes: not enough to know.
    assert_eq!(frame_len(&hex("000004"), 1024), Ok(None));
    // The prefix alone announces 4 + 1021 bytes: one too many.
    assert_eq!(
        frame_len(&hex("000003fd"), 1024),
        Err(FrameError::TooLarge {
            size: 1025,
            max: 1024
        })
    );
    // Exactly the limit is fine: the body is simply not there yet.
    assert_eq!(frame_len(&hex("000003fc"), 1024), Ok(None));
    // The largest prefix does not overflow the size computation.
    assert_eq!(
        frame_len(&hex("ffffffff"), u32::MAX),
        Err(FrameError::TooLarge {
            size: 4 + u64::from(u32::MAX),
            max: u32::MAX
        })
    );
}

#[test]
fn zero_length_is_refused() {
    // A frame must at least hold its kind byte.
    assert_eq!(
        frame_len(&hex("00000000"), MAX),
        Err(FrameError::ZeroLength)
    );
    assert_eq!(
        frame_len(&hex("00000000 06"), MAX),
        Err(FrameError::ZeroLength)
    );
}

#[test]
fn truncated_reports_what_was_there() {
    let bytes = encode(&Frame::Confirm(Confirm { up_to: 5 }));
    assert_eq!(bytes.len(), 6);
    assert_eq!(
        truncated(&bytes[..5]),
        FrameError::Truncated { have: 5, need: 6 }
    );
    // The prefix itself was cut: the size is unknown.
    assert_eq!(
        truncated(&bytes[..2]),
        FrameError::Truncated { have: 2, need: 0 }
    );
    assert_eq!(truncated(&[]), FrameError::Truncated { have: 0, need: 0 });
    // The largest prefix does not overflow (a 32-bit target included).
    assert!(matches!(
        truncated(&hex("ffffffff 01")),
        FrameError::Truncated { have: 5, need } if need >= u32::MAX as usize
    ));
    // decode refuses fewer bytes than a prefix and a kind.
    assert_eq!(
        decode(&bytes[..4]),
        Err(FrameError::Truncated { have: 4, need: 6 })
    );
}

#[test]
fn unknown_kind_keeps_its_byte() {
    for kind in [0x00, 0x08, 0x13, 0x24, 0x7f, 0xff] {
        let bytes = raw(kind, &[]);
        assert_eq!(frame_len(&bytes, MAX), Ok(Some(5)));
        assert_eq!(decode(&bytes), Err(FrameError::UnknownKind(kind)));
    }
    assert_eq!(
        FrameError::UnknownKind(0x7f).to_string(),
        "unknown frame kind 0x7f"
    );
}

#[test]
fn malformed_headers_are_refused() {
    let cases: Vec<(Vec<u8>, Kind)> = vec![
        // A nonce one byte short.
        (raw(0x02, &[0x5a; 31]), Kind::Challenge),
        (raw(0x03, &[]), Kind::Proof),
        // Close with a detail that is not UTF-8.
        (raw(0x05, &hex("00 02 c328")), Kind::Close),
        // Close whose detail length runs past the end.
        (raw(0x05, &hex("00 05 6869")), Kind::Close),
        // Ack with a varint longer than a u64 can be.
        (raw(0x12, &hex("ffffffffffffffffffff01")), Kind::Ack),
        // Deliver with a delivery variant that does not exist.
        (raw(0x20, &hex("01 67 02 01")), Kind::Deliver),
        // Publish with a kind that does not exist.
        (raw(0x10, &hex("01 02 01 01 61")), Kind::Publish),
        // Hello with more than MAX_GROUPS groups.
        (
            {
                let mut body = hex("01");
                body.extend_from_slice(&[0; 48]);
                body.extend_from_slice(&hex("8008 00"));
                body.push(MAX_GROUPS as u8 + 1);
                for _ in 0..=MAX_GROUPS {
                    body.extend_from_slice(&hex("01 61"));
                }
                raw(0x01, &body)
            },
            Kind::Hello,
        ),
    ];
    for (bytes, kind) in cases {
        assert_eq!(frame_len(&bytes, MAX), Ok(Some(bytes.len())));
        assert_eq!(
            decode(&bytes),
            Err(FrameError::Malformed(kind)),
            "{bytes:02x?}"
        );
    }
}

#[test]
fn trailing_bytes_after_a_payloadless_frame_are_refused() {
    for frame in samples() {
        if matches!(frame.kind(), Kind::Publish | Kind::Deliver) {
            continue;
        }
        let mut bytes = encode(&frame);
        bytes.push(0);
        let len = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(frame_len(&bytes, MAX), Ok(Some(bytes.len())));
        assert_eq!(
            decode(&bytes),
            Err(FrameError::Malformed(frame.kind())),
            "{frame:?}"
        );
    }
}

#[test]
fn bad_group_names_are_refused_wherever_a_group_travels() {
    let long = "x".repeat(MAX_GROUP_NAME + 1);
    let longest = "x".repeat(MAX_GROUP_NAME);
    assert_eq!(check_group_name(""), Err(FrameError::BadGroupName));
    assert_eq!(check_group_name(&long), Err(FrameError::BadGroupName));
    assert_eq!(check_group_name(&longest), Ok(()));

    for (name, ok) in [
        ("", false),
        (long.as_str(), false),
        (longest.as_str(), true),
    ] {
        // The encoder does not judge names; the decoder does.
        let frames = [
            Frame::Hello(Hello {
                version: 1,
                nonce: [0; 32],
                session: [0; 16],
                max_frame: MIN_MAX_FRAME,
                keepalive_ms: 0,
                groups: groups(&["ok", name]),
            }),
            Frame::Publish(Publish {
                seq: 1,
                kind: PublishKind::Broadcast,
                groups: groups(&[name]),
                payload: b"p",
            }),
            Frame::Notify(Notify {
                group: name,
                credit: 1,
            }),
            Frame::Deliver(Deliver {
                group: name,
                delivery: Delivery::Broadcast { seq: 1 },
                payload: b"p",
            }),
            Frame::PublishRejected(PublishRejected {
                seq: 1,
                group: name,
                reason: RejectReason::GroupRefused,
            }),
            Frame::Skipped(Skipped {
                group: name,
                seq: 1,
                size: 2,
            }),
        ];
        for frame in frames {
            let bytes = encode(&frame);
            let expected = if ok {
                Ok(frame.clone())
            } else {
                Err(FrameError::BadGroupName)
            };
            assert_eq!(
                decode(&bytes),
                expected,
                "{:?} {:?}",
                frame.kind(),
                name.len()
            );
        }
    }
}

#[test]
fn publish_without_a_group_is_refused() {
    let frame = Frame::Publish(Publish {
        seq: 1,
        kind: PublishKind::Produce,
        groups: GroupList::new(),
        payload: b"orphan",
    });
    let bytes = encode(&frame);
    assert_eq!(bytes, hex("0000000a 10 01 01 00 6f727068616e"));
    assert_eq!(decode(&bytes), Err(FrameError::Malformed(Kind::Publish)));
}

#[test]
fn too_small_buffers_say_how_large_they_must_be() {
    for frame in samples() {
        let needed = frame.encoded_len();
        let mut out = vec![0; needed - 1];
        assert_eq!(
            frame.encode(&mut out),
            Err(FrameError::BufferTooSmall { needed }),
            "{frame:?}"
        );
        assert_eq!(
            frame.encode(&mut []),
            Err(FrameError::BufferTooSmall { needed })
        );
    }
    // encode_header reports the whole frame it announces, payload included.
    let publish = Frame::Publish(Publish {
        seq: 1,
        kind: PublishKind::Broadcast,
        groups: groups(&["g"]),
        payload: &[],
    });
    let header = publish.encoded_len();
    let mut out = vec![0; header - 1];
    assert_eq!(
        publish.encode_header(1000, &mut out),
        Err(FrameError::BufferTooSmall {
            needed: header + 1000
        })
    );
    // Room for the header alone is enough: the payload may be written (or sent) separately.
    let mut out = vec![0; header];
    assert_eq!(publish.encode_header(1000, &mut out), Ok(header));
}

#[cfg(target_pointer_width = "64")]
#[test]
fn encode_header_refuses_a_length_the_prefix_cannot_hold() {
    let publish = Frame::Publish(Publish {
        seq: 1,
        kind: PublishKind::Broadcast,
        groups: groups(&["g"]),
        payload: &[],
    });
    let header = publish.encoded_len();
    let mut out = vec![0; header];
    let payload_len = u32::MAX as usize;
    assert_eq!(
        publish.encode_header(payload_len, &mut out),
        Err(FrameError::TooLarge {
            size: (header + payload_len) as u64,
            max: u32::MAX
        })
    );
}

#[test]
fn unknown_codes_keep_their_value() {
    for byte in 0..=u8::MAX {
        assert_eq!(u8::from(CloseCode::from(byte)), byte);
        assert_eq!(u8::from(RejectReason::from(byte)), byte);
    }
    assert_eq!(CloseCode::from(14), CloseCode::Unknown(14));
    assert_eq!(RejectReason::from(0), RejectReason::Unknown(0));
    assert_eq!(RejectReason::from(5), RejectReason::Unknown(5));
    // On the wire the unknown value travels unchanged.
    let close = encode(&Frame::Close(Close {
        code: CloseCode::Unknown(200),
        detail: "",
    }));
    assert_eq!(close, hex("00000003 05 c8 00"));
    assert_eq!(CloseCode::Unknown(200).to_string(), "unknown code 200");
    assert!(!CloseCode::Unknown(200).is_permanent());
}

#[test]
fn code_numbers_are_stable() {
    let close = [
        (CloseCode::Normal, 0, false),
        (CloseCode::BadPassword, 1, true),
        (CloseCode::UnsupportedVersion, 2, true),
        (CloseCode::GroupRefused, 3, true),
        (CloseCode::GroupFull, 4, true),
        (CloseCode::AuthTimeout, 5, false),
        (CloseCode::ProtocolViolation, 6, false),
        (CloseCode::FrameTooLarge, 7, false),
        (CloseCode::SlowConsumer, 8, false),
        (CloseCode::IdleTimeout, 9, false),
        (CloseCode::Shutdown, 10, false),
        (CloseCode::SessionTakenOver, 11, false),
        (CloseCode::TooManyConnections, 12, false),
    ];
    for (code, value, permanent) in close {
        assert_eq!(u8::from(code), value);
        assert_eq!(CloseCode::from(value), code);
        assert_eq!(code.is_permanent(), permanent, "{code:?}");
    }
    let reject = [
        (RejectReason::GroupRefused, 1),
        (RejectReason::QueueFull, 2),
        (RejectReason::TooLarge, 3),
        (RejectReason::TooManyGroups, 4),
    ];
    for (reason, value) in reject {
        assert_eq!(u8::from(reason), value);
        assert_eq!(RejectReason::from(value), reason);
    }
}

#[test]
fn largest_frames_a_limit_must_allow_for() {
    let name = "x".repeat(MAX_GROUP_NAME);
    let names: Vec<&str> = vec![name.as_str(); MAX_GROUPS];
    // The largest legal Hello: a relay must accept this much before Welcome (PROTOCOL.md §2).
    let hello = Frame::Hello(Hello {
        version: u16::MAX,
        nonce: [0; 32],
        session: [0; 16],
        max_frame: u32::MAX,
        keepalive_ms: u32::MAX,
        groups: GroupList::from_slice(&names).unwrap(),
    });
    assert_eq!(hello.encoded_len(), 1107);
    // Every frame the relay sends, but a Deliver's payload and a Close's detail, fits in the
    // smallest limit an endpoint may state.
    let relay_frames = [
        Frame::Challenge(Challenge { nonce: [0; 32] }),
        Frame::Welcome(Welcome {
            mac: [0; 32],
            max_frame: u32::MAX,
            last_seq: u64::MAX,
            epoch: u64::MAX,
        }),
        Frame::Close(Close {
            code: CloseCode::Normal,
            detail: "",
        }),
        Frame::Confirm(Confirm { up_to: u64::MAX }),
        Frame::PublishRejected(PublishRejected {
            seq: u64::MAX,
            group: &name,
            reason: RejectReason::QueueFull,
        }),
        Frame::Skipped(Skipped {
            group: &name,
            seq: u64::MAX,
            size: u32::MAX,
        }),
        Frame::Deliver(Deliver {
            group: &name,
            delivery: Delivery::Produced { tag: u64::MAX },
            payload: &[],
        }),
    ];
    for frame in relay_frames {
        assert!(frame.encoded_len() <= 128, "{frame:?}");
    }
}

#[test]
fn range_within_finds_parts_and_only_parts() {
    let outer = [1u8, 2, 3, 4, 5];
    assert_eq!(range_within(&outer, &outer[1..4]), Some(1..4));
    assert_eq!(range_within(&outer, &outer[..]), Some(0..5));
    let other = [1u8, 2, 3];
    assert_eq!(range_within(&outer, &other), None);
    assert_eq!(
        range_within(&outer[1..3], &outer[2..5]),
        None,
        "runs past the end"
    );
}
