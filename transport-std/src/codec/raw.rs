//! The serde plumbing of [`RawBytes`](super::RawBytes): a serializer that accepts a byte string,
//! a text string or a sequence of `u8` (and newtype wrappers of them), and a deserializer that
//! offers the payload as exactly that.

use serde::de::{self, IntoDeserializer, Visitor};
use serde::ser::{self, Impossible, Serialize};

use super::Refusal as RawError;

fn refuse(found: &str) -> RawError {
    RawError(format!(
        "the raw bytes codec carries only byte strings, text strings and sequences of u8, \
         not {found}"
    ))
}

/// Writes the value's bytes to the end of `out`.
pub(super) struct Serializer<'a> {
    out: &'a mut Vec<u8>,
    /// Inside a sequence: only `u8` elements are accepted.
    element: bool,
}

impl<'a> Serializer<'a> {
    pub(super) fn new(out: &'a mut Vec<u8>) -> Self {
        Serializer {
            out,
            element: false,
        }
    }

    fn whole(&self, found: &str) -> Result<(), RawError> {
        if self.element {
            Err(refuse(&format!("a sequence of {found}")))
        } else {
            Ok(())
        }
    }
}

macro_rules! refuse_scalars {
    ($($method:ident($ty:ty) => $what:literal;)*) => {
        $(
            fn $method(self, _v: $ty) -> Result<(), RawError> {
                Err(refuse($what))
            }
        )*
    };
}

impl<'a> ser::Serializer for Serializer<'a> {
    type Ok = ();
    type Error = RawError;
    type SerializeSeq = Bytes<'a>;
    type SerializeTuple = Bytes<'a>;
    type SerializeTupleStruct = Bytes<'a>;
    type SerializeTupleVariant = Impossible<(), RawError>;
    type SerializeMap = Impossible<(), RawError>;
    type SerializeStruct = Impossible<(), RawError>;
    type SerializeStructVariant = Impossible<(), RawError>;

    refuse_scalars! {
        serialize_bool(bool) => "a bool";
        serialize_i8(i8) => "an integer";
        serialize_i16(i16) => "an integer";
        serialize_i32(i32) => "an integer";
        serialize_i64(i64) => "an integer";
        serialize_u16(u16) => "an integer";
        serialize_u32(u32) => "an integer";
        serialize_u64(u64) => "an integer";
        serialize_f32(f32) => "a float";
        serialize_f64(f64) => "a float";
        serialize_char(char) => "a char";
    }

    fn serialize_u8(self, v: u8) -> Result<(), RawError> {
        if self.element {
            self.out.push(v);
            Ok(())
        } else {
            Err(refuse("an integer"))
        }
    }

    fn serialize_str(self, v: &str) -> Result<(), RawError> {
        self.whole("strings")?;
        self.out.extend_from_slice(v.as_bytes());
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), RawError> {
        self.whole("byte strings")?;
        self.out.extend_from_slice(v);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), RawError> {
        Err(refuse("an Option"))
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), RawError> {
        Err(refuse("an Option"))
    }

    fn serialize_unit(self) -> Result<(), RawError> {
        Err(refuse("()"))
    }

    fn serialize_unit_struct(self, name: &'static str) -> Result<(), RawError> {
        Err(refuse(&format!("the unit struct {name}")))
    }

    fn serialize_unit_variant(
        self,
        name: &'static str,
        _index: u32,
        _variant: &'static str,
    ) -> Result<(), RawError> {
        Err(refuse(&format!("the enum {name}")))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), RawError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), RawError> {
        Err(refuse(&format!("the enum {name}")))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Bytes<'a>, RawError> {
        self.whole("sequences")?;
        self.out.reserve(len.unwrap_or(0));
        Ok(Bytes(self.out))
    }

    fn serialize_tuple(self, len: usize) -> Result<Bytes<'a>, RawError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Bytes<'a>, RawError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, RawError> {
        Err(refuse(&format!("the enum {name}")))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, RawError> {
        Err(refuse("a map"))
    }

    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, RawError> {
        Err(refuse(&format!("the struct {name}")))
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, RawError> {
        Err(refuse(&format!("the enum {name}")))
    }
}

/// A sequence being written: every element must be a `u8`.
pub(super) struct Bytes<'a>(&'a mut Vec<u8>);

impl Bytes<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RawError> {
        value.serialize(Serializer {
            out: self.0,
            element: true,
        })
    }
}

impl ser::SerializeSeq for Bytes<'_> {
    type Ok = ();
    type Error = RawError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RawError> {
        self.element(value)
    }

    fn end(self) -> Result<(), RawError> {
        Ok(())
    }
}

impl ser::SerializeTuple for Bytes<'_> {
    type Ok = ();
    type Error = RawError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RawError> {
        self.element(value)
    }

    fn end(self) -> Result<(), RawError> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for Bytes<'_> {
    type Ok = ();
    type Error = RawError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RawError> {
        self.element(value)
    }

    fn end(self) -> Result<(), RawError> {
        Ok(())
    }
}

/// Offers the payload as a byte string, a text string (when it is UTF-8) or a sequence of `u8`.
/// Any other request gets the bytes, so the visitor's own error names what it expected.
pub(super) struct Deserializer<'de> {
    input: &'de [u8],
}

impl<'de> Deserializer<'de> {
    pub(super) fn new(input: &'de [u8]) -> Self {
        Deserializer { input }
    }

    fn text(&self) -> Result<&'de str, RawError> {
        std::str::from_utf8(self.input)
            .map_err(|e| RawError(format!("the payload is not UTF-8 text: {e}")))
    }
}

impl<'de> de::Deserializer<'de> for Deserializer<'de> {
    type Error = RawError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, RawError> {
        visitor.visit_borrowed_bytes(self.input)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, RawError> {
        visitor.visit_borrowed_str(self.text()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, RawError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, RawError> {
        visitor.visit_seq(ByteSeq(self.input.iter()))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, RawError> {
        if len != self.input.len() {
            return Err(RawError(format!(
                "expected exactly {len} bytes, the payload has {}",
                self.input.len()
            )));
        }
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, RawError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, RawError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf option unit
        unit_struct map struct enum identifier ignored_any
    }
}

struct ByteSeq<'de>(std::slice::Iter<'de, u8>);

impl<'de> de::SeqAccess<'de> for ByteSeq<'de> {
    type Error = RawError;

    fn next_element_seed<S: de::DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, RawError> {
        match self.0.next() {
            Some(&byte) => seed.deserialize(byte.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}
