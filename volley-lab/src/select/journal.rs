//! The journal of a `select` run: one JSON line per finished run, appended as it finishes, so
//! that a matrix of several hours survives an interruption. `--resume` replays the runs the
//! journal holds and runs only the rest; `--report-only` writes the report from the journal alone.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::report::RunSummary;
use super::workload::{Requests, Workload};

/// The journal's file name inside the output folder.
pub const FILE: &str = "journal.jsonl";

/// Which run an entry is: a run is redone only if no entry has its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunKey {
    pub workload: Workload,
    /// Load in thousandths.
    pub load_milli: u32,
    pub requests: Requests,
    pub clients: usize,
    pub policy: String,
    pub seed: u64,
}

impl RunKey {
    pub fn new(
        workload: Workload,
        load: f64,
        requests: Requests,
        clients: usize,
        policy: &str,
        seed: u64,
    ) -> RunKey {
        RunKey {
            workload,
            load_milli: (load * 1000.0).round() as u32,
            requests,
            clients,
            policy: policy.to_owned(),
            seed,
        }
    }
}

/// One finished run: its summary and its measured latencies (for the pooled plots).
#[derive(Debug, Serialize, Deserialize)]
pub struct Entry {
    pub summary: RunSummary,
    /// Latencies of the sessions that succeeded, sorted, ms.
    pub latencies_ms: Vec<f64>,
    /// Sessions that timed out (infinitely late in the pooled latencies).
    pub timeouts: usize,
}

impl Entry {
    pub fn new(summary: RunSummary, latencies: &[f64]) -> Entry {
        Entry {
            summary,
            latencies_ms: latencies
                .iter()
                .copied()
                .filter(|x| x.is_finite())
                .collect(),
            timeouts: latencies.iter().filter(|x| x.is_infinite()).count(),
        }
    }

    pub fn key(&self) -> RunKey {
        let s = &self.summary;
        RunKey::new(s.workload, s.load, s.requests, s.clients, &s.policy, s.seed)
    }

    /// The latencies as [`super::report::latencies`] gives them: sorted, timeouts last as
    /// infinity.
    pub fn latencies(&self) -> Vec<f64> {
        let mut v = self.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        v.extend(std::iter::repeat_n(f64::INFINITY, self.timeouts));
        v
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    /// Everything besides the run key that changes what a run measures.
    settings: serde_json::Value,
}

/// An open journal, appended to as runs finish.
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Opens `dir/journal.jsonl`. With `resume`, the entries already there are returned (after
    /// checking they were made with the same `settings`); without, any old journal is replaced.
    pub fn open(
        dir: &Path,
        settings: serde_json::Value,
        resume: bool,
    ) -> anyhow::Result<(Journal, Vec<Entry>)> {
        let path = dir.join(FILE);
        let mut entries = Vec::new();
        if resume && path.exists() {
            let reader = BufReader::new(
                File::open(&path).with_context(|| format!("reading {}", path.display()))?,
            );
            let mut lines = reader.lines();
            if let Some(first) = lines.next() {
                let header: Header = serde_json::from_str(&first?)
                    .with_context(|| format!("{}: bad header line", path.display()))?;
                anyhow::ensure!(
                    header.settings == settings,
                    "{} was written with other settings:\n  journal: {}\n  now:     {}\n\
                     run with the journal's settings, or without --resume to start over",
                    path.display(),
                    header.settings,
                    settings
                );
            }
            for (n, line) in lines.enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Entry>(&line) {
                    Ok(e) => entries.push(e),
                    // An interrupted write leaves at most a partial last line: that run is redone.
                    Err(e) => eprintln!(
                        "{}: line {} unreadable ({e}); that run will be redone",
                        path.display(),
                        n + 2
                    ),
                }
            }
            // What follows starts on a fresh line, even after a partial write.
            let partial = {
                let mut f = File::open(&path)?;
                let mut last = [b'\n'];
                if f.metadata()?.len() > 0 {
                    f.seek(SeekFrom::End(-1))?;
                    f.read_exact(&mut last)?;
                }
                last[0] != b'\n'
            };
            let file = OpenOptions::new().append(true).open(&path)?;
            let mut j = Journal { file, path };
            if partial {
                j.file.write_all(b"\n")?;
            }
            if entries.is_empty() {
                j.file.set_len(0)?;
                j.write_line(&serde_json::to_string(&Header { settings })?)?;
            }
            return Ok((j, entries));
        }
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut j = Journal { file, path };
        j.write_line(&serde_json::to_string(&Header { settings })?)?;
        Ok((j, entries))
    }

    /// Appends one finished run and flushes it to the disk.
    pub fn append(&mut self, entry: &Entry) -> anyhow::Result<()> {
        self.write_line(&serde_json::to_string(entry)?)
    }

    fn write_line(&mut self, line: &str) -> anyhow::Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_infinite_and_undefined_figures() {
        let line = r#"{"summary":{"workload":"half-slow","load":0.85,"requests":"One","clients":16,"policy":"random","seed":2,"invalid_cpu":false,"sessions":3,"ok":2,"failed":0,"timeouts":1,"p50_ms":12.5,"p90_ms":"inf","p99_ms":"inf","p999_ms":"inf","mean_ms":"inf","goodput":0.66,"connect_p50_ms":"nan","answer_p50_ms":null,"probes_per_session":0.0,"probe_bytes_per_session":0.0,"herding":1.0,"utilisation":[0.5],"capacity_share":[1.0],"work_share":[1.0],"recovery_s":null,"withheld":0,"held":0,"hold_dropped":0,"busy_offers":0,"init_refused":0,"client_cpu":0.1,"fleet_cpu":0.2,"cpu_busy":[0.1,0.2]},"latencies_ms":[12.5,3.0],"timeouts":1}"#;
        let e: Entry = serde_json::from_str(line).expect("entry parses");
        assert!(e.summary.p99_ms.is_infinite() && e.summary.p99_ms > 0.0);
        assert!(e.summary.connect_p50_ms.is_nan() && e.summary.answer_p50_ms.is_nan());
        assert_eq!(e.latencies()[..2], [3.0, 12.5]);
        assert!(e.latencies()[2].is_infinite());
        let again: Entry =
            serde_json::from_str(&serde_json::to_string(&e).expect("writes")).expect("reads");
        assert!(again.summary.p99_ms.is_infinite() && again.summary.connect_p50_ms.is_nan());
        assert_eq!(again.key(), e.key());
        assert!(serde_json::from_str::<Entry>(&line.replace("\"inf\"", "\"lots\"")).is_err());
    }
}
