//! Finds a NaN or infinite float in an object, for the JSON codec.
//!
//! JSON has no NaN or infinity, and serde_json writes them as `null` without an error: the
//! receiver then gets `null` where a number was sent (a decode error for an `f64`, a silent
//! `None` for an `Option<f64>`). [`Json`](super::Json) refuses such objects at the sender
//! instead, by walking them with this serializer, which writes nothing and fails on the first
//! non-finite float with the path to it.

use serde::Serialize;
use serde::ser;

/// Fails with the path to the first NaN or infinite float in `value`.
pub(super) fn check<T: Serialize + ?Sized>(value: &T) -> Result<(), NotFinite> {
    value.serialize(&mut Walker { path: Vec::new() })
}

/// A NaN or infinite float, or a failure of the object's own `Serialize`.
use super::Refusal as NotFinite;

/// Where the walk is: field names, sequence indices and map keys from the top.
enum Step {
    Field(&'static str),
    Index(usize),
    /// A map entry's value, with its key as JSON writes it when the key is text or a number
    /// (a map, or the fields of a `#[serde(flatten)]` struct, which serialize as map entries).
    MapValue(Option<String>),
}

struct Walker {
    path: Vec<Step>,
}

impl Walker {
    fn float(&self, value: f64, ty: &str) -> Result<(), NotFinite> {
        if value.is_finite() {
            return Ok(());
        }
        let mut at = String::new();
        for step in &self.path {
            match step {
                Step::Field(name) if at.is_empty() => at.push_str(name),
                Step::Field(name) => {
                    at.push('.');
                    at.push_str(name);
                }
                Step::Index(i) => at.push_str(&format!("[{i}]")),
                Step::MapValue(Some(key)) => at.push_str(&format!("[{key}]")),
                Step::MapValue(None) => at.push_str("[…]"),
            }
        }
        let what = if value.is_nan() { "NaN" } else { "infinite" };
        let at = if at.is_empty() {
            format!("the object is {what}")
        } else {
            format!("{at} is {what}")
        };
        Err(NotFinite(format!(
            "{at} ({ty}); JSON has no NaN or infinity (serde_json would send null): use \
             Postcard, or send the value in a form JSON has (None in an Option, a string)"
        )))
    }

    fn within<T: Serialize + ?Sized>(&mut self, step: Step, value: &T) -> Result<(), NotFinite> {
        self.path.push(step);
        let result = value.serialize(&mut *self);
        self.path.pop();
        result
    }
}

/// A sequence, tuple or map being walked: counts its elements for the path.
struct Compound<'a> {
    walker: &'a mut Walker,
    next: usize,
    /// A map's key, until its value is walked.
    key: Option<String>,
    /// An enum variant's fields: its name is on the path until the compound ends.
    variant: bool,
}

impl Compound<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotFinite> {
        let i = self.next;
        self.next += 1;
        self.walker.within(Step::Index(i), value)
    }

    fn finish(self) -> Result<(), NotFinite> {
        if self.variant {
            self.walker.path.pop();
        }
        Ok(())
    }
}

impl<'a> ser::Serializer for &'a mut Walker {
    type Ok = ();
    type Error = NotFinite;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_f32(self, v: f32) -> Result<(), NotFinite> {
        self.float(f64::from(v), "f32")
    }
    fn serialize_f64(self, v: f64) -> Result<(), NotFinite> {
        self.float(v, "f64")
    }

    fn serialize_bool(self, _: bool) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_u128(self, _: u128) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_unit(self) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), NotFinite> {
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), NotFinite> {
        value.serialize(self)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), NotFinite> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), NotFinite> {
        self.within(Step::Field(variant), value)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>, NotFinite> {
        Ok(Compound {
            walker: self,
            next: 0,
            key: None,
            variant: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>, NotFinite> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, NotFinite> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, NotFinite> {
        self.path.push(Step::Field(variant));
        let compound = self.serialize_seq(Some(len))?;
        Ok(Compound {
            variant: true,
            ..compound
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Compound<'a>, NotFinite> {
        self.serialize_seq(len)
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Compound<'a>, NotFinite> {
        self.serialize_seq(Some(len))
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, NotFinite> {
        self.serialize_tuple_variant(name, index, variant, len)
    }
}

/// The compounds whose elements are counted: `$method` walks one element.
macro_rules! counted {
    ($($trait:ident :: $method:ident;)*) => {$(
        impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = NotFinite;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotFinite> {
                self.element(value)
            }
            fn end(self) -> Result<(), NotFinite> {
                self.finish()
            }
        }
    )*};
}

counted! {
    SerializeSeq::serialize_element;
    SerializeTuple::serialize_element;
    SerializeTupleStruct::serialize_field;
    SerializeTupleVariant::serialize_field;
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = NotFinite;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), NotFinite> {
        // A JSON key is written as a string: nothing in it becomes null (serde_json refuses a
        // non-finite float key itself). It is kept for the path.
        self.key = key_text(key);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotFinite> {
        let key = self.key.take();
        self.walker.within(Step::MapValue(key), value)
    }
    fn end(self) -> Result<(), NotFinite> {
        self.finish()
    }
}

/// The compounds whose fields have names.
macro_rules! named {
    ($($trait:ident;)*) => {$(
        impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = NotFinite;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), NotFinite> {
                self.walker.within(Step::Field(key), value)
            }
            fn end(self) -> Result<(), NotFinite> {
                self.finish()
            }
        }
    )*};
}

named! {
    SerializeStruct;
    SerializeStructVariant;
}

/// A map key for the path, as JSON writes it (numbers become strings there too), cut short
/// past [`KEY_SHOWN`] characters; `None` for a key JSON cannot write.
fn key_text<T: Serialize + ?Sized>(key: &T) -> Option<String> {
    let json = serde_json::to_string(key).ok()?;
    let text = match json.strip_prefix('"').and_then(|j| j.strip_suffix('"')) {
        Some(inner) => inner.to_owned(),
        None => json,
    };
    let shown = match text.char_indices().nth(KEY_SHOWN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    };
    Some(format!("\"{shown}\""))
}

/// The longest key the path shows whole.
const KEY_SHOWN: usize = 64;
