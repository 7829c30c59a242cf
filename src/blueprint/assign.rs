//! Assignment of agents to blueprints: ordered rules on agent id, environment and group, with a default.

use globset::{Glob, GlobMatcher};
use serde_json::{json, Value};

use super::walk::{PathError, Walker};

/// One rule: every condition given must match (globs); the first matching rule wins.
#[derive(Debug, Clone)]
pub struct AssignmentRule {
    /// Glob on the agent id.
    pub agent: Option<GlobMatcher>,
    /// Glob on the event's environment.
    pub environment: Option<GlobMatcher>,
    /// Glob on the event's group field.
    pub group: Option<GlobMatcher>,
    /// Blueprint key assigned.
    pub blueprint: String,
}

/// The assignment file: `{"default": "engineering", "group_field": "/safe_payload/team", "rules": [...]}`.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// Blueprint of agents no rule matches.
    pub default: String,
    /// JSON pointer of the group field in events, if rules use groups.
    pub group_field: Option<String>,
    /// Rules in order.
    pub rules: Vec<AssignmentRule>,
}

impl Default for Assignment {
    fn default() -> Self {
        Assignment {
            default: "engineering".into(),
            group_field: None,
            rules: Vec::new(),
        }
    }
}

fn matches(m: &Option<GlobMatcher>, v: Option<&str>) -> bool {
    match m {
        None => true,
        Some(g) => v.is_some_and(|s| g.is_match(s)),
    }
}

impl Assignment {
    /// The blueprint key for an agent seen with this environment and group.
    pub fn pick(&self, agent_id: &str, environment: Option<&str>, group: Option<&str>) -> &str {
        self.rules
            .iter()
            .find(|r| {
                matches(&r.agent, Some(agent_id))
                    && matches(&r.environment, environment)
                    && matches(&r.group, group)
            })
            .map_or(self.default.as_str(), |r| r.blueprint.as_str())
    }

    /// Validates an assignment document, reporting every error with its path.
    pub fn from_json(doc: &Value) -> Result<Assignment, Vec<PathError>> {
        let mut w = Walker::default();
        let Some(top) = w.object(doc, "", &["default", "group_field", "rules"]) else {
            return Err(w.errors);
        };
        let default = w
            .string(top, "default", "")
            .unwrap_or("engineering")
            .to_string();
        let group_field = w.string(top, "group_field", "").map(str::to_string);
        if let Some(g) = &group_field {
            if crate::event::parse_pointer(g).is_none() {
                w.err(
                    "/group_field",
                    format!("{g:?} is not a JSON pointer such as /safe_payload/team"),
                );
            }
        }
        let mut rules = Vec::new();
        if let Some(list) = Walker::field(top, "rules") {
            match list.as_array() {
                None => w.err("/rules", "expected an array of rules"),
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let p = format!("/rules/{i}");
                        let Some(m) =
                            w.object(item, &p, &["agent", "environment", "group", "blueprint"])
                        else {
                            continue;
                        };
                        let glob = |w: &mut Walker, key: &str| -> Option<GlobMatcher> {
                            let s = w.string(m, key, &p)?;
                            match Glob::new(s) {
                                Ok(g) => Some(g.compile_matcher()),
                                Err(e) => {
                                    w.err(&format!("{p}/{key}"), format!("bad glob: {e}"));
                                    None
                                }
                            }
                        };
                        let agent = glob(&mut w, "agent");
                        let environment = glob(&mut w, "environment");
                        let group = glob(&mut w, "group");
                        match w.string(m, "blueprint", &p) {
                            Some(b) => rules.push(AssignmentRule {
                                agent,
                                environment,
                                group,
                                blueprint: b.to_string(),
                            }),
                            None => w.err(
                                &format!("{p}/blueprint"),
                                "missing field (a blueprint name)",
                            ),
                        }
                    }
                }
            }
        }
        if w.errors.is_empty() {
            Ok(Assignment {
                default,
                group_field,
                rules,
            })
        } else {
            Err(w.errors)
        }
    }

    /// The assignment as JSON.
    pub fn to_json(&self) -> Value {
        let rules: Vec<Value> = self
            .rules
            .iter()
            .map(|r| {
                let mut o = json!({"blueprint": r.blueprint});
                if let Some(g) = &r.agent {
                    o["agent"] = json!(g.glob().glob());
                }
                if let Some(g) = &r.environment {
                    o["environment"] = json!(g.glob().glob());
                }
                if let Some(g) = &r.group {
                    o["group"] = json!(g.glob().glob());
                }
                o
            })
            .collect();
        json!({"default": self.default, "group_field": self.group_field, "rules": rules})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins_and_default_catches_the_rest() {
        let a = Assignment::from_json(
            &json!({"default": "engineering", "group_field": "/safe_payload/team", "rules": [
                {"agent": "fin-*", "environment": "prod", "blueprint": "finance"},
                {"group": "soc*", "blueprint": "soc"},
                {"agent": "fin-*", "blueprint": "engineering"}
            ]}),
        )
        .unwrap();
        assert_eq!(a.pick("fin-1", Some("prod"), None), "finance");
        assert_eq!(a.pick("fin-1", Some("dev"), None), "engineering");
        assert_eq!(a.pick("x", None, Some("soc-tier1")), "soc");
        assert_eq!(a.pick("x", None, None), "engineering");
    }

    #[test]
    fn errors_carry_paths() {
        let errs = Assignment::from_json(
            &json!({"rules": [{"agent": "[", "blueprint": "x"}, {"agent": "a"}], "x": 1}),
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["/x", "/rules/0/agent", "/rules/1/blueprint"]);
    }
}
