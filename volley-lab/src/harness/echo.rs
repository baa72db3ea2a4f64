//! An echo exchange over a volley session, as the experiments' clients make it: the datagram is
//! sent, and sent again at intervals scaled by the measured round trip, until its echo comes or a
//! deadline passes.

use std::time::{Duration, Instant};

/// Sends `text` and waits for its echo, resending at RTT-scaled intervals until `deadline`.
pub async fn exchange(session: &mut volley::Session, text: &[u8], deadline: Instant) -> bool {
    let rtt = session
        .report()
        .and_then(|r| r.handshake_time)
        .unwrap_or(Duration::from_millis(50));
    // A few round trips, doubling to at most 250 ms: a lost datagram is not congestion.
    let mut wait = (rtt * 3).clamp(Duration::from_millis(30), Duration::from_millis(250));
    while Instant::now() < deadline {
        if session.send(text).await.is_err() {
            return false;
        }
        let until = (Instant::now() + wait).min(deadline);
        loop {
            match tokio::time::timeout_at(until.into(), session.recv()).await {
                Ok(Ok(d)) if d.as_ref() == text => return true,
                Ok(Ok(_)) => continue, // an echo of an earlier try
                Ok(Err(_)) => return false,
                Err(_) => break,
            }
        }
        wait = (wait * 2).min(Duration::from_millis(250));
    }
    false
}
