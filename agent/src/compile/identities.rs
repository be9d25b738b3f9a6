//! Numeric ids for identities and policies, stable for the agent's life, so
//! map entries and events can name them with a `u32`.

use std::collections::HashMap;

use zgate_common::policy::IDENTITY_NONE;

use super::trivially_true;
use crate::{
    identity::SpiffeId,
    policy::{PolicyKey, StringMatch},
};

/// Every identity the agent knows (enrolled workloads, WorkloadEntries,
/// authenticated peers), indexed for the compiler's candidate search.
#[derive(Debug, Default)]
pub struct Identities {
    list: Vec<SpiffeId>,
    ids: HashMap<SpiffeId, u32>,
    by_principal: HashMap<String, u32>,
    by_namespace: HashMap<String, Vec<u32>>,
    by_account: HashMap<(String, String), Vec<u32>>,
}

impl Identities {
    /// The id of `id`, assigning the next one (ids start at 1; 0 is
    /// `IDENTITY_NONE`, plaintext).
    pub fn intern(&mut self, id: &SpiffeId) -> u32 {
        if let Some(n) = self.ids.get(id) {
            return *n;
        }
        self.list.push(id.clone());
        let n = self.list.len() as u32;
        self.ids.insert(id.clone(), n);
        self.by_principal.insert(id.principal(), n);
        self.by_namespace
            .entry(id.namespace.clone())
            .or_default()
            .push(n);
        self.by_account
            .entry((id.namespace.clone(), id.service_account.clone()))
            .or_default()
            .push(n);
        n
    }

    pub fn id(&self, id: &SpiffeId) -> Option<u32> {
        self.ids.get(id).copied()
    }

    pub fn get(&self, n: u32) -> Option<&SpiffeId> {
        if n == IDENTITY_NONE {
            return None;
        }
        self.list.get(n as usize - 1)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Ids of the identities for which `m`, applied to `field(identity)`,
    /// holds — except when it holds for every identity (presence, empty
    /// prefix/suffix), which the generic bits already cover.
    pub(super) fn matching(
        &self,
        m: &StringMatch,
        field: impl Fn(&SpiffeId) -> String,
    ) -> Vec<u32> {
        if trivially_true(m) {
            return Vec::new();
        }
        let scan = |pred: &dyn Fn(&str) -> bool| -> Vec<u32> {
            self.list
                .iter()
                .zip(1..)
                .filter(|(id, _)| pred(&field(id)))
                .map(|(_, n)| n)
                .collect()
        };
        match m {
            StringMatch::Exact(v) => {
                let by_principal = self.by_principal.get(v).copied();
                let in_ns = self.by_namespace.get(v).cloned().unwrap_or_default();
                // The index cannot tell which field `field` reads, so keep
                // the ones for which it really holds.
                by_principal
                    .into_iter()
                    .chain(in_ns)
                    .filter(|n| self.get(*n).is_some_and(|id| field(id) == *v))
                    .collect()
            }
            StringMatch::Prefix(p) => scan(&|s| s.starts_with(p.as_str())),
            StringMatch::Suffix(p) => scan(&|s| s.ends_with(p.as_str())),
            StringMatch::Presence => Vec::new(),
        }
    }

    pub(super) fn with_account(&self, namespace: &str, account: &str) -> Vec<u32> {
        self.by_account
            .get(&(namespace.to_owned(), account.to_owned()))
            .cloned()
            .unwrap_or_default()
    }
}

/// Numeric ids for policy keys, reported back in verdict events.
#[derive(Debug, Default)]
pub struct PolicyIds {
    keys: Vec<PolicyKey>,
    ids: HashMap<PolicyKey, u32>,
}

impl PolicyIds {
    pub fn intern(&mut self, key: &PolicyKey) -> u32 {
        if let Some(n) = self.ids.get(key) {
            return *n;
        }
        let n = self.keys.len() as u32;
        self.keys.push(key.clone());
        self.ids.insert(key.clone(), n);
        n
    }

    pub fn key(&self, n: u32) -> Option<&PolicyKey> {
        self.keys.get(n as usize)
    }
}
