//! Small, fast checks of the benchmark's machinery on a tiny fleet (CI runs these; the benchmark
//! itself is a command). Nothing here asserts a timing: only outcomes and counts.

use std::time::Duration;

use super::policy::{self, Outcome, Policy, VolleyKnobs};
use super::workload::{Behaviour, FleetShape, Requests, Schedule, TraceSpec, Workload};
use volley::StaticKeypair;

pub(super) const SHAPE: FleetShape = FleetShape {
    servers: 4,
    slots: 2,
    mean_work: Duration::from_millis(2),
};

pub(super) const KNOBS: VolleyKnobs = VolleyKnobs {
    capacity: 2,
    pace_max: Duration::from_millis(5),
    pace_divisor: 32,
    max_hold: Duration::from_millis(200),
    reservation: Duration::from_millis(1),
};

/// Runs `policy` over a fresh tiny fleet with one client; returns the records and the fleet's
/// sinkhole or silent server.
fn run(
    policy: Policy,
    workload: Workload,
    load: f64,
    requests: Requests,
) -> (Vec<policy::Record>, Option<usize>) {
    let (records, schedule) = run_with(policy, workload, load, requests, 1);
    (records, schedule.odd_one)
}

/// One fleet at a time: each runs real servers and clients on loopback in open loop, and the
/// test harness would otherwise start this file's fleets all at once on the machine's two cores,
/// starving them into timeouts that say nothing about the policies (seen in CI: the silent-server
/// test's volley run lost 106 sessions beside the other fleets, none when run alone).
pub(super) static ONE_FLEET: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `policy` over a fresh tiny fleet with `clients` independent clients; returns the
/// records and the speed schedule.
fn run_with(
    policy: Policy,
    workload: Workload,
    load: f64,
    requests: Requests,
    clients: usize,
) -> (Vec<policy::Record>, Schedule) {
    // A test that failed while holding it leaves the lock poisoned; the fleet is still fine.
    let _one = ONE_FLEET.lock().unwrap_or_else(|e| e.into_inner());
    let spec = TraceSpec {
        shape: SHAPE,
        workload,
        load,
        requests,
        seed: 3,
        warmup: Duration::from_millis(50),
        measure: Duration::from_millis(400),
        recovery_drop: Duration::from_millis(100),
    };
    let trace = spec.draw();
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (fleet, ctx) = super::run::start_fleet(&spec, &trace, policy, &KNOBS, &key, None, clients)
        .expect("fleet starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let records = rt
        .block_on(policy::drive(policy, ctx, trace.jobs.clone()))
        .expect("drive");
    assert_eq!(records.len(), trace.jobs.len(), "one record per session");
    fleet.stop().expect("fleet stops");
    (records, trace.schedule)
}

#[test]
fn select_every_policy_completes_its_sessions_on_a_small_fleet() {
    for policy in Policy::peers().into_iter().chain([
        Policy::parse("volley-earliest-paced-d3").expect("known"),
        Policy::parse("volley-window-immediate-all").expect("known"),
        Policy::parse("volley-earliest-gated-d2").expect("known"),
    ]) {
        // Three independent clients: every balancer runs one instance per client.
        let (records, _) = run_with(policy, Workload::Homogeneous, 0.3, Requests::One, 3);
        let ok = records.iter().filter(|r| r.outcome == Outcome::Ok).count();
        assert!(
            records.len() > 50,
            "{}: {} sessions",
            policy.name(),
            records.len()
        );
        // Light load, loopback: every session must complete; a lost one is a lab bug.
        assert_eq!(ok, records.len(), "{}", policy.name());
        for r in &records {
            assert!(
                r.server.is_some(),
                "{}: a session without a server",
                policy.name()
            );
            assert!(r.done_us >= r.connected_us && r.connected_us.is_some());
            assert!(r.probes >= 1);
        }
        if let Policy::Volley {
            fanout: Some(d), ..
        } = policy
        {
            let first_race = records.iter().map(|r| r.probes).min().unwrap_or(0);
            assert_eq!(first_race, d as u32, "{}: probes per race", policy.name());
        }
    }
}

#[test]
fn select_oracle_never_runs_more_sessions_than_slots() {
    // Sessions of ~10 requests at load 0.9: the central queue must hold sessions back rather
    // than overfill a server.
    let (records, _) = run(
        Policy::Oracle,
        Workload::Homogeneous,
        0.9,
        Requests::About10,
    );
    let mut events: Vec<(u64, i32, u16)> = Vec::new();
    for r in records.iter().filter(|r| r.outcome == Outcome::Ok) {
        let (Some(c), Some(d), Some(s)) = (r.connected_us, r.done_us, r.server) else {
            continue;
        };
        events.push((c, 1, s));
        events.push((d, -1, s));
    }
    events.sort_by_key(|&(t, delta, _)| (t, delta));
    let mut open = [0i32; SHAPE.servers];
    for (_, delta, s) in events {
        open[s as usize] += delta;
        // Established to done is within the slot's life (slot freed after done).
        assert!(
            open[s as usize] <= SHAPE.slots as i32,
            "server {s} over its slots"
        );
    }
}

#[test]
fn select_sinkhole_failures_are_counted_and_come_from_the_sinkhole() {
    let (records, odd) = run(Policy::RoundRobin, Workload::Sinkhole, 0.3, Requests::One);
    let sink = odd.expect("a sinkhole") as u16;
    let failed: Vec<_> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .collect();
    // Round-robin sends a quarter of the sessions to the sinkhole.
    assert!(
        failed.len() * 5 > records.len(),
        "{} of {}",
        failed.len(),
        records.len()
    );
    assert!(failed.iter().all(|r| r.server == Some(sink)));
    assert!(
        records
            .iter()
            .filter(|r| r.server != Some(sink))
            .all(|r| r.outcome == Outcome::Ok)
    );
}

#[test]
fn select_the_sed_oracle_fills_the_fast_servers_first() {
    // Half the fleet at half speed, light load: a fast server nearly always has a free slot, so
    // the SED oracle hardly uses a slow one, while the uniform oracle uses them half the time.
    // Load 0.05: a session holds its slot for its connect too (about 2 ms in a debug build, as
    // long as its work), so at 0.1 the 4 fast slots were all busy for ~5 % of arrivals
    // (Erlang B), right at the bound; at 0.05 that is under 1 %.
    let (records, schedule) = run_with(
        Policy::OracleSed,
        Workload::HalfSlow,
        0.05,
        Requests::One,
        1,
    );
    let slow = |s: u16| schedule.behaviour(s as usize, Duration::ZERO) == Behaviour::Work(0.5);
    let on_slow = records
        .iter()
        .filter(|r| r.server.is_some_and(slow))
        .count();
    // At most 1 in 10 (the uniform oracle: about 1 in 2): 1 in 20 sat within a session of the
    // Erlang B share on a fresh CI clone (3 of 57 once).
    assert!(
        on_slow * 10 <= records.len(),
        "{on_slow} of {} on slow servers",
        records.len()
    );
    let (records, schedule) = run_with(Policy::Oracle, Workload::HalfSlow, 0.05, Requests::One, 1);
    let slow = |s: u16| schedule.behaviour(s as usize, Duration::ZERO) == Behaviour::Work(0.5);
    let on_slow = records
        .iter()
        .filter(|r| r.server.is_some_and(slow))
        .count();
    assert!(on_slow * 4 > records.len(), "uniform oracle: {on_slow}");
}

#[test]
fn l7_select_volley_clients_eject_the_sinkhole_their_sessions_report() {
    // Each request the sinkhole fails is reported by the session (`report_failure`): two in a
    // row eject it from that client's races for a second, longer than the run. Only the
    // sessions that chose it before the second report came back can fail (a handful, more on a
    // busy machine); round-robin sends it a quarter of all sessions.
    let volley = Policy::parse("volley-window-immediate-all").expect("known");
    let (records, odd) = run(volley, Workload::Sinkhole, 0.3, Requests::One);
    let sink = odd.expect("a sinkhole") as u16;
    let failed = records
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .count();
    assert!(failed <= 15, "{failed} sessions failed on the sinkhole");
    let (rr, _) = run(Policy::RoundRobin, Workload::Sinkhole, 0.3, Requests::One);
    let rr_failed = rr.iter().filter(|r| r.outcome == Outcome::Failed).count();
    assert!(
        rr_failed > 5 * failed.max(1),
        "round-robin {rr_failed}, volley {failed}"
    );
    assert!(
        records
            .iter()
            .filter(|r| r.outcome == Outcome::Failed)
            .all(|r| r.server == Some(sink))
    );
}

#[test]
fn select_a_silent_server_costs_round_robin_timeouts_and_volley_none() {
    let (rr, odd) = run(Policy::RoundRobin, Workload::Silent, 0.3, Requests::One);
    let silent = odd.expect("a silent server") as u16;
    let timeouts = rr.iter().filter(|r| r.outcome == Outcome::Timeout).count();
    assert!(
        timeouts > 10,
        "round-robin keeps sending to the silent server: {timeouts}"
    );
    let volley = Policy::parse("volley-earliest-immediate-all").expect("known");
    let (v, _) = run(volley, Workload::Silent, 0.3, Requests::One);
    // A race ignores a server that does not answer: only sessions already on it (or whose INIT
    // it refused as it went silent) are lost, a small fraction of what round-robin loses.
    let lost = v.iter().filter(|r| r.outcome == Outcome::Timeout).count();
    assert!(
        lost * 5 < timeouts,
        "volley lost {lost}, round-robin {timeouts}"
    );
    // It went silent at 50 + 400 / 3 ms: no session is established with it 70 ms later.
    let on_silent_later = v
        .iter()
        .filter(|r| r.server == Some(silent))
        .filter(|r| r.connected_us.is_some_and(|c| c > 250_000))
        .count();
    assert_eq!(
        on_silent_later, 0,
        "no session chose the silent server after it went silent"
    );
}

/// A small, fast `select` on a tiny fleet (homogeneous, load 0.5, M = 2, random): the tests
/// change what they look at.
pub(super) fn tiny_args(dir: &std::path::Path) -> super::SelectArgs {
    super::SelectArgs {
        out: dir.to_path_buf(),
        quick: true,
        seeds: Some(1),
        first_seed: 1,
        workloads: vec![Workload::Homogeneous],
        loads: vec![0.5],
        policies: vec!["random".into()],
        clients: vec![2],
        measure_ms: Some(200),
        warmup_ms: Some(50),
        recovery_drop_s: 1.0,
        servers: 3,
        slots: 2,
        mean_work_ms: 2.0,
        capacity: None,
        pace_max_ms: 5.0,
        pace_divisor: 32,
        max_hold_ms: 200.0,
        reservation_ms: 1.0,
        long_sessions: false,
        no_pin: true,
        resume: false,
        report_only: false,
        records: false,
        zones: false,
        long_lived: false,
        zone_workloads: Vec::new(),
        zone_requests: Vec::new(),
        // A debug build's client thread is slow; these tests check the machinery, not validity.
        cpu_limit: 1e9,
    }
}

#[test]
fn select_run_writes_the_table_the_json_and_the_plots() {
    let dir = std::env::temp_dir().join(format!("volley-lab-select-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = super::SelectArgs {
        workloads: vec![Workload::HalfSlow],
        policies: vec!["random".into(), "volley-earliest-paced-d2".into()],
        clients: vec![1, 2],
        measure_ms: Some(300),
        servers: 4,
        records: true,
        ..tiny_args(&dir)
    };
    super::run(args).expect("select runs");
    let md = std::fs::read_to_string(dir.join("results.md")).expect("results.md");
    assert!(md.contains("| random |") && md.contains("| volley-earliest-paced-d2 |"));
    assert!(md.contains("M = 1 client(s)") && md.contains("M = 2 client(s)"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).expect("json"))
            .expect("valid JSON");
    assert_eq!(json["runs"].as_array().map(|a| a.len()), Some(4));
    // Every run carries its CPU accounting: the client thread ran sessions, the fleet served
    // them, and no side can use more than the whole machine.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for run in json["runs"].as_array().into_iter().flatten() {
        let (client, fleet) = (
            run["client_cpu"].as_f64().expect("client_cpu"),
            run["fleet_cpu"].as_f64().expect("fleet_cpu"),
        );
        assert!(client > 0.0 && fleet > 0.0, "{run}");
        assert!(client + fleet <= cpus + 0.1, "{run}");
    }
    assert!(md.contains("client CPU"));
    for f in [
        "cdf-half-slow-0.50-r1-m1.svg",
        "util-half-slow-0.50-r1-m2.svg",
        "p99-vs-clients-half-slow-0.50-r1.svg",
    ] {
        let svg = std::fs::read_to_string(dir.join(f)).expect("plot written");
        assert!(svg.starts_with("<svg") && svg.contains("random"), "{f}");
    }
    let records = std::fs::read_dir(dir.join("records"))
        .expect("records")
        .count();
    assert_eq!(records, 4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn select_resume_runs_only_what_the_journal_lacks() {
    let dir = std::env::temp_dir().join(format!("volley-lab-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = |policies: &[&str], resume: bool, report_only: bool| super::SelectArgs {
        first_seed: 3,
        policies: policies.iter().map(|p| p.to_string()).collect(),
        resume,
        report_only,
        ..tiny_args(&dir)
    };
    let journal = dir.join(super::journal::FILE);
    let lines = || {
        std::fs::read_to_string(&journal)
            .expect("journal")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    super::run(args(&["random"], false, false)).expect("first run");
    let first = lines();
    assert_eq!(first.len(), 2, "a header and one run");
    // A run cut short mid-write leaves a partial line: it is skipped and redone.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .expect("open");
    std::io::Write::write_all(&mut f, b"{\"summary\":{\"workl").expect("write");
    drop(f);
    super::run(args(&["random", "round-robin"], true, false)).expect("resumed run");
    let second = lines();
    let entries: Vec<super::journal::Entry> = second
        .iter()
        .skip(1)
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let policies: Vec<&str> = entries.iter().map(|e| e.summary.policy.as_str()).collect();
    assert_eq!(
        policies,
        ["random", "round-robin"],
        "the random run kept, round-robin run once, the partial line skipped: {second:#?}"
    );
    assert_eq!(second[1], first[1], "the journal's run is not redone");
    let md = std::fs::read_to_string(dir.join("results.md")).expect("results.md");
    assert!(md.contains("| random |") && md.contains("| round-robin |"));
    assert!(md.contains("Resumed: 1 of the 2 runs"), "{md}");
    assert!(!md.contains("Partial run"));
    // Report only: a plan larger than the journal is reported as partial and nothing runs.
    let before = std::fs::read(&journal).expect("journal");
    super::run(args(&["random", "round-robin", "p2c-pending"], false, true)).expect("report");
    assert_eq!(
        std::fs::read(&journal).expect("journal"),
        before,
        "report-only leaves the journal as it was"
    );
    let md = std::fs::read_to_string(dir.join("results.md")).expect("results.md");
    assert!(md.contains("Partial run: 2 of the 3 planned runs"), "{md}");
    assert!(!md.contains("| p2c-pending |"));
    // Other settings: the journal is refused rather than mixed.
    let mut other = args(&["random"], true, false);
    other.slots = 3;
    assert!(super::run(other).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
