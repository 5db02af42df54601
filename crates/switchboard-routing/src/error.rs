//! Errors of the routing crate: config errors carry file, line, column and
//! key so an operator can fix a file in one pass; all of them come at once.

use std::fmt;
use thiserror::Error;

/// What class of mistake a [`ConfigError`] reports. Tests and tools match on
/// this; people read the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigErrorKind {
    /// The text is not TOML.
    Syntax,
    /// A key the routing file does not define (often a typo).
    UnknownKey,
    /// A key that must be there is not.
    MissingKey,
    /// A value of the wrong TOML type (a string where a number belongs).
    WrongType,
    /// A number outside its allowed range (skill level 1–5, priority 0–9, ...).
    OutOfRange,
    /// A value of the right type that is still not acceptable (a bad name,
    /// conflicting keys, a reason too long).
    InvalidValue,
    /// A reference to a queue the file does not define.
    UnknownQueue,
    /// A reference to a region the file does not define.
    UnknownRegion,
    /// A strategy name that does not exist.
    UnknownStrategy,
    /// A polygon that cannot be parsed or is not a valid area.
    BadPolygon,
    /// Something the policy deliberately does not support.
    Unsupported,
    /// A relaxation step that would make requirements stricter.
    RelaxationTightens,
    /// Relaxation steps not in time order.
    RelaxationOutOfOrder,
    /// The same category served by two queues.
    Duplicate,
    /// Overflow targets that lead back to where they started.
    OverflowCycle,
}

/// One problem in a routing file.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub struct ConfigError {
    /// The file name as given to the loader.
    pub file: String,
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// Dotted key path, e.g. `queues.billing.relax[1].to_level`; empty for
    /// syntax errors.
    pub key: String,
    pub kind: ConfigErrorKind,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one routing file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Whether any error is of `kind` (handy in tests and tools).
    pub fn has(&self, kind: ConfigErrorKind) -> bool {
        self.errors.iter().any(|e| e.kind == kind)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors.len();
        write!(
            f,
            "routing config has {count} error{}",
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.errors {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

/// Errors of the pure routing functions (not of config loading).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RoutingError {
    /// A hand-off names a region the routing config does not define.
    #[error("region `{0}` is not defined in the routing config")]
    UnknownRegion(String),
}
