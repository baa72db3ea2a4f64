//! The long-lived mode's machinery: the runner on a virtual clock (open loop, the wait to be
//! sent counted, the deadline), and every policy and the connections on a tiny real fleet.
//! Nothing here asserts a wall-clock timing: only outcomes, counts and virtual times.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::BoxError;
use volley::StaticKeypair;

use super::conn::PlainClient;
use super::{LlPolicy, LlReply, LlRequest, runner};
use crate::select::policy::{self, Outcome, Policy, Record};
use crate::select::tests::{KNOBS, ONE_FLEET, SHAPE};
use crate::select::workload::{Job, Requests, TraceSpec, Workload};

const MS: Duration = Duration::from_millis(1);

/// A job at `at_ms` for client `client` (of the test's two).
fn job(at_ms: u64, client: u64) -> Job {
    Job {
        at: MS * at_ms as u32,
        work_us: vec![1_000],
        coin: at_ms,
        client_coin: client,
    }
}

type Fut = Pin<Box<dyn Future<Output = Result<LlReply, BoxError>> + Send>>;

fn ok() -> LlReply {
    LlReply {
        server: Some(0),
        outcome: Outcome::Ok,
        probes: 0,
        probe_bytes: 0,
        answer_us: None,
    }
}

/// A policy that is never ready.
struct Stuck;

impl tower::Service<LlRequest> for Stuck {
    type Response = LlReply;
    type Error = BoxError;
    type Future = Fut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Pending
    }

    fn call(&mut self, _req: LlRequest) -> Fut {
        Box::pin(async { Err("never ready, never called".into()) })
    }
}

/// A policy always ready whose every call takes `takes` and notes when it was made.
struct Slow {
    t0: Instant,
    takes: Duration,
    calls: Arc<Mutex<Vec<Duration>>>,
}

impl tower::Service<LlRequest> for Slow {
    type Response = LlReply;
    type Error = BoxError;
    type Future = Fut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: LlRequest) -> Fut {
        self.calls
            .lock()
            .unwrap()
            .push(Instant::now().duration_since(self.t0));
        let takes = self.takes;
        Box::pin(async move {
            tokio::time::sleep(takes).await;
            Ok(ok())
        })
    }
}

/// Either kind, so that one runner drives both.
enum Either {
    Stuck(Stuck),
    Slow(Slow),
}

