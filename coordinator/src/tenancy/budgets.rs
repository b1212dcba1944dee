//! Per-tenant budgets per period: audio seconds and device seconds per UTC day and per
//! calendar month, stored with the tenant's limits. The store checks them inside the insert's
//! transaction against the usage records (`store::usage`), like `max_jobs_in_flight`. A
//! refusal is RESOURCE_EXHAUSTED naming the budget, with the time to the period's reset as the
//! retry delay (`RetryInfo`; `Retry-After` over HTTP).
//!
//! Audio is known before a job runs, so an audio budget counts the audio delivered in the
//! period, the audio the tenant's jobs in flight will deliver and the new job's own: a submit
//! that would pass it is refused. Device time is known only afterwards, so a device budget
//! refuses submits once the period's device seconds have reached it.

use std::time::Duration;

use chrono::{DateTime, Datelike, Duration as Days, NaiveDate, TimeZone, Utc};

use crate::error::{Error, Result};

pub mod names {
    pub const AUDIO_SECONDS_PER_DAY: &str = "audio_seconds_per_day";
    pub const AUDIO_SECONDS_PER_MONTH: &str = "audio_seconds_per_month";
    pub const DEVICE_SECONDS_PER_DAY: &str = "device_seconds_per_day";
    pub const DEVICE_SECONDS_PER_MONTH: &str = "device_seconds_per_month";
}

/// A tenant's budgets; `None` is no budget.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budgets {
    pub audio_seconds_per_day: Option<f64>,
    pub audio_seconds_per_month: Option<f64>,
    pub device_seconds_per_day: Option<f64>,
    pub device_seconds_per_month: Option<f64>,
}

/// What the store read for a check: the period's spending and the audio of the jobs in
/// flight (the new one included).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spending {
    pub today: Spent,
    pub this_month: Spent,
    pub in_flight_audio: f64,
}

impl Budgets {
    pub fn is_empty(&self) -> bool {
        *self == Budgets::default()
    }

    /// Whether the check needs the month's spending (else only the day's).
    pub fn has_monthly(&self) -> bool {
        self.audio_seconds_per_month.is_some() || self.device_seconds_per_month.is_some()
    }

    /// Refuses a submit at `now` that a budget does not allow.
    pub fn check(&self, tenant: &str, now: DateTime<Utc>, s: &Spending) -> Result<()> {
        let (_, tomorrow) = day_of(now);
        let (_, next_month) = month_of(now);
        let periods = [
            (
                names::AUDIO_SECONDS_PER_DAY,
                self.audio_seconds_per_day,
                "today",
                tomorrow,
            ),
            (
                names::AUDIO_SECONDS_PER_MONTH,
                self.audio_seconds_per_month,
                "this month",
                next_month,
            ),
            (
                names::DEVICE_SECONDS_PER_DAY,
                self.device_seconds_per_day,
                "today",
                tomorrow,
            ),
            (
                names::DEVICE_SECONDS_PER_MONTH,
                self.device_seconds_per_month,
                "this month",
                next_month,
            ),
        ];
        for (name, budget, period, resets) in periods {
            let Some(budget) = budget else { continue };
            let spent = if period == "today" {
                s.today
            } else {
                s.this_month
            };
            let over = if name.starts_with("audio") {
                let asked = spent.audio_seconds + s.in_flight_audio;
                (asked > budget).then(|| {
                    format!(
                        "tenant {tenant:?} has used {:.1} of its {budget} audio seconds {period} \
                         and its jobs in flight (this one included) ask {:.1} more",
                        spent.audio_seconds, s.in_flight_audio
                    )
                })
            } else {
                (spent.device_seconds >= budget).then(|| {
                    format!(
                        "tenant {tenant:?} has used {:.1} of its {budget} device seconds {period}",
                        spent.device_seconds
                    )
                })
            };
            if let Some(detail) = over {
                let wait = (resets - now).to_std().unwrap_or(Duration::from_secs(1));
                return Err(Error::exhausted_for(
                    name,
                    format!(
                        "{detail}; it resets at {}",
                        resets.format("%Y-%m-%dT%H:%M:%SZ")
                    ),
                    wait,
                ));
            }
        }
        Ok(())
    }
}

/// Audio and device seconds of a tenant's records since a time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Spent {
    pub audio_seconds: f64,
    pub device_seconds: f64,
}

/// The start of the UTC day of `t`, and of the next day.
pub fn day_of(t: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = midnight(t.date_naive());
    (start, start + Days::days(1))
}

/// The start of the UTC calendar month of `t`, and of the next month.
pub fn month_of(t: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let first = NaiveDate::from_ymd_opt(t.year(), t.month(), 1).unwrap_or(t.date_naive());
    let next = if t.month() == 12 {
        NaiveDate::from_ymd_opt(t.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(t.year(), t.month() + 1, 1)
    }
    .unwrap_or(first + Days::days(31));
    (midnight(first), midnight(next))
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_time(chrono::NaiveTime::MIN))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn spent(audio: f64, device: f64) -> Spent {
        Spent {
            audio_seconds: audio,
            device_seconds: device,
        }
    }

    #[test]
    fn a_budget_refuses_with_the_time_to_its_reset() {
        let now = Utc.with_ymd_and_hms(2026, 12, 5, 23, 0, 0).unwrap();
        let b = Budgets {
            audio_seconds_per_day: Some(60.0),
            device_seconds_per_month: Some(100.0),
            ..Default::default()
        };
        let fits = Spending {
            today: spent(40.0, 10.0),
            this_month: spent(40.0, 99.0),
            in_flight_audio: 20.0,
        };
        assert!(b.check("t", now, &fits).is_ok());
        let over = Spending {
            in_flight_audio: 20.5,
            ..fits
        };
        let err = b.check("t", now, &over).expect_err("over the day's audio");
        assert!(
            err.to_string().starts_with("audio_seconds_per_day: "),
            "{err}"
        );
        match err {
            Error::ResourceExhausted {
                retry_after: Some(d),
                ..
            } => assert_eq!(d, Duration::from_secs(3600)),
            other => panic!("no retry delay: {other:?}"),
        }
        let spent_month = Spending {
            this_month: spent(0.0, 100.0),
            ..fits
        };
        let err = b.check("t", now, &spent_month).expect_err("device month");
        assert!(
            err.to_string().starts_with("device_seconds_per_month: "),
            "{err}"
        );
        assert!(
            err.to_string().contains("resets at 2027-01-01T00:00:00Z"),
            "{err}"
        );
        assert!(Budgets::default().check("t", now, &spent_month).is_ok());
    }
}
