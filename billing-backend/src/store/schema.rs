//! Migrations, per dialect. Statements are separated by `--;;` so triggers keep their `;`.
//! A migration is never edited once released; new changes get a new version.

const V1_COMMON: &str = r#"
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)
--;;
CREATE TABLE feed_seq (id BIGINT PRIMARY KEY CHECK (id = 1), value BIGINT NOT NULL)
--;;
INSERT INTO feed_seq (id, value) VALUES (1, 0)
--;;
CREATE TABLE users (
  user_id TEXT PRIMARY KEY,
  plan TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL)
--;;
CREATE TABLE api_keys (
  key_id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(user_id),
  name TEXT NOT NULL,
  plan TEXT NOT NULL,
  key_hash TEXT NOT NULL UNIQUE,
  start TEXT NOT NULL,
  prev_hash TEXT,
  prev_until BIGINT,
  created_at BIGINT NOT NULL,
  last_used BIGINT,
  revoked_at BIGINT,
  expires_at BIGINT,
  rate_limit_override BIGINT,
  daily_limit_override BIGINT,
  metadata TEXT NOT NULL,
  usage_total BIGINT NOT NULL DEFAULT 0,
  seq BIGINT NOT NULL UNIQUE)
--;;
CREATE INDEX api_keys_user ON api_keys(user_id)
--;;
CREATE TABLE usage_daily (
  key_id TEXT NOT NULL,
  day TEXT NOT NULL,
  units BIGINT NOT NULL,
  PRIMARY KEY (key_id, day))
--;;
CREATE TABLE usage_batches (
  gateway_id TEXT NOT NULL,
  batch_id BIGINT NOT NULL,
  received_at BIGINT NOT NULL,
  entries BIGINT NOT NULL,
  units BIGINT NOT NULL,
  PRIMARY KEY (gateway_id, batch_id))
--;;
CREATE TABLE subscriptions (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  plan TEXT NOT NULL,
  cycle TEXT NOT NULL,
  status TEXT NOT NULL,
  period_start BIGINT NOT NULL,
  period_end BIGINT NOT NULL,
  provider TEXT NOT NULL,
  provider_ref TEXT,
  cancel_at_period_end BIGINT NOT NULL,
  grace_until BIGINT,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL)
--;;
CREATE INDEX subscriptions_user ON subscriptions(user_id)
--;;
CREATE TABLE idempotency (
  scope TEXT NOT NULL,
  idem_key TEXT NOT NULL,
  request_hash TEXT NOT NULL,
  status BIGINT,
  body TEXT,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (scope, idem_key))
"#;

const V1_SQLITE: &str = r#"
CREATE TABLE ledger (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  at BIGINT NOT NULL,
  user_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  subject TEXT NOT NULL,
  detail TEXT NOT NULL,
  cause_kind TEXT NOT NULL,
  cause_ref TEXT NOT NULL)
--;;
CREATE INDEX ledger_user ON ledger(user_id)
--;;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END
--;;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END
"#;

const V1_POSTGRES: &str = r#"
CREATE TABLE ledger (
  id BIGSERIAL PRIMARY KEY,
  at BIGINT NOT NULL,
  user_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  subject TEXT NOT NULL,
  detail TEXT NOT NULL,
  cause_kind TEXT NOT NULL,
  cause_ref TEXT NOT NULL)
--;;
CREATE INDEX ledger_user ON ledger(user_id)
--;;
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'ledger is append-only'; END $$
--;;
CREATE TRIGGER ledger_no_change BEFORE UPDATE OR DELETE ON ledger
FOR EACH ROW EXECUTE FUNCTION ledger_append_only()
"#;

/// Payments (every provider), provider events (webhook deduplication), Stripe customers and
/// metered-usage exports. Same DDL on both databases.
const V2_COMMON: &str = r#"
CREATE TABLE payments (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  amount_minor BIGINT NOT NULL,
  currency TEXT NOT NULL,
  method TEXT NOT NULL,
  status TEXT NOT NULL,
  provider_ref TEXT,
  reference TEXT UNIQUE,
  fee_minor BIGINT,
  plan TEXT,
  cycle TEXT,
  subscription_id TEXT,
  description TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  expires_at BIGINT,
  period_start BIGINT,
  period_end BIGINT)
