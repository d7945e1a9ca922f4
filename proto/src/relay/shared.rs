//! [`SharedBytes`]: payload bytes that many connections' output shares.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ops::{Deref, Range};

/// A range of a shared buffer. Cloning shares the bytes; the buffer is freed with the last
/// clone. A range (rather than `Arc<[u8]>`) lets the relay share a payload where it already
/// lies, inside the frame it arrived in, instead of copying it out.
#[derive(Clone)]
pub struct SharedBytes {
    buf: Arc<Vec<u8>>,
    range: Range<usize>,
}

impl SharedBytes {
    /// Shares `bytes` as they are (no copy).
    pub fn new(bytes: Vec<u8>) -> SharedBytes {
        let range = 0..bytes.len();
        SharedBytes {
            buf: Arc::new(bytes),
            range,
        }
    }

    /// A copy of `bytes`, shared.
    pub fn copy_from(bytes: &[u8]) -> SharedBytes {
        SharedBytes::new(bytes.to_vec())
    }

    /// `part`, which lies within `self`, as a range of the same buffer; `None` when it does not
    /// lie within it.
    pub fn share(&self, part: &[u8]) -> Option<SharedBytes> {
        let within = crate::frame::range_within(self, part)?;
        Some(SharedBytes {
            buf: self.buf.clone(),
            range: self.range.start + within.start..self.range.start + within.end,
        })
    }

    /// `part` shared: a range of `source` when it lies there and is at least half of it (so
    /// that a small part never keeps a large buffer alive), a copy otherwise.
    pub(crate) fn take(part: &[u8], source: Option<&SharedBytes>) -> SharedBytes {
        source
            .filter(|s| part.len() >= s.len() / 2)
            .and_then(|s| s.share(part))
            .unwrap_or_else(|| SharedBytes::copy_from(part))
    }

    /// Bytes of the underlying buffer this keeps alive (at least `len`).
    pub fn retained(&self) -> usize {
        self.buf.len()
    }
}

impl Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

impl PartialEq for SharedBytes {
    fn eq(&self, other: &SharedBytes) -> bool {
        **self == **other
    }
}

impl Eq for SharedBytes {}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedBytes({} of {} bytes)", self.len(), self.buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_inside_is_shared_without_a_copy() {
        let whole = SharedBytes::new((0u8..100).collect());
        let part = whole.share(&whole[10..90]).unwrap();
        assert_eq!(&*part, &whole[10..90]);
        assert_eq!(
            part.as_ptr(),
            whole[10..].as_ptr(),
            "same bytes, not a copy"
        );
        // A range of a range.
        let inner = part.share(&part[5..10]).unwrap();
        assert_eq!(&*inner, &whole[15..20]);
    }

    #[test]
    fn a_part_outside_is_not_shared() {
        let whole = SharedBytes::new(alloc::vec![1; 10]);
        let other = alloc::vec![1u8; 10];
        assert!(whole.share(&other).is_none());
    }

    #[test]
    fn take_copies_small_parts_and_shares_large_ones() {
        let whole = SharedBytes::new(alloc::vec![7; 1000]);
        let large = SharedBytes::take(&whole[10..900], Some(&whole));
        assert_eq!(large.retained(), 1000, "a range of the input");
        let small = SharedBytes::take(&whole[10..20], Some(&whole));
        assert_eq!(
            small.retained(),
            10,
            "a copy: it must not keep 1000 bytes alive"
        );
        let none = SharedBytes::take(&whole[..], None);
        assert_eq!(none.retained(), 1000);
        assert_eq!(&*none, &*whole);
    }
}
