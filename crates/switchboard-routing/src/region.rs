//! Regions: named geofences (GeoJSON or WKT polygons parsed into `geo`
//! types) that decide which agents may serve which customers.
//!
//! # Design
//!
//! - **Borders are inclusive.** A point exactly on a region's border (outer
//!   ring or a hole's ring) is inside: an agent on the line between two
//!   regions may serve both. Floating-point input rarely lands on a border,
//!   and when it does we prefer serving a customer to refusing one.
//! - **Holes are outside.** A point strictly inside a hole is not in the
//!   region (a city-state cut out of a country).
//! - **The antimeridian is supported** for a polygon that crosses it once
//!   (an edge spanning more than 180° of longitude, as a ring around Fiji
//!   written with longitudes 177 and -178 has). Such a polygon is unwrapped
//!   at load: negative longitudes are shifted by +360 so it lies in one
//!   continuous band; a point is then tested at `lon` and at `lon + 360`.
//!   GeoJSON (RFC 7946) prefers splitting at ±180 into a MultiPolygon; that
//!   form works too, with no special handling.
//! - **Agents with no location** are excluded unless the config says
//!   `agents_without_location = "include"`, pool-wide or for one region:
//!   data residency fails closed.
//! - A customer location inside no region carries no residency rule; a
//!   location in several (nested) regions resolves to the smallest.

use crate::error::ConfigErrorKind;
use geo::{Area, Intersects, MultiPolygon, Point, Relate, Validation};
use std::collections::BTreeMap;
use switchboard_core::model::Location;

/// A region's name, as used in the config and in hand-offs.
pub type RegionId = String;

/// What to do with an agent whose location is unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NoLocationPolicy {
    /// Not allowed to serve region-bound conversations (fail closed).
    #[default]
    Exclude,
    /// Treated as inside the region.
    Include,
}

impl NoLocationPolicy {
    pub fn from_name(name: &str) -> Option<NoLocationPolicy> {
        match name {
            "exclude" => Some(NoLocationPolicy::Exclude),
            "include" => Some(NoLocationPolicy::Include),
            _ => None,
        }
    }
}

/// How the roster's `allowed_regions` combine with the geofence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RosterRegionPolicy {
    /// An agent serves a region only if the roster lists it (the core's
    /// rule: data residency is opt-in per agent), and only from inside it.
    #[default]
    Required,
    /// An empty roster list puts no limit (the geofence alone decides); a
    /// non-empty one must list the region.
    IfListed,
}

impl RosterRegionPolicy {
    pub fn from_name(name: &str) -> Option<RosterRegionPolicy> {
        match name {
            "required" => Some(RosterRegionPolicy::Required),
            "if_listed" => Some(RosterRegionPolicy::IfListed),
            _ => None,
        }
    }

    /// Whether a roster listing `allowed` permits serving `region`.
    pub fn permits(self, allowed: &[String], region: &str) -> bool {
        allowed.iter().any(|a| a == region)
            || (self == RosterRegionPolicy::IfListed && allowed.is_empty())
    }
}

/// One named region.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    pub name: RegionId,
    /// The area, possibly unwrapped across the antimeridian (longitudes up
    /// to 360); see the module docs.
    pub shape: MultiPolygon<f64>,
    /// Whether some polygon was unwrapped across the antimeridian.
    pub crosses_antimeridian: bool,
    pub agents_without_location: NoLocationPolicy,
    /// Planar area in square degrees, used only to pick the smallest of
    /// nested regions.
    pub(crate) area: f64,
}

impl Region {
    /// Whether `location` lies in the region, border included.
    pub fn contains(&self, location: Location) -> bool {
        let (lon, lat) = (location.longitude, location.latitude);
        if !(lon.is_finite() && lat.is_finite()) {
            return false;
        }
        self.shape.intersects(&Point::new(lon, lat))
            || (self.crosses_antimeridian && self.shape.intersects(&Point::new(lon + 360.0, lat)))
    }

    /// Whether an agent at `agent_location` (or nowhere known) may serve
    /// customers of this region.
    pub fn admits_agent(&self, agent_location: Option<Location>) -> bool {
        match agent_location {
            Some(location) => self.contains(location),
            None => self.agents_without_location == NoLocationPolicy::Include,
        }
    }

