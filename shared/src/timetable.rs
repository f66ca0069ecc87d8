//! `Timetable`: a cron expression read on a timezone's wall clock, and the
//! instants it fires at.
//!
//! The `cron` crate parses the fields; this module decides what they mean
//! around daylight-saving changes, where the crate itself skips a time that
//! does not exist and fires twice at one that happens twice:
//!
//! - a wall-clock time that does not exist (spring forward) fires once, at
//!   the moment the clocks jump (a 02:30 daily schedule fires at 03:00);
//! - a wall-clock time that happens twice (fall back) fires at the first of
//!   the two, and again at the second only if the schedule runs every hour
//!   anyway (`*/15 * * * *` keeps its pace through the repeated hour; a
//!   02:30 daily schedule fires once).
//!
//! Expressions take 5 fields (`minute hour day month weekday`, as crontab) or
//! 6 (a leading `second`). Weekdays are crontab's: 0 or 7 is Sunday, 1 Monday.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The fields of a 6-field expression, as error messages name them.
const FIELDS: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day_of_month",
    "month",
    "day_of_week",
];
/// `cron` accepts these in place of the fields.
const SHORTHANDS: [&str; 5] = ["@yearly", "@monthly", "@weekly", "@daily", "@hourly"];
/// A search looks this far ahead before deciding a schedule never fires
/// again (`0 0 30 2 *`, 30 February).
const HORIZON_YEARS: i32 = 30;

/// Why a cron expression or a timezone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimetableError {
    /// The expression is wrong; `field` is `cron` when it is not one field's fault.
    #[error("{field}: {message}")]
    Cron {
        field: &'static str,
        message: String,
    },
    #[error("`{0}` is not an IANA timezone (such as `Europe/Berlin` or `UTC`)")]
    Timezone(String),
}

/// When a schedule fires.
#[derive(Clone, Debug)]
pub struct Timetable {
    schedule: cron::Schedule,
    tz: Tz,
    /// Every hour of the day may fire: such a schedule keeps firing through
    /// a repeated hour.
    hourly: bool,
}

