//! A userspace model of the kernel's look-ups over a compiled generation:
//! the same keys, defaults and longest-prefix match the eBPF programs use,
//! then the shared `decide`. The differential tests hold it against the
//! reference evaluator; `zgate check --agent` and the re-check of
//! established connections after a policy update use it as the kernel's
//! verdict.

use std::net::IpAddr;

use zgate_common::policy::{decide, Decision, TermBits, IDENTITY_NONE};

use super::{plan::canonical, Compiled, CompiledSet, Identities, IpDim};
use crate::identity::SpiffeId;

impl Compiled {
    /// The kernel's verdict for a connection to `workload`, or `None` when
    /// the workload has no compiled set (the kernel then fails closed).
    /// `identity` is a numeric identity, `IDENTITY_NONE` for plaintext.
    pub fn lookup(
        &self,
        workload: u32,
        identity: u32,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
    ) -> Option<Decision> {
        self.lookup_with(workload, src, dst, port, |set| {
            if identity == IDENTITY_NONE {
                set.info.identity_plaintext
            } else {
                *set.identity_bits
                    .get(&identity)
                    .unwrap_or(&set.info.identity_default)
            }
        })
    }

    /// `lookup` for an identity by name, which need not have a number yet:
    /// the entries the agent would add for it are computed on the fly.
    pub fn lookup_spiffe(
        &self,
        workload: u32,
        identity: Option<&SpiffeId>,
        identities: &Identities,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
    ) -> Option<Decision> {
        match identity.map(|id| (id, identities.id(id))) {
            None => self.lookup(workload, IDENTITY_NONE, src, dst, port),
            Some((_, Some(n))) => self.lookup(workload, n, src, dst, port),
            Some((id, None)) => self.lookup_with(workload, src, dst, port, |set| {
                set.identity(id).unwrap_or(set.info.identity_default)
            }),
        }
    }

    fn lookup_with(
        &self,
        workload: u32,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
        identity_bits: impl FnOnce(&CompiledSet) -> TermBits,
    ) -> Option<Decision> {
        let set = self
            .sets
            .get(*self.workload_sets.get(&workload)? as usize)?;
        let id_bits = identity_bits(set);
        let port_bits = set.port_bits.get(&port).unwrap_or(&set.info.port_default);
        let src_bits = set.longest_prefix(IpDim::Source, canonical(src))?;
        let dst_bits = set.longest_prefix(IpDim::Destination, canonical(dst))?;
        Some(decide(&set.info, &id_bits, port_bits, src_bits, dst_bits))
    }
}

impl CompiledSet {
    fn longest_prefix(&self, dim: IpDim, addr: IpAddr) -> Option<&TermBits> {
        self.ip_bits
            .iter()
            .filter(|e| e.dim == dim && e.net.contains(&addr))
            .max_by_key(|e| e.net.prefix_len())
            .map(|e| &e.bits)
    }
}