--;;
CREATE INDEX payments_user ON payments(user_id)
--;;
CREATE UNIQUE INDEX payments_provider_ref ON payments(method, provider_ref)
--;;
CREATE TABLE provider_events (
  provider TEXT NOT NULL,
  event_id TEXT NOT NULL,
  event_type TEXT NOT NULL,
  received_at BIGINT NOT NULL,
  payload TEXT NOT NULL,
  outcome TEXT,
  PRIMARY KEY (provider, event_id))
--;;
CREATE TABLE stripe_customers (
  user_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL UNIQUE,
  created_at BIGINT NOT NULL)
--;;
CREATE TABLE meter_exports (
  identifier TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL,
  key_id TEXT,
  period TEXT NOT NULL,
  value BIGINT NOT NULL,
  status TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  sent_at BIGINT)
"#;

/// SEPA statement imports: every imported entry (deduplicated by the bank's entry reference)
/// and each import's report.
const V4_SEPA: &str = r#"
CREATE TABLE sepa_entries (
  entry_ref TEXT PRIMARY KEY,
  import_id TEXT NOT NULL,
  payment_id TEXT,
  amount_minor BIGINT NOT NULL,
  currency TEXT NOT NULL,
  reference TEXT,
  debtor TEXT,
  outcome TEXT NOT NULL,
  decided_at BIGINT,
  decision TEXT,
  created_at BIGINT NOT NULL)
--;;
CREATE TABLE sepa_imports (
  id TEXT PRIMARY KEY,
  file_name TEXT NOT NULL,
  file_sha256 TEXT NOT NULL,
  report TEXT NOT NULL,
  created_at BIGINT NOT NULL)
"#;

/// Stripe: the link from a Stripe subscription to ours with the `created` time of the last
/// event applied (out-of-order events must not move a subscription backwards), and price ids
/// recorded by `tollgate-backend stripe sync`.
const V3_COMMON: &str = r#"
CREATE TABLE stripe_subscriptions (
  stripe_sub_id TEXT PRIMARY KEY,
  sub_id TEXT NOT NULL UNIQUE,
  customer_id TEXT NOT NULL,
  last_event_at BIGINT NOT NULL,
  last_event_id TEXT,
  created_at BIGINT NOT NULL)
--;;
CREATE TABLE stripe_prices (
  plan TEXT NOT NULL,
  cycle TEXT NOT NULL,
  price_id TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (plan, cycle))
"#;

/// Usage batches that are durable but not yet applied (see `store::pending`): the payload holds
/// the batch's entries; a row is deleted in the transaction that applies it.
const V5_SQLITE: &str = "CREATE TABLE usage_pending (gateway_id TEXT NOT NULL, \
    batch_id BIGINT NOT NULL, entries BLOB NOT NULL, PRIMARY KEY (gateway_id, batch_id))";
const V5_POSTGRES: &str = "CREATE TABLE usage_pending (gateway_id TEXT NOT NULL, \
    batch_id BIGINT NOT NULL, entries BYTEA NOT NULL, PRIMARY KEY (gateway_id, batch_id))";

/// Provider events are claimed with a lease (see `billing::events`): the claim's token and
/// when it lapses, and how many deliveries have claimed the event. `claim_token` NULL means
/// nobody holds it, which is also how events claimed before this migration (by a process that
/// may have crashed) are found again: their redelivery is applied instead of being answered
/// as a duplicate.
const V6_EVENT_LEASES: &str = r#"
ALTER TABLE provider_events ADD COLUMN claim_token TEXT
--;;
ALTER TABLE provider_events ADD COLUMN lease_until BIGINT
--;;
ALTER TABLE provider_events ADD COLUMN claims BIGINT NOT NULL DEFAULT 1
"#;

/// `(version, sqlite statements, postgres statements)`, in order.
pub fn migrations() -> Vec<(i64, Vec<&'static str>, Vec<&'static str>)> {
    let split = |s: &'static str| -> Vec<&'static str> {
        s.split("--;;")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    };
    let mut v1_sqlite = split(V1_COMMON);
    v1_sqlite.extend(split(V1_SQLITE));
    let mut v1_pg = split(V1_COMMON);
    v1_pg.extend(split(V1_POSTGRES));
    vec![
        (1, v1_sqlite, v1_pg),
        (2, split(V2_COMMON), split(V2_COMMON)),
        (3, split(V3_COMMON), split(V3_COMMON)),
        (4, split(V4_SEPA), split(V4_SEPA)),
        (5, vec![V5_SQLITE], vec![V5_POSTGRES]),
        (6, split(V6_EVENT_LEASES), split(V6_EVENT_LEASES)),
    ]
}
