//! Kubernetes resource quantities (`100m`, `64Mi`, `1.5`, `2e3`), checked
//! here so that a bad annotation is refused with its name instead of by the
//! API server with a message about a container the user never wrote.

/// A quantity as written, and its value in base units (cores, bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct Quantity {
    pub text: String,
    pub value: f64,
}

/// Parses the API's quantity grammar: a decimal number with an optional
/// binary (`Ki`…`Ei`), decimal (`m`, `k`, `M`…`E`) or exponent (`e3`)
/// suffix. Negative quantities are refused: no resource can be negative.
pub fn parse(v: &str) -> Result<Quantity, String> {
    let text = v.trim();
    let bad = || format!("{text:?} is not a quantity (examples: 100m, 0.5, 64Mi, 1Gi)");
    let number_len = text
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && c == '+')))
        .map_or(text.len(), |(i, _)| i);
    let (number, suffix) = text.split_at(number_len);
    let digits = number.strip_prefix('+').unwrap_or(number);
    if digits.is_empty() || digits == "." || digits.matches('.').count() > 1 {
        return Err(bad());
    }
    let mantissa: f64 = digits.parse().map_err(|_| bad())?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e = &exp[1..];
            let e = e.strip_prefix('+').unwrap_or(e);
            let valid = !e.is_empty()
                && e.strip_prefix('-')
                    .unwrap_or(e)
                    .chars()
                    .all(|c| c.is_ascii_digit());
            let e: i32 = e.parse().ok().filter(|_| valid).ok_or_else(bad)?;
            10f64.powi(e)
        }
        _ => return Err(bad()),
    };
    let value = mantissa * scale;
    // The API caps quantities far below this; an exponent such as 2e2420
    // overflows to infinity (found by fuzzing).
    if !value.is_finite() {
        return Err(format!("{text:?} is too large for a quantity"));
    }
    Ok(Quantity {
        text: text.to_string(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_api_grammar() {
        for (text, value) in [
            ("100m", 0.1),
            ("1", 1.0),
            ("1.5", 1.5),
            ("+2", 2.0),
            (".5", 0.5),
            ("64Mi", 64.0 * 1024.0 * 1024.0),
            ("1Gi", 1024.0 * 1024.0 * 1024.0),
            ("128M", 128e6),
            ("2e3", 2000.0),
            ("5E-1", 0.5),
            ("0", 0.0),
        ] {
            let q = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!((q.value - value).abs() < 1e-9 * value.max(1.0), "{text}");
            assert_eq!(q.text, text);
        }
    }

    #[test]
    fn refuses_what_the_api_refuses() {
        for bad in [
            "", "lots", "-1", "1.2.3", "10mb", "1 Gi", "Mi", ".", "1e", "1e+", "2ki", "0x10",
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains("is not a quantity"), "{bad}: {error}");
        }
        // Found by fuzzing: an exponent that overflows.
        let error = parse("2e2420").unwrap_err();
        assert!(error.contains("too large"), "{error}");
    }
}
