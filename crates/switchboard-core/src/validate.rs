//! Input rules shared by every edge: limits are stated here once and named
//! in each error.

use crate::error::DomainError;
use crate::model::{Location, Skill};
use std::collections::BTreeMap;

pub const MAX_SKILL_NAME_LEN: usize = 64;
pub const MAX_SKILLS: usize = 32;
pub const MAX_LANGUAGES: usize = 16;
pub const MAX_LANGUAGE_TAG_LEN: usize = 35;
pub const MAX_SUMMARY_BYTES: usize = 4096;
pub const MAX_CONTEXT_ENTRIES: usize = 32;
pub const MAX_CONTEXT_KEY_BYTES: usize = 64;
pub const MAX_CONTEXT_VALUE_BYTES: usize = 1024;
pub const MAX_CHAT_REFERENCE_BYTES: usize = 1024;
pub const MAX_TEXT_BYTES: usize = 256;
pub const MAX_PRIORITY: u32 = 9;
pub const MAX_CAPACITY: u32 = 32;

/// A skill name: 1..=64 chars of `[a-z0-9_.-]`.
pub fn skill_name(field: &str, name: &str) -> Result<String, DomainError> {
    if name.is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    if name.len() > MAX_SKILL_NAME_LEN {
        return Err(DomainError::invalid(
            field,
            format!("is {} bytes, the limit is {MAX_SKILL_NAME_LEN}", name.len()),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
    {
        return Err(DomainError::invalid(
            field,
            format!("`{name}` may use only a-z 0-9 _ . -"),
        ));
    }
    Ok(name.to_owned())
}

/// A skill level 1..=5.
pub fn skill_level(field: &str, level: u32) -> Result<u8, DomainError> {
    match u8::try_from(level) {
        Ok(l @ 1..=5) => Ok(l),
        _ => Err(DomainError::invalid(
            field,
            format!("is {level}, must be 1 to 5"),
        )),
    }
}

/// A list of skills, sorted by name, each named once.
pub fn skills(field: &str, raw: &[(String, u32)]) -> Result<Vec<Skill>, DomainError> {
    if raw.len() > MAX_SKILLS {
        return Err(DomainError::invalid(
            field,
            format!("has {} entries, the limit is {MAX_SKILLS}", raw.len()),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, (name, level)) in raw.iter().enumerate() {
        let name = skill_name(&format!("{field}[{i}].name"), name)?;
        let level = skill_level(&format!("{field}[{i}].level"), *level)?;
        out.push(Skill { name, level });
    }
    out.sort();
    if let Some(pair) = out.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(DomainError::invalid(
            field,
            format!("names skill `{}` twice", pair[0].name),
        ));
    }
    Ok(out)
}

/// A BCP 47 language tag (`en`, `de-AT`, `zh-Hant-TW`), lower-cased.
pub fn language(field: &str, tag: &str) -> Result<String, DomainError> {
    if tag.is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    if tag.len() > MAX_LANGUAGE_TAG_LEN {
        return Err(DomainError::invalid(
            field,
            format!(
                "is {} bytes, the limit is {MAX_LANGUAGE_TAG_LEN}",
                tag.len()
            ),
        ));
    }
    let mut parts = tag.split('-');
    let primary = parts.next().unwrap_or_default();
    let primary_ok =
        (2..=3).contains(&primary.len()) && primary.chars().all(|c| c.is_ascii_alphabetic());
    let rest_ok =
        parts.all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()));
    if !primary_ok || !rest_ok {
        return Err(DomainError::invalid(
            field,
            format!("`{tag}` is not a BCP 47 language tag (e.g. `en`, `de-AT`)"),
        ));
    }
    Ok(tag.to_ascii_lowercase())
}

/// A list of language tags, deduplicated.
pub fn languages(field: &str, raw: &[String]) -> Result<Vec<String>, DomainError> {
    if raw.len() > MAX_LANGUAGES {
        return Err(DomainError::invalid(
            field,
            format!("has {} entries, the limit is {MAX_LANGUAGES}", raw.len()),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, tag) in raw.iter().enumerate() {
        let tag = language(&format!("{field}[{i}]"), tag)?;
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

/// The language tags an agent speaking some tag can serve a conversation
/// in `tag` with: the tag itself and its prefixes (`de-at` → `de-at`, `de`).
pub fn language_lookup_keys(tag: &str) -> Vec<&str> {
    let mut keys = vec![tag];
    let mut end = tag.len();
    while let Some(pos) = tag[..end].rfind('-') {
        keys.push(&tag[..pos]);
        end = pos;
    }
    keys
}

/// Whether an agent speaking `agent_tag` serves a customer in `customer_tag`:
/// the same tag, or a broader one (`de` serves `de-at`).
pub fn language_covers(agent_tag: &str, customer_tag: &str) -> bool {
    customer_tag == agent_tag
        || (customer_tag.len() > agent_tag.len()
            && customer_tag.starts_with(agent_tag)
            && customer_tag.as_bytes()[agent_tag.len()] == b'-')
}

/// Free text with a byte limit (may be empty).
pub fn text(field: &str, value: &str, limit: usize) -> Result<String, DomainError> {
    if value.len() > limit {
        return Err(DomainError::invalid(
            field,
            format!("is {} bytes, the limit is {limit}", value.len()),
        ));
    }
    Ok(value.to_owned())
}

/// Free text that must not be empty.
pub fn required_text(field: &str, value: &str, limit: usize) -> Result<String, DomainError> {
    if value.trim().is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    text(field, value, limit)
}

pub fn priority(field: &str, value: u32) -> Result<u8, DomainError> {
    if value > MAX_PRIORITY {
        return Err(DomainError::invalid(
            field,
            format!("is {value}, must be 0 to {MAX_PRIORITY}"),
        ));
    }
    Ok(value as u8)
}

pub fn location(field: &str, latitude: f64, longitude: f64) -> Result<Location, DomainError> {
    if !(-90.0..=90.0).contains(&latitude) {
        return Err(DomainError::invalid(
            format!("{field}.latitude"),
            format!("is {latitude}, must be -90 to 90"),
        ));
    }
    if !(-180.0..=180.0).contains(&longitude) {
        return Err(DomainError::invalid(
            format!("{field}.longitude"),
            format!("is {longitude}, must be -180 to 180"),
        ));
    }
    Ok(Location {
        latitude,
        longitude,
    })
}

pub fn capacity(field: &str, value: u32) -> Result<u32, DomainError> {
    if !(1..=MAX_CAPACITY).contains(&value) {
        return Err(DomainError::invalid(
            field,
            format!("is {value}, must be 1 to {MAX_CAPACITY}"),
        ));
    }
    Ok(value)
}

/// Hand-off context attributes: bounded count and sizes.
pub fn context_attributes(
    field: &str,
    raw: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, DomainError> {
    let map: BTreeMap<String, String> = raw.into_iter().collect();
    if map.len() > MAX_CONTEXT_ENTRIES {
        return Err(DomainError::invalid(
            field,
            format!(
                "has {} entries, the limit is {MAX_CONTEXT_ENTRIES}",
                map.len()
            ),
        ));
    }
    for (key, value) in &map {
        if key.is_empty() || key.len() > MAX_CONTEXT_KEY_BYTES {
            return Err(DomainError::invalid(
                field,
                format!("key `{key}` must be 1 to {MAX_CONTEXT_KEY_BYTES} bytes"),
            ));
        }
        text(&format!("{field}[{key}]"), value, MAX_CONTEXT_VALUE_BYTES)?;
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_tags() {
        assert_eq!(language("language", "de-AT").unwrap(), "de-at");
        assert_eq!(language("language", "zh-Hant-TW").unwrap(), "zh-hant-tw");
        for bad in [
            "",
            "e",
            "english",
            "en_US",
            "en-",
            "de-AT-toolongsubtag",
            "1a",
        ] {
            let err = language("language", bad).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid `language`"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn language_coverage_and_lookup() {
        assert!(language_covers("de", "de-at"));
        assert!(language_covers("de-at", "de-at"));
        assert!(!language_covers("de-at", "de"));
        assert!(!language_covers("d", "de"));
        assert!(!language_covers("en", "eng"));
        assert_eq!(
            language_lookup_keys("zh-hant-tw"),
            vec!["zh-hant-tw", "zh-hant", "zh"]
        );
    }

    #[test]
    fn skills_are_sorted_unique_and_bounded() {
        let ok = skills(
            "required_skills",
            &[("billing".into(), 3), ("b2b".into(), 1)],
        )
        .unwrap();
        assert_eq!(ok[0].name, "b2b");
        let err = skills("required_skills", &[("billing".into(), 6)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid `required_skills[0].level`: is 6, must be 1 to 5"
        );
        let err = skills("required_skills", &[("a".into(), 1), ("a".into(), 2)]).unwrap_err();
        assert!(err.to_string().contains("twice"));
        let err = skills("skills", &[("Billing".into(), 1)]).unwrap_err();
        assert!(err.to_string().contains("skills[0].name"));
    }

    #[test]
    fn locations_and_limits() {
        assert!(
            location("customer_location", 91.0, 0.0)
                .unwrap_err()
                .to_string()
                .contains("latitude")
        );
        assert!(
            location("location", 0.0, -180.5)
                .unwrap_err()
                .to_string()
                .contains("longitude")
        );
        assert!(capacity("capacity", 0).is_err());
        assert!(priority("priority", 10).is_err());
        assert!(text("context.summary", &"x".repeat(4097), MAX_SUMMARY_BYTES).is_err());
    }
}
