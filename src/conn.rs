//! What the server's and the flooder's connections both do between the
//! socket and the wire, whatever drives their loops (readiness for the
//! server, time for the flooder).
//!
//! Owns: carrying a partial frame from one read to the next and decoding
//! whole frames until the rest is incomplete ([`Carry`], [`decode_frames`]);
//! the per-connection buffers, allocated only while a connection holds
//! something ([`LazyBuffers`], [`ConnBuffers`]); writing with a spill: write
//! what the kernel takes, keep the rest in order, and say when the rest is
//! over its cap (`LazyBuffers::send`).
//!
//! Must not: own a loop, a poll or a socket (each program reads and writes
//! with its own calls and hands them in, so one read and one write per
//! wake-up stay each loop's own decision); allocate per request once warmed
//! up (the buffers are allocated when a connection first needs them, then
//! reused); lock; log; count (the callers keep their own counters).
//!
//! Public for the fuzz targets (`fuzz/`), which feed it reads split where
//! the fuzzer chooses; the programs are its only users in the crate.

use std::io;

use crate::wire::{self, DecodeError, FRAME_LEN_MAX, Frame};

/// What a connection holds between wake-ups, beyond its socket and session:
/// the start of a frame not yet complete, output the kernel did not take,
/// and whatever its program adds (`extra`: the server's held answers and
/// interest, nothing for the flooder).
#[derive(Debug)]
pub struct ConnBuffers<X = ()> {
    /// The start of a frame: always shorter than the longest frame, since
    /// the decoder completes or refuses any `FRAME_LEN_MAX` bytes.
    partial: [u8; FRAME_LEN_MAX],
    partial_len: usize,
    /// Output the kernel did not take yet, in the order it was sent.
    out: Vec<u8>,
    /// The program's own per-connection state that lives and dies with
    /// these buffers.
    pub extra: X,
}

impl<X> ConnBuffers<X> {
    /// True while output waits for the kernel.
    pub(crate) fn has_pending_out(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes of output waiting for the kernel.
    pub(crate) fn pending_len(&self) -> usize {
        self.out.len()
    }

    /// True while the start of a frame is kept.
    pub fn has_partial(&self) -> bool {
        self.partial_len > 0
    }
}

/// A connection's buffers, present only while it holds a partial frame,
/// unsent output, or its program's `extra` state: an idle connection costs
/// one pointer. Allocated the first time a connection needs it.
#[derive(Debug)]
pub struct LazyBuffers<X = ()>(Option<Box<ConnBuffers<X>>>);

impl<X> Default for LazyBuffers<X> {
    fn default() -> Self {
        LazyBuffers(None)
    }
}

/// What a write does when output is already waiting for the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Behind {
    /// Queue the new bytes behind the waiting ones without a system call:
    /// the last write found the socket full, so a `WRITABLE` edge is coming
    /// (the flooder, whose sockets are registered for it once, for good).
    Queue,
    /// Append the new bytes and write everything in one call (the server,
    /// which writes once per wake-up and asks for `WRITABLE` only while
    /// output waits).
    Write,
}

/// How a connection's output spills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SpillRule {
    /// What a write does while output waits.
    pub behind: Behind,
    /// Bytes the spill may keep; past this, [`Sent::over_cap`] says so and
    /// the caller decides (the server evicts the connection).
    pub kept_max: usize,
}

/// What one send did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Bytes the kernel took.
    pub written: usize,
    /// Output was waiting before this send.
    pub was_pending: bool,
    /// Bytes still waiting after it.
    pub kept: usize,
    /// `kept` is past the rule's `kept_max`.
    pub over_cap: bool,
}

impl Sent {
    /// Output waits after this send.
    pub fn is_pending(&self) -> bool {
        self.kept > 0
    }
}

impl<X> LazyBuffers<X> {
    /// No buffers (an idle connection).
    pub const fn none() -> Self {
        LazyBuffers(None)
    }

    /// The buffers, if the connection holds any.
    pub fn get(&self) -> Option<&ConnBuffers<X>> {
        self.0.as_deref()
    }

    /// The buffers, if the connection holds any.
    pub(crate) fn get_mut(&mut self) -> Option<&mut ConnBuffers<X>> {
        self.0.as_deref_mut()
    }

    /// True while output waits for the kernel.
    pub(crate) fn has_pending_out(&self) -> bool {
        self.get().is_some_and(ConnBuffers::has_pending_out)
    }

    /// Forgets the partial frame and the waiting output, keeping the
    /// allocation for the connection's next life (the flooder reconnects
    /// the same user on the same slot).
    pub(crate) fn clear(&mut self) {
        if let Some(b) = self.get_mut() {
            b.partial_len = 0;
            b.out.clear();
        }
    }

