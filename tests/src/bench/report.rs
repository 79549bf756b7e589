//! The benchmark's results: rows of (path, metric, value, ratio to direct), the goals, and
//! the machine they were measured on; printed as a table and written as JSON.
use std::{path::Path, process::Command};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
}

/// The 1, 5 and 15 minute load averages (other work on the machine skews the numbers).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            cpu_model,
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            memory_gib: (mem_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
        }
    }
}

/// The current UTC date and time, from date(1).
pub fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub path: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    /// value / direct's value for the same metric in this run (None for direct's own rows and
    /// metrics without a direct counterpart); for repeated metrics, the median of the
    /// per-repetition ratios.
    pub ratio_to_direct: Option<f64>,
}

/// One measurement of a repeated run (rows report the median).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub path: String,
    pub metric: String,
    pub rep: usize,
    pub value: f64,
}

/// Connect latency of one path at one table size, all samples.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyDetail {
    pub services: usize,
    pub path: String,
    pub stats: super::client::LatencyStats,
}

/// In-kernel time of the datapath's programs per TCP connection (BPF_ENABLE_STATS).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookDetail {
    /// When: at which table size, or after which runs.
    pub when: String,
    pub revnat_entries: usize,
    pub path: String,
    pub connects: u64,
    pub connect4_ns: f64,
    /// The socket's other programs: its release, and the TCP-event tracepoints (which are
    /// host-wide: anything else on the host that retransmits or is reset adds to them).
    pub socket_ns: f64,
    pub socket_calls: f64,
    /// Programs that only return, on connect4 and sock_release beside the datapath's, in the
    /// same pass: what the runs cost before any work (absent in reports from before it).
    #[serde(default)]
    pub floor_ns: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    pub goal: String,
    pub measured: f64,
    pub target: String,
    pub met: bool,
    /// The same ratio in each repetition (viking and direct of one repetition ran back to
    /// back): how much the machine moved under the measurement.
    pub per_run: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub benchmark: String,
    pub date: String,
    pub machine: Machine,
    pub quick: bool,
    pub load_before: String,
    pub load_after: String,
    pub settings: serde_json::Value,
    pub rows: Vec<Row>,
    pub goals: Vec<Goal>,
    pub runs: Vec<Run>,
    pub latency: Vec<LatencyDetail>,
    pub hooks: Vec<HookDetail>,
    /// One of three backends dying mid-run, with and without ejection.
    #[serde(default)]
    pub failover: Vec<super::failover::FailoverDetail>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn row(&mut self, path: &str, metric: &str, value: f64, unit: &str, direct: Option<f64>) {
        let ratio = direct.filter(|d| *d > 0.0).map(|d| value / d);
        self.rows.push(Row {
            path: path.to_owned(),
            metric: metric.to_owned(),
            value,
            unit: unit.to_owned(),
            ratio_to_direct: ratio,
        });
    }

    /// The first row's value for (path, metric).
    pub fn value(&self, path: &str, metric: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.path == path && r.metric == metric).map(|r| r.value)
    }

    pub fn goal(&mut self, goal: &str, measured: f64, target: &str, met: bool, per_run: Vec<f64>) {
        self.goals.push(Goal {
            goal: goal.to_owned(),
            measured,
            target: target.to_owned(),
            met,
            per_run,
        });
    }

    /// A row whose ratio to direct was worked out by the caller.
    pub fn row_with_ratio(
        &mut self,
        path: &str,
        metric: &str,
        value: f64,
        unit: &str,
        ratio: Option<f64>,
    ) {
        self.rows.push(Row {
            path: path.to_owned(),
            metric: metric.to_owned(),
            value,
            unit: unit.to_owned(),
            ratio_to_direct: ratio,
        });
    }

    /// `path` / direct in each repetition of a repeated metric (`runs`).
    pub fn per_run_ratios(&self, metric: &str, path: &str) -> Vec<f64> {
        let find = |path: &str, rep: usize| {
            self.runs
                .iter()
                .find(|r| r.metric == metric && r.path == path && r.rep == rep)
                .map(|r| r.value)
        };
        (0..)
            .map_while(|rep| Some((find(path, rep)?, find("direct", rep)?)))
            .filter(|(_, d)| *d > 0.0)
            .map(|(v, d)| v / d)
            .collect()
    }

    /// A markdown table (readable as plain text too).
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| path | metric | value | ratio to direct |\n| --- | --- | ---: | ---: |\n",
        );
        for r in &self.rows {
            let ratio = r.ratio_to_direct.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
            s.push_str(&format!(
                "| {} | {} | {} {} | {ratio} |\n",
                r.path,
                r.metric,
                fmt_value(r.value, &r.unit),
                r.unit
            ));
        }
        s
    }

    pub fn goals_table(&self) -> String {
        let mut s = String::from(
            "| goal | measured | target | met | per repetition (min-max) |\n\
             | --- | ---: | --- | --- | --- |\n",
        );
        for g in &self.goals {
            let min = g.per_run.iter().copied().fold(f64::INFINITY, f64::min);
            let max = g.per_run.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let spread = if g.per_run.is_empty() {
                "-".to_owned()
            } else {
                format!("{min:.2}-{max:.2} ({} runs)", g.per_run.len())
            };
            s.push_str(&format!(
                "| {} | {:.3} | {} | {} | {spread} |\n",
                g.goal,
                g.measured,
                g.target,
                if g.met { "yes" } else { "no" }
            ));
        }
        s
    }

    pub fn print(&self) {
        print_header(
            &self.benchmark,
            &self.date,
            &self.machine,
            self.quick,
            (&self.load_before, &self.load_after),
        );
        println!();
        print!("{}", self.table());
        println!();
        print!("{}", self.goals_table());
        for n in &self.notes {
            println!("note: {n}");
        }
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("serialising the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "Gbit/s" => format!("{v:.2}"),
        "µs" => format!("{v:.1}"),
        "ns" => format!("{v:.0}"),
        "×" => format!("{v:.3}"),
        "s" => format!("{v:.3}"),
        "%" => format!("{v:.3}"),
        _ => format!("{v:.0}"),
    }
}

/// The lines every benchmark report starts with: what ran, when, where, and how loaded the
/// machine was before and after.
pub fn print_header(benchmark: &str, date: &str, m: &Machine, quick: bool, load: (&str, &str)) {
    println!();
    println!(
        "{benchmark} benchmark, {date} ({} CPUs, {}, {} GiB, kernel {}){}",
        m.cpus,
        m.cpu_model,
        m.memory_gib,
        m.kernel,
        if quick { ", --quick" } else { "" }
    );
    println!("load average before: {}, after: {}", load.0, load.1);
}
