//! Port lists as users write them in annotations and environment
//! variables: `25,587,3306-3310`, whitespace around items allowed.

use std::collections::BTreeSet;

/// Why a port list could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortListError {
    #[error("{0:?} is not a port from 1 to 65535")]
    NotAPort(String),
    #[error("range {0:?} is backwards")]
    Backwards(String),
}

/// An inclusive range of TCP ports; a single port is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// One item: a port (`8080`) or an inclusive range (`8000-8100`).
    pub fn parse(item: &str) -> Result<Self, PortListError> {
        let item = item.trim();
        match item.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (port(first)?, port(last)?);
                if first > last {
                    return Err(PortListError::Backwards(item.to_string()));
                }
                Ok(PortRange { first, last })
            }
            None => port(item).map(PortRange::single),
        }
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

fn port(s: &str) -> Result<u16, PortListError> {
    match s.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(PortListError::NotAPort(s.trim().to_string())),
    }
}

/// Parses a list of ports and ranges, keeping the ranges as written.
pub fn parse_ranges(v: &str) -> Result<Vec<PortRange>, PortListError> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PortRange::parse)
        .collect()
}

/// Parses a list of ports and ranges into the set of ports it names.
pub fn parse_set(v: &str) -> Result<BTreeSet<u16>, PortListError> {
    Ok(parse_ranges(v)?
        .into_iter()
        .flat_map(|r| r.first..=r.last)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_ranges() {
        assert_eq!(
            parse_set(" 25, 3306-3308 ,").unwrap(),
            BTreeSet::from([25, 3306, 3307, 3308])
        );
        assert_eq!(
            parse_ranges("80,8000-8100").unwrap(),
            vec![
                PortRange {
                    first: 80,
                    last: 80
                },
                PortRange {
                    first: 8000,
                    last: 8100
                }
            ]
        );
        assert_eq!(parse_ranges("").unwrap(), vec![]);
        assert_eq!(
            parse_ranges("8000-8100").unwrap()[0].to_string(),
            "8000-8100"
        );
    }

    #[test]
    fn refuses_what_is_not_a_port() {
        for bad in ["0", "65536", "http", "9-1", "1-", "-5", "80;443"] {
            assert!(parse_set(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_set("http"),
            Err(PortListError::NotAPort("http".into()))
        );
        assert_eq!(
            parse_set("9-1").unwrap_err().to_string(),
            "range \"9-1\" is backwards"
        );
    }
}
