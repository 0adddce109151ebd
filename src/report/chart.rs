//! The error ratio of each data center over an activation: points from
//! the collector's per-second totals, and a plain-text chart of them, one
//! column per point, that pastes into a retro as it is.

use super::{Chart, ChartSeries};

/// The most points a chart has: a longer activation gets several seconds
/// per point.
pub const COLUMNS: usize = 60;

/// The levels a column shows, from 0 % (`▁`) to 100 % (`█`) failed; any
/// failure at all shows above the lowest.
const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A column without requests.
const QUIET: char = '·';

/// The chart of data centers `names`, from `totals`: for each tick (about
/// a second apart, the first at the start, the last at the end), each data
/// center's cumulative requests and failed requests, in the order of
/// `names`.
pub fn chart(names: &[String], totals: &[Vec<(u64, u64)>]) -> Chart {
    let steps = totals.len().saturating_sub(1);
    let per_point = steps.div_ceil(COLUMNS).max(1);
    let datacenters = names
        .iter()
        .enumerate()
        .map(|(dc, name)| {
            let at = |tick: usize| totals[tick].get(dc).copied().unwrap_or_default();
            let points = (0..steps.div_ceil(per_point)).map(|point| {
                let from = at(point * per_point);
                let to = at(((point + 1) * per_point).min(steps));
                let requests = to.0.saturating_sub(from.0);
                let failed = to.1.saturating_sub(from.1);
                (requests > 0).then(|| failed as f64 / requests as f64)
            });
            ChartSeries {
                name: name.clone(),
                error_ratio: points.collect(),
            }
        })
        .collect();
    Chart {
        seconds_per_point: per_point as u64,
        datacenters,
    }
}

/// The chart as text: a row per data center, a column per point, its
/// highest ratio at the end, and a legend.
pub fn render(chart: &Chart) -> String {
    let width = (chart.datacenters.iter())
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for series in &chart.datacenters {
        let columns: String = series.error_ratio.iter().map(|p| column(*p)).collect();
        let highest = (series.error_ratio.iter().flatten()).fold(None, |max: Option<f64>, r| {
            Some(max.map_or(*r, |m| m.max(*r)))
        });
        let highest = highest.map_or("no requests".to_owned(), |r| {
            format!("max {}", super::markdown::percent(Some(r)))
        });
        text += &format!("{:width$}  {columns}  {highest}\n", series.name);
    }
    let seconds = chart.seconds_per_point;
    text += &format!(
        "{:width$}  one column = {seconds}s; ▁ 0 % … █ 100 % failed; {QUIET} no requests\n",
        ""
    );
    text
}

fn column(ratio: Option<f64>) -> char {
    match ratio {
        None => QUIET,
        Some(r) if r <= 0.0 => LEVELS[0],
        Some(r) => LEVELS[((r * 7.0).ceil() as usize).clamp(1, 7)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["pangyo".to_owned(), "ansan".to_owned()]
    }

    #[test]
    fn a_point_is_the_ratio_of_one_seconds_requests() {
        // pangyo: 10 requests a second, all failing in the second and
        // third; ansan: 5 a second, none failing, quiet in the last.
        let totals = vec![
            vec![(0, 0), (0, 0)],
            vec![(10, 0), (5, 0)],
            vec![(20, 10), (10, 0)],
            vec![(30, 20), (15, 0)],
            vec![(40, 20), (15, 0)],
        ];
        let chart = chart(&names(), &totals);
        assert_eq!(chart.seconds_per_point, 1);
        assert_eq!(
            chart.datacenters[0].error_ratio,
            [Some(0.0), Some(1.0), Some(1.0), Some(0.0)]
        );
        assert_eq!(
            chart.datacenters[1].error_ratio,
            [Some(0.0), Some(0.0), Some(0.0), None]
        );
        assert_eq!(
            render(&chart),
            "pangyo  ▁██▁  max 100.0 %\n\
             ansan   ▁▁▁·  max 0.0 %\n\
             \x20       one column = 1s; ▁ 0 % … █ 100 % failed; · no requests\n"
        );
    }

    #[test]
    fn a_long_activation_gets_several_seconds_a_point() {
        // 150 seconds: 3 seconds a point, 50 points; the failures of
        // seconds 4 to 6 land in the second point.
        let mut totals = vec![vec![(0, 0)]];
        for s in 1..=150u64 {
            let failed = s.clamp(3, 6) - 3;
            totals.push(vec![(s * 10, failed * 10)]);
        }
        let chart = chart(&names()[..1], &totals);
        assert_eq!(chart.seconds_per_point, 3);
        let points = &chart.datacenters[0].error_ratio;
        assert_eq!(points.len(), 50);
        assert_eq!(points[0], Some(0.0));
        assert_eq!(points[1], Some(1.0));
        assert_eq!(points[2], Some(0.0));
    }

    #[test]
    fn any_failure_shows_and_a_chart_without_ticks_is_empty() {
        assert_eq!(column(Some(0.001)), '▂');
        assert_eq!(column(Some(0.5)), '▅');
        let chart = chart(&names(), &[vec![(3, 0), (0, 0)]]);
        assert!(chart.datacenters[0].error_ratio.is_empty());
        assert!(render(&chart).starts_with("pangyo    no requests\n"));
    }
}