impl tower::Service<LlRequest> for Either {
    type Response = LlReply;
    type Error = BoxError;
    type Future = Fut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Either::Stuck(s) => s.poll_ready(cx),
            Either::Slow(s) => s.poll_ready(cx),
        }
    }

    fn call(&mut self, req: LlRequest) -> Fut {
        match self {
            Either::Stuck(s) => s.call(req),
            Either::Slow(s) => s.call(req),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn p4_the_runner_is_open_loop_a_blocked_or_slow_policy_does_not_delay_arrivals() {
    let t0 = Instant::now();
    let calls = Arc::new(Mutex::new(Vec::new()));
    // Client 0 is never ready; client 1's calls take 30 ms while its arrivals come 20 ms apart.
    let clients = vec![
        Either::Stuck(Stuck),
        Either::Slow(Slow {
            t0,
            takes: MS * 30,
            calls: Arc::clone(&calls),
        }),
    ];
    let jobs: Vec<Job> = (0..20).map(|k| job(10 * k, k % 2)).collect();
    let records = runner::run(t0, clients, jobs.clone(), MS * 100).await;
    assert_eq!(records.len(), 20);
    // Every arrival at client 1 was called at its scheduled time: neither the stuck client nor
    // client 1's own calls in flight held it back.
    let scheduled: Vec<Duration> = jobs
        .iter()
        .filter(|j| j.client(2) == 1)
        .map(|j| j.at)
        .collect();
    assert_eq!(*calls.lock().unwrap(), scheduled);
    for (j, r) in jobs.iter().zip(&records) {
        assert_eq!(r.at_us, j.at.as_micros() as u64);
        if j.client(2) == 1 {
            assert_eq!(r.outcome, Outcome::Ok);
            assert_eq!(r.connected_us, Some(r.at_us), "sent at its arrival");
            assert_eq!(r.done_us, Some(r.at_us + 30_000), "30 ms after its arrival");
        } else {
            assert_eq!(r.outcome, Outcome::Timeout, "the stuck client's requests");
            assert_eq!(r.connected_us, None, "never sent");
        }
    }
}

/// A policy ready only from `ready_at` on (from `t0`), whose calls answer at once.
struct ReadyAt {
    t0: Instant,
    ready_at: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl tower::Service<LlRequest> for ReadyAt {
    type Response = LlReply;
    type Error = BoxError;
    type Future = Fut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let at = self.t0 + self.ready_at;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        sleep.as_mut().poll(cx).map(Ok)
    }

    fn call(&mut self, _req: LlRequest) -> Fut {
        Box::pin(async { Ok(ok()) })
    }
}

#[tokio::test(start_paused = true)]
async fn p4_a_request_that_waits_to_be_sent_counts_its_wait_and_its_deadline_runs_from_arrival() {
    let t0 = Instant::now();
    let clients = vec![ReadyAt {
        t0,
        ready_at: MS * 150,
        sleep: None,
    }];
    // Deadline 100 ms from arrival; the policy is ready at 150 ms.
    let jobs = vec![job(0, 0), job(10, 0), job(120, 0), job(130, 0)];
    let r = runner::run(t0, clients, jobs, MS * 100).await;
    // Due at 100 and 110 ms: never sent.
    assert_eq!((r[0].outcome, r[0].connected_us), (Outcome::Timeout, None));
    assert_eq!((r[1].outcome, r[1].connected_us), (Outcome::Timeout, None));
    // Arrived at 120 and 130 ms, sent and answered at 150: latencies of 30 and 20 ms.
    for (r, at) in r[2..].iter().zip([120_000, 130_000]) {
        assert_eq!(r.outcome, Outcome::Ok);
        assert_eq!(r.connected_us, Some(150_000));
        assert_eq!(r.done_us, Some(150_000));
        assert_eq!(r.at_us, at);
    }
}

/// A tiny fleet for `policy`'s long-lived run on `workload`, `clients` clients: its records,
/// the races it counted, and the trace's odd server.
fn fleet_run(
    policy: LlPolicy,
    workload: Workload,
    clients: usize,
) -> (Vec<Record>, u64, Option<usize>) {
    let _one = ONE_FLEET.lock().unwrap_or_else(|e| e.into_inner());
    let spec = TraceSpec {
        shape: SHAPE,
        workload,
        load: 0.3,
        requests: Requests::One,
        seed: 5,
        warmup: MS * 50,
        measure: MS * 400,
        recovery_drop: MS * 100,
    };
    let trace = spec.draw();
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let policy = Policy::LongLived(policy);
    let (fleet, ctx) =
        crate::select::run::start_fleet(&spec, &trace, policy, &KNOBS, &key, None, clients)
            .expect("fleet starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let records = rt
        .block_on(policy::drive(policy, Arc::clone(&ctx), trace.jobs.clone()))
        .expect("drive");
    assert_eq!(records.len(), trace.jobs.len(), "one record per request");
    fleet.stop().expect("fleet stops");
    (
        records,
        ctx.races.load(Ordering::Relaxed),
        trace.schedule.odd_one,
    )
}

#[test]
fn p4_every_long_lived_policy_answers_its_requests_on_a_small_fleet() {
    for p in LlPolicy::ALL {
        // Three independent clients, each with its own state.
        let (records, races, _) = fleet_run(p, Workload::Homogeneous, 3);
        assert!(
            records.len() > 100,
            "{}: {} requests",
            p.name(),
            records.len()
        );
        // Light load, loopback: every request is answered; a lost one is a lab bug.
        let ok = records.iter().filter(|r| r.outcome == Outcome::Ok).count();
        assert_eq!(ok, records.len(), "{}", p.name());
        for r in &records {
            assert!(
                r.server.is_some(),
                "{}: a request without a server",
                p.name()
            );
            assert!(r.done_us >= r.connected_us && r.connected_us >= Some(r.at_us));
        }
        // Races: one per request for volley racing; a pool's opening race per client and
        // the few replacements its budget allows (it starts full, with 2 races per client);
        // none for the others.
        if p.pool_members().is_some() {
            assert!(
                (3..=3 + 3 * 2 + records.len() as u64 / 100).contains(&races),
                "{}: {races} races for {} requests",
                p.name(),
                records.len()
            );
        } else {
            let expected = if p.is_volley() {
                records.len() as u64
            } else {
                0
            };
            assert_eq!(races, expected, "{}", p.name());
        }
        let used: std::collections::HashSet<u16> =
            records.iter().filter_map(|r| r.server).collect();
        assert!(used.len() > 1, "{}: every request on one server", p.name());
    }
}

#[test]
fn p4_replies_reach_their_callers_with_many_in_flight_and_carry_the_load_report() {
    let _one = ONE_FLEET.lock().unwrap_or_else(|e| e.into_inner());
    // One sinkhole among the four: its answers fail, the others' succeed, so an answer routed
    // to the wrong caller shows.
    let spec = TraceSpec {
        shape: SHAPE,
        workload: Workload::Sinkhole,
        load: 0.3,
        requests: Requests::One,
        seed: 9,
        warmup: MS * 50,
        measure: MS * 200,
        recovery_drop: MS * 100,
    };
    let trace = spec.draw();
    let sinkhole = trace.schedule.odd_one.expect("a sinkhole");
    let fleet = crate::select::fleet::Fleet::start(
        SHAPE,
        trace.schedule.clone(),
        Policy::LongLived(LlPolicy::P2cPending).answering(&KNOBS),
        StaticKeypair::generate(&mut rand::rngs::OsRng),
        None,
    )
    .expect("fleet starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let answers = rt.block_on(async {
        let plain = PlainClient::connect(&fleet.direct_ports, 1, Duration::from_secs(2))
            .await
            .expect("connections open");
        // 15 requests to each server at once: 2 slots each, so most wait in a queue.
        let calls: Vec<_> = (0..60)
            .map(|k| {
                let plain = Arc::clone(&plain);
                tokio::spawn(async move {
                    let answer =
                        tokio::time::timeout(Duration::from_secs(10), plain.request(k % 4, 3_000))
                            .await
                            .expect("an answer reaches every caller");
                    (k % 4, answer)
                })
            })
            .collect();
        let mut out = Vec::new();
        for c in calls {
            out.push(c.await.expect("task"));
        }
        out
    });
    fleet.stop().expect("fleet stops");
    let mut queued = 0;
    for (asked, answer) in answers {
        let a = answer.expect("answered");
        assert_eq!(a.server, asked);
        assert_eq!(a.status != 0, asked == sinkhole, "server {asked}'s status");
        assert!(a.report.utilisation <= 1.0);
        if asked == sinkhole {
            assert!(
                a.report.eps > 0.0 && a.report.eps <= a.report.qps,
                "{:?}",
                a.report
            );
            assert_eq!(a.report.utilisation, 0.0, "a sinkhole serves nothing");
        } else {
            assert_eq!(a.report.eps, 0.0);
            assert!(
                a.report.qps > 0.0 && a.report.service_us > 0,
                "{:?}",
                a.report
            );
            queued += a.report.queue;
        }
    }
    assert!(queued > 0, "some replies left a queue behind them");
}

#[test]
fn p4_the_long_lived_plan_is_section_2s_matrix_with_the_long_lived_policies() {
    let dir = std::env::temp_dir().join(format!("volley-lab-ll-plan-{}", std::process::id()));
    let full = crate::select::SelectArgs {
        quick: false,
        seeds: None,
        workloads: Vec::new(),
        loads: Vec::new(),
        policies: Vec::new(),
        clients: Vec::new(),
        servers: 16,
        slots: 4,
        long_sessions: true,
        long_lived: true,
        ..crate::select::tests::tiny_args(&dir)
    };
    let plan = crate::select::plan::Plan::new(&full).expect("plan");
    // Every workload at every load (recovery at 0.85 only) at M = 16, the headline cell also
    // at M = 1 and 64; no sessions of ~10 requests; every long-lived policy in every cell.
    assert_eq!(plan.cells.len(), 5 * 5 + 1 + 2);
    assert!(plan.cells.iter().all(|c| c.requests == Requests::One));
    assert!(
        plan.cells
            .iter()
            .all(|c| c.policies == Policy::long_lived())
    );
    let headline: Vec<usize> = plan
        .cells
        .iter()
        .filter(|c| c.workload == Workload::HalfSlow && (c.load - 0.85).abs() < 1e-9)
        .map(|c| c.clients)
        .collect();
    assert_eq!(
        headline,
        vec![16, 1, 64],
        "the headline first, at M = 16 first"
    );
    assert_eq!(plan.seeds.len(), 5);
    assert_eq!(plan.runs(), 28 * 11 * 5);
    assert_eq!(plan.settings(&full)["mode"], "long-lived");
    // A §2 journal's settings do not say so: the two never resume one another.
    let section2 = crate::select::SelectArgs {
        long_lived: false,
        ..full.clone()
    };
    assert!(plan.settings(&section2).get("mode").is_none());
    // --quick: every workload at 0.85, M = 16, one seed.
    let quick = crate::select::SelectArgs {
        quick: true,
        ..full.clone()
    };
    let plan = crate::select::plan::Plan::new(&quick).expect("plan");
    assert_eq!(plan.cells.len(), 6);
    assert!(plan.cells.iter().all(|c| c.clients == 16));
    // Each mode takes only its own policies by name.
    let named = |long_lived: bool, p: &str| crate::select::SelectArgs {
        long_lived,
        policies: vec![p.into()],
        ..full.clone()
    };
    assert!(crate::select::plan::Plan::new(&named(true, "ll-c3")).is_ok());
    assert!(crate::select::plan::Plan::new(&named(true, "p2c-pending")).is_err());
    assert!(crate::select::plan::Plan::new(&named(false, "ll-c3")).is_err());
}

#[test]
fn p4_select_long_lived_writes_its_goals_the_races_and_the_best_peer_ratios() {
    let dir = std::env::temp_dir().join(format!("volley-lab-ll-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = crate::select::SelectArgs {
        long_lived: true,
        workloads: vec![Workload::HalfSlow],
        loads: vec![0.85],
        clients: vec![crate::select::HEADLINE_CLIENTS],
        policies: ["ll-p2c-pending", "ll-oracle-sed", "ll-volley-race"]
            .map(String::from)
            .to_vec(),
        measure_ms: Some(300),
        servers: 4,
        // ~250 requests a second: a debug build's client keeps up with one handshake each.
        mean_work_ms: 20.0,
        ..crate::select::tests::tiny_args(&dir)
    };
    {
        let _one = ONE_FLEET.lock().unwrap_or_else(|e| e.into_inner());
        crate::select::run(args).expect("select --long-lived runs");
    }
    let md = std::fs::read_to_string(dir.join("results.md")).expect("results.md");
    for needle in [
        "# volley-lab select --long-lived",
        "## Goals (docs/BENCHMARKS.md §7) for `ll-volley-race`",
        "p99 ÷ the better tower p2c",
        "races/1k requests",
        "| ll-volley-race |",
        "## p99 ÷ the best peer, per cell",
    ] {
        assert!(md.contains(needle), "{needle:?} missing from:\n{md}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).expect("json"))
            .expect("valid JSON");
    let runs = json["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3);
    for run in runs {
        let races = run["races_per_1000"].as_f64().expect("races counted");
        if run["policy"] == "ll-volley-race" {
            // One race per request. The counter is read at the period's two ends, the arrivals
            // counted by their scheduled times: a client running late moves a few races across.
            assert!((800.0..=1200.0).contains(&races), "{run}");
        } else {
            assert_eq!(races, 0.0, "{run}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn p4_c3_replica_groups_are_three_consecutive_servers_from_the_coin() {
    use super::services::replica_group;
    assert_eq!(replica_group(17, 16), vec![1, 2, 3]);
    assert_eq!(replica_group(15, 16), vec![15, 0, 1], "the ring wraps");
    assert_eq!(
        replica_group(5, 2),
        vec![1, 0],
        "a smaller fleet: every server"
    );
    // Every server heads as many groups, so uniform coins spread the keys evenly.
    let mut heads = [0usize; 16];
    for coin in 0..1600u64 {
        heads[replica_group(coin, 16)[0]] += 1;
    }
    assert!(heads.iter().all(|&h| h == 100));
}
