//! The example automations bundled into the binary, so `leasehold dev --example NAME` works from
//! any folder.

/// `(name, YAML)` of every bundled example.
pub const EXAMPLES: &[(&str, &str)] = &[
    ("hello", include_str!("../../examples/hello.yaml")),
    ("retry", include_str!("../../examples/retry.yaml")),
    ("approval", include_str!("../../examples/approval.yaml")),
];

/// The YAML of the example called `name`.
pub fn example(name: &str) -> Option<&'static str> {
    EXAMPLES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, yaml)| *yaml)
}

/// The names of the examples, for messages.
pub fn names() -> Vec<&'static str> {
    EXAMPLES.iter().map(|(n, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_is_a_valid_spec_named_after_itself() {
        for (name, yaml) in EXAMPLES {
            let spec = leasehold_core::spec::parse_yaml(yaml).expect(name);
            assert_eq!(spec.id.as_str(), *name);
        }
        assert!(example("nope").is_none());
    }
}
