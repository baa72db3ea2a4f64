//! A client's pool knowledge as the runtime shares it: the protocol core takes a
//! `&mut PoolState` in each call that learns or uses it and holds no lock itself; here one state
//! sits behind a mutex shared by the client's endpoint drivers (each call into a connection
//! holds the lock for that call only), the [`crate::Client`] and its session handles (outcome
//! reports).

use std::sync::{Arc, Mutex, MutexGuard};

use volley_proto::client::PoolState;

/// One client instance's pool knowledge, shared.
pub(crate) type SharedPool = Arc<Mutex<PoolState>>;

/// The pool knowledge, locked. A poisoned lock only ever guards plain numbers: use them.
pub(crate) fn lock_pool(pool: &Mutex<PoolState>) -> MutexGuard<'_, PoolState> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}
