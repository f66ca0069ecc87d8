//! The dashboard's templates (`api/templates/dashboard/`, compiled in) and
//! the filters they use. Templates ending in `.html` escape what they insert.

use std::sync::LazyLock;

use axum::response::Html;
use chrono::{DateTime, Utc};
use minijinja::{Environment, Value};

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_str!(concat!("../../templates/dashboard/", $name)))),*]
    };
}

const TEMPLATES: [(&str, &str); 10] = templates![
    "base.html",
    "login.html",
    "error.html",
    "overview.html",
    "tasks.html",
    "task.html",
    "workers.html",
    "schedules.html",
    "bulk.html",
    "macros.html",
];

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in TEMPLATES {
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("dashboard template {name}: {e:#}"));
    }
    env.add_filter("ago", ago);
    env.add_filter("datetime", datetime);
    env
});

/// `template` rendered with `context`. A template error is a bug (the
/// templates are compiled in and tested), shown as a short page.
pub fn render(template: &str, context: Value) -> Html<String> {
    let rendered = ENV.get_template(template).and_then(|t| t.render(context));
    match rendered {
        Ok(html) => Html(html),
        Err(e) => {
            tracing::error!(
                template,
                error = format!("{e:#}"),
                "dashboard template failed"
            );
            Html("<!DOCTYPE html><title>Keel</title><p>This page failed to render.</p>".into())
        }
    }
}

fn parse(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `2026-11-22T05:40:12.345Z` → `2026-11-22 05:40:12` (UTC).
fn datetime(value: Option<String>) -> String {
    value.as_deref().and_then(parse).map_or_else(
        || "—".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// A time as a distance from now: `4 s ago`, `in 2 min`.
fn ago(value: Option<String>) -> String {
    let Some(at) = value.as_deref().and_then(parse) else {
        return "—".to_owned();
    };
    let seconds = (Utc::now() - at).num_seconds();
    let span = describe(seconds.unsigned_abs());
    if seconds >= 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// A duration in its largest whole unit: `42 s`, `5 min`, `3 h`, `2 d`.
pub fn describe(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        for (name, _) in TEMPLATES {
            assert!(ENV.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn durations_use_their_largest_whole_unit() {
        assert_eq!(describe(0), "0 s");
        assert_eq!(describe(119), "119 s");
        assert_eq!(describe(120), "2 min");
        assert_eq!(describe(7199), "119 min");
        assert_eq!(describe(7200), "2 h");
        assert_eq!(describe(3 * 86_400), "3 d");
    }

    #[test]
    fn times_read_as_distances_from_now() {
        let past = (Utc::now() - chrono::Duration::seconds(30)).to_rfc3339();
        assert_eq!(ago(Some(past)), "30 s ago");
        let future = (Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
        assert!(ago(Some(future)).starts_with("in "));
        assert_eq!(ago(None), "—");
        assert_eq!(
            datetime(Some("2026-11-22T05:40:12.345Z".into())),
            "2026-11-22 05:40:12"
        );
    }
}