    /// Whether this region covers all of `other` (borders may touch).
    pub(crate) fn covers(&self, other: &Region) -> bool {
        if self.crosses_antimeridian != other.crosses_antimeridian {
            // Different longitude bands: compare point by point instead of
            // relating shapes across the seam.
            return other
                .shape
                .0
                .iter()
                .flat_map(|p| p.exterior().0.iter())
                .all(|c| {
                    self.contains(Location {
                        latitude: c.y,
                        longitude: if c.x > 180.0 { c.x - 360.0 } else { c.x },
                    })
                });
        }
        self.shape.relate(&other.shape).is_covers()
    }
}

/// All regions of a routing config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Regions {
    pub(crate) by_name: BTreeMap<RegionId, Region>,
    pub roster_policy: RosterRegionPolicy,
}

/// The customer side of a region check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CustomerRegion<'a> {
    /// The hand-off names a region.
    Named(&'a str),
    /// The hand-off gives a location; its region is resolved.
    Location(Location),
    /// Neither: no residency rule applies.
    Unspecified,
}

impl Regions {
    pub fn get(&self, name: &str) -> Option<&Region> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The region a location lies in: the smallest containing region (ties
    /// by name), or `None` when no region contains it.
    pub fn resolve_region(&self, location: Location) -> Option<RegionId> {
        self.by_name
            .values()
            .filter(|r| r.contains(location))
            .min_by(|a, b| a.area.total_cmp(&b.area).then_with(|| a.name.cmp(&b.name)))
            .map(|r| r.name.clone())
    }

    /// The customer's region, if any rule applies: `Ok(None)` means no
    /// residency rule; `Err(name)` a named region the config lacks.
    pub fn customer_region<'a>(
        &self,
        customer: CustomerRegion<'a>,
    ) -> Result<Option<RegionId>, &'a str> {
        match customer {
            CustomerRegion::Named(name) if self.by_name.contains_key(name) => {
                Ok(Some(name.to_owned()))
            }
            CustomerRegion::Named(name) => Err(name),
            CustomerRegion::Location(location) => Ok(self.resolve_region(location)),
            CustomerRegion::Unspecified => Ok(None),
        }
    }

    /// Whether an agent at `agent_location` may serve a customer of
    /// `customer`; an unknown named region admits nobody.
    pub fn region_allows(
        &self,
        customer: CustomerRegion<'_>,
        agent_location: Option<Location>,
    ) -> bool {
        match self.customer_region(customer) {
            Ok(None) => true,
            Ok(Some(name)) => self
                .by_name
                .get(&name)
                .is_some_and(|r| r.admits_agent(agent_location)),
            Err(_) => false,
        }
    }
}

/// How a region's polygon is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PolygonFormat {
    Wkt,
    GeoJson,
}

type RawRing = Vec<(f64, f64)>;
type RawPolygon = Vec<RawRing>;

/// A problem with a polygon, before file position is attached.
pub(crate) type PolygonProblem = (ConfigErrorKind, String);

