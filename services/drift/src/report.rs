//! The skew report: a [`Comparison`] written for people, as Markdown and as one self-contained
//! HTML page (inline CSS and SVG, nothing fetched), features ranked by how far they moved, each
//! with its numbers, the statuses behind them and both distributions side by side.

use std::fmt::Write as _;

use crate::{
    Status,
    compare::{Comparison, Crossed, FeatureDrift, number},
    consistency::Consistency,
    profile::{FeatureProfile, Profile, Source, SourceKind},
};

/// What a report is about.
#[derive(Clone, Copy, Debug)]
pub struct ReportInput<'a> {
    /// The reference profile's file, as given.
    pub reference_path: &'a str,
    /// The reference profile.
    pub reference: &'a Profile,
    /// A profile of the served rows compared (for their quantiles and categories).
    pub served: &'a Profile,
    /// The comparison.
    pub comparison: &'a Comparison,
    /// The consistency check, when one was asked for.
    pub consistency: Option<ConsistencyInput<'a>>,
}

/// A consistency check's results and what they came from.
#[derive(Clone, Copy, Debug)]
pub struct ConsistencyInput<'a> {
    /// The table of recomputed features, as given.
    pub path: &'a str,
    /// The comparison per feature.
    pub consistency: &'a Consistency,
    /// Rows of the table whose request is not in the served range.
    pub unmatched: u64,
    /// The share of differing rows, in percent, above which a feature counts as inconsistent.
    pub threshold_percent: f64,
}

/// Percent with one decimal.
fn pct(share: f64) -> String {
    format!("{:.1}%", 100.0 * share)
}

/// Signed percentage points with one decimal.
fn points(p: f64) -> String {
    format!("{p:+.1}")
}

fn source_text(s: &Source) -> String {
    let kind = match s.kind {
        SourceKind::TrainingLog => "the training log",
        SourceKind::TrainingSet => "the training set",
        SourceKind::Window => "served vectors",
    };
    let range = match (&s.first_served_at, &s.last_served_at) {
        (Some(a), Some(b)) => format!(", served {a} to {b}"),
        _ => String::new(),
    };
    format!("{} vectors from {kind} `{}`{range}", s.rows, s.path)
}

fn sources_text(p: &Profile) -> String {
    if p.sources.is_empty() {
        return format!("{} vectors", p.rows);
    }
    let parts: Vec<String> = p.sources.iter().map(source_text).collect();
    parts.join("; ")
}

/// Each status's share, reference → served, and the change in points.
fn statuses_text(f: &FeatureDrift) -> String {
    let parts: Vec<String> = f
        .statuses
        .iter()
        .map(|(s, ch)| {
            format!(
                "{s} {} → {} ({})",
                pct(ch.reference),
                pct(ch.served),
                points(ch.points())
            )
        })
        .collect();
    parts.join(", ")
}

fn crossed_text(f: &FeatureDrift) -> String {
    let parts: Vec<String> = f
        .crossed
        .iter()
        .map(|c| match c {
            Crossed::Psi => "PSI".to_owned(),
            Crossed::NullRate => "null rate".to_owned(),
            Crossed::Status(s) => format!("{s} share"),
            Crossed::Default => "defaults served".to_owned(),
        })
        .collect();
    parts.join(", ")
}

/// The statuses behind a feature's values, served against the reference: e.g. `32.0%
/// TIMED_OUT (reference 0.1%), default served for 32.0% (reference 0.0%)`.
pub fn explain(f: &FeatureDrift) -> String {
    let mut parts: Vec<String> = f
        .statuses
        .iter()
        .filter(|(s, c)| *s != Status::Present && (c.served >= 0.0005 || c.reference >= 0.0005))
        .map(|(s, c)| format!("{} {s} (reference {})", pct(c.served), pct(c.reference)))
        .collect();
    if f.default_share.served > 0.0 || f.default_share.reference > 0.0 {
        parts.push(format!(
            "default served for {} (reference {})",
            pct(f.default_share.served),
            pct(f.default_share.reference)
        ));
    }
    if parts.is_empty() {
        let present = f
            .statuses
            .iter()
            .find(|(s, _)| *s == Status::Present)
            .map_or(0.0, |(_, c)| c.served);
        return format!("{} PRESENT", pct(present));
    }
    parts.join(", ")
}

fn headline(input: &ReportInput<'_>) -> String {
    let c = input.comparison;
    let crossed: Vec<String> = c
        .crossed()
        .map(|f| {
            let why = match f.psi {
                Some(p) if f.crossed.contains(&Crossed::Psi) => format!("PSI {p:.2}"),
                _ => crossed_text(f),
            };
            format!("`{}` ({why})", f.feature)
        })
        .collect();
    if crossed.is_empty() {
        format!(
            "No feature moved past a threshold ({} features compared).",
            c.features.len()
        )
    } else {
        format!(
            "{} of {} features moved past a threshold: {}.",
            crossed.len(),
            c.features.len(),
            crossed.join(", ")
        )
    }
}

