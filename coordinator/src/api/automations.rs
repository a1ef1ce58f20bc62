//! The `Automations` service.

use leasehold_core::ids::AutomationId;
use leasehold_core::spec::Spec;
use leasehold_core::store::{AutomationRecord, Stored};
use leasehold_proto::v1;
use leasehold_proto::v1::automations_server::Automations;
use tonic::{Request, Response, Status};

use super::convert::{self, spec_message, timestamp};
use super::error::{ApiError, ApiResult};
use super::{Api, page_request, page_token, respond};

fn automation_message(record: &AutomationRecord, version_created: bool) -> v1::Automation {
    v1::Automation {
        id: record.id.0.clone(),
        current_version: record.current_version,
        status: record.status.as_str().to_owned(),
        spec: Some(spec_message(&record.spec)),
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
        version_created,
    }
}

impl Api {
    async fn stored(&self, spec: &Spec, stored: Stored) -> ApiResult<v1::Automation> {
        let record = self.store.automation(&self.tenant, &spec.id).await?;
        Ok(automation_message(&record, stored.created))
    }

    async fn automation_create(
        &self,
        request: v1::CreateAutomationRequest,
    ) -> ApiResult<v1::Automation> {
        let spec = convert::spec_from_source(request.spec.as_ref())?;
        let version = self.store.create_automation(&self.tenant, &spec).await?;
        let stored = Stored {
            version,
            created: true,
        };
        self.stored(&spec, stored).await
    }

    async fn automation_update(
        &self,
        request: v1::UpdateAutomationRequest,
    ) -> ApiResult<v1::Automation> {
        let spec = convert::spec_from_source(request.spec.as_ref())?;
        let stored = self
            .store
            .create_automation_version(&self.tenant, &spec)
            .await?;
        self.stored(&spec, stored).await
    }

    async fn automation_apply(
        &self,
        request: v1::ApplyAutomationRequest,
    ) -> ApiResult<v1::Automation> {
        let spec = convert::spec_from_source(request.spec.as_ref())?;
        let stored = self.store.apply_automation(&self.tenant, &spec).await?;
        self.stored(&spec, stored).await
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

#[tonic::async_trait]
impl Automations for Api {
    async fn create_automation(
        &self,
        request: Request<v1::CreateAutomationRequest>,
    ) -> Result<Response<v1::Automation>, Status> {
        respond(self.automation_create(request.into_inner()).await)
    }

    async fn update_automation(
        &self,
        request: Request<v1::UpdateAutomationRequest>,
    ) -> Result<Response<v1::Automation>, Status> {
        respond(self.automation_update(request.into_inner()).await)
    }

    async fn apply_automation(
        &self,
        request: Request<v1::ApplyAutomationRequest>,
    ) -> Result<Response<v1::Automation>, Status> {
        respond(self.automation_apply(request.into_inner()).await)
    }

    async fn get_automation(
        &self,
        request: Request<v1::GetAutomationRequest>,
    ) -> Result<Response<v1::Automation>, Status> {
        respond(self.automation_get(request.into_inner()).await)
    }

    async fn list_automations(
        &self,
        request: Request<v1::ListAutomationsRequest>,
    ) -> Result<Response<v1::ListAutomationsResponse>, Status> {
        respond(self.automation_list(request.into_inner()).await)
    }

    async fn pause_automation(
        &self,
        request: Request<v1::PauseAutomationRequest>,
    ) -> Result<Response<v1::Automation>, Status> {
        respond(
            self.automation_set_paused(&request.get_ref().id, true)
                .await,
        )
    }

    async fn activate_automation(
        &self,
        request: Request<v1::ActivateAutomationRequest>,
    ) -> Result<Response<v1::Automation>, Status> {
        respond(
            self.automation_set_paused(&request.get_ref().id, false)
                .await,
        )
    }

    async fn delete_automation(
        &self,
        request: Request<v1::DeleteAutomationRequest>,
    ) -> Result<Response<v1::DeleteAutomationResponse>, Status> {
        respond(self.automation_delete(&request.get_ref().id).await)
    }
}
