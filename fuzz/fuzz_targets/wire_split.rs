//! The wire decoder fed at fuzzer-chosen read splits, as the server reads a
//! connection: a shared scratch buffer per turn (`conn::Carry`), the partial
//! frame kept in the connection's `LazyBuffers` between turns, and every
//! whole frame handed on by `conn::decode_frames`.
//!
//! Checked against decoding the whole stream at once: the same frames in
//! the same order, the same stop (a refused frame, or the handler refusing
//! frame number `refuse_at`), the same bytes used, and between reads never
//! more than the start of one frame held (< `FRAME_LEN_MAX`). No panic.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use hongbao::conn::{Carry, FrameStop, LazyBuffers, decode_frames};
use hongbao::wire::{FRAME_LEN_MAX, Frame};
use libfuzzer_sys::fuzz_target;

/// Largest scratch buffer tried: the server's is 64 KiB, but what matters is
/// how a read ends relative to a frame, which small buffers reach faster.
const SCRATCH_EXTRA_MAX: usize = 512;

/// How the stream is read: a fixed-size head of the input (read with
/// `arbitrary`), so that a seed is this head followed by real frames.
#[derive(Arbitrary, Debug)]
struct Plan {
    /// The scratch buffer is `FRAME_LEN_MAX + scratch % SCRATCH_EXTRA_MAX`
    /// bytes: the smallest that always has room after a kept partial frame.
    scratch: u16,
    /// The handler refuses the frame with this number (0-based); 255: none.
    refuse_at: u8,
    /// Read after read, in turn: at most this many bytes (0: as many as
    /// the buffer has room for), and whether the turn ends after it (the
    /// rest goes back into the connection's buffers).
    reads: [(u8, bool); 16],
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(Plan {
        scratch,
        refuse_at,
        reads,
    }) = Plan::arbitrary(&mut u)
    else {
        return;
    };
    // The bytes the peer sends.
    let stream = u.take_rest();
    let refuse_at = (refuse_at != u8::MAX).then_some(refuse_at);
    let refuse = |n: u64| refuse_at.is_some_and(|r| u64::from(r) == n);

    // The whole stream at once.
    let mut whole = Vec::new();
    let expected = decode_frames(stream, |f| {
        if refuse(whole.len() as u64) {
            return Err(whole.len() as u64);
        }
        whole.push(f);
        Ok(())
    });
    assert_eq!(expected.frames, whole.len() as u64);
    if let Some(FrameStop::Refused(_)) = expected.stop {
        assert!(
            stream.len() - expected.used >= 2,
            "a refusal needs the length"
        );
    }
    if expected.stop.is_none() {
        assert!(
            stream.len() - expected.used < FRAME_LEN_MAX,
            "rest is a partial frame"
        );
    }

    // The same stream in reads split where the fuzzer says.
    let mut buf = vec![0u8; FRAME_LEN_MAX + usize::from(scratch) % SCRATCH_EXTRA_MAX];
    let mut kept = LazyBuffers::<()>::default();
    let mut got: Vec<Frame> = Vec::new();
    let mut stop = None;
    let mut sent = 0; // bytes of the stream read so far
    let mut reads = reads.iter().cycle();
    let mut held = 0; // bytes held at the end of the last turn
    'turns: while sent < stream.len() {
        let mut carry = Carry::take(&mut buf, &mut kept);
        assert_eq!(
            carry.bytes().len(),
            held,
            "the kept partial frame comes back whole"
        );
        loop {
            let &(want, end_turn) = reads.next().expect("a cycle");
            let room = carry.room();
            assert!(!room.is_empty(), "a kept partial frame leaves room to read");
            let want = if want == 0 {
                room.len()
            } else {
                usize::from(want)
            };
            let n = want.min(room.len()).min(stream.len() - sent);
            room[..n].copy_from_slice(&stream[sent..sent + n]);
            carry.filled(n);
            sent += n;
            let d = decode_frames(carry.bytes(), |f| {
                if refuse(got.len() as u64) {
                    return Err(got.len() as u64);
                }
                got.push(f);
                Ok(())
            });
            carry.consume(d.used);
            if d.stop.is_some() {
                // The server closes the connection: nothing is kept.
                stop = d.stop;
                break 'turns;
            }
            held = carry.bytes().len();
            assert!(
                held < FRAME_LEN_MAX,
                "more than a partial frame held: {held}"
            );
            if end_turn || sent == stream.len() {
                carry.keep_rest(&mut kept);
                let has = kept.get().is_some_and(|b| b.has_partial());
                assert_eq!(has, held > 0, "kept iff a partial frame is left");
                continue 'turns;
            }
        }
    }
    assert_eq!(got, whole, "the same frames, whatever the reads");
    assert_eq!(stop, expected.stop, "the same stop, whatever the reads");
    if stop.is_none() {
        assert_eq!(
            held,
            stream.len() - expected.used,
            "the same partial frame left"
        );
    }
});
