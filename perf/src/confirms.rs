//! Publisher-confirm bookkeeping: which sequence numbers an ack or nack
//! settles (`multiple` ranges, single confirms in any order, nothing counted
//! twice), within the window of in-flight publishes.

use anyhow::{bail, Result};

/// Which publishes a confirm settles. Sequence numbers start at 1; at most
/// `cap` are unsettled at a time (the window).
pub struct ConfirmTracker {
    cap: u64,
    /// Lowest sequence number not yet settled.
    low: u64,
    /// `done[seq % cap]`: seq > low was settled out of order (single acks
    /// may arrive in any order when a message goes to several queues).
    done: Vec<bool>,
}

impl ConfirmTracker {
    pub fn new(cap: u64) -> ConfirmTracker {
        let cap = cap.max(1);
        ConfirmTracker {
            cap,
            low: 1,
            done: vec![false; cap as usize],
        }
    }

    /// Call `each` for every sequence number this ack/nack settles for the
    /// first time; returns how many.
    pub fn settle(&mut self, tag: u64, multiple: bool, mut each: impl FnMut(u64)) -> Result<u64> {
        if tag == 0 || tag >= self.low + self.cap {
            bail!("the broker confirmed sequence number {tag}, never published");
        }
        let slot = |seq: u64| (seq % self.cap) as usize;
        let mut settled = 0;
        if multiple {
            for seq in self.low..=tag {
                let i = slot(seq);
                if self.done[i] {
                    self.done[i] = false;
                } else {
                    each(seq);
                    settled += 1;
                }
            }
            self.low = self.low.max(tag + 1);
        } else if tag == self.low {
            each(tag);
            settled += 1;
            self.low += 1;
        } else if tag > self.low && !self.done[slot(tag)] {
            each(tag);
            settled += 1;
            self.done[slot(tag)] = true;
        }
        while self.done[slot(self.low)] {
            let i = slot(self.low);
            self.done[i] = false;
            self.low += 1;
        }
        Ok(settled)
    }
}

#[cfg(test)]
mod tests {
    use super::ConfirmTracker;

    fn settle(t: &mut ConfirmTracker, tag: u64, multiple: bool) -> Vec<u64> {
        let mut got = Vec::new();
        let n = t.settle(tag, multiple, |s| got.push(s)).unwrap();
        assert_eq!(n as usize, got.len());
        got
    }

    #[test]
    fn multiple_acks_settle_ranges_once() {
        let mut t = ConfirmTracker::new(10);
        assert_eq!(settle(&mut t, 3, true), vec![1, 2, 3]);
        assert_eq!(settle(&mut t, 3, true), Vec::<u64>::new());
        assert_eq!(settle(&mut t, 2, false), Vec::<u64>::new());
        assert_eq!(settle(&mut t, 5, true), vec![4, 5]);
    }

    #[test]
    fn out_of_order_singles_then_multiple() {
        let mut t = ConfirmTracker::new(10);
        assert_eq!(settle(&mut t, 3, false), vec![3]);
        assert_eq!(
            settle(&mut t, 3, false),
            Vec::<u64>::new(),
            "no double count"
        );
        assert_eq!(settle(&mut t, 1, false), vec![1]);
        assert_eq!(settle(&mut t, 4, true), vec![2, 4], "3 was settled already");
        assert_eq!(t.low, 5);
        assert_eq!(settle(&mut t, 6, false), vec![6]);
        assert_eq!(settle(&mut t, 5, false), vec![5]);
        assert_eq!(t.low, 7, "the out-of-order 6 is passed over");
    }

    #[test]
    fn the_window_wraps_around() {
        let mut t = ConfirmTracker::new(4);
        let mut all = Vec::new();
        for tag in (2..=40).step_by(2) {
            all.extend(settle(&mut t, tag, true));
        }
        assert_eq!(all, (1..=40).collect::<Vec<_>>());
    }

    #[test]
    fn confirms_beyond_the_window_are_refused() {
        let mut t = ConfirmTracker::new(4);
        assert!(t.settle(5, false, |_| {}).is_err());
        assert!(t.settle(0, true, |_| {}).is_err());
        assert_eq!(settle(&mut t, 4, true), vec![1, 2, 3, 4]);
        assert!(t.settle(8, false, |_| {}).is_ok());
    }
}
