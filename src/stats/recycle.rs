//! Recycling the per-second histograms: a source (a server core, a flooder
//! thread) hands a second's histograms to its aggregator and gets them back
//! emptied, so that no second allocates once the first few have.
//!
//! Owns: what a recyclable set of histograms is ([`Recycle`]), the channel
//! they come back by ([`channel`], [`SPARES_MAX`]) and both ends' step:
//! [`swap_out`] on the source, [`give_back`] on the aggregator. Must not:
//! block either side (a full channel drops the spare, and an empty one makes
//! the source allocate), or let a histogram come back with counts in it.

use crossbeam_channel::{Receiver, Sender};

use crate::hlog::{LatencyHistogram, latency_histogram};

/// Spares waiting to go back to one source, at most. A source takes one a
/// second and the aggregator returns one a second, so a few absorb any
/// jitter between them; more would only hold memory (about 200 KiB each).
pub const SPARES_MAX: usize = 4;

/// A second's histograms, as they travel to an aggregator and back.
pub trait Recycle {
    /// Empty ones, allocated now.
    fn fresh() -> Self;
    /// True when nothing is recorded (a constant-time check).
    fn is_empty(&self) -> bool;
    /// Empties them, keeping their memory.
    fn reset(&mut self);
}

impl Recycle for LatencyHistogram {
    fn fresh() -> Self {
        latency_histogram()
    }

    fn is_empty(&self) -> bool {
        hdrhistogram::Histogram::is_empty(self)
    }

    fn reset(&mut self) {
        hdrhistogram::Histogram::reset(self);
    }
}

/// The way back from an aggregator to one source: the aggregator keeps the
/// sender, the source the receiver.
pub fn channel<T>() -> (Sender<Box<T>>, Receiver<Box<T>>) {
    crossbeam_channel::bounded(SPARES_MAX)
}

/// The source's step when its second closes: takes the second's histograms
/// out of `current` to send them, leaving empty ones in their place: one
/// handed back (emptied here if the aggregator did not), else new ones.
pub fn swap_out<T: Recycle>(current: &mut Box<T>, spares: &Receiver<Box<T>>) -> Box<T> {
    let spare = match spares.try_recv() {
        Ok(mut h) => {
            if !h.is_empty() {
                h.reset();
            }
            h
        }
        Err(_) => Box::new(T::fresh()),
    };
    std::mem::replace(current, spare)
}

/// The aggregator's step once it has added a source's histograms in:
/// empties them (off the source's thread) and hands them back; when the
/// source already has its fill of spares, they are dropped.
pub fn give_back<T: Recycle>(mut used: Box<T>, to: &Sender<Box<T>>) {
    if !used.is_empty() {
        used.reset();
    }
    let _ = to.try_send(used);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_go_out_full_and_come_back_empty() {
        let (back, spares) = channel::<LatencyHistogram>();
        let mut current = Box::new(latency_histogram());
        current.record(5).expect("in bounds");
        let sent = swap_out(&mut current, &spares);
        assert_eq!(sent.len(), 1);
        assert!(Recycle::is_empty(&*current), "a fresh one in its place");
        current.record(7).expect("in bounds");
        give_back(sent, &back);
        let next = swap_out(&mut current, &spares);
        assert_eq!(next.len(), 1, "the second's own");
        assert!(Recycle::is_empty(&*current), "the spare came back empty");
        // Handed back unemptied (a coordinator that does not empty them):
        // emptied by the source as it takes it.
        back.try_send(next).expect("room");
        current.record(9).expect("in bounds");
        let _ = swap_out(&mut current, &spares);
        assert!(Recycle::is_empty(&*current));
        for _ in 0..SPARES_MAX + 2 {
            give_back(Box::new(latency_histogram()), &back);
        }
        assert_eq!(
            spares.len(),
            SPARES_MAX,
            "past its fill, a spare is dropped"
        );
    }
}