    /// Frees the buffers once they hold nothing and `extra_idle` says the
    /// program's part holds nothing either, so an idle connection costs no
    /// buffer.
    pub(crate) fn release_if_idle(&mut self, extra_idle: impl FnOnce(&X) -> bool) {
        if self
            .get()
            .is_some_and(|b| !b.has_partial() && !b.has_pending_out() && extra_idle(&b.extra))
        {
            self.0 = None;
        }
    }

    /// Writes the waiting output as long as the kernel takes some: until
    /// none waits, or a write takes nothing (the socket is full; a
    /// `WRITABLE` edge will come). Returns the bytes written.
    pub(crate) fn flush(
        &mut self,
        mut write: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let Some(b) = self.get_mut() else {
            return Ok(0);
        };
        let mut written = 0;
        while !b.out.is_empty() {
            let n = write_once(&mut write, &b.out)?;
            if n == 0 {
                break;
            }
            b.out.drain(..n);
            written += n;
        }
        Ok(written)
    }
}

impl<X: Default> LazyBuffers<X> {
    /// The buffers, allocated now if the connection held none.
    pub(crate) fn alloc(&mut self) -> &mut ConnBuffers<X> {
        self.0.get_or_insert_with(|| {
            Box::new(ConnBuffers {
                partial: [0; FRAME_LEN_MAX],
                partial_len: 0,
                out: Vec::new(),
                extra: X::default(),
            })
        })
    }

