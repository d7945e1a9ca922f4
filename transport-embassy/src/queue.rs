//! The two caller-owned byte queues: the inbox (objects received, waiting for the application)
//! and the outbox (publishes kept until the relay confirms them).

use tlsro_proto::frame::{self, Frame};

/// What the inbox stores in front of each payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryHeader {
    /// The session's connection generation when the object arrived.
    pub generation: u32,
    /// Index of the group in the endpoint's group list.
    pub group: u8,
    /// `true` for a produced object, `false` for a broadcast.
    pub produced: bool,
    /// The broadcast sequence number or the delivery tag.
    pub number: u64,
    /// Payload bytes that follow.
    pub len: u32,
}

impl EntryHeader {
    pub const LEN: usize = 18;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..4].copy_from_slice(&self.generation.to_le_bytes());
        out[4] = self.group;
        out[5] = u8::from(self.produced);
        out[6..14].copy_from_slice(&self.number.to_le_bytes());
        out[14..18].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    fn decode(b: &[u8; Self::LEN]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut number = [0u8; 8];
        number.copy_from_slice(&b[6..14]);
        EntryHeader {
            generation: u32_at(0),
            group: b[4],
            produced: b[5] != 0,
            number: u64::from_le_bytes(number),
            len: u32_at(14),
        }
    }
}

/// A ring of `[EntryHeader][payload]` records in a caller-owned buffer.
pub(crate) struct Inbox<'a> {
    buf: &'a mut [u8],
    head: usize,
    len: usize,
    count: usize,
}

impl<'a> Inbox<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Inbox {
            buf,
            head: 0,
            len: 0,
            count: 0,
        }
    }

    pub fn free(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Objects queued.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Appends one record; `false` (and nothing written) when it does not fit.
    pub fn push(&mut self, header: EntryHeader, payload: &[u8]) -> bool {
        debug_assert_eq!(header.len as usize, payload.len());
        if EntryHeader::LEN + payload.len() > self.free() {
            return false;
        }
        let tail = (self.head + self.len) % self.buf.len();
        let tail = self.write_at(tail, &header.encode());
        self.write_at(tail, payload);
        self.len += EntryHeader::LEN + payload.len();
        self.count += 1;
        true
    }

    /// The header of the oldest record.
    pub fn peek(&self) -> Option<EntryHeader> {
        if self.count == 0 {
            return None;
        }
        let mut h = [0u8; EntryHeader::LEN];
        self.read_at(self.head, &mut h);
        Some(EntryHeader::decode(&h))
    }

    /// Removes the oldest record, copying its payload into `out` (which must hold it).
    pub fn pop_into(&mut self, out: &mut [u8]) -> Option<EntryHeader> {
        let header = self.peek()?;
        let len = header.len as usize;
        let start = (self.head + EntryHeader::LEN) % self.buf.len();
        self.read_at(start, &mut out[..len]);
        self.advance(EntryHeader::LEN + len);
        Some(header)
    }

    /// Removes the oldest record without reading it.
    pub fn skip(&mut self) {
        if let Some(header) = self.peek() {
            self.advance(EntryHeader::LEN + header.len as usize);
        }
    }

    fn advance(&mut self, n: usize) {
        self.head = (self.head + n) % self.buf.len();
        self.len -= n;
        self.count -= 1;
        if self.count == 0 {
            // Start over at the front: keeps records contiguous in the common case.
            self.head = 0;
            self.len = 0;
        }
    }

    fn write_at(&mut self, pos: usize, data: &[u8]) -> usize {
        let cap = self.buf.len();
        let first = data.len().min(cap - pos);
        self.buf[pos..pos + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        (pos + data.len()) % cap
    }

    fn read_at(&self, pos: usize, out: &mut [u8]) {
        let cap = self.buf.len();
        let first = out.len().min(cap - pos);
        out[..first].copy_from_slice(&self.buf[pos..pos + first]);
        let rest = out.len() - first;
        out[first..].copy_from_slice(&self.buf[..rest]);
    }
}

/// Encoded publish frames, in sequence order, kept until the relay confirms them.
///
/// `sent` is how many bytes from the front were written on the current connection; a reconnect
/// starts again from 0, which is the resend of PROTOCOL.md §7.1.
pub(crate) struct Outbox<'a> {
    buf: &'a mut [u8],
    len: usize,
    sent: usize,
}