impl Timetable {
    /// Parses `expression` (5 or 6 fields, or `@daily` and the like) for `timezone`.
    ///
    /// # Errors
    /// The expression or the timezone is wrong; the error names the field.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, TimetableError> {
        let tz = parse_timezone(timezone)?;
        let schedule = parse_cron(expression)?;
        let hourly = {
            use cron::TimeUnitSpec as _;
            schedule.hours().is_all()
        };
        Ok(Self {
            schedule,
            tz,
            hourly,
        })
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first instant after `t` at which this fires; `None` if it never does again.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        let wall = local.naive_local();
        // Wall times up to `wall` fire at or before `t` — except the second
        // pass of a repeated hour when `t` is still in its first pass.
        let from = match self.tz.from_local_datetime(&wall) {
            LocalResult::Ambiguous(first, second) if first == local => wall - (second - first),
            _ => wall,
        };
        let horizon = from + Duration::days(366 * i64::from(HORIZON_YEARS));
        let mut best: Option<DateTime<Utc>> = None;
        for candidate in self.schedule.after(&Utc.from_utc_datetime(&from)) {
            let candidate = candidate.naive_utc();
            if candidate > horizon {
                break;
            }
            let earliest = self.first_instant(candidate);
            // Later wall times never fire before this one's first instant.
            if best.is_some_and(|b| earliest >= b) {
                break;
            }
            for fire in self.fires_of(candidate).into_iter().flatten() {
                if fire > t && best.is_none_or(|b| fire < b) {
                    best = Some(fire);
                }
            }
        }
        best
    }

    /// The last instant at or before `t` at which this fired; `None` if it
    /// never did (within the search horizon).
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let fires_by = |x: DateTime<Utc>| self.next_after(x).is_some_and(|n| n <= t);
        // Widen the window until it holds a fire, then narrow to the last one.
        let mut width = Duration::seconds(1);
        let max = Duration::days(366 * i64::from(HORIZON_YEARS));
        while !fires_by(t - width) {
            if width > max {
                return None;
            }
            width = width * 4;
        }
        let (mut lo, mut hi) = (t - width, t);
        // `fires_by(lo)`, not `fires_by(hi)`: the last fire is next_after(lo)
        // once lo and hi are a second apart (fires are whole seconds).
        while hi - lo > Duration::seconds(1) {
            let mid = lo + (hi - lo) / 2;
            if fires_by(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.next_after(lo)
    }

    /// The instants wall time `wall` fires at: one, or two in a repeated hour.
    fn fires_of(&self, wall: NaiveDateTime) -> [Option<DateTime<Utc>>; 2] {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(at) => [Some(at.to_utc()), None],
            LocalResult::Ambiguous(first, second) => {
                [Some(first.to_utc()), self.hourly.then(|| second.to_utc())]
            }
            // A schedule that fires every hour simply goes on after the jump;
            // one that fires at set hours fires when the clocks jump.
            LocalResult::None if self.hourly => [None, None],
            LocalResult::None => [Some(self.gap_end(wall)), None],
        }
    }

    /// The earliest instant wall time `wall` stands for (the jump, for a time that does not exist).
    fn first_instant(&self, wall: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => at.to_utc(),
            LocalResult::None => self.gap_end(wall),
        }
    }

    /// The instant the clocks jumped over wall time `wall`: the first whose
    /// wall time is later. Offsets lie within ±15 hours, and wall time only
    /// moves forward across a jump, so a binary search over that span finds it.
    fn gap_end(&self, wall: NaiveDateTime) -> DateTime<Utc> {
        let wall_of = |s: i64| {
            Utc.timestamp_opt(s, 0)
                .single()
                .map(|at| at.with_timezone(&self.tz).naive_local())
        };
        let base = wall.and_utc().timestamp();
        let (mut lo, mut hi) = (base - 15 * 3600, base + 15 * 3600);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if wall_of(mid).is_some_and(|w| w > wall) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Utc.timestamp_opt(hi, 0).single().unwrap_or_else(Utc::now)
    }
}

impl fmt::Display for Timetable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.schedule.source(), self.tz)
    }
}

/// An IANA timezone name.
///
/// # Errors
/// Not a known zone.
pub fn parse_timezone(name: &str) -> Result<Tz, TimetableError> {
    Tz::from_str(name).map_err(|_| TimetableError::Timezone(name.to_owned()))
}

/// A 5- or 6-field expression (or a shorthand) as a `cron` schedule with
/// crontab's weekdays.
fn parse_cron(expression: &str) -> Result<cron::Schedule, TimetableError> {
    let expression = expression.trim();
    if SHORTHANDS.contains(&expression.to_ascii_lowercase().as_str()) {
        return cron::Schedule::from_str(&expression.to_ascii_lowercase()).map_err(|e| {
            TimetableError::Cron {
                field: "cron",
                message: e.to_string(),
            }
        });
    }
    let mut fields: Vec<String> = expression.split_whitespace().map(str::to_owned).collect();
    match fields.len() {
        5 => fields.insert(0, "0".into()),
        6 => {}
        n => {
            return Err(TimetableError::Cron {
                field: "cron",
                message: format!(
                    "has {n} fields; give 5 (minute hour day month weekday) or 6 (a leading second)"
                ),
            });
        }
    }
    fields[5] = crontab_weekdays(&fields[5]).map_err(|message| TimetableError::Cron {
        field: "day_of_week",
        message,
    })?;
    // Each field alone, so the error names the one that is wrong. The
    // crate's own reasons are not passed on: they are off by one ("must be
    // less than 23" for hours), empty ("is not valid: ^") or name the wrong
    // thing (`W` called a month name); the message says what is accepted.
    for (i, field) in FIELDS.iter().enumerate() {
        let mut probe = ["*"; 6];
        probe[i] = &fields[i];
        if cron::Schedule::from_str(&probe.join(" ")).is_err() || has_unsupported_syntax(&fields[i])
        {
            return Err(TimetableError::Cron {
                field,
                message: field_refusal(i, &original_field(expression, i, &fields[i])),
            });
        }
    }
    cron::Schedule::from_str(&fields.join(" ")).map_err(|e| TimetableError::Cron {
        field: "cron",
        message: e.to_string(),
    })
}

