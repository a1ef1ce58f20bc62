//! The `Automations` service.

use std::collections::{BTreeMap, BTreeSet};

use leasehold_core::ids::AutomationId;
use leasehold_core::kinds;
use leasehold_core::schedule::Timetable;
use leasehold_core::spec::{Spec, SpecError};
use leasehold_core::store::{AutomationRecord, Stored};
use leasehold_proto::v1;
use leasehold_proto::v1::automations_server::Automations;

use super::convert::{self, spec_message, timestamp};
use super::error::{ApiError, ApiResult, SpecSource};
use super::{Api, page_request, page_token, respond, service, states};

fn automation_message(record: &AutomationRecord, version_created: bool) -> v1::Automation {
    v1::Automation {
        id: record.id.0.clone(),
        current_version: record.current_version,
        status: states::automation_status(record.status).into(),
        spec: Some(spec_message(&record.spec)),
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
        version_created,
        warnings: Vec::new(),
    }
}

/// A spec whose every node input its kind accepts, or may accept (see the warnings).
struct Checked {
    spec: Spec,
    warnings: Vec<v1::SpecWarning>,
}

impl Api {
    /// The request's spec, once its nodes' inputs are checked against their kinds' schemas: the
    /// built-in schema, else the latest one a worker advertised. A spec with any input its kind
    /// refuses is refused with every violation, and nothing is stored; a kind nobody advertised
    /// is a warning.
    async fn checked_spec(&self, source: Option<&v1::SpecSource>) -> ApiResult<Checked> {
        let spec = convert::spec_from_source(source)?;
        // Violations and warnings name the request field that carried the spec, as every other
        // spec violation does.
        let carried_in = match source.and_then(|s| s.source.as_ref()) {
            Some(v1::spec_source::Source::Text(_)) => SpecSource::Text,
            _ => SpecSource::Structured,
        };
        let others: BTreeSet<&str> = spec
            .nodes
            .iter()
            .map(|n| n.kind.as_str())
            .filter(|k| !kinds::is_builtin(k))
            .collect();
        let advertised: BTreeMap<String, Option<serde_json::Value>> = if others.is_empty() {
            BTreeMap::new()
        } else {
            let others: Vec<String> = others.into_iter().map(str::to_owned).collect();
            self.store
                .node_kinds(Some(&others))
                .await?
                .into_iter()
                .map(|k| (k.kind, k.input_schema))
                .collect()
        };
        let checked = kinds::check_inputs(&spec, &advertised);
        if !checked.violations.is_empty() {
            let error = SpecError {
                violations: checked.violations,
            };
            return Err(ApiError::spec(carried_in, error));
        }
        let warnings = checked
            .warnings
            .iter()
            .map(|w| v1::SpecWarning {
                field: match carried_in {
                    SpecSource::Structured => format!("spec.structured.{}", w.field),
                    SpecSource::Text => "spec.text".to_owned(),
                },
                message: w.to_string(),
            })
            .collect();
        Ok(Checked { spec, warnings })
    }

    /// Answers a stored spec, once its schedules are the automation's: new ones from their
    /// first fire after now, changed ones moved to their new pattern, removed ones gone. Apart
    /// from the version's statement: a call that fails here stored the version, and repeating
    /// it (as `ApplyAutomation` is meant to be) syncs them.
    async fn stored(&self, checked: Checked, stored: Stored) -> ApiResult<v1::Automation> {
        let now = chrono::Utc::now();
        let first_fires: Vec<_> = checked
            .spec
            .schedules
            .iter()
            .map(|s| {
                Timetable::parse(&s.cron, &s.timezone)
                    .ok()
                    .and_then(|table| table.next_after(now))
            })
            .collect();
        self.store
            .sync_schedules(
                &self.tenant,
                &checked.spec.id,
                &checked.spec.schedules,
                &first_fires,
            )
            .await?;
        let record = self
            .store
            .automation(&self.tenant, &checked.spec.id)
            .await?;
        Ok(v1::Automation {
            warnings: checked.warnings,
            ..automation_message(&record, stored.created)
        })
    }

