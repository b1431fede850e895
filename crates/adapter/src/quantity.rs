//! Metric values as Kubernetes Quantities. OAP answers decimal strings (MQE, sometimes in
//! Java's exponent form such as `1.5E-4`) or integers (metrics v2); the HPA reads
//! `MilliValue()`. A value is written exactly, with the largest suffix that keeps it
//! exact: `12`, `1500m`, `250u`, `3n`; digits below a nano are rounded half away from zero.

/// Why a value is not a number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a decimal number")]
pub struct NotANumber(pub String);

/// The value in nano-units, from a decimal string (optionally signed, optionally with an
/// exponent).
pub fn parse_nanos(text: &str) -> Result<i128, NotANumber> {
    let fail = || NotANumber(text.to_string());
    let trimmed = text.trim();
    let (negative, unsigned) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (
            &unsigned[..at],
            unsigned[at + 1..].parse::<i32>().map_err(|_| fail())?,
        ),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(fail());
    }
    // All digits as one integer, and where the decimal point sits after scaling to nanos.
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    let shift = 9 + exponent - i32::try_from(fraction.len()).map_err(|_| fail())?;
    if digits.len() > 30 || shift > 20 {
        return Err(fail());
    }
    let mut value: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| fail())?
    };
    if shift >= 0 {
        value *= 10i128.pow(shift.unsigned_abs());
    } else {
        let divisor = 10i128
            .checked_pow(shift.unsigned_abs())
            .unwrap_or(i128::MAX);
        let (quotient, remainder) = (value / divisor, value % divisor);
        value = quotient + i128::from(remainder * 2 >= divisor);
    }
    Ok(if negative { -value } else { value })
}

/// A nano-unit value as a Quantity string.
pub fn format_nanos(nanos: i128) -> String {
    for (unit, suffix) in [(1_000_000_000, ""), (1_000_000, "m"), (1_000, "u")] {
        if nanos % unit == 0 {
            return format!("{}{suffix}", nanos / unit);
        }
    }
    format!("{nanos}n")
}

/// A decimal string as a Quantity string.
pub fn quantity(text: &str) -> Result<String, NotANumber> {
    parse_nanos(text).map(format_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_exact_size_with_the_largest_exact_suffix() {
        for (text, expected) in [
            ("12", "12"),
            ("0", "0"),
            ("-0", "0"),
            ("1.5", "1500m"),
            ("0.25", "250m"),
            ("6.000", "6"),
            ("0.00025", "250u"),
            ("0.000000003", "3n"),
            ("1.5E-4", "150u"),
            ("2.5e3", "2500"),
            ("-7.125", "-7125m"),
            ("+3", "3"),
            (".5", "500m"),
            ("9223372036854775807", "9223372036854775807"),
        ] {
            assert_eq!(quantity(text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn digits_below_a_nano_are_rounded_half_away_from_zero() {
        assert_eq!(quantity("0.0000000015").unwrap(), "2n");
        assert_eq!(quantity("0.0000000014").unwrap(), "1n");
        assert_eq!(quantity("-0.0000000015").unwrap(), "-2n");
        assert_eq!(quantity("1E-30").unwrap(), "0");
    }

    #[test]
    fn what_is_not_a_number_is_refused() {
        for bad in [
            "", "-", "abc", "1.2.3", "NaN", "Infinity", "1e", "1e999", "0x10",
        ] {
            assert!(quantity(bad).is_err(), "{bad}");
        }
    }
}
