//! Durations and port lists as users write them in flags, environment
//! variables and annotations. Invariants: no panic; a port list that
//! parses prints back (ranges joined by commas) to a list that parses to
//! the same ranges, every port in 1..=65535 and every range forwards; the
//! set form holds exactly the ports of the ranges; a duration that parses
//! is the same as its value written in whole milliseconds, to the
//! millisecond.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_api::{duration, port_list};

fuzz_target!(|text: &str| {
    if let Ok(ranges) = port_list::parse_ranges(text) {
        for r in &ranges {
            assert!(r.first >= 1 && r.first <= r.last, "{r:?}");
        }
        let printed = ranges
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(port_list::parse_ranges(&printed).as_ref(), Ok(&ranges));
        // The set is only built for short lists: a wide range is 64 Ki ports.
        if ranges.len() <= 8 {
            let set = port_list::parse_set(text).expect("the set of a list that parses");
            let count: usize = ranges
                .iter()
                .map(|r| usize::from(r.last - r.first) + 1)
                .sum();
            assert!(set.len() <= count);
            assert!(
                set.iter()
                    .all(|p| ranges.iter().any(|r| (r.first..=r.last).contains(p)))
            );
        }
    } else {
        assert!(port_list::parse_set(text).is_err());
    }
    if let Ok(d) = duration::parse(text)
        && d < Duration::from_secs(1 << 40)
    {
        let millis = format!("{}ms", d.as_millis());
        let again = duration::parse(&millis).expect("whole milliseconds parse");
        assert!(
            d.abs_diff(again) < Duration::from_millis(1),
            "{text:?} is {d:?}, {millis} is {again:?}"
        );
    }
});