impl<'a> Outbox<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Outbox {
            buf,
            len: 0,
            sent: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn free(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Bytes kept (frames not yet confirmed).
    pub fn kept(&self) -> usize {
        self.len
    }

    /// The free room, to encode one frame into; [`commit`](Self::commit) keeps it.
    pub fn room(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.len + n <= self.buf.len());
        self.len += n;
    }

    /// Bytes not yet written on this connection.
    pub fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..self.len]
    }

    pub fn mark_sent(&mut self, n: usize) {
        self.sent += n;
        debug_assert!(self.sent <= self.len);
    }

    /// A new connection: everything kept is sent again.
    pub fn restart(&mut self) {
        self.sent = 0;
    }

    fn frame_len_at(&self, pos: usize) -> usize {
        frame::announced_len(&self.buf[pos..]).unwrap_or(0)
    }

    fn seq_at(&self, pos: usize) -> u64 {
        let len = self.frame_len_at(pos);
        match frame::decode(&self.buf[pos..pos + len]) {
            Ok(Frame::Publish(p)) => p.seq,
            // Only publish frames are ever kept.
            _ => u64::MAX,
        }
    }

    /// Forgets the kept frames longer than `max` (a relay that came back with a lower limit
    /// would close the connection on each, at every connect, and everything behind it would
    /// wait for ever), keeping the others in order. For a connection on which nothing is sent
    /// yet. Returns how many were dropped and the highest sequence number still kept (0: none).
    pub fn drop_longer_than(&mut self, max: usize) -> (usize, u64) {
        debug_assert_eq!(self.sent, 0);
        let (mut read, mut write, mut dropped, mut highest) = (0, 0, 0, 0);
        while read < self.len {
            let len = self.frame_len_at(read);
            if len == 0 {
                break;
            }
            if len > max {
                dropped += 1;
            } else {
                highest = self.seq_at(read);
                self.buf.copy_within(read..read + len, write);
                write += len;
            }
            read += len;
        }
        self.len = write;
        (dropped, highest)
    }

    /// Forgets the frames at the front that the relay confirmed (`seq <= confirmed`), except
    /// one that is written only in part: the rest of it must still go out, or the stream would
    /// break. Returns the bytes freed.
    pub fn drop_confirmed(&mut self, confirmed: u64) -> usize {
        let mut cut = 0;
        while cut < self.len {
            let len = self.frame_len_at(cut);
            let partly_sent = self.sent > cut && self.sent < cut + len;
            if partly_sent || self.seq_at(cut) > confirmed {
                break;
            }
            cut += len;
        }
        if cut > 0 {
            self.buf.copy_within(cut..self.len, 0);
            self.len -= cut;
            self.sent = self.sent.saturating_sub(cut);
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tlsro_proto::frame::{GroupList, Publish, PublishKind};

    fn header(number: u64, len: usize) -> EntryHeader {
        EntryHeader {
            generation: 1,
            group: 0,
            produced: number.is_multiple_of(2),
            number,
            len: len as u32,
        }
    }

    #[test]
    fn inbox_keeps_order_across_the_wrap() {
        let mut buf = [0u8; 64];
        let mut inbox = Inbox::new(&mut buf);
        let mut out = [0u8; 64];
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        // Records of varying size, pushed and popped so that the ring wraps many times.
        for round in 0..200u64 {
            let len = (round % 13) as usize;
            let payload: heapless::Vec<u8, 16> =
                (0..len).map(|i| (round as u8) ^ i as u8).collect();
            while !inbox.push(header(next_in, len), &payload) {
                let h = inbox.pop_into(&mut out).unwrap();
                assert_eq!(h.number, next_out);
                next_out += 1;
            }
            next_in += 1;
        }
        while let Some(h) = inbox.pop_into(&mut out) {
            assert_eq!(h.number, next_out);
            let round = h.number;
            let len = h.len as usize;
            for (i, b) in out[..len].iter().enumerate() {
                assert_eq!(*b, (round as u8) ^ i as u8);
            }
            next_out += 1;
        }
        assert_eq!(next_in, next_out);
        assert_eq!(inbox.free(), 64);
    }

    #[test]
    fn inbox_refuses_what_does_not_fit() {
        let mut buf = [0u8; 40];
        let mut inbox = Inbox::new(&mut buf);
        assert!(inbox.push(header(1, 20), &[7; 20]));
        assert!(!inbox.push(header(2, 3), &[1; 3]));
        assert_eq!(inbox.count(), 1);
        inbox.skip();
        assert_eq!(inbox.count(), 0);
        assert!(inbox.push(header(2, 22), &[1; 22]));
    }

    fn publish(outbox: &mut Outbox<'_>, seq: u64, payload: &[u8]) -> usize {
        let mut groups = GroupList::new();
        groups.push("g").unwrap();
        let f = Frame::Publish(Publish {
            seq,
            kind: PublishKind::Produce,
            groups,
            payload,
        });
        let n = f.encode(outbox.room()).unwrap();
        outbox.commit(n);
        n
    }

    #[test]
    fn outbox_drops_confirmed_frames_but_never_a_partly_sent_one() {
        let mut buf = [0u8; 256];
        let mut outbox = Outbox::new(&mut buf);
        let a = publish(&mut outbox, 1, b"aaaa");
        let b = publish(&mut outbox, 2, b"bbbbbb");
        let c = publish(&mut outbox, 3, b"c");
        assert_eq!(outbox.unsent().len(), a + b + c);
        // The first frame and half of the second are on the wire.
        outbox.mark_sent(a + b / 2);
        assert_eq!(outbox.drop_confirmed(2), a);
        assert_eq!(outbox.unsent().len(), b - b / 2 + c);
        outbox.mark_sent(b - b / 2);
        assert_eq!(outbox.drop_confirmed(2), b);
        assert_eq!(outbox.kept(), c);
        // A reconnect sends what is kept again, from its start.
        outbox.restart();
        assert_eq!(outbox.unsent().len(), c);
        assert_eq!(outbox.drop_confirmed(3), c);
        assert_eq!(outbox.kept(), 0);
    }

    #[test]
    fn outbox_drops_the_frames_a_lower_limit_refuses_and_keeps_the_rest_in_order() {
        let mut buf = [0u8; 256];
        let mut outbox = Outbox::new(&mut buf);
        let a = publish(&mut outbox, 1, b"a");
        let big = publish(&mut outbox, 2, &[7; 100]);
        let c = publish(&mut outbox, 3, b"cc");
        let big_last = publish(&mut outbox, 4, &[8; 100]);
        assert!(a < 40 && c < 40 && big > 100 && big_last > 100);
        assert_eq!(outbox.drop_longer_than(40), (2, 3));
        assert_eq!(outbox.kept(), a + c);
        let kept = outbox.unsent().to_vec();
        let first = frame::announced_len(&kept).unwrap();
        let seqs: [u64; 2] = [&kept[..first], &kept[first..]].map(|f| match frame::decode(f) {
            Ok(Frame::Publish(p)) => p.seq,
            other => panic!("{other:?}"),
        });
        assert_eq!(seqs, [1, 3]);
        // Nothing too large: nothing changes; nothing kept: 0.
        assert_eq!(outbox.drop_longer_than(40), (0, 3));
        assert_eq!(outbox.drop_longer_than(1), (2, 0));
        assert_eq!(outbox.kept(), 0);
    }
}
