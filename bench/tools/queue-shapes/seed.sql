-- 200,000 finished runs (history) and 40,000 queued ones, on a database at Leasehold's schema.
INSERT INTO automations (tenant_id, automation_id, current_version) VALUES ('t', 'a', 1);
INSERT INTO automation_versions (tenant_id, automation_id, version, spec, spec_hash)
VALUES ('t', 'a', 1, '{}', '\x00');
INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger, status, finished_at)
SELECT gen_random_uuid(), 't', 'a', 1, 'api', 'completed', now() FROM generate_series(1, 200000);
INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger, status)
SELECT gen_random_uuid(), 't', 'a', 1, 'api', 'queued' FROM generate_series(1, 40000);
