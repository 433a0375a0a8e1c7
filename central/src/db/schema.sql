-- Central's schema, as numbered migrations: each `-- migration N: …` line starts one, run once
-- in order (the database's schema_version says which it has). Never edit a migration that has
-- shipped; add the next one. Portable SQL: runs on SQLite and PostgreSQL alike.
-- Times are unix milliseconds (BIGINT); ids are text; booleans are 0/1 (BIGINT).

-- migration 1: stores, revisions, enrollment, certificates, events, commands, alerts, tokens, audit
CREATE TABLE stores (
  id TEXT PRIMARY KEY,
  region TEXT NOT NULL DEFAULT '',
  desired_revision TEXT NOT NULL DEFAULT '',
  applied_revision TEXT NOT NULL DEFAULT '',
  agent_version TEXT NOT NULL DEFAULT '',
  cert_serial TEXT NOT NULL DEFAULT '',
  cert_not_after BIGINT NOT NULL DEFAULT 0,
  enrolled_ms BIGINT NOT NULL DEFAULT 0,
  last_seen_ms BIGINT NOT NULL DEFAULT 0,
  online BIGINT NOT NULL DEFAULT 0,
  status_json TEXT NOT NULL DEFAULT '',
  last_apply_ok BIGINT NOT NULL DEFAULT 1,
  last_apply_message TEXT NOT NULL DEFAULT '',
  acked_seq BIGINT NOT NULL DEFAULT 0,
  created_ms BIGINT NOT NULL
);
CREATE TABLE revisions (
  store_id TEXT NOT NULL,
  revision TEXT NOT NULL,
  profile_yaml TEXT NOT NULL,
  source TEXT NOT NULL,
  created_ms BIGINT NOT NULL,
  created_by TEXT NOT NULL,
  PRIMARY KEY (store_id, revision)
);
CREATE TABLE enroll_tokens (
  hash TEXT PRIMARY KEY,
  store_id TEXT NOT NULL,
  region TEXT NOT NULL,
  created_ms BIGINT NOT NULL,
  expires_ms BIGINT NOT NULL,
  used_ms BIGINT NOT NULL DEFAULT 0,
  created_by TEXT NOT NULL
);
CREATE TABLE revoked_certs (
  serial TEXT PRIMARY KEY,
  store_id TEXT NOT NULL,
  revoked_ms BIGINT NOT NULL
);
CREATE TABLE events (
  store_id TEXT NOT NULL,
  seq BIGINT NOT NULL,
  at_ms BIGINT NOT NULL,
  kind TEXT NOT NULL,
  workload TEXT NOT NULL,
  message TEXT NOT NULL,
  received_ms BIGINT NOT NULL,
  PRIMARY KEY (store_id, seq)
);
CREATE TABLE commands (
  id TEXT PRIMARY KEY,
  store_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  workload TEXT NOT NULL,
  state TEXT NOT NULL,
  result TEXT NOT NULL DEFAULT '',
  created_ms BIGINT NOT NULL,
  expires_ms BIGINT NOT NULL,
  finished_ms BIGINT NOT NULL DEFAULT 0,
  created_by TEXT NOT NULL
);
CREATE INDEX commands_by_store ON commands (store_id, state);
CREATE TABLE alerts (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  store_id TEXT NOT NULL,
  subject TEXT NOT NULL,
  message TEXT NOT NULL,
  since_ms BIGINT NOT NULL,
  resolved_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX alerts_open ON alerts (resolved_ms, kind);
CREATE TABLE api_tokens (
  hash TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  role TEXT NOT NULL,
  created_ms BIGINT NOT NULL
);
CREATE TABLE audit (
  id TEXT PRIMARY KEY,
  at_ms BIGINT NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  detail TEXT NOT NULL
);

-- migration 2: events carry the subject of a failing/recovered problem (older events: '')
ALTER TABLE events ADD COLUMN subject TEXT NOT NULL DEFAULT ''

-- migration 3: a renewal's certificate waits until first used; enrollment tokens remember the key that used them (a retry after a lost reply) and, like API tokens, get a listable id and can be revoked
ALTER TABLE stores ADD COLUMN next_cert_serial TEXT NOT NULL DEFAULT '';
ALTER TABLE stores ADD COLUMN next_cert_not_after BIGINT NOT NULL DEFAULT 0;
ALTER TABLE stores ADD COLUMN enrolled_token TEXT NOT NULL DEFAULT '';
ALTER TABLE enroll_tokens ADD COLUMN id TEXT NOT NULL DEFAULT '';
ALTER TABLE enroll_tokens ADD COLUMN used_key TEXT NOT NULL DEFAULT '';
ALTER TABLE enroll_tokens ADD COLUMN revoked_ms BIGINT NOT NULL DEFAULT 0;
UPDATE enroll_tokens SET id = substr(hash, 1, 12);
CREATE INDEX enroll_tokens_by_store ON enroll_tokens (store_id);
ALTER TABLE api_tokens ADD COLUMN id TEXT NOT NULL DEFAULT '';
ALTER TABLE api_tokens ADD COLUMN revoked_ms BIGINT NOT NULL DEFAULT 0;
UPDATE api_tokens SET id = substr(hash, 1, 12)

-- migration 4: bounds. Event retention reads events by when central received them; the audit
-- trail is read by store, actor and time; the alert cap counts a store's open alerts.
CREATE INDEX events_by_received ON events (received_ms);
ALTER TABLE audit ADD COLUMN store_id TEXT NOT NULL DEFAULT '';
CREATE INDEX audit_by_time ON audit (at_ms, id);
CREATE INDEX audit_by_store ON audit (store_id, at_ms);
CREATE INDEX alerts_by_store ON alerts (store_id, resolved_ms);

-- migration 5: the store's console secret (issue 12), 64 hex digits: central issues console codes
-- with it and the node checks them with its copy. Made at enrollment and replaced at each; a
-- store enrolled before this gets one at its next session ('' until then).
ALTER TABLE stores ADD COLUMN console_secret TEXT NOT NULL DEFAULT ''
