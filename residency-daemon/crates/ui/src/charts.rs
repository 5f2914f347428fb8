//! Charts drawn as SVG on the server: the flow diagram (Sankey) of tenant,
//! role, destination country and verdict, and the counts per day.
//!
//! Drawn here rather than by a script library: the numbers are in the page
//! as it arrives (no script, nothing to load), every shape carries its
//! figures in a `<title>` (a tooltip, and text for a screen reader), and
//! the transfer report, which prints to PDF, draws the same pictures.

use std::{collections::BTreeMap, fmt::Write as _};

use maud::{Markup, PreEscaped, html};

use super::layout::num;

/// Text escaped for HTML and SVG.
pub(crate) fn esc(s: &str) -> String {
    html! { (s) }.into_string()
}

/// The colours of the verdicts (as the stylesheet's).
#[must_use]
pub fn verdict_colour(v: &str) -> &'static str {
    match v {
        "blocked" => "#c0392b",
        "flagged" => "#d68910",
        "allowed" => "#1e8449",
        _ => "#7f8c8d",
    }
}

/// One band of the flow diagram: `value` flows from `from` (a node of one
/// column) to `to` (a node of the next).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Band {
    pub column: usize,
    pub from: String,
    pub to: String,
    pub value: u64,
}

/// A flow diagram of `columns` (their headings), from bands between
/// adjacent columns. A node's height is the larger of what goes into it
/// and what leaves it; bands are stacked in the order of the nodes they
/// join, so none cross within a node.
#[must_use]
#[expect(
    clippy::cast_precision_loss,
    reason = "flow counts are drawn, not counted, here"
)]
#[expect(
    clippy::too_many_lines,
    reason = "the layout, then the three kinds of shape"
)]
pub fn sankey(columns: &[&str], bands: &[Band]) -> Markup {
    const W: f64 = 960.0;
    const H: f64 = 420.0;
    const TOP: f64 = 24.0;
    const NODE_W: f64 = 12.0;
    const PAD: f64 = 10.0;
    let n = columns.len();
    if n < 2 || bands.iter().all(|b| b.value == 0) {
        return html! { p.empty { "No flows in this period." } };
    }
    // Node values per column: max(in, out).
    let mut ins: Vec<BTreeMap<&str, u64>> = vec![BTreeMap::new(); n];
    let mut outs: Vec<BTreeMap<&str, u64>> = vec![BTreeMap::new(); n];
    for b in bands.iter().filter(|b| b.value > 0 && b.column + 1 < n) {
        *outs[b.column].entry(&b.from).or_default() += b.value;
        *ins[b.column + 1].entry(&b.to).or_default() += b.value;
    }
    let mut nodes: Vec<Vec<(&str, u64)>> = Vec::with_capacity(n);
    for c in 0..n {
        let mut all: BTreeMap<&str, u64> = ins[c].clone();
        for (k, v) in &outs[c] {
            let e = all.entry(k).or_default();
            *e = (*e).max(*v);
        }
        let mut col: Vec<(&str, u64)> = all.into_iter().collect();
        col.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        nodes.push(col);
    }
    let avail = H - TOP;
    let scale = nodes
        .iter()
        .filter(|c| !c.is_empty())
        .map(|c| {
            let total: u64 = c.iter().map(|x| x.1).sum();
            (avail - PAD * (c.len() as f64 - 1.0)).max(avail * 0.3) / total.max(1) as f64
        })
        .fold(f64::INFINITY, f64::min);
    let x_of = |c: usize| (W - NODE_W - 150.0) * c as f64 / (n as f64 - 1.0) + 20.0;
    // y of each node: top, and the running offsets of bands out and in.
    let mut top: Vec<BTreeMap<&str, f64>> = vec![BTreeMap::new(); n];
    for (c, col) in nodes.iter().enumerate() {
        let mut y = TOP;
        for (name, v) in col {
            top[c].insert(name, y);
            y += *v as f64 * scale + PAD;
        }
    }
    let rank = |c: usize, name: &str| nodes[c].iter().position(|x| x.0 == name).unwrap_or(0);
    let mut ordered: Vec<&Band> = bands
        .iter()
        .filter(|b| b.value > 0 && b.column + 1 < n)
        .collect();
    ordered.sort_by_key(|b| (b.column, rank(b.column, &b.from), rank(b.column + 1, &b.to)));
    let mut out_off: Vec<BTreeMap<&str, f64>> = vec![BTreeMap::new(); n];
    let mut in_off: Vec<BTreeMap<&str, f64>> = vec![BTreeMap::new(); n];
    // Bands into a node are stacked in the order of where they come from.
    let mut by_target = ordered.clone();
    by_target.sort_by_key(|b| (b.column, rank(b.column + 1, &b.to), rank(b.column, &b.from)));
    let mut target_y: BTreeMap<(usize, &str, &str), f64> = BTreeMap::new();
    for b in &by_target {
        let off = in_off[b.column + 1].entry(&b.to).or_default();
        let y = top[b.column + 1].get(b.to.as_str()).copied().unwrap_or(TOP) + *off;
        target_y.insert((b.column, &b.from, &b.to), y);
        *off += b.value as f64 * scale;
    }
    let mut paths = String::new();
    for b in &ordered {
        let w = b.value as f64 * scale;
        let off = out_off[b.column].entry(&b.from).or_default();
        let y0 = top[b.column].get(b.from.as_str()).copied().unwrap_or(TOP) + *off;
        *off += w;
        let y1 = target_y
            .get(&(b.column, b.from.as_str(), b.to.as_str()))
            .copied()
            .unwrap_or(TOP);
        let (x0, x1) = (x_of(b.column) + NODE_W, x_of(b.column + 1));
        let xm = f64::midpoint(x0, x1);
        let colour = if b.column + 2 == n {
            verdict_colour(&b.to)
        } else {
            "#5d6d7e"
        };
        let _ = write!(
            paths,
            "<path class=\"band\" d=\"M{x0:.1},{y0:.1}C{xm:.1},{y0:.1} {xm:.1},{y1:.1} {x1:.1},{y1:.1}\
             L{x1:.1},{:.1}C{xm:.1},{:.1} {xm:.1},{:.1} {x0:.1},{:.1}Z\" fill=\"{colour}\" \
             fill-opacity=\"0.35\"><title>{} → {}: {} flows</title></path>",
            y1 + w,
            y1 + w,
            y0 + w,
            y0 + w,
            esc(&b.from),
            esc(&b.to),
            num(b.value)
        );
    }
    let mut rects = String::new();
    for (c, col) in nodes.iter().enumerate() {
        let x = x_of(c);
        for (name, v) in col {
            let y = top[c].get(name).copied().unwrap_or(TOP);
            let h = (*v as f64 * scale).max(1.0);
            let fill = if c + 1 == n {
                verdict_colour(name)
            } else {
                "#2c3e50"
            };
            let label = esc(name);
            let _ = write!(
                rects,
                "<g class=\"node\"><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{NODE_W}\" height=\"{h:.1}\" \
                 fill=\"{fill}\"><title>{label}: {} flows</title></rect>\
                 <text x=\"{:.1}\" y=\"{:.1}\" dominant-baseline=\"middle\">{label} ({})</text></g>",
                num(*v),
                x + NODE_W + 4.0,
                y + h / 2.0,
                num(*v)
            );
        }
    }
    let mut heads = String::new();
    for (c, name) in columns.iter().enumerate() {
        let _ = write!(
            heads,
            "<text class=\"head\" x=\"{:.1}\" y=\"12\">{}</text>",
            x_of(c),
            esc(name)
        );
    }
    html! {
        svg.chart.sankey viewBox=(format!("0 0 {W} {H}")) role="img"
            aria-label=(format!("Flows from {} to {}", columns[0], columns[n - 1])) {
            (PreEscaped(heads)) (PreEscaped(paths)) (PreEscaped(rects))
        }
    }
}

