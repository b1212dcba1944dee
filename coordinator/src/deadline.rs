//! A request's deadline: `cancel_after` (from acceptance) or `deadline` (a time), checked and
//! turned into the one absolute time that the accepted request carries and the store keeps.
//! A job past it is cancelled at its next chunk boundary (`lifecycle::expire_deadlines`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tutti_proto::v1 as pb;

use crate::error::{Error, Result};

/// The furthest a deadline may be.
pub const MAX_AHEAD: Duration = Duration::from_secs(7 * 24 * 3600);

/// The request's deadline as of `now`, checked; `None` when it has none.
pub fn of_request(
    req: &pb::SubmitGenerationRequest,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    let max = chrono::Duration::from_std(MAX_AHEAD).unwrap_or(chrono::Duration::MAX);
    match (&req.cancel_after, &req.deadline) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(Error::invalid(
            "deadline",
            "give cancel_after or deadline, not both",
        )),
        (Some(d), None) => {
            let d = chrono::Duration::seconds(d.seconds)
                + chrono::Duration::nanoseconds(i64::from(d.nanos));
            if d < chrono::Duration::seconds(1) || d > max {
                return Err(Error::invalid(
                    "cancel_after",
                    "must be between 1 second and 7 days",
                ));
            }
            Ok(Some(now + d))
        }
        (None, Some(t)) => {
            let at = DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
                .ok_or_else(|| Error::invalid("deadline", "must be a valid time"))?;
            if at <= now || at > now + max {
                return Err(Error::invalid(
                    "deadline",
                    "must be in the future, at most 7 days ahead",
                ));
            }
            Ok(Some(at))
        }
    }
}

/// The deadline an accepted request carries (set by the API from either field).
pub fn of_accepted(req: &pb::SubmitGenerationRequest) -> Option<DateTime<Utc>> {
    let t = req.deadline.as_ref()?;
    DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cancel_after: Option<i64>, deadline: Option<i64>) -> pb::SubmitGenerationRequest {
        pb::SubmitGenerationRequest {
            cancel_after: cancel_after.map(|s| tutti_proto::wkt::Duration {
                seconds: s,
                nanos: 0,
            }),
            deadline: deadline.map(|s| tutti_proto::wkt::Timestamp {
                seconds: s,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn deadlines_are_checked_and_made_absolute() {
        let now = DateTime::from_timestamp(1_000_000, 0).expect("time");
        assert_eq!(of_request(&req(None, None), now).expect("none"), None);
        let at = of_request(&req(Some(60), None), now)
            .expect("ok")
            .expect("some");
        assert_eq!(at.timestamp(), 1_000_060);
        let at = of_request(&req(None, Some(1_000_100)), now)
            .expect("ok")
            .expect("some");
        assert_eq!(at.timestamp(), 1_000_100);
        for (r, msg) in [
            (
                req(Some(60), Some(1_000_100)),
                "deadline: give cancel_after or deadline, not both",
            ),
            (
                req(Some(0), None),
                "cancel_after: must be between 1 second and 7 days",
            ),
            (
                req(Some(8 * 86_400), None),
                "cancel_after: must be between 1 second and 7 days",
            ),
            (
                req(None, Some(999_999)),
                "deadline: must be in the future, at most 7 days ahead",
            ),
        ] {
            let e = of_request(&r, now).expect_err(msg);
            assert_eq!(e.to_string(), msg);
        }
    }
}
