-- migration: expand, in a transaction
-- API tokens: every call to the gRPC API carries one, and it decides the caller's tenant, role and
-- name. Only an addition: no statement of the previous release touches this table, so the
-- migration may run while the previous release still serves (it then serves without tokens).
--
-- A token is `lh_<token_id>_<secret>`: the id finds the row (one primary-key lookup per call), and
-- only the SHA-256 of the secret is kept. A plain hash suffices because the secret is 256 random
-- bits, not something a person chose: nobody can search that space, so a slow, salted password
-- hash would add cost to every call and no protection. A leaked table lets nobody call the API.
CREATE TABLE api_tokens (
    token_id     text        PRIMARY KEY CHECK (token_id ~ '^[0-9a-f]{16}$'),
    tenant_id    text        NOT NULL CHECK (length(tenant_id) BETWEEN 1 AND 128),
    role         text        NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    -- Who the token stands for: the actor recorded on the events and gate decisions it causes.
    name         text        NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    secret_hash  bytea       NOT NULL CHECK (octet_length(secret_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Null: the token does not expire.
    expires_at   timestamptz,
    -- Set once; a revoked token is refused from the next call on.
    revoked_at   timestamptz
);