/// Parses and validates a polygon; reports every problem found.
pub(crate) fn parse_region(
    name: &str,
    format: PolygonFormat,
    text: &str,
    agents_without_location: NoLocationPolicy,
) -> Result<Region, Vec<PolygonProblem>> {
    if text.len() > MAX_POLYGON_BYTES {
        return Err(vec![(
            ConfigErrorKind::BadPolygon,
            format!(
                "is {} bytes; the limit is {MAX_POLYGON_BYTES} (simplify the outline)",
                text.len()
            ),
        )]);
    }
    let raw = match format {
        PolygonFormat::Wkt => raw_from_wkt(text),
        PolygonFormat::GeoJson => raw_from_geojson(text),
    }
    .map_err(|message| vec![(ConfigErrorKind::BadPolygon, message)])?;
    let points: usize = raw.iter().flatten().map(Vec::len).sum();
    if points > MAX_REGION_POINTS {
        return Err(vec![(
            ConfigErrorKind::BadPolygon,
            format!(
                "has {points} points; the limit is {MAX_REGION_POINTS} per region \
                 (simplify the outline, e.g. Douglas-Peucker with a tolerance of ~100 m)"
            ),
        )]);
    }
    let mut problems = Vec::new();
    if raw.is_empty() {
        problems.push((ConfigErrorKind::BadPolygon, "has no polygons".to_owned()));
    }
    let many = raw.len() > 1;
    for (p, polygon) in raw.iter().enumerate() {
        if polygon.is_empty() {
            problems.push((
                ConfigErrorKind::BadPolygon,
                format!("{}has no rings", polygon_label(many, p)),
            ));
        }
        for (r, ring) in polygon.iter().enumerate() {
            check_ring(&ring_label(many, p, r), ring, &mut problems);
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut crosses_antimeridian = false;
    let mut polygons = Vec::with_capacity(raw.len());
    for (p, mut polygon) in raw.into_iter().enumerate() {
        let crosses = polygon.first().is_some_and(|exterior| {
            exterior
                .windows(2)
                .any(|pair| (pair[0].0 - pair[1].0).abs() > 180.0)
        });
        if crosses {
            for ring in &mut polygon {
                for coord in ring.iter_mut() {
                    if coord.0 < 0.0 {
                        coord.0 += 360.0;
                    }
                }
            }
            let still = polygon.iter().any(|ring| {
                ring.windows(2)
                    .any(|pair| (pair[0].0 - pair[1].0).abs() > 180.0)
            });
            if still {
                problems.push((
                    ConfigErrorKind::Unsupported,
                    format!(
                        "{}crosses the antimeridian in a way that is unsupported \
                         (more than once, or a hole crossing it); split it at ±180 into a MultiPolygon",
                        polygon_label(many, p)
                    ),
                ));
                continue;
            }
            crosses_antimeridian = true;
        }
        let mut rings = polygon.into_iter().map(|ring| {
            geo::LineString::from(
                ring.into_iter()
                    .map(|(x, y)| geo::coord! { x: x, y: y })
                    .collect::<Vec<_>>(),
            )
        });
        let exterior = rings
            .next()
            .unwrap_or_else(|| geo::LineString::new(Vec::new()));
        polygons.push(geo::Polygon::new(exterior, rings.collect()));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let shape = MultiPolygon::new(polygons);
    let invalid: Vec<PolygonProblem> = shape
        .validation_errors()
        .into_iter()
        .map(|e| (ConfigErrorKind::BadPolygon, e.to_string()))
        .collect();
    if !invalid.is_empty() {
        return Err(invalid);
    }
    let area = shape.unsigned_area();
    Ok(Region {
        name: name.to_owned(),
        shape,
        crosses_antimeridian,
        agents_without_location,
        area,
    })
}

fn polygon_label(many: bool, p: usize) -> String {
    if many {
        format!("polygon {}: ", p + 1)
    } else {
        String::new()
    }
}

fn ring_label(many: bool, p: usize, r: usize) -> String {
    let ring = if r == 0 {
        "exterior ring".to_owned()
    } else {
        format!("hole {r}")
    };
    format!("{}{ring}", polygon_label(many, p))
}

fn check_ring(label: &str, ring: &RawRing, problems: &mut Vec<PolygonProblem>) {
    for (i, (lon, lat)) in ring.iter().enumerate() {
        if !(lon.is_finite() && lat.is_finite()) {
            problems.push((
                ConfigErrorKind::BadPolygon,
                format!(
                    "{label} point {}: coordinates must be finite numbers",
                    i + 1
                ),
            ));
            continue;
        }
        if !(-180.0..=180.0).contains(lon) {
            problems.push((
                ConfigErrorKind::BadPolygon,
                format!(
                    "{label} point {}: longitude {lon} is outside -180..180 (coordinates are longitude, latitude)",
                    i + 1
                ),
            ));
        }
        if !(-90.0..=90.0).contains(lat) {
            problems.push((
                ConfigErrorKind::BadPolygon,
                format!(
                    "{label} point {}: latitude {lat} is outside -90..90 (coordinates are longitude, latitude)",
                    i + 1
                ),
            ));
        }
    }
    if ring.len() < 4 {
        problems.push((
            ConfigErrorKind::BadPolygon,
            format!(
                "{label} has {} points; a ring needs at least 4 (3 corners and the closing point)",
                ring.len()
            ),
        ));
    }
    if let (Some(first), Some(last)) = (ring.first(), ring.last())
        && ring.len() >= 2
        && first != last
    {
        problems.push((
            ConfigErrorKind::BadPolygon,
            format!(
                "{label} is not closed: the first point ({} {}) differs from the last ({} {})",
                first.0, first.1, last.0, last.1
            ),
        ));
    }
}

/// Deepest parenthesis nesting a region's WKT may have: MULTIPOLYGON needs
/// 3. The WKT parser recurses per level, so unbounded nesting would
/// overflow the stack (an abort, not an error).
const MAX_WKT_DEPTH: usize = 4;

/// Most points a region may have, over all its rings. `geo`'s validation
/// checks each ring for self-intersections pairwise (quadratic): 5,000
/// points load in about 0.2 s (release build), 50,000 would take most of a
/// minute. Geofences for routing need no border-survey precision.
pub const MAX_REGION_POINTS: usize = 5_000;

/// Longest polygon text accepted, in bytes.
pub(crate) const MAX_POLYGON_BYTES: usize = 4 << 20;

fn wkt_depth(text: &str) -> usize {
    let mut depth: usize = 0;
    let mut deepest = 0;
    for c in text.bytes() {
        match c {
            b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn raw_from_wkt(text: &str) -> Result<Vec<RawPolygon>, String> {
    if wkt_depth(text) > MAX_WKT_DEPTH {
        return Err(format!(
            "nests parentheses deeper than {MAX_WKT_DEPTH} levels; a region must be a POLYGON or MULTIPOLYGON"
        ));
    }
    let parsed: wkt::Wkt<f64> = text
        .parse()
        .map_err(|e: &str| format!("is not valid WKT: {e}"))?;
    let polygon = |p: &wkt::types::Polygon<f64>| -> RawPolygon {
        p.rings()
            .iter()
            .map(|ring| ring.coords().iter().map(|c| (c.x, c.y)).collect())
            .collect()
    };
    match &parsed {
        wkt::Wkt::Polygon(p) => Ok(vec![polygon(p)]),
        wkt::Wkt::MultiPolygon(mp) => Ok(mp.polygons().iter().map(polygon).collect()),
        other => Err(format!(
            "is a {}; a region must be a POLYGON or MULTIPOLYGON",
            wkt_type_name(other)
        )),
    }
}

fn wkt_type_name(w: &wkt::Wkt<f64>) -> &'static str {
    match w {
        wkt::Wkt::Point(_) => "POINT",
        wkt::Wkt::LineString(_) => "LINESTRING",
        wkt::Wkt::Polygon(_) => "POLYGON",
        wkt::Wkt::MultiPoint(_) => "MULTIPOINT",
        wkt::Wkt::MultiLineString(_) => "MULTILINESTRING",
        wkt::Wkt::MultiPolygon(_) => "MULTIPOLYGON",
        wkt::Wkt::GeometryCollection(_) => "GEOMETRYCOLLECTION",
    }
}

fn raw_from_geojson(text: &str) -> Result<Vec<RawPolygon>, String> {
    let parsed: geojson::GeoJson = text
        .parse()
        .map_err(|e: geojson::Error| format!("is not valid GeoJSON: {e}"))?;
    let geometry = match parsed {
        geojson::GeoJson::Geometry(g) => g,
        geojson::GeoJson::Feature(f) => f
            .geometry
            .ok_or_else(|| "is a Feature without a geometry".to_owned())?,
        geojson::GeoJson::FeatureCollection(_) => {
            return Err(
                "is a FeatureCollection; a region must be a Polygon or MultiPolygon (or a Feature of one)"
                    .to_owned(),
            );
        }
    };
    let positions = |rings: &[Vec<geojson::Position>]| -> Result<RawPolygon, String> {
        rings
            .iter()
            .map(|ring| {
                ring.iter()
                    .map(|pos| match pos.as_slice() {
                        [lon, lat, ..] => Ok((*lon, *lat)),
                        _ => Err("has a position with fewer than 2 numbers".to_owned()),
                    })
                    .collect()
            })
            .collect()
    };
    match &geometry.value {
        geojson::GeometryValue::Polygon { coordinates } => Ok(vec![positions(coordinates)?]),
        geojson::GeometryValue::MultiPolygon { coordinates } => {
            coordinates.iter().map(|p| positions(p)).collect()
        }
        other => Err(format!(
            "is a {}; a region must be a Polygon or MultiPolygon",
            other.type_name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(longitude: f64, latitude: f64) -> Location {
        Location {
            latitude,
            longitude,
        }
    }

    fn wkt(text: &str) -> Region {
        match parse_region("r", PolygonFormat::Wkt, text, NoLocationPolicy::Exclude) {
            Ok(r) => r,
            Err(problems) => panic!("{problems:?}"),
        }
    }

    fn problems(format: PolygonFormat, text: &str) -> Vec<PolygonProblem> {
        match parse_region("r", format, text, NoLocationPolicy::Exclude) {
            Ok(_) => panic!("accepted {text}"),
            Err(problems) => problems,
        }
    }

    const SQUARE_WITH_HOLE: &str =
        "POLYGON((0 0, 10 0, 10 10, 0 10, 0 0), (4 4, 6 4, 6 6, 4 6, 4 4))";

    /// Table of point-in-region cases: (case, lon, lat, inside).
    #[test]
    fn point_in_region_edge_cases() {
        let square = wkt(SQUARE_WITH_HOLE);
        let cases = [
            ("interior", 2.0, 2.0, true),
            ("outside", 11.0, 2.0, false),
            ("on the outer border", 10.0, 5.0, true),
            ("on a corner", 0.0, 0.0, true),
            ("inside the hole", 5.0, 5.0, false),
            ("on the hole's border", 4.0, 5.0, true),
            ("not a number", f64::NAN, 5.0, false),
            ("infinite", f64::INFINITY, 5.0, false),
        ];
        for (case, lon, lat, inside) in cases {
            assert_eq!(square.contains(loc(lon, lat)), inside, "{case}");
        }
    }

    #[test]
    fn antimeridian_polygon_is_unwrapped_and_works_on_both_sides() {
        // Around Fiji: from 177°E across the antimeridian to 178°W.
        let fiji = wkt("POLYGON((177 -19, -178 -19, -178 -15, 177 -15, 177 -19))");
        assert!(fiji.crosses_antimeridian);
        let cases = [
            ("east of the seam", 179.0, -17.0, true),
            ("west of the seam", -179.0, -17.0, true),
            ("on the seam, +180", 180.0, -17.0, true),
            ("on the seam, -180", -180.0, -17.0, true),
            ("outside, east", -170.0, -17.0, false),
            ("outside, west", 170.0, -17.0, false),
            ("far away (Greenwich)", 0.0, -17.0, false),
        ];
        for (case, lon, lat, inside) in cases {
            assert_eq!(fiji.contains(loc(lon, lat)), inside, "{case}");
        }
    }

    #[test]
    fn antimeridian_split_multipolygon_works_too() {
        let split = wkt(
            "MULTIPOLYGON(((177 -19, 180 -19, 180 -15, 177 -15, 177 -19)),\
             ((-180 -19, -178 -19, -178 -15, -180 -15, -180 -19)))",
        );
        assert!(!split.crosses_antimeridian);
        assert!(split.contains(loc(179.0, -17.0)));
        assert!(split.contains(loc(-179.0, -17.0)));
        assert!(!split.contains(loc(0.0, -17.0)));
    }

    #[test]
    fn geojson_polygon_with_hole() {
        let text = r#"{"type":"Polygon","coordinates":[[[0,0],[10,0],[10,10],[0,10],[0,0]],[[4,4],[6,4],[6,6],[4,6],[4,4]]]}"#;
        let r = match parse_region("r", PolygonFormat::GeoJson, text, NoLocationPolicy::Exclude) {
            Ok(r) => r,
            Err(p) => panic!("{p:?}"),
        };
        assert!(r.contains(loc(1.0, 1.0)));
        assert!(!r.contains(loc(5.0, 5.0)));
    }

    #[test]
    fn bad_polygons_say_what_is_wrong() {
        let cases: [(&str, PolygonFormat, &str, &str); 9] = [
            (
                "unclosed",
                PolygonFormat::GeoJson,
                r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}"#,
                "is not closed",
            ),
            (
                "too few points",
                PolygonFormat::GeoJson,
                r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[0,0]]]}"#,
                "needs at least 4",
            ),
            (
                "longitude out of range",
                PolygonFormat::Wkt,
                "POLYGON((0 0, 200 0, 200 1, 0 1, 0 0))",
                "longitude 200 is outside",
            ),
            (
                "latitude out of range",
                PolygonFormat::Wkt,
                "POLYGON((0 0, 1 0, 1 95, 0 95, 0 0))",
                "latitude 95 is outside",
            ),
            (
                "self-intersecting (bow tie)",
                PolygonFormat::Wkt,
                "POLYGON((0 0, 10 10, 10 0, 0 10, 0 0))",
                "self-intersection",
            ),
            (
                "not WKT",
                PolygonFormat::Wkt,
                "POLYGON((0 0, 1 0",
                "is not valid WKT",
            ),
            (
                "not GeoJSON",
                PolygonFormat::GeoJson,
                "{",
                "is not valid GeoJSON",
            ),
            ("a point", PolygonFormat::Wkt, "POINT(1 2)", "is a POINT"),
            (
                "hole outside",
                PolygonFormat::Wkt,
                "POLYGON((0 0, 10 0, 10 10, 0 10, 0 0), (20 20, 21 20, 21 21, 20 21, 20 20))",
                "not contained",
            ),
        ];
        for (case, format, text, expected) in cases {
            let found = problems(format, text);
            assert!(
                found
                    .iter()
                    .any(|(kind, m)| *kind == ConfigErrorKind::BadPolygon && m.contains(expected)),
                "{case}: {found:?}"
            );
        }
    }

    #[test]
    fn too_many_points_is_refused_before_the_quadratic_check() {
        let ring: Vec<String> = (0..=MAX_REGION_POINTS)
            .map(|i| format!("{} 0", i as f64 * 1e-4))
            .chain(["0 1".to_owned(), "0 0".to_owned()])
            .collect();
        let text = format!("POLYGON(({}))", ring.join(", "));
        let found = problems(PolygonFormat::Wkt, &text);
        assert!(
            found
                .iter()
                .any(|(_, m)| m.contains("the limit is 5000 per region")),
            "{found:?}"
        );
    }

    /// Regression: deeply nested WKT overflowed the stack in the WKT
    /// parser (found by feeding the loader nested GEOMETRYCOLLECTIONs).
    #[test]
    fn deeply_nested_wkt_is_refused_not_a_stack_overflow() {
        let text = format!(
            "{}POINT(1 2){}",
            "GEOMETRYCOLLECTION(".repeat(50_000),
            ")".repeat(50_000)
        );
        let found = problems(PolygonFormat::Wkt, &text);
        assert!(
            found
                .iter()
                .any(|(_, m)| m.contains("nests parentheses deeper")),
            "{found:?}"
        );
    }

    #[test]
    fn an_antimeridian_polygon_crossing_twice_is_unsupported() {
        let found = problems(
            PolygonFormat::Wkt,
            "POLYGON((170 0, -170 0, -10 5, 10 5, 170 0))",
        );
        assert!(
            found
                .iter()
                .any(|(k, m)| *k == ConfigErrorKind::Unsupported && m.contains("unsupported")),
            "{found:?}"
        );
    }

    #[test]
    fn nested_regions_resolve_to_the_smallest() {
        let mut regions = Regions::default();
        let mut big = wkt("POLYGON((0 0, 10 0, 10 10, 0 10, 0 0))");
        big.name = "big".into();
        let mut small = wkt("POLYGON((1 1, 2 1, 2 2, 1 2, 1 1))");
        small.name = "small".into();
        assert!(big.covers(&small));
        assert!(!small.covers(&big));
        regions.by_name.insert("big".into(), big);
        regions.by_name.insert("small".into(), small);
        assert_eq!(
            regions.resolve_region(loc(1.5, 1.5)).as_deref(),
            Some("small")
        );
        assert_eq!(
            regions.resolve_region(loc(5.0, 5.0)).as_deref(),
            Some("big")
        );
        assert_eq!(regions.resolve_region(loc(50.0, 5.0)), None);
    }

    #[test]
    fn region_allows_table() {
        let mut regions = Regions::default();
        let mut eu = wkt("POLYGON((0 0, 10 0, 10 10, 0 10, 0 0))");
        eu.name = "eu".into();
        let mut open = wkt("POLYGON((20 0, 30 0, 30 10, 20 10, 20 0))");
        open.name = "open".into();
        open.agents_without_location = NoLocationPolicy::Include;
        regions.by_name.insert("eu".into(), eu);
        regions.by_name.insert("open".into(), open);
        let cases = [
            (
                "named, agent inside",
                CustomerRegion::Named("eu"),
                Some(loc(5.0, 5.0)),
                true,
            ),
            (
                "named, agent outside",
                CustomerRegion::Named("eu"),
                Some(loc(25.0, 5.0)),
                false,
            ),
            (
                "named, agent on border",
                CustomerRegion::Named("eu"),
                Some(loc(10.0, 5.0)),
                true,
            ),
            (
                "named, no location, exclude",
                CustomerRegion::Named("eu"),
                None,
                false,
            ),
            (
                "named, no location, include",
                CustomerRegion::Named("open"),
                None,
                true,
            ),
            (
                "unknown region admits nobody",
                CustomerRegion::Named("mars"),
                Some(loc(5.0, 5.0)),
                false,
            ),
            (
                "customer located in eu",
                CustomerRegion::Location(loc(1.0, 1.0)),
                Some(loc(25.0, 5.0)),
                false,
            ),
            (
                "customer in no region",
                CustomerRegion::Location(loc(50.0, 50.0)),
                None,
                true,
            ),
            ("no region given", CustomerRegion::Unspecified, None, true),
        ];
        for (case, customer, agent, allowed) in cases {
            assert_eq!(regions.region_allows(customer, agent), allowed, "{case}");
        }
    }
}
