//! Integers as JSON Schema counts them: a number without a fraction, however
//! it is written (`79`, `79.0`, `7.9e1`). serde alone refuses `79.0` for an
//! integer field, which a client (and the API's own document) calls a valid
//! `integer`; these functions, for `#[serde(deserialize_with)]`, take it.

use serde::{
    Deserialize, Deserializer,
    de::{Error as _, Unexpected},
};

/// A whole number as `T`.
///
/// # Errors
/// Not a number, a fraction, or outside `T`'s range.
pub fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    let number = serde_json::Number::deserialize(deserializer)?;
    let out_of_range = |unexpected| D::Error::invalid_value(unexpected, &"an integer in range");
    if let Some(n) = number.as_i64() {
        return T::try_from(n).map_err(|_| out_of_range(Unexpected::Signed(n)));
    }
    if let Some(n) = number.as_u64() {
        return T::try_from(n).map_err(|_| out_of_range(Unexpected::Unsigned(n)));
    }
    let f = number.as_f64().unwrap_or(f64::NAN);
    if f.fract() != 0.0 || !f.is_finite() {
        return Err(D::Error::invalid_type(Unexpected::Float(f), &"an integer"));
    }
    // Whole and finite; from ±2^63 on it is out of every range `T` has here.
    let limit = 2f64.powi(63);
    if (-limit..limit).contains(&f) {
        #[allow(clippy::cast_possible_truncation)] // whole and in range: exact
        let n = f as i64;
        T::try_from(n).map_err(|_| out_of_range(Unexpected::Float(f)))
    } else {
        Err(out_of_range(Unexpected::Float(f)))
    }
}

/// An optional whole number as `T`, `null` as `None`; with `#[serde(default)]`
/// for an absent field.
///
/// # Errors
/// As [`deserialize`].
pub fn deserialize_option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    Ok(Option::<Whole<T>>::deserialize(deserializer)?.map(|Whole(n)| n))
}

struct Whole<T>(T);

impl<'de, T: TryFrom<i64> + TryFrom<u64>> Deserialize<'de> for Whole<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(deserialize_with = "super::deserialize")]
        ms: u64,
        #[serde(default, deserialize_with = "super::deserialize_option")]
        priority: Option<i16>,
    }

    fn parse(json: &str) -> Result<Body, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_numbers_are_integers_however_written() {
        let body = parse(r#"{"ms": 79.0, "priority": -5e0}"#).unwrap();
        assert_eq!((body.ms, body.priority), (79, Some(-5)));
        let body = parse(r#"{"ms": 18446744073709551615, "priority": null}"#).unwrap();
        assert_eq!((body.ms, body.priority), (u64::MAX, None));
        assert_eq!(parse(r#"{"ms": 1}"#).unwrap().priority, None);
    }

    #[test]
    fn fractions_and_values_out_of_range_are_refused() {
        for (json, why) in [
            (r#"{"ms": 7.5}"#, "expected an integer"),
            (r#"{"ms": -1}"#, "expected an integer in range"),
            (r#"{"ms": 1e300}"#, "expected an integer in range"),
            (r#"{"ms": "7"}"#, "invalid type: string"),
            (
                r#"{"ms": 1, "priority": 40000}"#,
                "expected an integer in range",
            ),
        ] {
            let error = parse(json).unwrap_err();
            assert!(error.contains(why), "{json}: {error}");
        }
    }
}
