//! The node's place in the mesh: which workload addresses are here and
//! which are on other nodes, and the certificates of the workloads
//! enrolled here.
//!
//! How addresses map to nodes: every WorkloadEntry `spec.address` that is
//! one of this network namespace's interface addresses, or the address of
//! a workload enrolled here (`zgate run --address`, else its WorkloadEntry
//! by namespace and name), is local; every other WorkloadEntry address is
//! a workload on another node, reached over HBONE at `<address>:15008`.
//!
//! The state task owns [`Certs`] and publishes a [`MeshView`] after each
//! change; the proxy tasks read the latest view without locking.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::SystemTime,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use rustls::{RootCertStore, ServerConfig};
use zgate_common::{redirect::RemoteWorkload, Addr};

use crate::{
    ca::{self, CertificateAuthority},
    compile::Identities,
    config::MeshConfig,
    identity::SpiffeId,
    tls::{self, WorkloadCert},
    workload::{Registry, Workload},
};

/// What the proxies need to know, as of the last change.
pub(super) struct MeshView {
    /// The mesh's trust anchors.
    pub roots: Arc<RootCertStore>,
    /// Enrolled workload id → the certificate its connections present.
    pub certs: HashMap<u32, Arc<WorkloadCert>>,
    /// Local workload address → the HBONE server config presenting that
    /// workload's certificate.
    pub local: HashMap<IpAddr, Arc<ServerConfig>>,
    /// Remote workload address → the identity it must present.
    pub remote: HashMap<IpAddr, SpiffeId>,
}

/// The node CA and the current SVID of each identity enrolled here.
pub(super) struct Certs {
    ca: CertificateAuthority,
    roots: Arc<RootCertStore>,
    issued: HashMap<SpiffeId, Issued>,
}

