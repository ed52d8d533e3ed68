//! `[routes.analysis]` and `[routes.rollout]`: the release decision and its plan.

use super::*;
use crate::config::raw::RawStep;

impl Validator<'_> {
    /// `routes[i].analysis`: every key optional, each checked in place.
    pub(super) fn analysis(&mut self, key: &str, a: &RawAnalysis, r: &RawRoute) -> AnalysisSpec {
        let key = format!("{key}.analysis");
        let mut spec = AnalysisSpec::default();
        if let Some(b) = &a.baseline {
            if r.weights
                .get_ref()
                .keys()
                .any(|k| k.get_ref() == b.get_ref())
            {
                spec.baseline = Some(b.get_ref().clone());
            } else {
                self.error(
                    b,
                    format!(
                        "{key}.baseline: \"{}\" is not one of the route's backends",
                        b.get_ref()
                    ),
                );
            }
        }
        if a.window.is_some() {
            spec.window = self.duration(&format!("{key}.window"), &a.window, 300);
        }
        let mut real = |name: &str, v: &Option<Spanned<f64>>, ok: fn(f64) -> bool, range: &str| {
            let v = v.as_ref()?;
            if ok(*v.get_ref()) {
                Some(*v.get_ref())
            } else {
                self.error(
                    v,
                    format!("{key}.{name}: {} is out of range {range}", v.get_ref()),
                );
                None
            }
        };
        if let Some(c) = real(
            "confidence",
            &a.confidence,
            |c| (0.5..1.0).contains(&c),
            "0.5..1 (exclusive of 1)",
        ) {
            spec.settings.confidence = c;
        }
        if let Some(c) = real(
            "srm_confidence",
            &a.srm_confidence,
            |c| (0.5..1.0).contains(&c),
            "0.5..1 (exclusive of 1)",
        ) {
            spec.settings.srm_confidence = c;
        }
        if let Some(e) = real(
            "max_error_rate_increase",
            &a.max_error_rate_increase,
            |e| (0.0..1.0).contains(&e),
            "0..1 (an absolute rate: 0.01 is one point)",
        ) {
            spec.settings.max_error_rate_increase = e;
        }
        if let Some(q) = real(
            "quantile",
            &a.quantile,
            |q| q > 0.0 && q < 1.0,
            "0..1 (exclusive)",
        ) {
            spec.settings.quantile = q;
        }
        spec.settings.min_requests = self.int(
            &format!("{key}.min_requests"),
            &a.min_requests,
            200,
            1,
            1_000_000_000,
        ) as u64;
        if a.max_latency_increase.is_some() {
            spec.settings.max_latency_increase = self
                .duration(
                    &format!("{key}.max_latency_increase"),
                    &a.max_latency_increase,
                    1,
                )
                .as_secs_f64();
        }
        if let Some(src) = &a.source {
            let src = src.get_ref();
            let url = src.prometheus.get_ref().trim();
            match crate::analysis::prometheus::check_url(url) {
                Ok(()) => {
                    let lag = self.duration(&format!("{key}.source.lag"), &src.lag, 30);
                    spec.source = Some(crate::config::PromSource {
                        url: url.trim_end_matches('/').to_owned(),
                        lag,
                    });
                }
                Err(e) => self.error(&src.prometheus, format!("{key}.source.prometheus: {e}")),
            }
        }
        spec
    }

    /// `[routes.rollout]`: the canary is one of the route's backends, another
    /// one with a positive weight is the baseline, the steps climb to 100.
    pub(super) fn rollout(
        &mut self,
        key: &str,
        spanned: &Spanned<RawRollout>,
        weights: &[(String, u32)],
    ) -> Option<RolloutSpec> {
        let key = format!("{key}.rollout");
        let r = spanned.get_ref();
        let mut ok = true;
        let id = r.id.get_ref().trim();
        if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
            self.error(
                &r.id,
                format!("{key}.id: must be 1 to 128 printable characters"),
            );
            ok = false;
        }
        let canary = r.canary.get_ref();
        if !weights.iter().any(|(b, _)| b == canary) {
            let listed: Vec<&str> = weights.iter().map(|(b, _)| b.as_str()).collect();
            self.error(
                &r.canary,
                format!(
                    "{key}.canary: \"{canary}\" is not a backend of this route's weights (listed: {})",
                    listed.join(", ")
                ),
            );
            ok = false;
        }
        // The baseline: the other backend with the largest weight (the
        // first by name on a tie).
        let baseline = weights
            .iter()
            .filter(|(b, w)| b != canary && *w > 0)
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(b, _)| b.clone());
        if baseline.is_none() && ok {
            self.error(
                spanned,
                format!(
                    "{key}: the route needs a baseline: a backend other than \"{canary}\" with a positive weight"
                ),
            );
            ok = false;
        }
        let steps = r.steps.get_ref();
        if steps.is_empty() {
            self.error(
                &r.steps,
                format!("{key}.steps: at least one step is required"),
            );
            ok = false;
        }
        // `"shadow"` (first only) is weight 0: mirroring, no user moved.
        let mut values = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            let v = match s.get_ref() {
                RawStep::Weight(v) => *v,
                RawStep::Name(n) if n == "shadow" && i == 0 => 0,
                RawStep::Name(n) => {
                    self.error(
                        s,
                        format!(
                            "{key}.steps[{i}]: \"{n}\" is not a weight; only the first step may be \"shadow\""
                        ),
                    );
                    ok = false;
                    continue;
                }
            };
            let shadow = i == 0 && matches!(s.get_ref(), RawStep::Name(_));
            if !shadow && !(1..=100).contains(&v) {
                self.error(s, format!("{key}.steps[{i}]: {v} is out of range 1..=100"));
                ok = false;
            } else if values.last().is_some_and(|p| v <= *p) {
                self.error(
                    s,
                    format!("{key}.steps[{i}]: {v} must be greater than the step before it"),
                );
                ok = false;
            }
            values.push(v);
        }
        if let Some(last) = steps.last()
            && !matches!(last.get_ref(), RawStep::Weight(100))
        {
            self.error(
                last,
                format!(
                    "{key}.steps: the last step must be 100 (the canary takes all the traffic)"
                ),
            );
            ok = false;
        }
        let hold = self.duration(&format!("{key}.hold"), &r.hold, 300);
        let min_requests = self.int(
            &format!("{key}.min_requests"),
            &r.min_requests,
            500,
            1,
            1_000_000_000,
        ) as u64;
        let notify = r
            .notify
            .as_ref()
            .and_then(|n| self.notify(&format!("{key}.notify"), n));
        let on_failure = match r.on_failure.as_ref().map(|o| (o, o.get_ref().as_str())) {
            None | Some((_, "rollback")) => OnFailure::Rollback,
            Some((_, "pause")) => OnFailure::Pause,
            Some((o, other)) => {
                self.error(
                    o,
                    format!("{key}.on_failure: \"{other}\" is not one of rollback, pause"),
                );
                OnFailure::Rollback
            }
        };
        let start = r.start.as_ref().and_then(|s| {
            match humantime::parse_rfc3339_weak(s.get_ref().trim()) {
                Ok(t) => t
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs()),
                Err(e) => {
                    self.error(
                        s,
                        format!(
                            "{key}.start: \"{}\" is not an RFC 3339 time like 2026-12-01T18:00:00Z: {e}",
                            s.get_ref()
                        ),
                    );
                    None
                }
            }
        });
        Some(RolloutSpec {
            start,
            id: id.to_owned(),
            canary: canary.clone(),
            baseline: baseline?,
            steps: values.iter().map(|v| *v as u32).collect(),
            hold,
            min_requests,
            on_failure,
            notify,
        })
        .filter(|_| ok)
    }

    /// `notify = { webhook = "..." }`: an absolute `http://` or `https://`
    /// URL with a host.
    pub(super) fn notify(&mut self, key: &str, n: &Spanned<RawNotify>) -> Option<NotifySpec> {
        let w = &n.get_ref().webhook;
        let text = w.get_ref();
        let why = match text.parse::<http::Uri>() {
            _ if !text.starts_with("http://") && !text.starts_with("https://") => {
                "the scheme must be http:// or https://".into()
            }
            _ if text
                .split_once("://")
                .is_some_and(|(_, rest)| rest.is_empty() || rest.starts_with('/')) =>
            {
                "a host is required".into()
            }
            Err(e) => e.to_string(),
            Ok(u) if u.host().is_none_or(str::is_empty) => "a host is required".into(),
            Ok(u) => return Some(NotifySpec { webhook: u }),
        };
        self.error(
            w,
            format!(
                "{key}.webhook: \"{}\" is not a webhook URL: {why}",
                w.get_ref()
            ),
        );
        None
    }
}
