//! `zgate status`: what the running agent is doing, from the admin socket —
//! workloads, programs, policies, map usage, verdict counters.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The agent's state as `zgate status` shows it (and `--json` prints it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: u64,
    pub generation: u32,
    pub config: String,
    pub workloads: Vec<WorkloadStatus>,
    pub programs: Vec<ProgramStatus>,
    pub policies: Vec<PolicyStatus>,
    pub maps: Vec<MapUsage>,
    pub verdicts: Vec<VerdictCount>,
    /// Workload certificates this node holds (never their keys).
    pub certificates: Vec<CertificateStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertificateStatus {
    pub identity: String,
    /// Unix time the current certificate expires.
    pub expires_at: u64,
    pub expires_in_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadStatus {
    pub id: u32,
    pub workload: String,
    pub identity: String,
    pub labels: Vec<String>,
    pub cgroup: String,
    /// Policies that apply, in evaluation order.
    pub policies: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub name: String,
    /// `attached` by this agent, or `adopted` from bpffs.
    pub state: String,
    pub link: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub policy: String,
    pub action: String,
    pub status: String,
    pub message: String,
    /// Enrolled workloads it applies to.
    pub workloads: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapUsage {
    pub map: String,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerdictCount {
    pub policy: String,
    pub verdict: String,
    pub reason: String,
    pub hook: String,
    pub count: u64,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "zgate {} — up {}s, policy generation {}, config {}",
            self.version, self.uptime_secs, self.generation, self.config
        )?;
        writeln!(f, "\nWORKLOADS ({})", self.workloads.len())?;
        for w in &self.workloads {
            writeln!(f, "  #{:<4} {:<32} {}", w.id, w.workload, w.identity)?;
            if !w.policies.is_empty() {
                writeln!(f, "        policies: {}", w.policies.join(", "))?;
            }
        }
        writeln!(f, "\nPROGRAMS ({})", self.programs.len())?;
        for p in &self.programs {
            writeln!(f, "  {:<18} {:<9} {}", p.name, p.state, p.link)?;
        }
        writeln!(f, "\nPOLICIES ({})", self.policies.len())?;
        for p in &self.policies {
            writeln!(f, "  {:<40} {:<6} {}", p.policy, p.action, p.status)?;
            if !p.message.is_empty() && p.status != "Accepted" {
                writeln!(f, "        {}", p.message)?;
            }
            if !p.workloads.is_empty() {
                writeln!(f, "        applies to: {}", p.workloads.join(", "))?;
            }
        }
        writeln!(f, "\nMAPS")?;
        for m in &self.maps {
            let pct = if m.capacity == 0 {
                0.0
            } else {
                m.entries as f64 * 100.0 / m.capacity as f64
            };
            writeln!(
                f,
                "  {:<20} {:>8} / {:<8} {pct:>5.1}%",
                m.map, m.entries, m.capacity
            )?;
        }
        writeln!(f, "\nCERTIFICATES ({})", self.certificates.len())?;
        for c in &self.certificates {
            writeln!(f, "  {:<60} expires in {}s", c.identity, c.expires_in_secs)?;
        }
        writeln!(f, "\nVERDICTS")?;
        for v in &self.verdicts {
            writeln!(
                f,
                "  {:>8}  {:<5} at {:<7} {:<40} {}",
                v.count, v.verdict, v.hook, v.policy, v.reason
            )?;
        }
        Ok(())
    }
}

/// The verdict a `policy::REASON_*` code stands for, and why.
pub fn reason_name(code: u8) -> (&'static str, &'static str) {
    use zgate_common::policy::*;
    match code {
        REASON_DEFAULT_ALLOW => ("ALLOW", "no allow policies (default allow)"),
        REASON_ALLOW_MATCHED => ("ALLOW", "allow policy matched"),
        REASON_EXPLICIT_DENY => ("DENY", "explicitly denied"),
        REASON_NO_ALLOW_MATCHED => ("DENY", "allow policies exist, but none allowed"),
        REASON_MAP_FULL => ("DENY", "kernel map full (fail closed)"),
        _ => ("DENY", "no policy compiled yet (fail closed)"),
    }
}

/// Where an `event::HOOK_*` verdict was taken.
pub fn hook_name(hook: u8) -> &'static str {
    use zgate_common::event::*;
    match hook {
        HOOK_CONNECT => "connect",
        HOOK_BIND => "bind",
        HOOK_ACCEPT => "accept",
        _ => "unknown",
    }
}