/// One identity's certificate, served by every config built for it.
#[derive(Clone)]
pub(super) struct Issued {
    pub cert: Arc<WorkloadCert>,
    pub server: Arc<ServerConfig>,
    refresh_at: SystemTime,
    not_after: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the node CA: {0}")]
    Ca(#[from] ca::Error),
    #[error("the workload TLS config: {0}")]
    Tls(#[from] tls::Error),
}

// === impl Certs ===

impl Certs {
    pub fn new(ca: CertificateAuthority) -> Result<Self, Error> {
        let roots = tls::mesh_roots([ca.root()])?;
        Ok(Self {
            ca,
            roots,
            issued: HashMap::new(),
        })
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        Arc::clone(&self.roots)
    }

    pub fn get(&self, id: &SpiffeId) -> Option<&Issued> {
        self.issued.get(id)
    }

    /// Issue SVIDs for the identities in `wanted` that have none, and
    /// forget those of identities no longer enrolled here: the CA issues
    /// only identities of workloads on this node.
    pub fn sync(&mut self, wanted: &BTreeSet<SpiffeId>) {
        self.issued.retain(|id, _| wanted.contains(id));
        for id in wanted {
            if self.issued.contains_key(id) {
                continue;
            }
            match self.issue(id) {
                Ok(issued) => {
                    self.issued.insert(id.clone(), issued);
                }
                Err(e) => tracing::error!(identity = %id, "cannot issue a certificate: {e}"),
            }
        }
    }

    /// Renew every SVID past its refresh time. Handshakes from now on
    /// present the new one; established connections are untouched.
    pub fn rotate_due(&mut self, now: SystemTime) {
        for (id, issued) in &mut self.issued {
            if issued.refresh_at > now {
                continue;
            }
            let renewed = self.ca.issue(id).map_err(Error::from).and_then(|svid| {
                issued.cert.rotate(&svid)?;
                Ok(svid)
            });
            match renewed {
                Ok(svid) => {
                    issued.refresh_at = svid.refresh_at();
                    issued.not_after = svid.not_after();
                    tracing::info!(
                        identity = %id,
                        valid_secs = valid_secs(&svid),
                        "rotated the certificate"
                    );
                }
                Err(e) => tracing::error!(identity = %id, "cannot rotate the certificate: {e}"),
            }
        }
    }

    fn issue(&self, id: &SpiffeId) -> Result<Issued, Error> {
        let svid = self.ca.issue(id)?;
        let cert = WorkloadCert::new(&svid)?;
        let server = tls::server_config(self.roots(), Arc::clone(&cert))?;
        tracing::info!(
            identity = %id,
            valid_secs = valid_secs(&svid),
            "issued a certificate"
        );
        Ok(Issued {
            cert,
            server,
            refresh_at: svid.refresh_at(),
            not_after: svid.not_after(),
        })
    }

    /// Each issued identity and when its current certificate expires.
    pub fn expiries(&self) -> Vec<(SpiffeId, SystemTime)> {
        let mut out: Vec<_> = self
            .issued
            .iter()
            .map(|(id, i)| (id.clone(), i.not_after))
            .collect();
        out.sort();
        out
    }
}

/// Bring the mesh data path in line with the enrolled workloads and the
/// inventory: certificates for the identities enrolled here (and only
/// those), `ZG_REMOTE` for the workloads on other nodes; returns the view
/// the proxies should see from now on.
pub(super) fn sync(
    certs: &mut Certs,
    registry: &Registry,
    mesh: &MeshConfig,
    identities: &mut Identities,
    remote_map: &mut BpfHashMap<MapData, Addr, RemoteWorkload>,
) -> MeshView {
    let wanted: BTreeSet<_> = registry.workloads().map(|w| w.identity.clone()).collect();
    certs.sync(&wanted);
    let mut local = node_addresses();
    let mut by_workload = HashMap::new();
    let mut servers = HashMap::new();
    for wl in registry.workloads() {
        let address = address_of(mesh, wl);
        local.extend(address);
        let Some(issued) = certs.get(&wl.identity) else {
            continue;
        };
        by_workload.insert(wl.id, Arc::clone(&issued.cert));
        if let Some(ip) = address {
            servers.insert(ip, Arc::clone(&issued.server));
        }
    }
    let td = &mesh.options().trust_domain;
    let remote: HashMap<IpAddr, SpiffeId> = mesh
        .workloads()
        .iter()
        .filter_map(|e| {
            let ip = e.address?;
            (!local.contains(&ip)).then(|| (ip, e.identity(td)))
        })
        .collect();
    sync_remote(remote_map, &remote, identities);
    MeshView {
        roots: certs.roots(),
        certs: by_workload,
        local: servers,
        remote,
    }
}

/// The workload's own IP: `zgate run --address`, else its WorkloadEntry's
/// (same namespace and name).
fn address_of(mesh: &MeshConfig, wl: &Workload) -> Option<IpAddr> {
    wl.spec.address.or_else(|| {
        mesh.workload(&wl.spec.namespace, &wl.spec.name)
            .and_then(|e| e.address)
    })
}

/// `ZG_REMOTE` := `remote`.
fn sync_remote(
    map: &mut BpfHashMap<MapData, Addr, RemoteWorkload>,
    remote: &HashMap<IpAddr, SpiffeId>,
    identities: &mut Identities,
) {
    let stale: Vec<Addr> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|a| !remote.contains_key(&IpAddr::from(*a)))
        .collect();
    for addr in stale {
        let _ = map.remove(&addr);
    }
    for (ip, id) in remote {
        let identity = identities.intern(id);
        if let Err(e) = map.insert(Addr::from(*ip), RemoteWorkload { identity }, 0) {
            tracing::error!(addr = %ip, "cannot record a remote workload, connections to it leave uncaptured: {e}");
        }
    }
}

/// Seconds until the SVID expires (logged; the key never is).
fn valid_secs(svid: &ca::Svid) -> u64 {
    svid.not_after()
        .duration_since(SystemTime::now())
        .map_or(0, |d| d.as_secs())
}

/// The addresses of this network namespace's interfaces.
pub(super) fn node_addresses() -> BTreeSet<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| {
                let a = a.address?;
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            })
            .map(|ip| ip.to_canonical())
            .collect(),
        Err(e) => {
            tracing::error!("cannot list this node's addresses: {e}");
            BTreeSet::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "ns", sa)
    }

    fn certs() -> (Certs, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_generate(dir.path()).unwrap();
        (Certs::new(ca).unwrap(), dir)
    }

    #[test]
    fn issues_only_for_enrolled_identities() {
        let (mut certs, _dir) = certs();
        certs.sync(&[id("sleep")].into());
        assert!(certs.get(&id("sleep")).is_some());
        assert!(certs.get(&id("httpbin")).is_none());
        let first = Arc::clone(&certs.get(&id("sleep")).unwrap().cert);
        certs.sync(&[id("sleep"), id("httpbin")].into());
        // An identity that stays enrolled keeps its certificate.
        assert!(Arc::ptr_eq(&first, &certs.get(&id("sleep")).unwrap().cert));
        certs.sync(&[id("httpbin")].into());
        assert!(certs.get(&id("sleep")).is_none());
        assert!(certs.get(&id("httpbin")).is_some());
    }

    #[test]
    fn rotation_swaps_the_served_certificate_in_place() {
        let (mut certs, _dir) = certs();
        certs.sync(&[id("sleep")].into());
        let issued = certs.get(&id("sleep")).unwrap().clone();
        let before = issued.cert.current();
        certs.rotate_due(SystemTime::now());
        assert!(Arc::ptr_eq(&before, &issued.cert.current()), "not due yet");
        certs.rotate_due(SystemTime::now() + Duration::from_secs(13 * 3600));
        let after = issued.cert.current();
        assert!(!Arc::ptr_eq(&before, &after));
        assert_ne!(before.cert, after.cert);
        // The same `WorkloadCert` (and so every config built on it) serves
        // the new certificate.
        assert!(Arc::ptr_eq(
            &issued.cert,
            &certs.get(&id("sleep")).unwrap().cert
        ));
    }
}
