//! The blueprints in force and the assignment that picks one per agent.

use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use super::assign::Assignment;
use super::load::load_blueprint;
use super::schema::Blueprint;
use super::walk::PathError;

/// The shipped blueprints, embedded in the binary: (key, JSON).
pub const BUILTIN: [(&str, &str); 3] = [
    (
        "engineering",
        include_str!("../../blueprints/engineering.json"),
    ),
    ("finance", include_str!("../../blueprints/finance.json")),
    ("soc", include_str!("../../blueprints/soc.json")),
];

/// Why blueprints or an assignment could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not JSON.
    #[error("{path}: not valid JSON: {source}")]
    Json {
        /// The path.
        path: PathBuf,
        /// serde_json's error with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A file is JSON but not a valid blueprint or assignment.
    #[error("{path}: {} error(s):\n{}", errors.len(), errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The path.
        path: PathBuf,
        /// Every error found.
        errors: Vec<PathError>,
    },
    /// The assignment names a blueprint that is not loaded.
    #[error("assignment refers to blueprint {name:?}, which is not loaded (loaded: {loaded})")]
    UnknownBlueprint {
        /// The missing key.
        name: String,
        /// The loaded keys.
        loaded: String,
    },
    /// A blueprint directory holds no `*.json` file.
    #[error("{path}: no blueprint (*.json) found")]
    Empty {
        /// The directory.
        path: PathBuf,
    },
}

/// Reads a JSON file, with typed errors for I/O and syntax; a key given twice in an object is
/// an error with its path.
pub fn read_json_file(path: &Path) -> Result<Value, LoadError> {
    let text = crate::files::read_text(path).map_err(|e| LoadError::Io {
        path: path.into(),
        source: e.into_io(),
    })?;
    let json = |source| LoadError::Json {
        path: path.into(),
        source,
    };
    let dups = super::walk::duplicate_keys(&text).map_err(json)?;
    if !dups.is_empty() {
        return Err(LoadError::Invalid {
            path: path.into(),
            errors: dups,
        });
    }
    serde_json::from_str(&text).map_err(json)
}

/// Blueprints in force plus the assignment, with rule targets resolved to indices.
#[derive(Debug, Clone)]
pub struct BlueprintSet {
    blueprints: Vec<Blueprint>,
    assignment: Assignment,
}

impl BlueprintSet {
    /// The shipped finance, SOC and engineering blueprints with the default assignment (everything → engineering).
    pub fn builtin() -> BlueprintSet {
        let blueprints = BUILTIN
            .iter()
            .map(|(key, text)| {
                let v: Value = serde_json::from_str(text).expect("shipped blueprints are JSON");
                load_blueprint(key, &v).expect("shipped blueprints are valid")
            })
            .collect();
        BlueprintSet {
            blueprints,
            assignment: Assignment::default(),
        }
    }

    /// Loads every `*.json` file of a directory; the file stem is the blueprint's key.
    pub fn from_dir(dir: &Path) -> Result<BlueprintSet, LoadError> {
        let rd = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
            path: dir.into(),
            source,
        })?;
        // An entry that cannot be read is an error, not a blueprint silently left out.
        let mut paths = Vec::new();
        for entry in rd {
            let p: PathBuf = entry
                .map_err(|source| LoadError::Io {
                    path: dir.into(),
                    source,
                })?
                .path();
            if p.extension().is_some_and(|x| x == "json") && p.is_file() {
                paths.push(p);
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(LoadError::Empty { path: dir.into() });
        }
        let mut blueprints = Vec::new();
        for p in paths {
            blueprints.push(Self::load_file(&p)?);
        }
        let default = if blueprints.iter().any(|b| b.key == "engineering") {
            "engineering".to_string()
        } else {
            blueprints[0].key.clone()
        };
        Ok(BlueprintSet {
            blueprints,
            assignment: Assignment {
                default,
                ..Assignment::default()
            },
        })
    }

    /// Loads one blueprint file (key = file stem).
    pub fn load_file(path: &Path) -> Result<Blueprint, LoadError> {
        let v = read_json_file(path)?;
        let key = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        load_blueprint(&key, &v).map_err(|errors| LoadError::Invalid {
            path: path.into(),
            errors,
        })
    }

    /// Builds a set from blueprints already loaded.
    pub fn from_blueprints(
        blueprints: Vec<Blueprint>,
        assignment: Assignment,
    ) -> Result<BlueprintSet, LoadError> {
        let set = BlueprintSet {
            blueprints,
            assignment,
        };
        set.check_assignment()?;
        Ok(set)
    }

    /// Decoder options that extract the group field the assignment rules use (other options default).
    pub fn decoder_options(&self) -> crate::event::DecoderOptions {
        crate::event::DecoderOptions {
            group_pointer: self.assignment.group_field.clone(),
            ..Default::default()
        }
    }

    /// The blueprints of a directory (default: the shipped ones) with an optional assignment file.
    pub fn load(dir: Option<&Path>, assignment: Option<&Path>) -> Result<BlueprintSet, LoadError> {
        let set = match dir {
            Some(d) => BlueprintSet::from_dir(d)?,
            None => BlueprintSet::builtin(),
        };
        match assignment {
            Some(a) => set.with_assignment_file(a),
            None => Ok(set),
        }
    }

    /// The same blueprints with the assignment rules of a JSON file.
    pub fn with_assignment_file(self, path: &Path) -> Result<BlueprintSet, LoadError> {
        let v = read_json_file(path)?;
        let assignment = Assignment::from_json(&v).map_err(|errors| LoadError::Invalid {
            path: path.into(),
            errors,
        })?;
        Self::from_blueprints(self.blueprints, assignment)
    }

    fn check_assignment(&self) -> Result<(), LoadError> {
        let names = std::iter::once(&self.assignment.default)
            .chain(self.assignment.rules.iter().map(|r| &r.blueprint));
        for n in names {
            if self.index_of(n).is_none() {
                return Err(LoadError::UnknownBlueprint {
                    name: n.clone(),
                    loaded: self
                        .blueprints
                        .iter()
                        .map(|b| b.key.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(())
    }

    /// The blueprint with this key, or with this display name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.blueprints
            .iter()
            .position(|b| b.key == name)
            .or_else(|| self.blueprints.iter().position(|b| b.name == name))
    }

    /// The blueprint at an index returned by [`BlueprintSet::assign`] or [`BlueprintSet::index_of`].
    pub fn get(&self, idx: usize) -> &Blueprint {
        &self.blueprints[idx.min(self.blueprints.len() - 1)]
    }

    /// All blueprints.
    pub fn blueprints(&self) -> &[Blueprint] {
        &self.blueprints
    }

    /// The assignment rules.
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// The blueprint index for an agent.
    pub fn assign(&self, agent_id: &str, environment: Option<&str>, group: Option<&str>) -> usize {
        let key = self.assignment.pick(agent_id, environment, group);
        self.index_of(key).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blueprint that sets its kill threshold twice (the second, 0, would disable kills)
    /// does not load; the error names the key's path.
    #[test]
    fn a_blueprint_with_a_key_given_twice_does_not_load() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("finance.json");
        std::fs::write(
            &p,
            r#"{"name": "F", "auto_kill_threshold": 3, "mode": "block", "auto_kill_threshold": 0}"#,
        )
        .expect("write");
        match BlueprintSet::load_file(&p) {
            Err(LoadError::Invalid { errors, .. }) => {
                assert_eq!(errors.len(), 1);
                assert_eq!(errors[0].path, "/auto_kill_threshold");
            }
            other => panic!("{other:?}"),
        }
    }
}
