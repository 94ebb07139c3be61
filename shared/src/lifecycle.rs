//! Bucket lifecycle rules, read from `lifecycle.json` (the AWS CLI's JSON
//! shape, as in the original design) and applied to the bucket at start.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LifecycleRules {
    pub rules: Vec<LifecycleRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LifecycleRule {
    pub id: String,
    /// `Enabled` or `Disabled`.
    pub status: String,
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Expiration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transitions: Vec<Transition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Expiration {
    pub days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Transition {
    pub days: u32,
    pub storage_class: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid lifecycle configuration: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("lifecycle rule {id:?}: {reason}")]
    Invalid { id: String, reason: String },
}

impl LifecycleRules {
    pub fn parse(json: &str, path: &str) -> Result<Self, LifecycleError> {
        let rules: LifecycleRules =
            serde_json::from_str(json).map_err(|source| LifecycleError::Parse { path: path.into(), source })?;
        for r in &rules.rules {
            if r.status != "Enabled" && r.status != "Disabled" {
                return Err(LifecycleError::Invalid {
                    id: r.id.clone(),
                    reason: "Status must be Enabled or Disabled".into(),
                });
            }
            if r.expiration.is_none() && r.transitions.is_empty() {
                return Err(LifecycleError::Invalid {
                    id: r.id.clone(),
                    reason: "a rule needs an Expiration or Transitions".into(),
                });
            }
        }
        Ok(rules)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, LifecycleError> {
        let shown = path.display().to_string();
        let json =
            std::fs::read_to_string(path).map_err(|source| LifecycleError::Read { path: shown.clone(), source })?;
        Self::parse(&json, &shown)
    }

    /// Expiry in days for an object key, from the first enabled rule whose
    /// prefix matches and that expires objects.
    pub fn expiry_days(&self, key: &str) -> Option<u32> {
        self.rules
            .iter()
            .filter(|r| r.status == "Enabled" && key.starts_with(&r.prefix))
            .find_map(|r| r.expiration.as_ref().map(|e| e.days))
    }

    pub fn to_sdk(&self) -> aws_sdk_s3::types::BucketLifecycleConfiguration {
        use aws_sdk_s3::types as t;
        let rules = self
            .rules
            .iter()
            .map(|r| {
                let mut b = t::LifecycleRule::builder()
                    .id(&r.id)
                    .status(t::ExpirationStatus::from(r.status.as_str()))
                    .filter(t::LifecycleRuleFilter::builder().prefix(&r.prefix).build());
                if let Some(e) = &r.expiration {
                    b = b.expiration(t::LifecycleExpiration::builder().days(e.days as i32).build());
                }
                for tr in &r.transitions {
                    b = b.transitions(
                        t::Transition::builder()
                            .days(tr.days as i32)
                            .storage_class(t::TransitionStorageClass::from(tr.storage_class.as_str()))
                            .build(),
                    );
                }
                b.build().expect("status is set")
            })
            .collect();
        t::BucketLifecycleConfiguration::builder().set_rules(Some(rules)).build().expect("rules are set")
    }

    pub fn from_sdk(rules: &[aws_sdk_s3::types::LifecycleRule]) -> Self {
        LifecycleRules {
            rules: rules
                .iter()
                .map(|r| LifecycleRule {
                    id: r.id().unwrap_or_default().to_owned(),
                    status: r.status().as_str().to_owned(),
                    prefix: r.filter().and_then(|f| f.prefix()).unwrap_or_default().to_owned(),
                    expiration: r.expiration().and_then(|e| e.days()).map(|d| Expiration { days: d.max(0) as u32 }),
                    transitions: r
                        .transitions()
                        .iter()
                        .map(|t| Transition {
                            days: t.days().unwrap_or(0).max(0) as u32,
                            storage_class: t.storage_class().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_lifecycle_file_has_the_original_rules() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lifecycle.json");
        let rules = LifecycleRules::load(&path).unwrap();
        assert_eq!(rules.expiry_days("images/uploads/t/original.jpg"), Some(7));
        assert_eq!(rules.expiry_days("voices/generated/t/base_voice.wav"), Some(7));
        assert_eq!(rules.expiry_days("videos/t/final_video.mp4"), Some(30));
        assert_eq!(rules.expiry_days("voices/custom/p.wav"), None);
        assert_eq!(rules.expiry_days("bgm/system/x.mp3"), None);
        assert_eq!(rules.expiry_days("backups/metadata/20260101/bgm_metadata.json"), Some(90));
        let cold = rules.rules.iter().find(|r| r.prefix == "voices/custom/").unwrap();
        assert_eq!(cold.transitions, vec![Transition { days: 90, storage_class: "GLACIER".into() }]);
        // Round trip through the SDK types keeps every rule.
        let back = LifecycleRules::from_sdk(rules.to_sdk().rules());
        assert_eq!(back, rules);
    }

    #[test]
    fn a_rule_without_action_is_refused() {
        let bad = r#"{"Rules":[{"Id":"x","Status":"Enabled","Prefix":"a/"}]}"#;
        assert!(matches!(LifecycleRules::parse(bad, "t"), Err(LifecycleError::Invalid { .. })));
    }
}
