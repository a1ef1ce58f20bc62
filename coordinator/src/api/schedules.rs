//! The `Schedules` service: the tenant's automations' cron schedules, their pauses, and runs
//! started by hand.

use chrono::Utc;
use leasehold_core::ids::AutomationId;
use leasehold_core::schedule::{self, Timetable};
use leasehold_core::store::{
    RequestError, ScheduleKey, ScheduleRecord, ScheduledFire, StartRun, Trigger,
};
use leasehold_proto::v1;
use leasehold_proto::v1::schedules_server::Schedules;

use super::convert::{self, opt_timestamp, schedule_message};
use super::error::ApiResult;
use super::runs::run_message;
use super::{Api, respond, service};

fn schedule_view(record: &ScheduleRecord) -> v1::Schedule {
    let pause = record.pause.as_ref();
    v1::Schedule {
        automation_id: record.automation_id.0.clone(),
        spec: Some(schedule_message(&record.spec)),
        paused: record.paused,
        paused_at: opt_timestamp(pause.map(|p| p.at)),
        paused_by: pause.map(|p| p.by.clone()).unwrap_or_default(),
        pause_reason: pause.map(|p| p.reason.clone()).unwrap_or_default(),
        next_fire_at: opt_timestamp(record.next_fire_at.filter(|_| !record.paused)),
        last_fire_at: opt_timestamp(record.last_fire_at),
    }
}

impl Api {
    fn schedule_key(&self, automation_id: &str, schedule_id: &str) -> ApiResult<ScheduleKey> {
        Ok(ScheduleKey {
            tenant: self.tenant.clone(),
            automation_id: AutomationId(convert::name("automation_id", automation_id)?),
            schedule_id: convert::name("schedule_id", schedule_id)?,
        })
    }

    fn not_found(key: &ScheduleKey) -> RequestError {
        RequestError::ScheduleNotFound {
            automation_id: key.automation_id.clone(),
            schedule_id: key.schedule_id.clone(),
        }
    }

    async fn schedule(&self, key: &ScheduleKey) -> ApiResult<ScheduleRecord> {
        let found = self
            .store
            .list_schedules(&self.tenant, Some(&key.automation_id))
            .await?
            .into_iter()
            .find(|s| s.spec.id == key.schedule_id);
        Ok(found.ok_or_else(|| Self::not_found(key))?)
    }

    async fn schedules_list(
        &self,
        request: v1::ListSchedulesRequest,
    ) -> ApiResult<v1::ListSchedulesResponse> {
        let automation = if request.automation_id.is_empty() {
            None
        } else {
            Some(AutomationId(convert::name(
                "automation_id",
                &request.automation_id,
            )?))
        };
        let schedules = self
            .store
            .list_schedules(&self.tenant, automation.as_ref())
            .await?;
        Ok(v1::ListSchedulesResponse {
            schedules: schedules.iter().map(schedule_view).collect(),
        })
    }

    async fn schedule_set_paused(
        &self,
        automation_id: &str,
        schedule_id: &str,
        reason: &str,
        paused: bool,
    ) -> ApiResult<v1::Schedule> {
        let key = self.schedule_key(automation_id, schedule_id)?;
        let reason = convert::text("reason", reason)?;
        let resume_from = if paused {
            None
        } else {
            let current = self.schedule(&key).await?;
            Timetable::parse(&current.spec.cron, &current.spec.timezone)
                .ok()
                .and_then(|table| table.next_after(Utc::now()))
        };
        let record = self
            .store
            .set_schedule_paused(&key, paused, &self.caller.name, reason, resume_from)
            .await?
            .ok_or_else(|| Self::not_found(&key))?;
        Ok(schedule_view(&record))
    }

    async fn schedule_trigger(
        &self,
        request: v1::TriggerScheduleRequest,
    ) -> ApiResult<v1::TriggerScheduleResponse> {
        let key = self.schedule_key(&request.automation_id, &request.schedule_id)?;
        let request_id = convert::optional_key("request_id", &request.request_id)?;
        let schedule = self.schedule(&key).await?;
        let (automation, id) = (key.automation_id.as_str(), key.schedule_id.as_str());
        let start = StartRun {
            tenant: self.tenant.clone(),
            automation_id: key.automation_id.clone(),
            inputs: schedule.spec.inputs.clone(),
            priority: 0,
            concurrency_key: (schedule.spec.overlap == schedule::Overlap::QueueOne)
                .then(|| schedule::concurrency_key(automation, id)),
            idempotency_key: request_id
                .as_deref()
                .map(|r| schedule::trigger_key(automation, id, r)),
            trigger: Trigger::Schedule(ScheduledFire {
                schedule_id: key.schedule_id.clone(),
                fire_at: Utc::now(),
            }),
            actor: Some(self.caller.name.clone()),
            trace: self.trace.clone(),
            queue: None,
        };
        let started = self.store.start_run(&start).await?;
        let run = self.store.run(&self.tenant, started.run_id).await?;
        Ok(v1::TriggerScheduleResponse {
            run: Some(run_message(&run, Vec::new(), Vec::new())),
            created: started.created,
        })
    }
}

service! {
    impl Schedules {
        rpc list_schedules(ListSchedulesRequest) -> v1::ListSchedulesResponse =
            |api, m| api.schedules_list(m);
        rpc pause_schedule(PauseScheduleRequest) -> v1::Schedule =
            |api, m| api.schedule_set_paused(&m.automation_id, &m.schedule_id, &m.reason, true);
        rpc resume_schedule(ResumeScheduleRequest) -> v1::Schedule =
            |api, m| api.schedule_set_paused(&m.automation_id, &m.schedule_id, "", false);
        rpc trigger_schedule(TriggerScheduleRequest) -> v1::TriggerScheduleResponse =
            |api, m| api.schedule_trigger(m);
    }
}