fn thresholds_text(c: &Comparison) -> String {
    format!(
        "PSI above {}; the null rate moving by more than {} points; a non-PRESENT status's \
         share or the share of defaults served moving by more than {} points",
        number(c.thresholds.psi),
        number(c.thresholds.null_rate_points),
        number(c.thresholds.status_points)
    )
}

fn profile_of<'p>(p: &'p Profile, name: &str) -> Option<&'p FeatureProfile> {
    p.features.iter().find(|f| f.name == name)
}

/// Reference → served quantiles, or new categories, for one feature.
fn distribution_lines(input: &ReportInput<'_>, f: &FeatureDrift) -> Vec<String> {
    let (Some(r), Some(s)) = (
        profile_of(input.reference, &f.feature),
        profile_of(input.served, &f.feature),
    ) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    if let (Some(rn), Some(sn)) = (&r.numeric, &s.numeric) {
        let what = match rn.measure {
            crate::profile::Measure::Value => "Quantiles",
            crate::profile::Measure::EpochSeconds => "Quantiles (epoch seconds)",
            crate::profile::Measure::Length => "Quantiles of the length",
        };
        if let (Some(rq), Some(sq)) = (&rn.quantiles, &sn.quantiles) {
            let pairs = [
                ("p1", rq.p1, sq.p1),
                ("p5", rq.p5, sq.p5),
                ("p25", rq.p25, sq.p25),
                ("p50", rq.p50, sq.p50),
                ("p75", rq.p75, sq.p75),
                ("p95", rq.p95, sq.p95),
                ("p99", rq.p99, sq.p99),
            ];
            let text: Vec<String> = pairs
                .iter()
                .map(|(name, a, b)| format!("{name} {} → {}", number(*a), number(*b)))
                .collect();
            lines.push(format!("{what}, reference → served: {}", text.join(", ")));
        }
        if let (Some(rmin), Some(rmax), Some(smin), Some(smax)) = (rn.min, rn.max, sn.min, sn.max) {
            lines.push(format!(
                "Range, reference → served: {} … {} → {} … {}",
                number(rmin),
                number(rmax),
                number(smin),
                number(smax)
            ));
        }
    }
    if let (Some(rc), Some(sc)) = (&r.categorical, &s.categorical) {
        let new: Vec<String> = sc
            .top
            .iter()
            .filter(|c| !rc.top.iter().any(|t| t.value == c.value))
            .take(5)
            .map(|c| format!("{:?} {}", c.value, pct(c.share)))
            .collect();
        if !new.is_empty() {
            lines.push(format!(
                "Served values not among the reference's top categories (shares of values): {}",
                new.join(", ")
            ));
        }
    }
    lines
}

fn psi_text(f: &FeatureDrift) -> String {
    match f.psi {
        Some(p) => format!("{p:.3}"),
        None if f.buckets.is_empty() => "— (values not profiled)".to_owned(),
        None => "— (no rows)".to_owned(),
    }
}