/// What field `i` (of [`FIELDS`]) accepts, as said to whoever wrote `value`.
fn field_refusal(i: usize, value: &str) -> String {
    let values = match i {
        0 => "a second is 0–59",
        1 => "a minute is 0–59",
        2 => "an hour is 0–23",
        3 => "a day of the month is 1–31",
        4 => "a month is 1–12 or JAN–DEC",
        _ => "a weekday is 0–7 (Sunday is 0 or 7) or SUN–SAT",
    };
    // `L` and `W` also occur in names (JUL, WED), which have no digits.
    let upper = value.to_ascii_uppercase();
    let quartz = has_unsupported_syntax(value)
        || upper == "L"
        || upper.bytes().any(|b| b.is_ascii_digit()) && upper.contains(['L', 'W']);
    let special = if quartz {
        "; `#`, `L`, `W` and `?` are not supported"
    } else {
        ""
    };
    format!(
        "`{value}` is not valid: {values}, written as one value, a range `a-b`, a list `a,b`, \
         `*`, or a step `*/n` or `a-b/n`{special}"
    )
}

/// Quartz-style marks the `cron` crate reads in ways crontab users would
/// not expect, or not at all: refused with the field's own message.
fn has_unsupported_syntax(value: &str) -> bool {
    value.contains(['#', '?'])
}

/// Field `i` of the expression as the client wrote it (before weekdays
/// were renumbered), for messages.
fn original_field(expression: &str, i: usize, converted: &str) -> String {
    let written: Vec<&str> = expression.split_whitespace().collect();
    let offset = usize::from(written.len() == 5);
    i.checked_sub(offset)
        .and_then(|j| written.get(j))
        .map_or_else(|| converted.to_owned(), |s| (*s).to_owned())
}

