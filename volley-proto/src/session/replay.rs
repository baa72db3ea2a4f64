//! The replay window: which DATA counters a session has already accepted.

/// Width of the replay window, in packets.
pub const REPLAY_WINDOW: u64 = 1024;

/// Sliding-window replay filter over 64-bit counters (RFC 6479 style, without the ring).
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    highest: Option<u64>,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            highest: None,
            bits: [0; (REPLAY_WINDOW / 64) as usize],
        }
    }
}

impl ReplayWindow {
    fn slot(counter: u64) -> (usize, u64) {
        let i = counter % REPLAY_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// The highest authentic counter so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Whether `counter` would be accepted (not seen, not older than the window).
    pub fn check(&self, counter: u64) -> bool {
        match self.highest {
            None => true,
            Some(h) if counter > h => true,
            Some(h) if h - counter >= REPLAY_WINDOW => false,
            Some(_) => {
                let (w, b) = Self::slot(counter);
                self.bits[w] & b == 0
            }
        }
    }

    /// Records `counter` as seen; call only after the packet authenticated.
    pub fn commit(&mut self, counter: u64) {
        match self.highest {
            Some(h) if counter <= h => {}
            Some(h) => {
                // Clear the slots that slide into the window between h+1 and counter.
                let gap = counter - h;
                if gap >= REPLAY_WINDOW {
                    self.bits = [0; (REPLAY_WINDOW / 64) as usize];
                } else {
                    for c in h + 1..=counter {
                        let (w, b) = Self::slot(c);
                        self.bits[w] &= !b;
                    }
                }
                self.highest = Some(counter);
            }
            None => self.highest = Some(counter),
        }
        let (w, b) = Self::slot(counter);
        self.bits[w] |= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r5_replay_window_rejects_duplicates_and_old_counters() {
        let mut w = ReplayWindow::default();
        for c in [5u64, 3, 9, 4] {
            assert!(w.check(c));
            w.commit(c);
        }
        for c in [5u64, 3, 9, 4] {
            assert!(!w.check(c), "{c} accepted twice");
        }
        assert!(w.check(6));
        w.commit(9 + REPLAY_WINDOW);
        assert!(!w.check(9), "older than window accepted");
        assert!(w.check(10 + 1));
        assert!(!w.check(9 + REPLAY_WINDOW));
        w.commit(u64::MAX / 2);
        assert!(!w.check(9 + REPLAY_WINDOW));
        assert!(w.check(u64::MAX / 2 - 1));
    }
}
