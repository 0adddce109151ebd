//! Guards that load but do not do what they seem to say: a `for` as long
//! as the scenario can run, and a p99 threshold inside a latency bucket,
//! where the p99 it compares with is interpolated.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::super::super::raw::{self, Threshold};
use super::super::Report;
use crate::stats::LATENCY_BUCKETS;

/// Warns of a guard whose `for` is as long as its scenario can run (the
/// scenario always ends before the guard could trip), and of a
/// `p99_latency` guard whose `above` is not a bound of
/// [`LATENCY_BUCKETS`]. Each is located at the value to change.
pub(in crate::config) fn warnings(
    scenario: &str,
    raw: &raw::Scenario,
    max_duration: Duration,
    warn: Report<'_>,
) {
    let human = humantime::format_duration;
    for stop in raw.stop_when.iter().flatten() {
        let stop = stop.get_ref();
        let prefix = format!("scenario `{scenario}` guard `{}`: ", stop.name.get_ref());
        if let Some(hold) = &stop.hold {
            if hold.get_ref().0 >= max_duration {
                warn(
                    hold.span(),
                    format!(
                        "{prefix}`for` {} is not shorter than the scenario's max_duration of {}, so it can never trip; shorten it",
                        human(hold.get_ref().0),
                        human(max_duration)
                    ),
                );
            }
        }
        if stop.p99_latency.is_some() {
            if let Some((span, message)) = off_bucket(stop.above.as_ref()) {
                warn(span, format!("{prefix}{message}"));
            }
        }
    }
}

/// Why a p99 threshold `above` is not a bucket bound, if it is not one.
/// On a bound X, "p99 above X" reads exactly "more than 1 % of requests
/// took longer than X"; inside a bucket the p99 is interpolated between
/// its bounds, so it says little about the requests themselves.
fn off_bucket(above: Option<&Spanned<Threshold>>) -> Option<(Range<usize>, String)> {
    let above = above?;
    let Threshold::Duration(threshold) = above.get_ref() else {
        return None;
    };
    let threshold = threshold.0;
    let human = humantime::format_duration;
    let bounds = LATENCY_BUCKETS.map(Duration::from_secs_f64);
    if threshold.is_zero() || bounds.contains(&threshold) {
        return None;
    }
    let upper = bounds.iter().copied().find(|b| *b > threshold);
    let lower = (bounds.iter().copied().rev())
        .find(|b| *b < threshold)
        .unwrap_or(Duration::ZERO);
    let message = match upper {
        Some(upper) => {
            let either = if lower.is_zero() {
                human(upper).to_string()
            } else {
                format!("{} or {}", human(lower), human(upper))
            };
            format!(
                "`above` {} falls inside the latency bucket from {} to {}, and a p99 there is interpolated between the bounds: requests that all took just over {} read as a p99 near {}, and trip it; use a bucket bound, {either}, where it trips exactly when more than 1 % of requests took longer than that",
                human(threshold),
                human(lower),
                human(upper),
                human(lower),
                human(upper),
            )
        }
        None => format!(
            "`above` {} is past the highest latency bucket bound, {}, and a p99 never reads more than that, so this guard can never trip; use at most {}",
            human(threshold),
            human(lower),
            human(lower),
        ),
    };
    Some((above.span(), message))
}
