//! Kubernetes resource quantities (`500m`, `16Gi`, `1.5`, `1e3`, `8`), parsed exactly into integer
//! milli-units.
//!
//! Invariant: capacity arithmetic never touches floats. A quantity is an `i128` count of
//! thousandths of its unit (cores, bytes, GPUs), so `1Ei` of memory and `1m` of CPU both fit, and a
//! fraction finer than a milli-unit rounds up, as the API server's `MilliValue` does.

use std::fmt;
use std::str::FromStr;

/// A resource amount in thousandths of its unit (`cpu: 500m` is 500, `memory: 1Ki` is 1,024,000).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(i128);

impl Quantity {
    pub const ZERO: Quantity = Quantity(0);

    pub fn from_milli(milli: i128) -> Quantity {
        Quantity(milli)
    }

    /// A whole number of units (`Quantity::from_units(8)` is `8` GPUs).
    pub fn from_units(units: i64) -> Quantity {
        Quantity(i128::from(units) * 1000)
    }

    pub fn milli(self) -> i128 {
        self.0
    }

    /// Whole units, rounded down (1500m → 1).
    pub fn units(self) -> i128 {
        self.0.div_euclid(1000)
    }
}

/// Why a string is not a quantity; the caller adds which object and field it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAQuantity;

impl FromStr for Quantity {
    type Err = NotAQuantity;

    fn from_str(s: &str) -> Result<Quantity, NotAQuantity> {
        parse(s.trim()).ok_or(NotAQuantity)
    }
}

/// The grammar of `k8s.io/apimachinery/pkg/api/resource`: sign, digits with an optional decimal
/// point, then one suffix: binary (`Ki`..`Ei`), decimal (`m`, `k`, `M`..`E`) or an exponent
/// (`e3`, `E-2`).
fn parse(s: &str) -> Option<Quantity> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
    let (number, suffix) = rest.split_at(number_len);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') || whole.len() + frac.len() > 30 {
        return None;
    }
    let mut mantissa: i128 = 0;
    for b in whole.bytes().chain(frac.bytes()) {
        mantissa = mantissa.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    // value = mantissa × 10^(exp10 − frac digits) × 2^exp2, in units; ×10^3 for milli-units.
    let (exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 3 {
                return None;
            }
            (exponent.parse::<i32>().ok()?, 0)
        }
    };
    let scaled = mantissa.checked_mul(1i128.checked_shl(exp2)?)?;
    let shift = exp10 + 3 - i32::try_from(frac.len()).ok()?;
    let milli = if shift >= 0 {
        scaled.checked_mul(10i128.checked_pow(u32::try_from(shift).ok()?)?)?
    } else {
        let divisor = 10i128.checked_pow(shift.unsigned_abs()).unwrap_or(i128::MAX);
        // Round away from zero, as MilliValue does for what is finer than a milli-unit.
        scaled / divisor + i128::from(scaled % divisor != 0)
    };
    Some(Quantity(if negative { -milli } else { milli }))
}

/// A short human form, unit-agnostic: whole units when exact, else milli-units (`1500m`).
impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

/// `amount` of resource `name` as a person reads it: memory-like resources in binary units
/// (`40Gi`), CPU in cores or millicores, everything else as a plain count.
pub fn human(name: &str, amount: Quantity) -> String {
    let bytes_like = name == "memory" || name == "ephemeral-storage" || name.starts_with("hugepages-");
    if bytes_like && amount.0 % 1000 == 0 {
        return human_bytes(u64::try_from(amount.units()).unwrap_or(0));
    }
    amount.to_string()
}

/// Bytes with a binary suffix and one decimal (`4.1Gi`), exact below 1 KiB (`512B`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut unit = 0;
    let mut scale: u128 = 1024;
    while unit + 1 < UNITS.len() && u128::from(bytes) >= scale * 1024 {
        scale *= 1024;
        unit += 1;
    }
    // One decimal, rounded half up, in integer arithmetic.
    let tenths = (u128::from(bytes) * 10 + scale / 2) / scale;
    if tenths.is_multiple_of(10) {
        format!("{}{}", tenths / 10, UNITS[unit])
    } else {
        format!("{}.{}{}", tenths / 10, tenths % 10, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> i128 {
        s.parse::<Quantity>().unwrap_or_else(|_| panic!("{s:?} should parse")).milli()
    }

    #[test]
    fn parses_the_forms_kubectl_prints() {
        let cases: &[(&str, i128)] = &[
            ("8", 8_000),
            ("0", 0),
            ("500m", 500),
            ("1.5", 1_500),
            ("0.1", 100),
            (".5", 500),
            ("2k", 2_000_000),
            ("1M", 1_000_000_000),
            ("3G", 3_000_000_000_000),
            ("1Ki", 1_024_000),
            ("16Gi", 16 * (1 << 30) * 1000),
            ("1.5Gi", 3 * (1 << 29) * 1000),
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("2.5e-3", 3), // 2.5m rounds up to 3m
            ("1E", 1_000_000_000_000_000_000_000),
            ("1Ei", (1i128 << 60) * 1000),
            ("+4", 4_000),
            ("-1", -1_000),
            ("  7  ", 7_000),
        ];
        for (input, want) in cases {
            assert_eq!(q(input), *want, "{input}");
        }
        assert_eq!(q("1Ti"), (1i128 << 40) * 1000);
        assert_eq!(q("100Mi"), 100 * (1 << 20) * 1000);
    }

    #[test]
    fn rejects_what_is_not_a_quantity() {
        for bad in ["", "two", "1.2.3", "5 Gi", "Gi", "1gi", "1KB", "1e", "1e+", "m", "-", "1.5.", "1e9999", "1Zi", "0x10"] {
            assert!(bad.parse::<Quantity>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn human_forms() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1024), "1Ki");
        assert_eq!(human_bytes(4_402_341_478), "4.1Gi");
        assert_eq!(human("memory", Quantity::from_milli(q("64Gi"))), "64Gi");
        assert_eq!(human("cpu", Quantity::from_milli(q("1500m"))), "1500m");
        assert_eq!(human("nvidia.com/gpu", Quantity::from_units(2)), "2");
    }
}
