//! `metadata.creationTimestamp`, which decides between PeerAuthentications
//! at the same level (the oldest wins).

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(in crate::config) struct Timestamp {
    seconds: i64,
    nanos: u32,
}

// === impl Timestamp ===

impl Timestamp {
    /// RFC 3339 (`2024-01-02T03:04:05Z`, optional fraction and offset), as
    /// Kubernetes writes `metadata.creationTimestamp`.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let seps = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
        if b.len() < 20
            || seps.iter().any(|&(i, c)| b[i] != c)
            || !matches!(b[10], b'T' | b't' | b' ')
        {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<i64> {
            let t = s.get(from..to)?;
            t.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| t.parse().ok())?
        };
        let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
        let mut rest = s.get(19..)?;
        let mut nanos = 0u32;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if !(1..=9).contains(&digits) {
                return None;
            }
            let scaled = format!("{:0<9}", &frac[..digits]);
            nanos = scaled.parse().ok()?;
            rest = &frac[digits..];
        }
        let offset = match rest.as_bytes() {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
                let h = num(s.len() - 5, s.len() - 3)?;
                let m = num(s.len() - 2, s.len())?;
                let o = h * 3600 + m * 60;
                if *sign == b'-' {
                    -o
                } else {
                    o
                }
            }
            _ => return None,
        };
        let valid = (1..=12).contains(&month)
            && (1..=days_in_month(year, month)).contains(&day)
            && hour < 24
            && minute < 60
            && second <= 60;
        if !valid {
            return None;
        }
        let days = days_from_civil(year, month, day);
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
        Some(Self { seconds, nanos })
    }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_order_by_instant() {
        let a = Timestamp::parse("2024-01-02T03:04:05Z").unwrap();
        let b = Timestamp::parse("2024-01-02T04:04:05+01:00").unwrap();
        let c = Timestamp::parse("2024-01-02T03:04:05.5Z").unwrap();
        assert_eq!(a, b);
        assert!(a < c);
        assert_eq!(Timestamp::parse("1970-01-01T00:00:00Z").unwrap().seconds, 0);
        assert_eq!(
            Timestamp::parse("2000-03-01T00:00:00Z").unwrap().seconds,
            951_868_800
        );
        for bad in [
            "2024-02-30T00:00:00Z",
            "2024-01-02 03:04:05",
            "yesterday",
            "2024-01-02T03:04:05.Z",
        ] {
            assert_eq!(Timestamp::parse(bad), None, "{bad}");
        }
    }
}
