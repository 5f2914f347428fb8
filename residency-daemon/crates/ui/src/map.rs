//! The world map, coloured by verdict: each country where flows went takes
//! the colour of its worst verdict in the period.
//!
//! The shapes are world-atlas 2.0.2's `countries-110m.json` (Natural Earth
//! at 1:110 m, public domain; the package is ISC), taken from the npm
//! registry and compiled in (`assets/`, with its licence). Its countries are
//! named by ISO 3166-1 numeric code, which `celes` turns into the alpha-2
//! codes residency records. They are projected once (equirectangular,
//! Antarctica left out) into SVG paths, kept for the life of the process.

use std::{collections::BTreeMap, fmt::Write as _, sync::OnceLock};

use maud::{Markup, PreEscaped, html};

use super::{
    charts::{esc, verdict_colour},
    layout::num,
};

/// world-atlas@2.0.2 `countries-110m.json`, as the npm registry ships it.
const TOPOLOGY: &str = include_str!("../assets/countries-110m.json");

const W: f64 = 960.0;
/// Latitudes drawn: 84 N to 58 S.
const NORTH: f64 = 84.0;
const SOUTH: f64 = -58.0;

/// A country's shape.
#[derive(Debug)]
pub struct Shape {
    /// ISO 3166-1 alpha-2, as residency records it (`XK` for Kosovo).
    pub code: String,
    pub name: String,
    /// SVG path data.
    pub path: String,
}

/// The projected shapes; empty if the compiled-in file could not be read
/// (a unit test rules that out).
pub fn shapes() -> &'static [Shape] {
    static SHAPES: OnceLock<Vec<Shape>> = OnceLock::new();
    SHAPES.get_or_init(|| {
        project().unwrap_or_else(|e| {
            tracing::error!("the world map's shapes cannot be read: {e}");
            Vec::new()
        })
    })
}

/// Countries world-atlas leaves without a numeric code.
fn unnumbered(name: &str) -> Option<&'static str> {
    match name {
        "Kosovo" => Some("XK"),
        "N. Cyprus" => Some("CY"),
        "Somaliland" => Some("SO"),
        _ => None,
    }
}

/// Appends a point; `prev` is the previous point's longitude as drawn, so
/// that a ring crossing the antimeridian (Russia, Fiji) goes on past the
/// map's edge, where the SVG clips it, instead of across the whole map.
fn point(out: &mut String, prev: &mut Option<f64>, p: &[f64]) {
    let (mut lon, lat) = (
        p.first().copied().unwrap_or(0.0),
        p.get(1).copied().unwrap_or(0.0),
    );
    if let Some(before) = *prev {
        while lon - before > 180.0 {
            lon -= 360.0;
        }
        while before - lon > 180.0 {
            lon += 360.0;
        }
    }
    let first = prev.is_none();
    *prev = Some(lon);
    let x = (lon + 180.0) * W / 360.0;
    let y = (NORTH - lat.clamp(SOUTH, NORTH)) * W / 360.0;
    let _ = write!(out, "{}{x:.1},{y:.1}", if first { "M" } else { "L" });
}

