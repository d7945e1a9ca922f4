//! How objects become payload bytes, and back.
//!
//! The relay never looks inside a payload: both ends of a group must use the same [`Codec`].
//! Three are provided:
//!
//! - [`Postcard`] (the default): compact, fast, `no_std` friendly — what a microcontroller
//!   endpoint speaks too;
//! - [`Json`]: readable, for debugging and for peers written in other languages;
//! - [`RawBytes`]: the object's bytes as they are, for payloads that already are bytes or text.
//!
//! A codec of your own is a type implementing [`Codec`].

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

mod finite;
mod raw;

/// Turns objects into payload bytes and back. Both ends of a group must use the same codec.
pub trait Codec: Clone + Send + Sync + 'static {
    /// Appends the encoding of `value` to `out`. On error, `out` may hold a partial encoding
    /// after its original content (the caller discards it).
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>)
    -> Result<(), CodecError>;

    /// Decodes one object from exactly `bytes`.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// An object that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError {
    codec: &'static str,
    decoding: bool,
    message: String,
}

impl CodecError {
    /// An encoding failure of the codec named `codec`, for codecs of your own.
    pub fn encode(codec: &'static str, message: impl fmt::Display) -> Self {
        CodecError {
            codec,
            decoding: false,
            message: message.to_string(),
        }
    }

    /// A decoding failure of the codec named `codec`, for codecs of your own.
    pub fn decode(codec: &'static str, message: impl fmt::Display) -> Self {
        CodecError {
            codec,
            decoding: true,
            message: message.to_string(),
        }
    }

    /// The name of the codec that failed (`"postcard"`, `"json"`, `"raw bytes"`, …).
    pub fn codec(&self) -> &'static str {
        self.codec
    }

    /// Whether decoding (rather than encoding) failed.
    pub fn is_decode(&self) -> bool {
        self.decoding
    }

    /// What went wrong, as the codec put it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.decoding { "decode" } else { "encode" };
        write!(
            f,
            "{} could not {what} the object: {}",
            self.codec, self.message
        )?;
        if self.decoding {
            f.write_str(" (do both ends use the same codec and type?)")?;
        }
        Ok(())
    }
}

impl std::error::Error for CodecError {}

/// [postcard](https://docs.rs/postcard): compact binary, the default. Decoding refuses bytes left
/// over after the object, which catches most mismatches of type or codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Postcard;

impl Codec for Postcard {
    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let buf = std::mem::take(out);
        *out = postcard::to_extend(value, buf).map_err(|e| CodecError::encode("postcard", e))?;
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        match postcard::take_from_bytes(bytes) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(CodecError::decode(
                "postcard",
                format_args!("{} bytes left over after the object", rest.len()),
            )),
            Err(e) => Err(CodecError::decode("postcard", e)),
        }
    }
}

/// JSON ([serde_json](https://docs.rs/serde_json)): readable, larger and slower than postcard.
///
/// JSON has no NaN or infinity. serde_json writes them as `null`; this codec refuses an object
/// holding one instead, with a [`CodecError`] naming the field, so no receiver gets `null`
/// where a number was sent. (To find it, an object whose JSON has a `null` is serialized a
/// second time: a `Serialize` that can run only once will fail there with its own error.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json;

impl Codec for Json {
    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let start = out.len();
        serde_json::to_writer(&mut *out, value).map_err(|e| CodecError::encode("json", e))?;
        // serde_json writes a NaN or infinite float as `null`: the receiver would get null
        // where a number was sent. Only an object whose encoding has a null can hold one.
        if has_null(&out[start..]) {
            finite::check(value).map_err(|e| CodecError::encode("json", e))?;
        }
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::decode("json", e))
    }
}

/// Why a serde walk of our own ([`RawBytes`]'s, [`Json`]'s finite-float check) refused a value.
#[derive(Debug)]
struct Refusal(String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

impl serde::ser::Error for Refusal {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Refusal(msg.to_string())
    }
}

impl serde::de::Error for Refusal {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Refusal(msg.to_string())
    }
}

/// Whether `json` has the token `null` somewhere (in a string too: a false alarm costs one walk).
fn has_null(json: &[u8]) -> bool {
    json.windows(4).any(|w| w == b"null")
}

/// The object's bytes as they are, with no framing of its own: the payload *is* the object.
///
/// Only types that serialize as a byte string or a text string are accepted — `String`, `&str`,
/// `Vec<u8>`, `[u8; N]`, `serde_bytes::ByteBuf`, and newtype wrappers of those (a `Vec<u8>`
/// without `serde_bytes` serializes as a sequence of `u8`, which is accepted too). Anything else
/// (a number, a struct, a map, …) is a [`CodecError`] naming what was found: this codec does not
/// invent a format. Decoding into `String` checks that the bytes are UTF-8.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawBytes;

impl Codec for RawBytes {
    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        value
            .serialize(raw::Serializer::new(out))
            .map_err(|e| CodecError::encode("raw bytes", e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        T::deserialize(raw::Deserializer::new(bytes))
            .map_err(|e| CodecError::decode("raw bytes", e))
    }
}

#[cfg(test)]
mod tests;
