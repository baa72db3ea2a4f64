//! The connections of one `connect` (one) or `connect_n` (a main connection and its `NBest`
//! siblings) as a [`Group`]: when the main race is decided, a sibling is due for each extra
//! winner; when every member is established or failed, the caller hears of all of them at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::sync::oneshot;
use volley_proto::client::Winner;
use volley_proto::packet::Tag;
use volley_proto::{ClientConfig, ConnectError};

use super::member::Member;
use super::open::{Outcome, SiblingPlan};
use crate::report::{ConnectReport, OfferFate, OfferSeen};

/// The connections of one connect, and who waits for them.
struct Group {
    ids: Vec<u32>,
    /// `NBest`: siblings still to be opened when the main race is decided.
    plan: Option<SiblingPlan>,
    ready: Option<oneshot::Sender<Vec<Outcome>>>,
}

/// A sibling connection to open: on the group's socket, with the main race's tag (the
/// cookie is bound to both), skipping the race.
pub(super) struct Sibling {
    pub(super) group: usize,
    pub(super) config: ClientConfig,
    pub(super) pool: Vec<SocketAddr>,
    pub(super) tag: Tag,
    pub(super) winner: Winner,
}

impl Sibling {
    /// The report a sibling starts with: the offer that chose its server.
    pub(super) fn report(&self) -> ConnectReport {
        let w = &self.winner;
        ConnectReport {
            answer_time: Some(w.answer_time),
            load: Some(w.load),
            offers: vec![OfferSeen {
                server: w.server,
                answer_time: w.answer_time,
                load: Some(w.load),
                fate: OfferFate::Selected,
            }],
            ..ConnectReport::default()
        }
    }
}

/// Every group on one driver.
#[derive(Default)]
pub(super) struct Groups(Vec<Group>);

impl Groups {
    /// A new group whose main connection is member `main`.
    pub(super) fn start(
        &mut self,
        main: u32,
        plan: Option<SiblingPlan>,
        ready: oneshot::Sender<Vec<Outcome>>,
    ) {
        self.0.push(Group {
            ids: vec![main],
            plan,
            ready: Some(ready),
        });
    }

    /// Adds member `id` to group `group` (a sibling just opened).
    pub(super) fn add(&mut self, group: usize, id: u32) {
        if let Some(g) = self.0.get_mut(group) {
            g.ids.push(id);
        }
    }

    /// `NBest`: the siblings due now — one for each extra winner of every group whose main race
    /// was decided since the last call. Only the first race's runners-up are used; a later race
    /// of the main connection (after a refusal or failover) serves the main session alone.
    pub(super) fn siblings_due(&mut self, members: &mut BTreeMap<u32, Member>) -> Vec<Sibling> {
        let mut due = Vec::new();
        for (g, group) in self.0.iter_mut().enumerate() {
            if group.plan.is_none() {
                continue;
            }
            let Some(main) = members.get_mut(&group.ids[0]) else {
                group.plan = None;
                continue;
            };
            if !main.selected {
                if matches!(main.outcome, Some(Err(_))) {
                    group.plan = None;
                }
                continue;
            }
            let extra = main.conn.take_extra_winners();
            let tag = main.conn.decided_tag();
            let (Some(plan), Some(tag)) = (group.plan.take(), tag) else {
                continue;
            };
            due.extend(extra.into_iter().map(|winner| Sibling {
                group: g,
                config: plan.config.clone(),
                pool: plan.pool.clone(),
                tag,
                winner,
            }));
        }
        due
    }

    /// Once every member of a group is established or failed (and no sibling is still to
    /// come), tells its caller, handing over each member's receiving ends. Returns the members
    /// reported.
    pub(super) fn report_ready(&mut self, members: &mut BTreeMap<u32, Member>) -> Vec<u32> {
        let mut reported = Vec::new();
        for g in &mut self.0 {
            if g.ready.is_none()
                || g.plan.is_some()
                || g.ids.iter().any(|id| {
                    members
                        .get(id)
                        .is_some_and(|m| m.outcome.is_none() && !m.conn.is_done())
                })
            {
                continue;
            }
            let Some(ready) = g.ready.take() else {
                continue;
            };
            let outcomes = g
                .ids
                .iter()
                .map(|id| {
                    let outcome = match members.get_mut(id) {
                        Some(m) => {
                            m.reported = true;
                            match (m.outcome, m.parts.take()) {
                                (Some(Ok(())), Some(parts)) => Ok(parts),
                                (Some(Err(e)), _) => Err(e),
                                // Closed before it came up: only a local close does that.
                                _ => Err(ConnectError::NothingToRace),
                            }
                        }
                        None => Err(ConnectError::NothingToRace),
                    };
                    (*id, outcome)
                })
                .collect();
            reported.extend_from_slice(&g.ids);
            let _ = ready.send(outcomes);
        }
        self.0.retain(|g| g.ready.is_some());
        reported
    }

    /// Nothing more will be opened: no sibling is due any more.
    pub(super) fn drop_plans(&mut self) {
        for g in &mut self.0 {
            g.plan = None;
        }
    }
}