fn project() -> Result<Vec<Shape>, String> {
    let topo = match TOPOLOGY.parse::<topojson::TopoJson>() {
        Ok(topojson::TopoJson::Topology(t)) => t,
        Ok(_) => return Err("not a topology".into()),
        Err(e) => return Err(e.to_string()),
    };
    let countries = topojson::to_geojson(&topo, "countries").map_err(|e| e.to_string())?;
    let mut shapes = Vec::new();
    for f in countries.features {
        let name = f
            .properties
            .as_ref()
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        let numeric = match &f.id {
            Some(geojson::feature::Id::String(s)) => Some(s.clone()),
            Some(geojson::feature::Id::Number(n)) => Some(format!("{n:0>3}")),
            None => None,
        };
        // Antarctica (010) is all ice and no data centres.
        if numeric.as_deref() == Some("010") {
            continue;
        }
        let code = match numeric.as_deref() {
            Some(n) => celes::Country::from_code(n)
                .ok()
                .map(|c| c.alpha2.to_owned()),
            None => unnumbered(&name).map(str::to_owned),
        };
        let Some(code) = code else {
            continue;
        };
        let polygons = match f.geometry.map(|g| g.value) {
            Some(geojson::Value::Polygon(p)) => vec![p],
            Some(geojson::Value::MultiPolygon(m)) => m,
            _ => continue,
        };
        let mut path = String::new();
        for ring in polygons.iter().flatten() {
            let mut prev = None;
            for p in ring {
                point(&mut path, &mut prev, p);
            }
            path.push('Z');
        }
        shapes.push(Shape { code, name, path });
    }
    Ok(shapes)
}

/// What went to one country in the period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub allowed: u64,
    pub flagged: u64,
    pub blocked: u64,
}

impl Counts {
    /// The worst verdict with at least one flow.
    #[must_use]
    pub fn worst(&self) -> Option<&'static str> {
        if self.blocked > 0 {
            Some("blocked")
        } else if self.flagged > 0 {
            Some("flagged")
        } else if self.allowed > 0 {
            Some("allowed")
        } else {
            None
        }
    }
}

/// The map, each country coloured by its worst verdict, with its counts as
/// a tooltip.
#[must_use]
pub fn world(by_country: &BTreeMap<String, Counts>) -> Markup {
    let h = (NORTH - SOUTH) * W / 360.0;
    let mut paths = String::new();
    for s in shapes() {
        let counts = by_country.get(&s.code).copied().unwrap_or_default();
        let (fill, verdict) = match counts.worst() {
            Some(v) => (verdict_colour(v), v),
            None => ("#e5e8e8", "none"),
        };
        let title = if verdict == "none" {
            format!("{} ({}): no flows", s.name, s.code)
        } else {
            format!(
                "{} ({}): {} allowed, {} flagged, {} blocked",
                s.name,
                s.code,
                num(counts.allowed),
                num(counts.flagged),
                num(counts.blocked)
            )
        };
        let _ = write!(
            paths,
            "<path class=\"country\" data-country=\"{}\" data-verdict=\"{verdict}\" d=\"{}\" \
             fill=\"{fill}\" stroke=\"#fff\" stroke-width=\"0.4\"><title>{}</title></path>",
            esc(&s.code),
            s.path,
            esc(&title)
        );
    }
    html! {
        svg.chart.map viewBox=(format!("0 0 {W} {h:.0}")) role="img"
            aria-label="World map: each country coloured by its worst verdict" {
            (PreEscaped(paths))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_shapes_name_the_countries_residency_records() {
        let all = shapes();
        assert!(all.len() > 170, "{} shapes", all.len());
        for code in ["DE", "US", "FR", "CN", "BR", "IN", "XK", "GB", "JP"] {
            assert!(
                all.iter()
                    .any(|s| s.code == code && s.path.starts_with('M')),
                "{code}"
            );
        }
        assert!(!all.iter().any(|s| s.code == "AQ"));
    }

    #[test]
    fn countries_take_their_worst_verdict() {
        let mut by = BTreeMap::new();
        by.insert(
            "US".to_owned(),
            Counts {
                allowed: 5,
                flagged: 0,
                blocked: 1,
            },
        );
        by.insert(
            "DE".to_owned(),
            Counts {
                allowed: 3,
                ..Counts::default()
            },
        );
        let svg = world(&by).into_string();
        assert!(svg.contains("data-country=\"US\" data-verdict=\"blocked\""));
        assert!(svg.contains("data-country=\"DE\" data-verdict=\"allowed\""));
        assert!(svg.contains("data-country=\"FR\" data-verdict=\"none\""));
        assert!(svg.contains("5 allowed, 0 flagged, 1 blocked"));
    }
}