/// Crontab weekdays (0–7, Sunday 0 and 7) in `cron`'s numbering (1–7, Sunday 1).
fn crontab_weekdays(field: &str) -> Result<String, String> {
    let number = |s: &str| -> Result<Option<u8>, String> {
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None); // a name or `*`, which cron reads as crontab does
        }
        match s.parse::<u8>() {
            Ok(n @ 0..=7) => Ok(Some(n)),
            _ => Err(field_refusal(5, field)),
        }
    };
    let shift = |n: u8| (n % 7) + 1;
    let mut items = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let converted = match range.split_once('-') {
            Some((a, b)) => match (number(a)?, number(b)?) {
                // A range that ends on Sunday 7 becomes "…to Saturday, and Sunday".
                (Some(a), Some(7)) if step.is_none() => {
                    if a == 0 {
                        "*".to_owned()
                    } else {
                        format!("{}-7,1", shift(a))
                    }
                }
                (Some(_), Some(7)) => {
                    return Err(format!(
                        "`{item}`: write a stepped range ending on Sunday as 0-6"
                    ));
                }
                (Some(a), Some(b)) => format!("{}-{}", shift(a), shift(b)),
                (None, None) => range.to_owned(),
                _ => return Err(format!("`{range}` mixes numbers and names")),
            },
            None => match number(range)? {
                Some(n) => shift(n).to_string(),
                None => range.to_owned(),
            },
        };
        items.push(match step {
            Some(step) => format!("{converted}/{step}"),
            None => converted,
        });
    }
    Ok(items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    /// The next `n` fires after `from`, as RFC 3339 in UTC.
    fn fires(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let table = Timetable::parse(expr, tz).unwrap();
        let mut t = at(from);
        (0..n)
            .map(|_| {
                t = table.next_after(t).unwrap();
                t.to_rfc3339()
            })
            .collect()
    }

    #[test]
    fn five_fields_are_crontab_and_six_add_seconds() {
        assert_eq!(
            fires("*/15 * * * *", "UTC", "2026-01-01T00:07:00Z", 2),
            ["2026-01-01T00:15:00+00:00", "2026-01-01T00:30:00+00:00"]
        );
        assert_eq!(
            fires("*/2 * * * * *", "UTC", "2026-01-01T00:00:01Z", 2),
            ["2026-01-01T00:00:02+00:00", "2026-01-01T00:00:04+00:00"]
        );
        // Strictly after: a fire time is not its own next.
        assert_eq!(
            fires("0 9 * * *", "UTC", "2026-01-01T09:00:00Z", 1),
            ["2026-01-02T09:00:00+00:00"]
        );
    }

    #[test]
    fn weekdays_count_from_sunday_zero_as_in_crontab() {
        // 2026-01-04 is a Sunday.
        assert_eq!(
            fires("0 9 * * 1", "UTC", "2026-01-01T00:00:00Z", 1),
            ["2026-01-05T09:00:00+00:00"]
        );
        for sunday in ["0", "7", "sun", "SUN"] {
            assert_eq!(
                fires(
                    &format!("0 9 * * {sunday}"),
                    "UTC",
                    "2026-01-01T00:00:00Z",
                    1
                ),
                ["2026-01-04T09:00:00+00:00"],
                "{sunday}"
            );
        }
        // Friday to Sunday, and the working week.
        assert_eq!(
            fires("0 9 * * 5-7", "UTC", "2026-01-01T10:00:00Z", 3),
            [
                "2026-01-02T09:00:00+00:00",
                "2026-01-03T09:00:00+00:00",
                "2026-01-04T09:00:00+00:00"
            ]
        );
        assert_eq!(
            fires("0 9 * * 1-5", "UTC", "2026-01-02T10:00:00Z", 1),
            ["2026-01-05T09:00:00+00:00"]
        );
    }

    #[test]
    fn a_bad_expression_names_its_field() {
        let field = |expr: &str| match Timetable::parse(expr, "UTC") {
            Err(TimetableError::Cron { field, .. }) => field,
            other => panic!("{expr}: {other:?}"),
        };
        assert_eq!(field("* * *"), "cron");
        assert_eq!(field("* * * * * * *"), "cron");
        assert_eq!(field("61 * * * *"), "minute");
        assert_eq!(field("0 25 * * *"), "hour");
        assert_eq!(field("0 0 32 * *"), "day_of_month");
        assert_eq!(field("0 0 * 13 *"), "month");
        assert_eq!(field("0 0 * * 8"), "day_of_week");
        assert_eq!(field("0 0 * * mon-"), "day_of_week");
        assert_eq!(field("61 * * * * *"), "second");
        let message = |expr: &str| match Timetable::parse(expr, "UTC") {
            Err(TimetableError::Cron { message, .. }) => message,
            other => panic!("{expr}: {other:?}"),
        };
        for (expr, says) in [
            ("0 25 * * *", "`25` is not valid: an hour is 0–23"),
            ("60 * * * *", "`60` is not valid: a minute is 0–59"),
            (
                "0 0 * 13 *",
                "`13` is not valid: a month is 1–12 or JAN–DEC",
            ),
            (
                "0 0 32 * *",
                "`32` is not valid: a day of the month is 1–31",
            ),
            ("0 0 * * 8", "a weekday is 0–7 (Sunday is 0 or 7)"),
            ("0 0 * * 5#3", "`5#3` is not valid: a weekday is 0–7"),
            (
                "0 0 1W * *",
                "`1W` is not valid: a day of the month is 1–31",
            ),
        ] {
            let message = message(expr);
            assert!(
                message.starts_with(says) || message.contains(says),
                "{expr}: {message}"
            );
            assert!(!message.contains('\n'), "{message}");
            assert!(
                !message.contains("less than") && !message.contains("month name"),
                "{expr}: no crate internals: {message}"
            );
        }
        assert!(message("0 0 * * 5#3").contains("`#`, `L`, `W` and `?` are not supported"));
        assert!(message("0 0 1W * *").contains("are not supported"));
        assert!(matches!(
            Timetable::parse("* * * * *", "Mars/Olympus"),
            Err(TimetableError::Timezone(_))
        ));
        assert!(Timetable::parse("@daily", "UTC").is_ok());
    }

    #[test]
    fn berlin_spring_forward_fires_a_missing_time_once_at_the_jump() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-03-28T00:00:00Z", 3),
            [
                "2026-03-28T01:30:00+00:00", // 02:30 CET
                "2026-03-29T01:00:00+00:00", // 02:30 does not exist: at the jump
                "2026-03-30T00:30:00+00:00", // 02:30 CEST
            ]
        );
        // Every 30 minutes goes straight on past the missing hour.
        assert_eq!(
            fires("*/30 * * * *", "Europe/Berlin", "2026-03-29T00:15:00Z", 3),
            [
                "2026-03-29T00:30:00+00:00", // 01:30 CET
                "2026-03-29T01:00:00+00:00", // 03:00 CEST
                "2026-03-29T01:30:00+00:00", // 03:30 CEST
            ]
        );
    }

    #[test]
    fn berlin_fall_back_fires_a_repeated_time_once() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC).
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-10-24T02:00:00Z", 2),
            [
                "2026-10-25T00:30:00+00:00", // the first 02:30 (CEST)
                "2026-10-26T01:30:00+00:00", // not the second 02:30 (CET)
            ]
        );
        // An every-30-minutes schedule fires through both passes of the hour.
        assert_eq!(
            fires("*/30 * * * *", "Europe/Berlin", "2026-10-24T23:45:00Z", 6),
            [
                "2026-10-25T00:00:00+00:00", // 02:00 CEST
                "2026-10-25T00:30:00+00:00", // 02:30 CEST
                "2026-10-25T01:00:00+00:00", // 02:00 CET
                "2026-10-25T01:30:00+00:00", // 02:30 CET
                "2026-10-25T02:00:00+00:00", // 03:00 CET
                "2026-10-25T02:30:00+00:00",
            ]
        );
        // Asked from inside the first pass, the second pass still comes.
        assert_eq!(
            fires("*/30 * * * *", "Europe/Berlin", "2026-10-25T00:45:00Z", 1),
            ["2026-10-25T01:00:00+00:00"]
        );
    }

    #[test]
    fn new_york_transitions() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
        assert_eq!(
            fires("30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", 3),
            [
                "2026-03-07T07:30:00+00:00",
                "2026-03-08T07:00:00+00:00",
                "2026-03-09T06:30:00+00:00",
            ]
        );
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST (06:00 UTC); 01:30 happens twice.
        assert_eq!(
            fires("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"]
        );
        assert_eq!(
            fires("0 * * * *", "America/New_York", "2026-11-01T04:30:00Z", 3),
            [
                "2026-11-01T05:00:00+00:00", // 01:00 EDT
                "2026-11-01T06:00:00+00:00", // 01:00 EST
                "2026-11-01T07:00:00+00:00", // 02:00 EST
            ]
        );
    }

    #[test]
    fn last_fire_at_or_before() {
        let table = Timetable::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            table.last_at_or_before(at("2026-03-29T12:00:00Z")),
            Some(at("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            table.last_at_or_before(at("2026-03-29T01:00:00Z")),
            Some(at("2026-03-29T01:00:00Z")),
            "at or before"
        );
        let every_2s = Timetable::parse("*/2 * * * * *", "UTC").unwrap();
        assert_eq!(
            every_2s.last_at_or_before(at("2026-01-01T00:00:05Z")),
            Some(at("2026-01-01T00:00:04Z"))
        );
        let never = Timetable::parse("0 0 30 2 *", "UTC").unwrap();
        assert_eq!(never.next_after(at("2026-01-01T00:00:00Z")), None);
    }
}
