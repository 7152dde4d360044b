//! RFC 3339 timestamps as the TOC dialects write them (`2025-05-28T02:24:19Z`,
//! `2025-05-28T04:24:19.5+02:00`), to and from seconds since the epoch.

use crate::Error;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl Timestamp {
    pub fn parse(s: &str) -> Result<Timestamp, Error> {
        let bad = || Error::malformed("TOC", format!("bad timestamp {:?}", s.chars().take(60).collect::<String>()));
        let b = s.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<i64, Error> {
            let t = s.get(r).ok_or_else(bad)?;
            if !t.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse().map_err(|_| bad())
        };
        let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
            return Err(bad());
        }
        let mut rest = &s[19..];
        let mut nanos = 0u32;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 9 {
                return Err(bad());
            }
            nanos = frac[..digits].parse::<u32>().map_err(|_| bad())? * 10u32.pow(9 - digits as u32);
            rest = &frac[digits..];
        }
        let offset = match rest {
            "Z" | "z" => 0,
            r if r.len() == 6 && (r.starts_with('+') || r.starts_with('-')) && &r[3..4] == ":" => {
                let sign = if r.starts_with('-') { -1 } else { 1 };
                let oh: i64 = r[1..3].parse().map_err(|_| bad())?;
                let om: i64 = r[4..6].parse().map_err(|_| bad())?;
                sign * (oh * 3600 + om * 60)
            }
            _ => return Err(bad()),
        };
        let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset;
        Ok(Timestamp { secs, nanos })
    }

    /// `2025-05-28T02:24:19Z` (with nanoseconds when there are any).
    pub fn to_rfc3339(self) -> String {
        let days = self.secs.div_euclid(86_400);
        let rem = self.secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let frac = if self.nanos == 0 { String::new() } else { format!(".{:09}", self.nanos).trim_end_matches('0').to_string() };
        format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z", rem / 3600, rem % 3600 / 60, rem % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_offsets() {
        let t = Timestamp::parse("2025-05-28T02:24:19Z").expect("parse");
        assert_eq!(t.secs, 1_748_399_059);
        assert_eq!(t.to_rfc3339(), "2025-05-28T02:24:19Z");
        assert_eq!(Timestamp::parse("2025-05-28T04:24:19+02:00").expect("offset"), t);
        let f = Timestamp::parse("1970-01-01T00:00:01.5Z").expect("frac");
        assert_eq!((f.secs, f.nanos), (1, 500_000_000));
        assert_eq!(f.to_rfc3339(), "1970-01-01T00:00:01.5Z");
        assert_eq!(Timestamp::parse("0001-01-01T00:00:00Z").expect("zero time").to_rfc3339(), "0001-01-01T00:00:00Z");
        for bad in
            ["", "2025-13-01T00:00:00Z", "2025-05-28 02:24:19", "2025-05-28T02:24:19", "2025-05-28T02:24:19.Z", "x025-05-28T02:24:19Z"]
        {
            assert!(Timestamp::parse(bad).is_err(), "{bad:?}");
        }
    }
}
