//! A NetworkPolicy `ipBlock`: a CIDR less its `except` CIDRs. The
//! controller reads policies with it and the proxy matches addresses with
//! it, so both sides agree on what a block holds.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlock {
    cidr: IpNet,
    except: Vec<IpNet>,
}

impl IpBlock {
    /// `None` when any CIDR is bad: dropping only a bad `except` would
    /// hold more than written.
    pub fn parse(cidr: &str, except: &[String]) -> Option<Self> {
        Some(IpBlock {
            cidr: cidr.trim().parse().ok()?,
            except: except
                .iter()
                .map(|c| c.trim().parse().ok())
                .collect::<Option<_>>()?,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_holds_its_cidr_less_the_exceptions() {
        let block = IpBlock::parse("10.1.0.0/16", &["10.1.2.0/24".into()]).unwrap();
        assert!(block.contains("10.1.0.7".parse().unwrap()));
        assert!(!block.contains("10.1.2.7".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(!block.contains("fd00::1".parse().unwrap()));
        let v6 = IpBlock::parse("fd00::/8", &[]).unwrap();
        assert!(v6.contains("fd00::1".parse().unwrap()));
    }

    #[test]
    fn any_bad_cidr_spoils_the_block() {
        assert_eq!(IpBlock::parse("10.0.0.0/33", &[]), None);
        assert_eq!(IpBlock::parse("10.0.0.0/8", &["nope".into()]), None);
    }
}
