//! `Range: bytes=…` as RFC 9110 §14.1 reads it, against a file's size.
//!
//! Written here rather than taken from `http-range-header`, which answers
//! several cases against the RFC: it treats a range on an empty file as
//! satisfiable, a suffix longer than the file as unsatisfiable (the RFC
//! selects the whole file), `bytes=-0` as the whole file, and refuses
//! leading zeros and positions past 2^64 that the grammar allows.

use std::ops::Range;

/// What a `Range` header asks of a file of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranged {
    /// No usable range: answer the whole file (200). A header that does not
    /// parse, another unit, or several ranges (which §14.2 lets a server
    /// answer whole).
    Whole,
    /// One satisfiable range (206), `start..end` with `end` exclusive.
    Part(Range<u64>),
    /// Nothing the header asks for exists in the file (416).
    Unsatisfiable,
}

/// One `range-spec` of the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-last`, or `first-` (`last` is `None`).
    Int { first: u64, last: Option<u64> },
    /// `-length`: the last `length` bytes.
    Suffix(u64),
}

/// Reads `value` for a file of `size` bytes.
pub fn requested(value: &str, size: u64) -> Ranged {
    let Some(specs) = parse(value) else {
        return Ranged::Whole;
    };
    let satisfiable: Vec<Range<u64>> = specs.iter().filter_map(|s| select(*s, size)).collect();
    match (specs.len(), satisfiable.as_slice()) {
        (_, []) => Ranged::Unsatisfiable,
        (1, [one]) => Ranged::Part(one.clone()),
        _ => Ranged::Whole,
    }
}

/// `ranges-specifier = range-unit "=" range-set`; `None` when the header is
/// not a valid bytes range set (§14.2: then it is ignored).
fn parse(value: &str) -> Option<Vec<Spec>> {
    let (unit, set) = value.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    // `1#range-spec`: a comma list, where empty elements and white space
    // around commas are allowed (§5.6.1), but at least one element is not empty.
    let specs: Vec<Spec> = set
        .split(',')
        .map(|item| item.trim_matches([' ', '\t']))
        .filter(|item| !item.is_empty())
        .map(spec)
        .collect::<Option<_>>()?;
    (!specs.is_empty()).then_some(specs)
}

/// `int-range = first-pos "-" [ last-pos ]` or `suffix-range = "-" suffix-length`.
fn spec(item: &str) -> Option<Spec> {
    let (first, last) = item.split_once('-')?;
    if first.is_empty() {
        return Some(Spec::Suffix(position(last)?));
    }
    let first = position(first)?;
    let last = if last.is_empty() {
        None
    } else {
        Some(position(last)?)
    };
    // "An int-range is invalid if the last-pos value is present and less
    // than the first-pos": the whole header is then invalid.
    if last.is_some_and(|last| last < first) {
        return None;
    }
    Some(Spec::Int { first, last })
}

/// `1*DIGIT`, leading zeros and all; a number past `u64` is as large as
/// `u64` goes (past the end of any file).
fn position(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// The bytes `spec` selects of a file of `size`, if any (§14.1.2: a range is
/// satisfiable when its first position is inside the file, or for a suffix,
/// when its length is not zero and the file is not empty).
fn select(spec: Spec, size: u64) -> Option<Range<u64>> {
    match spec {
        Spec::Int { first, last } if first < size => {
            let end = last.map_or(size, |last| last.saturating_add(1).min(size));
            Some(first..end)
        }
        Spec::Int { .. } | Spec::Suffix(0) => None,
        Spec::Suffix(_) if size == 0 => None,
        Spec::Suffix(length) => Some(size.saturating_sub(length)..size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9110 §14.1.2's own examples and the edges around them, for a
    /// 10,000-byte file unless the case says otherwise.
    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        use Ranged::{Part, Unsatisfiable, Whole};
        let cases: &[(&str, u64, Ranged, &str)] = &[
            ("bytes=0-499", 10_000, Part(0..500), "the first 500 bytes"),
            (
                "bytes=500-999",
                10_000,
                Part(500..1000),
                "the second 500 bytes",
            ),
            (
                "bytes=-500",
                10_000,
                Part(9500..10_000),
                "the final 500 bytes",
            ),
            (
                "bytes=9500-",
                10_000,
                Part(9500..10_000),
                "from 9500 to the end",
            ),
            ("bytes=0-0", 10_000, Part(0..1), "the first byte"),
            ("bytes=-1", 10_000, Part(9999..10_000), "the last byte"),
            ("bytes=0-", 10_000, Part(0..10_000), "all of it, as a range"),
            (
                "bytes=00-04",
                10_000,
                Part(0..5),
                "leading zeros are digits too",
            ),
            (
                "BYTES = 1-2",
                10_000,
                Part(1..3),
                "the unit is case-insensitive",
            ),
            (
                "bytes=5-99999",
                10_000,
                Part(5..10_000),
                "a last past the end is the end",
            ),
            (
                "bytes=5-99999999999999999999999",
                10_000,
                Part(5..10_000),
                "a last past 2^64 is still the end",
            ),
            (
                "bytes=-100",
                20,
                Part(0..20),
                "a suffix longer than the file is all of it",
            ),
            (
                "bytes=-0",
                10_000,
                Unsatisfiable,
                "an empty suffix selects nothing",
            ),
            ("bytes=10000-", 10_000, Unsatisfiable, "a first at the end"),
            ("bytes=20000-30000", 10_000, Unsatisfiable, "past the end"),
            (
                "bytes=99999999999999999999-",
                10_000,
                Unsatisfiable,
                "a first past 2^64",
            ),
            (
                "bytes=0-",
                0,
                Unsatisfiable,
                "an empty file has no bytes to range",
            ),
            (
                "bytes=0-0",
                0,
                Unsatisfiable,
                "an empty file, the first byte",
            ),
            ("bytes=0-10", 0, Unsatisfiable, "an empty file, ten bytes"),
            ("bytes=-5", 0, Unsatisfiable, "an empty file, a suffix"),
            (
                "bytes=5-1",
                10_000,
                Whole,
                "last before first: invalid, ignored",
            ),
            ("bytes=abc", 10_000, Whole, "not a range"),
            ("bytes=1-2-3", 10_000, Whole, "not a range"),
            ("bytes=", 10_000, Whole, "an empty set"),
            ("bytes=,", 10_000, Whole, "only empty elements"),
            ("bytes=+1-2", 10_000, Whole, "a sign is not a digit"),
            ("items=0-1", 10_000, Whole, "another unit"),
            ("0-1", 10_000, Whole, "no unit"),
            (
                "bytes=0-1,5-6",
                10_000,
                Whole,
                "several ranges are answered whole",
            ),
            (
                "bytes=0-1, ,",
                10_000,
                Part(0..2),
                "empty list elements are allowed",
            ),
            (
                "bytes=20000-,-0",
                10_000,
                Unsatisfiable,
                "none of several is satisfiable",
            ),
            (
                "bytes=20000-,0-1",
                10_000,
                Whole,
                "one of several is: answered whole",
            ),
        ];
        for (header, size, expected, why) in cases {
            assert_eq!(
                &requested(header, *size),
                expected,
                "{header} on {size} bytes: {why}"
            );
        }
    }
}
