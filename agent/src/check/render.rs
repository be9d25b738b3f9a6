//! Text and JSON output of `zgate check` and `zgate policies`. The first
//! line of `check`'s text is the verdict and ztunnel's reason, so scripts
//! can `head -1`; `--json` prints one object.

use std::{fmt, net::SocketAddr};

use serde_json::{json, Value};

use super::{CheckReport, Considered, Error, PoliciesReport, WorkloadMtls};
use crate::{
    config::{EffectiveMtls, PolicyStatus},
    policy::{Action, Origin, Verdict},
};

// === impl CheckReport ===

impl CheckReport {
    /// Text, or one JSON object with `json`; ends with a newline.
    pub fn render(&self, json: bool) -> Result<String, Error> {
        if json {
            to_json_line(&self.to_json())
        } else {
            Ok(self.to_string())
        }
    }

    pub fn to_json(&self) -> Value {
        let Self {
            query,
            evaluation,
            considered,
            notes,
        } = self;
        let (verdict, reason) = match &evaluation.verdict {
            Verdict::Allow(r) => ("ALLOW", r),
            Verdict::Deny(r) => ("DENY", r),
        };
        json!({
            "verdict": verdict,
            "reason": reason.to_string(),
            "policy": reason.policy().map(ToString::to_string),
            "dry_run": evaluation.dry_run.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "considered": considered.iter().map(Considered::to_json).collect::<Vec<_>>(),
            "connection": {
                "source_ip": query.conn.src,
                "source_identity": query.conn.src_identity.as_ref().map(ToString::to_string),
                "destination_ip": query.conn.dst,
                "port": query.conn.dst_port,
            },
            "destination": {
                "namespace": query.dest_namespace,
                "labels": query.dest_labels,
                "workload": query.dest_workload.as_ref().map(ToString::to_string),
            },
            "notes": notes,
        })
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            query,
            evaluation,
            considered,
            notes,
        } = self;
        writeln!(f, "{}", evaluation.verdict)?;
        let conn = &query.conn;
        let to = SocketAddr::new(conn.dst, conn.dst_port);
        match &conn.src_identity {
            Some(id) => writeln!(f, "connection: {} -> {to}, mTLS as {id}", conn.src)?,
            None => writeln!(f, "connection: {} -> {to}, plaintext", conn.src)?,
        }
        let labels: Vec<String> = query
            .dest_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "destination: namespace {}", query.dest_namespace)?;
        if !labels.is_empty() {
            write!(f, ", labels {}", labels.join(","))?;
        }
        match &query.dest_workload {
            Some(w) => writeln!(f, " (WorkloadEntry {w})")?,
            None => writeln!(f)?,
        }
        if considered.is_empty() {
            writeln!(f, "policies considered: none")?;
        } else {
            writeln!(
                f,
                "policies considered ({}, in evaluation order):",
                considered.len()
            )?;
            for c in considered {
                writeln!(f, "  {c}")?;
            }
        }
        for note in &evaluation.dry_run {
            writeln!(f, "{note}")?;
        }
        for note in notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

// === impl Considered ===

impl Considered {
    fn to_json(&self) -> Value {
        json!({
            "policy": self.key.to_string(),
            "action": self.action,
            "dry_run": self.dry_run,
            "origin": origin(&self.origin),
            "matched": self.matched,
        })
    }
}

impl fmt::Display for Considered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY ",
        };
        write!(f, "{action} {}", self.key)?;
        if self.origin == Origin::PeerAuthentication {
            f.write_str(" [PeerAuthentication]")?;
        }
        if self.dry_run {
            f.write_str(" [dry-run]")?;
        }
        f.write_str(if self.matched {
            ": matches"
        } else {
            ": no match"
        })
    }
}

// === impl PoliciesReport ===

impl PoliciesReport {
    /// Text, or one JSON object with `json`; ends with a newline.
    pub fn render(&self, json: bool) -> Result<String, Error> {
        if json {
            to_json_line(&self.to_json())
        } else {
            Ok(self.to_string())
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "policies": self.policies.iter().map(status_json).collect::<Vec<_>>(),
            "workloads": self.workloads.iter().map(WorkloadMtls::to_json).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for PoliciesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "AuthorizationPolicy ({}):", self.policies.len())?;
        for s in &self.policies {
            let mut flags = String::new();
            if s.dry_run {
                flags.push_str(" [dry-run]");
            }
            if !s.attached {
                flags.push_str(" [not enforced]");
            }
            writeln!(
                f,
                "  {} {}{flags}: {}: {}",
                s.key, s.action, s.reason, s.message
            )?;
            writeln!(f, "    from {}", s.source)?;
        }
        writeln!(
            f,
            "PeerAuthentication, effective per WorkloadEntry ({}):",
            self.workloads.len()
        )?;
        for w in &self.workloads {
            write!(f, "  {}: {}", w.workload, mode_text(&w.mtls))?;
            match &w.policy {
                Some(p) => writeln!(f, " (enforced by {p})")?,
                None => writeln!(f)?,
            }
        }
        Ok(())
    }
}

// === impl WorkloadMtls ===

impl WorkloadMtls {
    fn to_json(&self) -> Value {
        let show = |k: &Option<crate::policy::PolicyKey>| k.as_ref().map(ToString::to_string);
        json!({
            "workload": self.workload.to_string(),
            "mode": if self.mtls.strict { "STRICT" } else { "PERMISSIVE" },
            "port_exceptions": self.mtls.port_exceptions,
            "policy": show(&self.policy),
            "mesh_policy": show(&self.mtls.mesh),
            "namespace_policy": show(&self.mtls.namespace),
            "workload_policy": show(&self.mtls.workload),
        })
    }
}

fn status_json(s: &PolicyStatus) -> Value {
    json!({
        "policy": s.key.to_string(),
        "source": s.source,
        "action": s.action,
        "dry_run": s.dry_run,
        "attached": s.attached,
        "reason": s.reason,
        "message": s.message,
        "unsupported": s.unsupported,
    })
}

fn mode_text(m: &EffectiveMtls) -> String {
    let ports: Vec<String> = m.port_exceptions.iter().map(ToString::to_string).collect();
    match (m.strict, ports.is_empty()) {
        (true, true) => "STRICT: plaintext rejected".to_owned(),
        (true, false) => format!(
            "STRICT: plaintext rejected except on ports {}",
            ports.join(", ")
        ),
        (false, true) => "PERMISSIVE: plaintext accepted".to_owned(),
        (false, false) => format!(
            "PERMISSIVE: plaintext rejected only on ports {}",
            ports.join(", ")
        ),
    }
}

fn origin(o: &Origin) -> &'static str {
    match o {
        Origin::AuthorizationPolicy => "AuthorizationPolicy",
        Origin::PeerAuthentication => "PeerAuthentication",
    }
}

fn to_json_line(v: &Value) -> Result<String, Error> {
    let mut s = serde_json::to_string(v).map_err(|error| Error::Json { error })?;
    s.push('\n');
    Ok(s)
}
