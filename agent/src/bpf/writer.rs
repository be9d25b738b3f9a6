//! Writes a compiled policy generation into the maps, atomically: all of
//! the new generation's entries first, then the one-word flip of
//! `ZG_CONFIG`, then the old generation's entries are deleted. A failure
//! before the flip (a full map) removes what was written and leaves the
//! previous generation enforced.

use aya::maps::{lpm_trie::Key, Array, MapData, MapError};
use zgate_common::{
    config::Config,
    policy::{
        ip_key, IdentityBitsKey, PolicySetKey, PortBitsKey, TermKey, WorkloadPolicyKey, DIM_DST_IP,
        DIM_SRC_IP, IP_KEY_FIXED_BITS,
    },
    Addr,
};

use super::{Error, PolicyMaps};
use crate::{
    compile::{Compiled, IpDim},
    identity::SpiffeId,
};

/// Tracks the active generation.
#[derive(Debug)]
pub struct PolicyWriter {
    generation: u32,
    /// What every generation's `ZG_CONFIG` carries besides the generation.
    base: Config,
}

impl PolicyWriter {
    /// Start from whatever generation the (possibly adopted) config map
    /// holds, so a restarted agent never reuses the live generation.
    /// `outbound` is the agent's outbound listener (`None`: no capture).
    pub fn new(
        config: &Array<MapData, Config>,
        conn_limit: u32,
        outbound: Option<std::net::SocketAddr>,
    ) -> Self {
        let generation = config.get(&0, 0).map(|c| c.generation).unwrap_or(0);
        let (outbound, outbound_port) =
            outbound.map_or((Addr::default(), 0), |a| (Addr::from(a.ip()), a.port()));
        Self {
            generation,
            base: Config {
                generation,
                conn_limit,
                outbound,
                outbound_port,
                _pad: [0; 2],
            },
        }
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Delete every entry of a generation that is not the live one: what a
    /// previous agent killed mid-update left half-written. Its next write
    /// would reuse that generation number and must start from nothing.
    pub fn discard_unfinished(&self, maps: &mut PolicyMaps) -> Result<(), Error> {
        let live = self.generation;
        retain(maps, |g| g == live)
    }

    /// Write `compiled` as the next generation and make it the live one.
    pub fn apply(
        &mut self,
        maps: &mut PolicyMaps,
        config: &mut Array<MapData, Config>,
        compiled: &Compiled,
    ) -> Result<u32, Error> {
        let next = match self.generation.wrapping_add(1) {
            0 => 1,
            g => g,
        };
        if let Err(e) = write(maps, compiled, next) {
            // Best effort: the live generation is untouched either way.
            let _ = retain(maps, |g| g != next);
            return Err(e);
        }
        config
            .set(
                0,
                Config {
                    generation: next,
                    ..self.base
                },
                0,
            )
            .map_err(|source| Error::Map {
                name: "ZG_CONFIG",
                source,
            })?;
        self.generation = next;
        retain(maps, |g| g == next)?;
        Ok(next)
    }

    /// Add the entries of an identity that appeared after the live
    /// generation was compiled (a new workload, an authenticated peer).
    pub fn add_identity(
        &self,
        maps: &mut PolicyMaps,
        compiled: &Compiled,
        identity: u32,
        id: &SpiffeId,
    ) -> Result<(), Error> {
        for (set, cs) in compiled.sets.iter().enumerate() {
            if let Some(bits) = cs.identity(id) {
                let key = IdentityBitsKey {
                    generation: self.generation,
                    set: set as u32,
                    identity,
                    _pad: 0,
                };
                insert(maps.identity_bits.insert(key, bits, 0), "ZG_ID_BITS")?;
            }
        }
        Ok(())
    }
}

fn write(maps: &mut PolicyMaps, compiled: &Compiled, generation: u32) -> Result<(), Error> {
    for (workload, set) in &compiled.workload_sets {
        let key = WorkloadPolicyKey {
            generation,
            workload: *workload,
        };
        insert(maps.workload_policy.insert(key, set, 0), "ZG_WL_POLICY")?;
    }
    for (set, cs) in compiled.sets.iter().enumerate() {
        let set = set as u32;
        let key = PolicySetKey { generation, set };
        insert(maps.sets.insert(key, cs.info, 0), "ZG_POLICY_SETS")?;
        for (identity, bits) in &cs.identity_bits {
            let key = IdentityBitsKey {
                generation,
                set,
                identity: *identity,
                _pad: 0,
            };
            insert(maps.identity_bits.insert(key, bits, 0), "ZG_ID_BITS")?;
        }
        for (port, bits) in &cs.port_bits {
            let key = PortBitsKey {
                generation,
                set,
                port: *port,
                _pad: [0; 2],
            };
            insert(maps.port_bits.insert(key, bits, 0), "ZG_PORT_BITS")?;
        }
        for entry in &cs.ip_bits {
            let dim = match entry.dim {
                IpDim::Source => DIM_SRC_IP,
                IpDim::Destination => DIM_DST_IP,
            };
            let addr = Addr::from(entry.net.network());
            let key = Key::new(
                IP_KEY_FIXED_BITS + u32::from(entry.net.prefix_len()),
                ip_key(generation, set, dim, &addr),
            );
            insert(maps.ip_bits.insert(&key, entry.bits, 0), "ZG_IP_BITS")?;
        }
        for (term, info) in cs.terms.iter().enumerate() {
            let key = TermKey {
                generation,
                set,
                term: term as u32,
            };
            insert(maps.terms.insert(key, info, 0), "ZG_TERMS")?;
        }
    }
    Ok(())
}

/// Delete every policy entry whose generation fails `keep`.
fn retain(maps: &mut PolicyMaps, keep: impl Fn(u32) -> bool) -> Result<(), Error> {
    macro_rules! sweep {
        ($map:expr, $name:literal, |$k:ident| $gen:expr) => {{
            let stale: Vec<_> = $map
                .keys()
                .filter_map(Result::ok)
                .filter(|$k| !keep($gen))
                .collect();
            for k in stale {
                match $map.remove(&k) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(source) => {
                        return Err(Error::Map {
                            name: $name,
                            source,
                        })
                    }
                }
            }
        }};
    }
    sweep!(maps.workload_policy, "ZG_WL_POLICY", |k| k.generation);
    sweep!(maps.sets, "ZG_POLICY_SETS", |k| k.generation);
    sweep!(maps.identity_bits, "ZG_ID_BITS", |k| k.generation);
    sweep!(maps.port_bits, "ZG_PORT_BITS", |k| k.generation);
    sweep!(maps.terms, "ZG_TERMS", |k| k.generation);
    sweep!(maps.ip_bits, "ZG_IP_BITS", |k| k.data().generation);
    Ok(())
}

fn insert(result: Result<(), MapError>, name: &'static str) -> Result<(), Error> {
    result.map_err(|source| Error::Map { name, source })
}