/// The report as Markdown.
pub fn markdown(input: &ReportInput<'_>) -> String {
    let c = input.comparison;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Skew report: `{}`\n",
        input.reference.feature_service
    );
    let _ = writeln!(
        out,
        "- Reference: `{}`, definition `{}`: {}",
        input.reference_path,
        input
            .reference
            .definition_hash
            .as_deref()
            .unwrap_or("unknown"),
        sources_text(input.reference)
    );
    let _ = writeln!(
        out,
        "- Served: definition `{}`: {}",
        input.served.definition_hash.as_deref().unwrap_or("unknown"),
        sources_text(input.served)
    );
    let _ = writeln!(out, "- Thresholds: {}\n", thresholds_text(c));
    let _ = writeln!(out, "**{}**\n", headline(input));
    let _ = writeln!(
        out,
        "| # | feature | type | PSI | null rate | statuses and defaults served | moved |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (i, f) in c.features.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | `{}` | {} | {} | {} → {} ({}) | {} | {} |",
            i + 1,
            f.feature,
            f.ty.name(),
            psi_text(f),
            pct(f.null_rate.reference),
            pct(f.null_rate.served),
            points(f.null_rate.points()),
            explain(f),
            if f.crossed.is_empty() {
                "no".to_owned()
            } else {
                format!("**{}**", crossed_text(f))
            }
        );
    }
    for (i, f) in c.features.iter().enumerate() {
        let _ = writeln!(out, "\n## {}. `{}` ({})\n", i + 1, f.feature, f.ty.name());
        let _ = writeln!(
            out,
            "- PSI {} (threshold {}); null rate {} → {} ({} points); defaults served {} → {} \
             ({} points); {} reference and {} served observations",
            psi_text(f),
            number(c.thresholds.psi),
            pct(f.null_rate.reference),
            pct(f.null_rate.served),
            points(f.null_rate.points()),
            pct(f.default_share.reference),
            pct(f.default_share.served),
            points(f.default_share.points()),
            f.reference_count,
            f.served_count
        );
        if !f.crossed.is_empty() {
            let _ = writeln!(out, "- Moved past: {}", crossed_text(f));
        }
        let _ = writeln!(out, "- Statuses, reference → served: {}", statuses_text(f));
        for line in distribution_lines(input, f) {
            let _ = writeln!(out, "- {line}");
        }
        if !f.buckets.is_empty() {
            let _ = writeln!(out, "\n| bucket | reference | served |\n|---|---|---|");
            for b in &f.buckets {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    b.label.replace('|', "\\|"),
                    pct(b.reference),
                    pct(b.served)
                );
            }
        }
    }
    if let Some(ci) = &input.consistency {
        let _ = writeln!(out, "\n## Online/offline consistency\n");
        let _ = writeln!(
            out,
            "Served values against `{}` (doubles equal within a relative 1e-9); {} of its rows \
             have no served vector in range.\n",
            ci.path, ci.unmatched
        );
        let _ = writeln!(out, "| feature | rows | differ | share | examples |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for f in &ci.consistency.features {
            let examples: Vec<String> = f
                .examples
                .iter()
                .map(|e| {
                    format!(
                        "`{}`: served {}, recomputed {}",
                        e.request_id, e.served, e.recomputed
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                f.feature,
                f.rows,
                f.differ,
                pct(f.differ_share()),
                examples.join("; ").replace('|', "\\|")
            );
        }
    }
    out
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Inline `code` spans of Markdown-ish text as HTML.
fn code_spans(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", esc(part));
        } else {
            out.push_str(&esc(part));
        }
    }
    out
}

const REFERENCE_COLOR: &str = "#4c78a8";
const SERVED_COLOR: &str = "#f58518";

