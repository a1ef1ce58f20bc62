//! Context a worker holds for the runs that require it: named secrets or settings
//! (`requires_context: [OPENAI_API_KEY]` in a spec), read from the worker's environment when it
//! starts (`--context OPENAI_API_KEY`). The worker advertises the names only; a run is claimed
//! only by a worker that holds every name its automation requires, and its handlers see only
//! those.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// Named values, cheap to clone. Its `Debug` shows the names, never the values, so that a value
/// cannot reach a log through a config or a context printed whole.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RuntimeContext(Arc<BTreeMap<String, String>>);

/// A `--context` name the worker's environment does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--context {name}: the environment variable {name} is not set, or is empty")]
pub struct MissingContext {
    /// The name.
    pub name: String,
}

impl RuntimeContext {
    /// Each name's value, read by `read` (the environment, for a worker).
    ///
    /// # Errors
    /// The first name `read` has no non-empty value for.
    pub fn read(
        names: impl IntoIterator<Item = String>,
        read: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, MissingContext> {
        let mut values = BTreeMap::new();
        for name in names {
            match read(&name).filter(|value| !value.is_empty()) {
                Some(value) => values.insert(name, value),
                None => return Err(MissingContext { name }),
            };
        }
        Ok(Self(Arc::new(values)))
    }

    /// The value of `name`, if held (and, in a handler's context, required by its run).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The names held.
    pub fn names(&self) -> BTreeSet<String> {
        self.0.keys().cloned().collect()
    }

    /// Only the names of `required`: what a run's handlers see. A run that requires nothing
    /// gets an empty context without an allocation.
    pub fn only(&self, required: &[String]) -> Self {
        if required.is_empty() {
            return Self::default();
        }
        Self(Arc::new(
            self.0
                .iter()
                .filter(|(name, _)| required.contains(name))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        ))
    }
}

impl fmt::Debug for RuntimeContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "OPENAI_API_KEY" => Some("sk-secret".to_owned()),
            "REGION" => Some("eu".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn every_name_must_have_a_value() {
        let held = RuntimeContext::read(names(&["OPENAI_API_KEY", "REGION"]), env).expect("held");
        assert_eq!(held.get("REGION"), Some("eu"));
        assert_eq!(
            RuntimeContext::read(names(&["REGION", "MISSING"]), env),
            Err(MissingContext {
                name: "MISSING".into()
            })
        );
        assert_eq!(
            RuntimeContext::read(names(&["EMPTY"]), env)
                .expect_err("empty")
                .to_string(),
            "--context EMPTY: the environment variable EMPTY is not set, or is empty"
        );
    }

    #[test]
    fn a_run_sees_only_what_it_requires() {
        let held = RuntimeContext::read(names(&["OPENAI_API_KEY", "REGION"]), env).expect("held");
        let seen = held.only(&names(&["REGION"]));
        assert_eq!(seen.get("REGION"), Some("eu"));
        assert_eq!(seen.get("OPENAI_API_KEY"), None);
        assert_eq!(held.only(&[]).names(), BTreeSet::new());
    }

    #[test]
    fn debug_shows_names_never_values() {
        let held = RuntimeContext::read(names(&["OPENAI_API_KEY"]), env).expect("held");
        let shown = format!("{held:?}");
        assert_eq!(shown, r#"{"OPENAI_API_KEY"}"#);
        assert!(!shown.contains("sk-secret"));
    }
}