    async fn automation_create(
        &self,
        request: v1::CreateAutomationRequest,
    ) -> ApiResult<v1::Automation> {
        let checked = self.checked_spec(request.spec.as_ref()).await?;
        let version = self
            .store
            .create_automation(&self.tenant, &checked.spec)
            .await?;
        let stored = Stored {
            version,
            created: true,
        };
        self.stored(checked, stored).await
    }

    async fn automation_update(
        &self,
        request: v1::UpdateAutomationRequest,
    ) -> ApiResult<v1::Automation> {
        let checked = self.checked_spec(request.spec.as_ref()).await?;
        let stored = self
            .store
            .create_automation_version(&self.tenant, &checked.spec)
            .await?;
        self.stored(checked, stored).await
    }

    async fn automation_apply(
        &self,
        request: v1::ApplyAutomationRequest,
    ) -> ApiResult<v1::Automation> {
        let checked = self.checked_spec(request.spec.as_ref()).await?;
        let stored = self
            .store
            .apply_automation(&self.tenant, &checked.spec)
            .await?;
        self.stored(checked, stored).await
    }

    async fn automation_get(&self, request: v1::GetAutomationRequest) -> ApiResult<v1::Automation> {
        let id = AutomationId(convert::name("id", &request.id)?);
        if request.version < 0 {
            return Err(ApiError::field("version", "must not be negative"));
        }
        let mut record = self.store.automation(&self.tenant, &id).await?;
        if request.version > 0 && request.version != record.current_version {
            let version = self
                .store
                .automation_version(&self.tenant, &id, Some(request.version))
                .await?;
            record.spec = version.spec;
        }
        Ok(automation_message(&record, false))
    }

    async fn automation_list(
        &self,
        request: v1::ListAutomationsRequest,
    ) -> ApiResult<v1::ListAutomationsResponse> {
        let page = page_request(request.page_size, &request.page_token)?;
        let page = self.store.list_automations(&self.tenant, &page).await?;
        Ok(v1::ListAutomationsResponse {
            automations: page
                .items
                .iter()
                .map(|a| automation_message(a, false))
                .collect(),
            next_page_token: page_token(page.next.as_ref()),
        })
    }

    async fn automation_set_paused(&self, id: &str, paused: bool) -> ApiResult<v1::Automation> {
        let id = AutomationId(convert::name("id", id)?);
        let record = self
            .store
            .set_automation_status(&self.tenant, &id, paused)
            .await?;
        Ok(automation_message(&record, false))
    }

    async fn automation_delete(&self, id: &str) -> ApiResult<v1::DeleteAutomationResponse> {
        let id = AutomationId(convert::name("id", id)?);
        self.store.delete_automation(&self.tenant, &id).await?;
        Ok(v1::DeleteAutomationResponse {})
    }
}

service! {
    impl Automations {
        rpc create_automation(CreateAutomationRequest) -> v1::Automation =
            |api, m| api.automation_create(m);
        rpc update_automation(UpdateAutomationRequest) -> v1::Automation =
            |api, m| api.automation_update(m);
        rpc apply_automation(ApplyAutomationRequest) -> v1::Automation =
            |api, m| api.automation_apply(m);
        rpc get_automation(GetAutomationRequest) -> v1::Automation =
            |api, m| api.automation_get(m);
        rpc list_automations(ListAutomationsRequest) -> v1::ListAutomationsResponse =
            |api, m| api.automation_list(m);
        rpc pause_automation(PauseAutomationRequest) -> v1::Automation =
            |api, m| api.automation_set_paused(&m.id, true);
        rpc activate_automation(ActivateAutomationRequest) -> v1::Automation =
            |api, m| api.automation_set_paused(&m.id, false);
        rpc delete_automation(DeleteAutomationRequest) -> v1::DeleteAutomationResponse =
            |api, m| api.automation_delete(&m.id);
    }
}
