use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pose {
    name: String,
    xyz: [f32; 3],
    tags: Vec<u16>,
    extra: Option<BTreeMap<String, i64>>,
}

fn pose() -> Pose {
    Pose {
        name: "arm".to_owned(),
        xyz: [1.0, -2.5, 3.25],
        tags: vec![1, 300, 65535],
        extra: Some(BTreeMap::from([("k".to_owned(), -7)])),
    }
}

fn encode<C: Codec, T: Serialize + ?Sized>(codec: &C, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    codec.encode(value, &mut out)?;
    Ok(out)
}

/// A byte buffer that serializes as a byte string, like `serde_bytes::ByteBuf`.
#[derive(Debug, PartialEq)]
struct ByteBuf(Vec<u8>);

impl Serialize for ByteBuf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[test]
fn postcard_round_trip_and_appends() {
    let mut out = vec![0xAA, 0xBB];
    Postcard.encode(&pose(), &mut out).unwrap();
    assert_eq!(&out[..2], &[0xAA, 0xBB], "encode must append");
    assert_eq!(Postcard.decode::<Pose>(&out[2..]).unwrap(), pose());
    // Unsized values encode too.
    let text = encode(&Postcard, "hi").unwrap();
    assert_eq!(text, [2, b'h', b'i']);
    assert_eq!(Postcard.decode::<String>(&text).unwrap(), "hi");
}

#[test]
fn postcard_refuses_leftovers_and_truncation() {
    let mut bytes = encode(&Postcard, &pose()).unwrap();
    bytes.push(0);
    let err = Postcard.decode::<Pose>(&bytes).unwrap_err();
    assert!(err.is_decode());
    assert_eq!(err.codec(), "postcard");
    assert!(err.to_string().contains("1 bytes left over"), "{err}");

    bytes.truncate(bytes.len() - 3);
    let err = Postcard.decode::<Pose>(&bytes).unwrap_err();
    assert!(
        err.to_string().starts_with("postcard could not decode"),
        "{err}"
    );
    assert!(err.to_string().contains("same codec"), "{err}");
}

#[test]
fn json_round_trip_and_errors() {
    let bytes = encode(&Json, &pose()).unwrap();
    assert!(bytes.starts_with(b"{\"name\":\"arm\""));
    assert_eq!(Json.decode::<Pose>(&bytes).unwrap(), pose());

    let err = Json.decode::<Pose>(b"{\"name\": 3}").unwrap_err();
    assert_eq!(err.codec(), "json");
    assert!(err.message().contains("invalid type"), "{err}");

    // A map with non-string keys cannot be JSON.
    let err = encode(&Json, &BTreeMap::from([((1, 2), 3)])).unwrap_err();
    assert!(!err.is_decode());
    assert!(
        err.to_string().starts_with("json could not encode"),
        "{err}"
    );
}