/// Both distributions of a feature as horizontal bars, reference above served, per bucket.
fn svg(f: &FeatureDrift) -> String {
    const LABEL: f64 = 170.0;
    const BAR: f64 = 360.0;
    const ROW: f64 = 26.0;
    let top = 24.0;
    let height = top + ROW * f.buckets.len() as f64 + 8.0;
    let width = LABEL + BAR + 70.0;
    let max = f
        .buckets
        .iter()
        .flat_map(|b| [b.reference, b.served])
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         role=\"img\" aria-label=\"{} distributions\">",
        esc(&f.feature)
    );
    let _ = write!(
        out,
        "<rect x=\"{LABEL}\" y=\"4\" width=\"10\" height=\"10\" fill=\"{REFERENCE_COLOR}\"/>\
         <text x=\"{}\" y=\"13\" font-size=\"11\">reference</text>\
         <rect x=\"{}\" y=\"4\" width=\"10\" height=\"10\" fill=\"{SERVED_COLOR}\"/>\
         <text x=\"{}\" y=\"13\" font-size=\"11\">served</text>",
        LABEL + 14.0,
        LABEL + 90.0,
        LABEL + 104.0
    );
    for (i, b) in f.buckets.iter().enumerate() {
        let y = top + ROW * i as f64;
        let label: String = b.label.chars().take(28).collect();
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            LABEL - 6.0,
            y + 15.0,
            esc(&label)
        );
        for (k, (share, color)) in [(b.reference, REFERENCE_COLOR), (b.served, SERVED_COLOR)]
            .into_iter()
            .enumerate()
        {
            let w = BAR * share / max;
            let by = y + 2.0 + 11.0 * k as f64;
            let _ = write!(
                out,
                "<rect x=\"{LABEL}\" y=\"{by}\" width=\"{w:.1}\" height=\"10\" fill=\"{color}\">\
                 <title>{} {}: {}</title></rect>\
                 <text x=\"{:.1}\" y=\"{}\" font-size=\"9\">{}</text>",
                if k == 0 { "reference" } else { "served" },
                esc(&b.label),
                pct(share),
                LABEL + w + 3.0,
                by + 9.0,
                pct(share)
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// The report as one self-contained HTML page.
pub fn html(input: &ReportInput<'_>) -> String {
    let c = input.comparison;
    let title = format!("Skew report: {}", input.reference.feature_service);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;\
         padding:.25em .5em;text-align:left;vertical-align:top}}th{{background:#f3f3f3}}\
         .moved{{color:#b00020;font-weight:600}}section{{border-top:1px solid #ddd;\
         margin-top:1.5em}}code{{background:#f5f5f5;padding:0 .2em}}</style></head><body>\n",
        esc(&title)
    );
    let _ = writeln!(
        out,
        "<h1>Skew report: <code>{}</code></h1>",
        esc(&input.reference.feature_service)
    );
    let _ = writeln!(
        out,
        "<ul><li>Reference: {}</li><li>Served: {}</li><li>Thresholds: {}</li></ul>",
        code_spans(&format!(
            "`{}`, definition `{}`: {}",
            input.reference_path,
            input
                .reference
                .definition_hash
                .as_deref()
                .unwrap_or("unknown"),
            sources_text(input.reference)
        )),
        code_spans(&format!(
            "definition `{}`: {}",
            input.served.definition_hash.as_deref().unwrap_or("unknown"),
            sources_text(input.served)
        )),
        esc(&thresholds_text(c))
    );
    let _ = writeln!(
        out,
        "<p><strong>{}</strong></p>",
        code_spans(&headline(input))
    );
    out.push_str(
        "<table><tr><th>#</th><th>feature</th><th>type</th><th>PSI</th><th>null rate</th>\
         <th>statuses and defaults served</th><th>moved</th></tr>\n",
    );
    for (i, f) in c.features.iter().enumerate() {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><a href=\"#f{}\"><code>{}</code></a></td><td>{}</td><td>{}</td>\
             <td>{} → {} ({})</td><td>{}</td><td{}>{}</td></tr>",
            i + 1,
            i + 1,
            esc(&f.feature),
            esc(f.ty.name()),
            esc(&psi_text(f)),
            pct(f.null_rate.reference),
            pct(f.null_rate.served),
            points(f.null_rate.points()),
            esc(&explain(f)),
            if f.crossed.is_empty() {
                ""
            } else {
                " class=\"moved\""
            },
            if f.crossed.is_empty() {
                "no".to_owned()
            } else {
                esc(&crossed_text(f))
            }
        );
    }
    out.push_str("</table>\n");
    for (i, f) in c.features.iter().enumerate() {
        let _ = writeln!(
            out,
            "<section id=\"f{}\"><h2>{}. <code>{}</code> ({})</h2><ul>",
            i + 1,
            i + 1,
            esc(&f.feature),
            esc(f.ty.name())
        );
        let _ = writeln!(
            out,
            "<li>PSI {} (threshold {}); null rate {} → {} ({} points); defaults served {} → {} \
             ({} points); {} reference and {} served observations</li>",
            esc(&psi_text(f)),
            number(c.thresholds.psi),
            pct(f.null_rate.reference),
            pct(f.null_rate.served),
            points(f.null_rate.points()),
            pct(f.default_share.reference),
            pct(f.default_share.served),
            points(f.default_share.points()),
            f.reference_count,
            f.served_count
        );
        if !f.crossed.is_empty() {
            let _ = writeln!(
                out,
                "<li class=\"moved\">Moved past: {}</li>",
                esc(&crossed_text(f))
            );
        }
        let _ = writeln!(
            out,
            "<li>Statuses, reference → served: {}</li>",
            esc(&statuses_text(f))
        );
        for line in distribution_lines(input, f) {
            let _ = writeln!(out, "<li>{}</li>", esc(&line));
        }
        out.push_str("</ul>\n");
        if !f.buckets.is_empty() {
            out.push_str(&svg(f));
            out.push('\n');
        }
        out.push_str("</section>\n");
    }
    if let Some(ci) = &input.consistency {
        let _ = writeln!(
            out,
            "<section><h2>Online/offline consistency</h2><p>Served values against \
             <code>{}</code> (doubles equal within a relative 1e-9); {} of its rows have no \
             served vector in range.</p><table><tr><th>feature</th><th>rows</th><th>differ</th>\
             <th>share</th><th>examples</th></tr>",
            esc(ci.path),
            ci.unmatched
        );
        for f in &ci.consistency.features {
            let examples: Vec<String> = f
                .examples
                .iter()
                .map(|e| {
                    format!(
                        "{}: served {}, recomputed {}",
                        e.request_id, e.served, e.recomputed
                    )
                })
                .collect();
            let moved = f.differ_share() * 100.0 > ci.threshold_percent;
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td{}>{}</td><td>{}</td></tr>",
                esc(&f.feature),
                f.rows,
                f.differ,
                if moved { " class=\"moved\"" } else { "" },
                pct(f.differ_share()),
                esc(&examples.join("; "))
            );
        }
        out.push_str("</table></section>\n");
    }
    out.push_str("</body></html>\n");
    out
}