    /// Sends `new` after the output already waiting, with at most one
    /// `write` (none when `rule.behind` queues, or when there is nothing to
    /// send); what the kernel does not take waits here, in order. Order on
    /// the wire is the order of the sends. An I/O error other than
    /// `WouldBlock` (nothing taken) and `Interrupted` (retried) is the
    /// caller's to act on; the bytes stay queued.
    pub(crate) fn send(
        &mut self,
        new: &[u8],
        rule: SpillRule,
        mut write: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> io::Result<Sent> {
        let sent = match self.get_mut() {
            Some(b) if b.has_pending_out() => {
                b.out.extend_from_slice(new);
                let written = match rule.behind {
                    Behind::Queue => 0,
                    Behind::Write => {
                        let n = write_once(&mut write, &b.out)?;
                        b.out.drain(..n);
                        n
                    }
                };
                Sent {
                    written,
                    was_pending: true,
                    kept: b.out.len(),
                    over_cap: false,
                }
            }
            _ if new.is_empty() => return Ok(Sent::default()),
            _ => {
                let written = write_once(&mut write, new)?;
                let rest = &new[written..];
                if !rest.is_empty() {
                    self.alloc().out.extend_from_slice(rest);
                }
                Sent {
                    written,
                    was_pending: false,
                    kept: rest.len(),
                    over_cap: false,
                }
            }
        };
        Ok(Sent {
            over_cap: sent.kept > rule.kept_max,
            ..sent
        })
    }
}

/// One write of non-empty `bytes`: the count the kernel took, 0 when the
/// socket is full (`WouldBlock`); `Interrupted` is retried. A write that
/// takes nothing without blocking cannot go on, and is an error.
fn write_once(
    write: &mut impl FnMut(&[u8]) -> io::Result<usize>,
    bytes: &[u8],
) -> io::Result<usize> {
    loop {
        match write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Why decoding stopped before the input ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameStop<E> {
    /// The bytes at `used` are not a v1 frame (counted by kind by the
    /// caller): the connection must close.
    Refused(DecodeError),
    /// The handler refused the frame at `used`.
    Handler(E),
}

/// What [`decode_frames`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded<E> {
    /// Bytes of the frames handled; a stop's frame is not among them.
    pub used: usize,
    /// Frames handled.
    pub frames: u64,
    /// Why decoding stopped early; None when all that is left is the start
    /// of a frame (shorter than `FRAME_LEN_MAX`), or nothing.
    pub stop: Option<FrameStop<E>>,
}

/// Hands every whole frame at the start of `bytes` to `on_frame`, in order,
/// until the rest is incomplete, a frame is refused, or `on_frame` refuses
/// one. Borrowing and copy-free, like [`wire::decode`].
#[inline]
pub fn decode_frames<E>(
    bytes: &[u8],
    mut on_frame: impl FnMut(Frame) -> Result<(), E>,
) -> Decoded<E> {
    let mut used = 0;
    let mut frames = 0;
    let stop = loop {
        match wire::decode(&bytes[used..]) {
            Ok(d) => {
                if let Err(e) = on_frame(d.frame) {
                    break Some(FrameStop::Handler(e));
                }
                used += d.len;
                frames += 1;
            }
            Err(DecodeError::Incomplete) => break None,
            Err(e) => break Some(FrameStop::Refused(e)),
        }
    };
    Decoded { used, frames, stop }
}

/// A loop's read buffer (one per core or thread, shared by all of its
/// connections) during one connection's turn: the partial frame carried
/// from its last read at the front, then what this turn reads. Whole frames
/// are handed on as they arrive; the start of the next one moves to the
/// front, and at the end of the turn back into the connection's buffers.
pub struct Carry<'a> {
    buf: &'a mut [u8],
    filled: usize,
}

impl<'a> Carry<'a> {
    /// Starts a turn: takes the connection's kept partial frame (if any) to
    /// the front of `buf`. Give what is left back with
    /// [`Carry::keep_rest`] unless the connection closes.
    pub fn take<X>(buf: &'a mut [u8], kept: &mut LazyBuffers<X>) -> Carry<'a> {
        let mut filled = 0;
        if let Some(b) = kept.get_mut() {
            filled = b.partial_len;
            buf[..filled].copy_from_slice(&b.partial[..filled]);
            b.partial_len = 0;
        }
        Carry { buf, filled }
    }

    /// Where the next read goes: the buffer after what it holds.
    pub fn room(&mut self) -> &mut [u8] {
        &mut self.buf[self.filled..]
    }

    /// Counts `n` bytes just read into [`Carry::room`].
    pub fn filled(&mut self, n: usize) {
        self.filled += n;
    }

    /// The bytes held: a carried partial frame, then what was read since.
    /// For a step that decodes them itself (the server's answer step, which
    /// the hot-path benchmark also calls on a plain buffer); say what it
    /// used with [`Carry::consume`].
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    /// Drops the first `used` bytes held (whole frames handed on) and moves
    /// the rest to the front for the next read.
    #[inline]
    pub fn consume(&mut self, used: usize) {
        self.buf.copy_within(used..self.filled, 0);
        self.filled -= used;
    }

    /// Hands every whole frame held to `on_frame` (see [`decode_frames`]),
    /// then moves what was not handled to the front for the next read.
    #[inline]
    pub(crate) fn decode<E>(&mut self, on_frame: impl FnMut(Frame) -> Result<(), E>) -> Decoded<E> {
        let d = decode_frames(self.bytes(), on_frame);
        self.consume(d.used);
        d
    }

    /// Ends the turn: keeps what is left (the start of a frame) in the
    /// connection's buffers for its next read, allocating them only if
    /// there is something to keep. Only after a decode that did not stop:
    /// a stopped connection is closed instead.
    pub fn keep_rest<X: Default>(self, kept: &mut LazyBuffers<X>) {
        // A decode that did not stop leaves less than one frame.
        debug_assert!(self.filled < FRAME_LEN_MAX, "a rest of a whole frame");
        let rest = &self.buf[..self.filled.min(FRAME_LEN_MAX - 1)];
        if rest.is_empty() {
            // `take` already emptied what was kept.
            return;
        }
        let b = kept.alloc();
        b.partial[..rest.len()].copy_from_slice(rest);
        b.partial_len = rest.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Cents, EnvelopeId, UserId};
    use crate::wire::ShakeOutcome;

    /// A stream of frames of every answer size the flooder reads.
    fn sample_frames() -> (Vec<Frame>, Vec<u8>) {
        let frames = vec![
            Frame::LoginResponse {
                user: UserId(7),
                result: 0,
            },
            Frame::ShakeResponse {
                user: UserId(7),
                result: ShakeOutcome::GOT,
                envelope: EnvelopeId(9),
                amount: Cents(123),
            },
            Frame::ShakeRequest { user: UserId(8) },
            Frame::ClaimResponse {
                packet: crate::ids::PacketId(3),
                amount: Cents(5),
            },
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode(1_700_000_000, &mut bytes);
        }
        (frames, bytes)
    }

    #[test]
    fn a_stream_split_at_every_byte_boundary_decodes_the_same() {
        let (frames, bytes) = sample_frames();
        for cut in 0..=bytes.len() {
            for cut2 in cut..=bytes.len() {
                let mut kept = LazyBuffers::<()>::default();
                let mut got = Vec::new();
                let mut buf = [0u8; 256];
                for part in [&bytes[..cut], &bytes[cut..cut2], &bytes[cut2..]] {
                    let mut carry = Carry::take(&mut buf, &mut kept);
                    carry.room()[..part.len()].copy_from_slice(part);
                    carry.filled(part.len());
                    let d = carry.decode(|f| {
                        got.push(f);
                        Ok::<(), ()>(())
                    });
                    assert_eq!(d.stop, None);
                    carry.keep_rest(&mut kept);
                }
                assert_eq!(got, frames, "cut at {cut} and {cut2}");
                assert!(kept.get().is_none_or(|b| !b.has_partial()));
            }
        }
    }

    #[test]
    fn nothing_is_allocated_for_whole_frames() {
        let (_, bytes) = sample_frames();
        let mut kept = LazyBuffers::<()>::default();
        let mut buf = [0u8; 256];
        let mut carry = Carry::take(&mut buf, &mut kept);
        carry.room()[..bytes.len()].copy_from_slice(&bytes);
        carry.filled(bytes.len());
        assert_eq!(carry.decode(|_| Ok::<(), ()>(())).frames, 4);
        carry.keep_rest(&mut kept);
        assert!(kept.get().is_none(), "no partial, no buffers");
    }

    #[test]
    fn a_refused_frame_and_a_refusing_handler_stop_where_they_are() {
        let (_, mut bytes) = sample_frames();
        let good = bytes.len();
        bytes.extend_from_slice(&[0, 99, 0, 2]); // length 99: out of bounds
        let d = decode_frames(&bytes, |_| Ok::<(), ()>(()));
        assert_eq!((d.used, d.frames), (good, 4));
        assert_eq!(d.stop, Some(FrameStop::Refused(DecodeError::BadLength(99))));
        let mut n = 0;
        let d = decode_frames(&bytes, |_| {
            n += 1;
            if n == 2 { Err("second") } else { Ok(()) }
        });
        assert_eq!(d.frames, 1);
        assert_eq!(d.stop, Some(FrameStop::Handler("second")));
    }

    /// A socket that takes at most `room` bytes per write.
    struct Socket {
        wire: Vec<u8>,
        room: usize,
        writes: usize,
    }

    impl Socket {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.room);
            self.wire.extend_from_slice(&b[..n]);
            self.room -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_spill_keeps_order_and_says_when_over_its_cap() {
        let rule = SpillRule {
            behind: Behind::Write,
            kept_max: 10,
        };
        let mut s = Socket {
            wire: Vec::new(),
            room: 3,
            writes: 0,
        };
        let mut b = LazyBuffers::<()>::default();
        let sent = b.send(b"abcdef", rule, |x| s.write(x)).unwrap();
        assert_eq!(
            sent,
            Sent {
                written: 3,
                was_pending: false,
                kept: 3,
                over_cap: false
            }
        );
        let sent = b.send(b"ghijklmn", rule, |x| s.write(x)).unwrap();
        assert_eq!((sent.written, sent.kept, sent.over_cap), (0, 11, true));
        assert_eq!(s.writes, 2, "one write per send");
        s.room = 100;
        let sent = b.send(b"", rule, |x| s.write(x)).unwrap();
        assert_eq!((sent.written, sent.was_pending, sent.kept), (11, true, 0));
        assert_eq!(s.wire, b"abcdefghijklmn");
        b.release_if_idle(|()| true);
        assert!(b.get().is_none(), "drained: the buffers go");
        assert_eq!(b.send(b"", rule, |x| s.write(x)).unwrap(), Sent::default());
        assert_eq!(s.writes, 3, "nothing to send: no write");
    }

    #[test]
    fn a_queueing_spill_waits_for_the_flush() {
        let rule = SpillRule {
            behind: Behind::Queue,
            kept_max: usize::MAX,
        };
        let mut s = Socket {
            wire: Vec::new(),
            room: 2,
            writes: 0,
        };
        let mut b = LazyBuffers::<()>::default();
        b.send(b"abc", rule, |x| s.write(x)).unwrap();
        let sent = b.send(b"de", rule, |x| s.write(x)).unwrap();
        assert_eq!((sent.written, sent.kept), (0, 3));
        assert_eq!(s.writes, 1, "queued behind without a write");
        s.room = 2;
        assert_eq!(b.flush(|x| s.write(x)).unwrap(), 2);
        assert!(b.has_pending_out());
        s.room = 10;
        assert_eq!(b.flush(|x| s.write(x)).unwrap(), 1);
        assert_eq!(s.wire, b"abcde");
        b.clear();
        assert!(b.get().is_some(), "cleared, still allocated");
    }

    #[test]
    fn a_write_that_takes_nothing_without_blocking_is_an_error() {
        let mut b = LazyBuffers::<()>::default();
        let rule = SpillRule {
            behind: Behind::Write,
            kept_max: 0,
        };
        let e = b.send(b"x", rule, |_| Ok(0)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }
}
