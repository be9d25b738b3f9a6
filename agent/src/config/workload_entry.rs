//! `networking.istio.io` WorkloadEntry: the workloads zgate knows by name,
//! with the labels that selectors match and the service account that makes
//! their identity.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use super::{
    k8s::{self, is_dns1123_subdomain, FieldError, Node},
    Invalid,
};
use crate::{identity::SpiffeId, policy::PolicyKey};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WorkloadEntry {
    pub namespace: String,
    pub name: String,
    /// `spec.address`. zgate needs an IP: a host name is an error.
    pub address: Option<IpAddr>,
    /// `spec.labels`, what selectors match against.
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccount`, `default` when unset or empty.
    pub service_account: String,
}

// === impl WorkloadEntry ===

impl WorkloadEntry {
    /// `namespace/name` (a WorkloadEntry, not a policy, but the same shape).
    pub fn key(&self) -> PolicyKey {
        PolicyKey::new(self.namespace.clone(), self.name.clone())
    }

    /// The SPIFFE identity the workload's certificate carries.
    pub fn identity(&self, trust_domain: &str) -> SpiffeId {
        SpiffeId::new(trust_domain, &self.namespace, &self.service_account)
    }
}

impl fmt::Display for WorkloadEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Reads `metadata` and `spec.{address,labels,serviceAccount}`; the other
/// spec fields (ports, network, locality, weight) do not matter for L4
/// authorization and are ignored.
pub(super) fn parse(object: &Node<'_>) -> Result<WorkloadEntry, FieldError> {
    let metadata = k8s::metadata(object)?;
    let spec = object.field("spec")?;
    let field = |key: &str| {
        spec.as_ref()
            .map(|s| s.field(key))
            .transpose()
            .map(Option::flatten)
    };
    let address = match field("address")? {
        None => None,
        Some(n) => {
            let text = n.str()?;
            let ip = text.parse::<IpAddr>().map_err(|_| {
                n.error(Invalid::NotAnIp {
                    value: text.to_owned(),
                })
            })?;
            Some(ip.to_canonical())
        }
    };
    let labels = field("labels")?
        .map(|n| n.string_map())
        .transpose()?
        .unwrap_or_default();
    // It becomes part of a SPIFFE identity: a Kubernetes name, as enrolment
    // and the CA require.
    let service_account = match field("serviceAccount")? {
        Some(n) if !n.str()?.is_empty() => {
            let sa = n.str()?;
            if !is_dns1123_subdomain(sa) {
                return Err(n.error(Invalid::NotAName {
                    value: sa.to_owned(),
                }));
            }
            sa.to_owned()
        }
        _ => "default".to_owned(),
    };
    Ok(WorkloadEntry {
        namespace: metadata.namespace,
        name: metadata.name,
        address,
        labels,
        service_account,
    })
}
