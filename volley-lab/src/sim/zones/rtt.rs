//! The zones' round-trip times: zones placed on a line, seeded.
//!
//! Each zone gets a position drawn uniformly in `[0, 1)`; the positions are then stretched so
//! that the two outermost zones are `max − min` apart. The round trip between zones `a` and `b`
//! is `min + |x_a − x_b|` (so `min` inside a zone and between `min` and `max` across zones):
//! symmetric, and consistent like distances are (the triangle inequality holds), so a zone's
//! neighbours are near each other too. A datagram takes half its round trip one way, plus a
//! small uniform jitter drawn per datagram by the engine.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::super::queue::Nanos;

/// Round trip inside a zone and the shortest across zones, ns (1 ms).
pub const MIN_RTT: Nanos = 1_000_000;
/// Longest round trip, ns (80 ms).
pub const MAX_RTT: Nanos = 80_000_000;

/// Round-trip times between zones, ns.
#[derive(Debug, Clone)]
pub struct RttMatrix {
    zones: usize,
    /// `rtt[a * zones + b]`.
    rtt: Vec<Nanos>,
    /// Each zone's position on the line, ns of round trip from the leftmost zone.
    positions: Vec<Nanos>,
}

impl RttMatrix {
    /// `zones` zones on a line, their positions drawn from `seed`, round trips in
    /// `[min, max]` (`min` inside a zone). With one zone, only `min`.
    pub fn draw(zones: usize, min: Nanos, max: Nanos, seed: u64) -> RttMatrix {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x2a0e_5000_0000_0001);
        let raw: Vec<f64> = (0..zones).map(|_| rng.r#gen::<f64>()).collect();
        let lo = raw.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let span = max.saturating_sub(min) as f64;
        let positions: Vec<Nanos> = raw
            .iter()
            .map(|x| {
                if hi > lo {
                    ((x - lo) / (hi - lo) * span).round() as Nanos
                } else {
                    0
                }
            })
            .collect();
        let mut rtt = vec![min; zones * zones];
        for a in 0..zones {
            for b in 0..zones {
                if a != b {
                    rtt[a * zones + b] = min + positions[a].abs_diff(positions[b]);
                }
            }
        }
        RttMatrix {
            zones,
            rtt,
            positions,
        }
    }

    /// The default: 1 ms inside a zone, up to 80 ms across.
    pub fn default_for(zones: usize, seed: u64) -> RttMatrix {
        Self::draw(zones, MIN_RTT, MAX_RTT, seed)
    }

    /// Zones.
    pub fn zones(&self) -> usize {
        self.zones
    }

    /// Round trip between zones `a` and `b`, ns.
    pub fn rtt(&self, a: usize, b: usize) -> Nanos {
        self.rtt[a * self.zones + b]
    }

    /// One way from `a` to `b` (half the round trip), ns, before jitter.
    pub fn one_way(&self, a: usize, b: usize) -> Nanos {
        self.rtt(a, b) / 2
    }

    /// Each zone's position on the line, ns of round trip from the leftmost.
    pub fn positions(&self) -> &[Nanos] {
        &self.positions
    }

    /// The matrix in milliseconds, row by row (for the report).
    pub fn rows_ms(&self) -> Vec<Vec<f64>> {
        (0..self.zones)
            .map(|a| {
                (0..self.zones)
                    .map(|b| self.rtt(a, b) as f64 / 1e6)
                    .collect()
            })
            .collect()
    }
}