#[test]
fn json_refuses_non_finite_floats_naming_where() {
    #[derive(Serialize)]
    struct Sample {
        id: u32,
        gain: Option<f32>,
        readings: Vec<f64>,
        by_name: BTreeMap<String, f64>,
        note: Option<String>,
    }
    #[derive(Serialize)]
    enum Reading {
        Pair(f64, f64),
        Named { value: f64 },
    }
    let good = Sample {
        id: 1,
        gain: None,
        readings: vec![1.0, -0.0, f64::MIN_POSITIVE],
        by_name: BTreeMap::from([("a".to_owned(), 2.5)]),
        note: Some("null".to_owned()),
    };
    // Nulls that are not floats (a None, the text "null") pass.
    let bytes = encode(&Json, &good).unwrap();
    assert!(bytes.windows(4).any(|w| w == b"null"));

    fn refused<T: Serialize + ?Sized>(value: &T) -> String {
        let e = encode(&Json, value).unwrap_err();
        assert_eq!(e.codec(), "json");
        assert!(!e.is_decode());
        e.to_string()
    }
    let bad = Sample {
        readings: vec![1.0, f64::NAN],
        ..good
    };
    let text = refused(&bad);
    assert!(text.contains("readings[1] is NaN (f64)"), "{text}");
    assert!(text.contains("Postcard"), "{text}");
    let bad = Sample {
        gain: Some(f32::INFINITY),
        readings: vec![],
        ..bad
    };
    assert!(refused(&bad).contains("gain is infinite (f32)"));
    let bad = Sample {
        gain: None,
        by_name: BTreeMap::from([("b".to_owned(), f64::NEG_INFINITY)]),
        ..bad
    };
    assert!(refused(&bad).contains(r#"by_name["b"] is infinite"#));
    assert!(refused(&f64::NAN).contains("the object is NaN"));
    assert!(refused(&Reading::Pair(0.0, f64::NAN)).contains("Pair[1] is NaN"));
    assert!(refused(&Reading::Named { value: f64::NAN }).contains("Named.value is NaN"));
    // A variant's name leaves the path when its fields end.
    let after_variants = (
        Reading::Pair(0.0, 0.0),
        Reading::Named { value: 1.0 },
        f64::NAN,
    );
    let text = refused(&after_variants);
    assert!(text.contains(": [2] is NaN"), "{text}");
    assert!(
        refused(&vec![(
            1u8,
            Reading::Named {
                value: f64::INFINITY
            }
        )])
        .contains("[0][1].Named.value is infinite")
    );
}

/// Map entries and `#[serde(flatten)]` fields (which serialize as map entries) are named by
/// their keys, as JSON writes them.
#[test]
fn json_non_finite_paths_name_map_keys() {
    #[derive(Serialize)]
    struct Inner {
        a: f64,
    }
    #[derive(Serialize)]
    struct Outer {
        id: u8,
        #[serde(flatten)]
        inner: Inner,
    }
    let text = encode(
        &Json,
        &Outer {
            id: 1,
            inner: Inner { a: f64::NAN },
        },
    )
    .unwrap_err()
    .to_string();
    assert!(text.contains(r#"["a"] is NaN"#), "{text}");
    let text = encode(&Json, &BTreeMap::from([(7u32, vec![1.0, f64::INFINITY])]))
        .unwrap_err()
        .to_string();
    assert!(text.contains(r#"["7"][1] is infinite"#), "{text}");
    // A long key is cut short.
    let key = "k".repeat(100);
    let text = encode(&Json, &BTreeMap::from([(key, f32::NAN)]))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains(&format!("[\"{}…\"] is NaN", "k".repeat(64))),
        "{text}"
    );
}

#[test]
fn raw_bytes_carries_text_and_bytes_as_they_are() {
    assert_eq!(encode(&RawBytes, "héllo").unwrap(), "héllo".as_bytes());
    assert_eq!(encode(&RawBytes, &"abc".to_owned()).unwrap(), b"abc");
    assert_eq!(
        RawBytes.decode::<String>("héllo".as_bytes()).unwrap(),
        "héllo"
    );

    // A plain Vec<u8> (a sequence of u8) and an array.
    let data = vec![0u8, 1, 2, 255];
    assert_eq!(encode(&RawBytes, &data).unwrap(), data);
    assert_eq!(RawBytes.decode::<Vec<u8>>(&data).unwrap(), data);
    assert_eq!(encode(&RawBytes, &[9u8, 8, 7]).unwrap(), [9, 8, 7]);
    assert_eq!(RawBytes.decode::<[u8; 3]>(&[9, 8, 7]).unwrap(), [9, 8, 7]);

    // A byte-string type, and a newtype around one.
    let buf = ByteBuf(vec![0xDE, 0xAD]);
    assert_eq!(encode(&RawBytes, &buf).unwrap(), [0xDE, 0xAD]);
    assert_eq!(RawBytes.decode::<ByteBuf>(&[0xDE, 0xAD]).unwrap(), buf);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Frame(String);
    assert_eq!(encode(&RawBytes, &Frame("x".into())).unwrap(), b"x");
    assert_eq!(RawBytes.decode::<Frame>(b"y").unwrap(), Frame("y".into()));

    // Empty payloads are fine.
    assert_eq!(encode(&RawBytes, "").unwrap(), b"");
    assert_eq!(RawBytes.decode::<Vec<u8>>(&[]).unwrap(), Vec::<u8>::new());

    // Appends after what is there.
    let mut out = b"head".to_vec();
    RawBytes.encode("tail", &mut out).unwrap();
    assert_eq!(out, b"headtail");
}

#[test]
fn raw_bytes_refuses_what_is_not_bytes() {
    for err in [
        encode(&RawBytes, &pose()).unwrap_err(),
        encode(&RawBytes, &42u32).unwrap_err(),
        encode(&RawBytes, &vec![1u16, 2]).unwrap_err(),
        encode(&RawBytes, &vec!["a", "b"]).unwrap_err(),
        encode(&RawBytes, &Some("a")).unwrap_err(),
    ] {
        assert!(!err.is_decode());
        assert_eq!(err.codec(), "raw bytes");
        assert!(
            err.message().contains("only byte strings, text strings"),
            "{err}"
        );
    }
    assert!(
        encode(&RawBytes, &pose())
            .unwrap_err()
            .message()
            .contains("struct Pose")
    );

    let err = RawBytes.decode::<String>(&[0xFF, 0xFE]).unwrap_err();
    assert!(err.message().contains("not UTF-8"), "{err}");
    let err = RawBytes.decode::<u32>(b"1234").unwrap_err();
    assert!(err.is_decode());
    assert!(err.message().contains("expected u32"), "{err}");
    let err = RawBytes.decode::<Pose>(b"{}").unwrap_err();
    assert!(err.message().contains("struct Pose"), "{err}");
    let err = RawBytes.decode::<[u8; 4]>(b"abc").unwrap_err();
    assert!(err.message().contains("exactly 4 bytes"), "{err}");
}