/// Counts per day, stacked by verdict: `days` as (label, allowed,
/// flagged, blocked).
#[must_use]
#[expect(
    clippy::cast_precision_loss,
    reason = "counts are drawn, not counted, here"
)]
pub fn per_day(days: &[(String, u64, u64, u64)]) -> Markup {
    const W: f64 = 960.0;
    const H: f64 = 200.0;
    const BASE: f64 = 175.0;
    let max = days
        .iter()
        .map(|d| d.1 + d.2 + d.3)
        .max()
        .unwrap_or(0)
        .max(1);
    let slot = W / days.len().max(1) as f64;
    let bar = (slot * 0.7).clamp(1.0, 60.0);
    let mut shapes = String::new();
    for (i, (label, a, f, b)) in days.iter().enumerate() {
        let x = i as f64 * slot + (slot - bar) / 2.0;
        let mut y = BASE;
        for (v, which) in [(*a, "allowed"), (*f, "flagged"), (*b, "blocked")] {
            let h = v as f64 / max as f64 * (BASE - 10.0);
            if v > 0 {
                y -= h;
                let _ = write!(
                    shapes,
                    "<rect class=\"bar\" data-verdict=\"{which}\" x=\"{x:.1}\" y=\"{y:.1}\" \
                     width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {} {which}</title></rect>",
                    h.max(0.5),
                    verdict_colour(which),
                    esc(label),
                    num(v)
                );
            }
        }
        if days.len() <= 16 || i % (days.len() / 8).max(1) == 0 {
            let _ = write!(
                shapes,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x + bar / 2.0,
                BASE + 16.0,
                esc(label.get(5..).unwrap_or(label))
            );
        }
    }
    html! {
        svg.chart.days viewBox=(format!("0 0 {W} {H}")) role="img"
            aria-label=(format!("Flows per day, highest {}", num(max))) {
            line x1="0" y1=(BASE) x2=(W) y2=(BASE) stroke="#999" {}
            (PreEscaped(shapes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn band(column: usize, from: &str, to: &str, value: u64) -> Band {
        Band {
            column,
            from: from.into(),
            to: to.into(),
            value,
        }
    }

    #[test]
    fn sankey_draws_a_band_per_flow_and_a_node_per_name() {
        let svg = sankey(
            &["Tenant", "Country", "Verdict"],
            &[
                band(0, "acme", "DE", 10),
                band(0, "acme", "US", 5),
                band(0, "<globex>", "US", 2),
                band(1, "DE", "allowed", 10),
                band(1, "US", "blocked", 7),
            ],
        )
        .into_string();
        assert_eq!(svg.matches("<path class=\"band\"").count(), 5, "{svg}");
        assert_eq!(svg.matches("<g class=\"node\">").count(), 2 + 2 + 2);
        assert!(svg.contains("acme (15)"), "{svg}");
        assert!(svg.contains("US (7)"));
        assert!(svg.contains("&lt;globex&gt;"), "names are escaped: {svg}");
        assert!(!svg.contains("<globex>"));
        assert!(svg.contains(verdict_colour("blocked")));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn nothing_to_draw_says_so() {
        assert!(sankey(&["a", "b"], &[]).into_string().contains("No flows"));
    }

    #[test]
    fn days_stack_by_verdict() {
        let svg = per_day(&[
            ("2026-12-06".into(), 5, 0, 1),
            ("2026-12-07".into(), 0, 0, 0),
        ])
        .into_string();
        assert_eq!(svg.matches("class=\"bar\"").count(), 2, "{svg}");
        assert!(svg.contains("2026-12-06: 1 blocked"));
    }
}
