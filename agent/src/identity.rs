//! SPIFFE identities as Istio writes them: `spiffe://<td>/ns/<ns>/sa/<sa>`.

use std::{fmt, str::FromStr};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("identity {0:?} does not start with spiffe://")]
    Scheme(String),
    #[error("identity {0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    Shape(String),
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// The identity without `spiffe://`, as `principals` are matched.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// Checks that the URI form parses back to this very identity: a field
    /// that is empty or contains `/` would make a certificate's URI SAN name
    /// someone else (or no one), so such an identity is never issued.
    pub fn check_round_trip(&self) -> Result<(), Error> {
        let uri = self.to_string();
        match uri.parse::<Self>() {
            Ok(parsed) if parsed == *self => Ok(()),
            _ => Err(Error::Shape(uri)),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for SpiffeId {
    type Err = Error;

    /// ztunnel's `Identity::from_str`: the `spiffe://` prefix, then exactly
    /// five `/`-separated segments with `ns` and `sa` in place.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| Error::Scheme(s.to_owned()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(Self::new(td, ns, sa))
            }
            _ => Err(Error::Shape(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_identities() {
        let id: SpiffeId = "spiffe://cluster.local/ns/foo/sa/bar".parse().unwrap();
        assert_eq!(id, SpiffeId::new("cluster.local", "foo", "bar"));
        assert_eq!(id.principal(), "cluster.local/ns/foo/sa/bar");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/foo/sa/bar");
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "cluster.local/ns/foo/sa/bar",
            "spiffe://cluster.local/ns/foo",
            "spiffe://cluster.local/ns/foo/sa/bar/extra",
            "spiffe://cluster.local/xx/foo/sa/bar",
            "spiffe:///ns/foo/sa/bar",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }

    /// Found by the `compile_differential` fuzz target: the compiled maps
    /// give an identity no policy names the bits of one whose namespace is
    /// non-empty (`namespaces: ["*"]` holds), so no identity with an empty
    /// field may ever reach them.
    #[test]
    fn empty_fields_never_parse() {
        for bad in [
            "spiffe://cluster.local/ns//sa/bar",
            "spiffe://cluster.local/ns/foo/sa/",
            "spiffe:///ns//sa/",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
        assert!(SpiffeId::new("td", "", "sa").check_round_trip().is_err());
    }

    #[test]
    fn round_trip_check_refuses_fields_that_change_the_uri() {
        assert_eq!(SpiffeId::new("td", "ns", "sa").check_round_trip(), Ok(()));
        for bad in [
            SpiffeId::new("td", "ns/sa/x", "y"),
            SpiffeId::new("td", "", "sa"),
            SpiffeId::new("td/ns/a/sa/b", "ns", "sa"),
        ] {
            assert!(bad.check_round_trip().is_err(), "{bad:?}");
        }
    }
}
