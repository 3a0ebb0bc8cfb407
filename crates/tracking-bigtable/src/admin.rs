//! `tracking-api bootstrap` for Bigtable: creates the table with its column
//! families and GC rules when it is missing. Of an existing table it only
//! adds (or sets the GC age of) the dedup family `e`, never touching the
//! session families or any data.

use std::collections::HashMap;
use std::time::Duration;

use googleapis_tonic_google_bigtable_admin_v2::google::bigtable::admin::v2::bigtable_table_admin_client::BigtableTableAdminClient;
use googleapis_tonic_google_bigtable_admin_v2::google::bigtable::admin::v2::gc_rule::{Rule, Union};
use googleapis_tonic_google_bigtable_admin_v2::google::bigtable::admin::v2::modify_column_families_request::{
    Modification, modification::Mod,
};
use googleapis_tonic_google_bigtable_admin_v2::google::bigtable::admin::v2::{
    ColumnFamily, CreateTableRequest, GcRule, GetTableRequest, ModifyColumnFamiliesRequest,
    Table, table,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};
use tracking_core::Ttls;

use crate::schema::{EVENTS, LONG, SHORT, VIA};
use crate::{BigtableConfig, SetupError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapOutcome {
    Created,
    AlreadyExists,
    /// The table existed; its dedup family was added or its GC age set
    /// (what was done).
    Updated(String),
}

const ADMIN_SCOPE: &str = "https://www.googleapis.com/auth/bigtable.admin.table";

/// GC as a storage backstop only: a cell may be collected once it is a day
/// older than its TTL, or once a newer version exists. Expiry itself is
/// decided by the service from timestamps and TTLs.
fn backstop(ttl: Duration) -> ColumnFamily {
    let age = ttl + Duration::from_secs(86_400);
    ColumnFamily {
        gc_rule: Some(GcRule {
            rule: Some(Rule::Union(Union {
                rules: vec![
                    GcRule {
                        rule: Some(Rule::MaxAge(prost_types::Duration {
                            seconds: i64::try_from(age.as_secs()).unwrap_or(i64::MAX),
                            nanos: 0,
                        })),
                    },
                    GcRule {
                        rule: Some(Rule::MaxNumVersions(1)),
                    },
                ],
            })),
        }),
        ..ColumnFamily::default()
    }
}

/// The dedup family: its cells go once they are older than the window.
fn events_family(window: Duration) -> ColumnFamily {
    ColumnFamily {
        gc_rule: Some(GcRule {
            rule: Some(Rule::MaxAge(prost_types::Duration {
                seconds: i64::try_from(window.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            })),
        }),
        ..ColumnFamily::default()
    }
}

/// The families with their GC rules, for these TTLs and, when on, the dedup
/// window.
pub fn column_families(
    ttls: Ttls,
    dedup_window: Option<Duration>,
) -> HashMap<String, ColumnFamily> {
    let mut families = HashMap::from([
        (SHORT.to_owned(), backstop(ttls.short)),
        (LONG.to_owned(), backstop(ttls.long)),
        (VIA.to_owned(), backstop(ttls.via)),
    ]);
    if let Some(window) = dedup_window {
        families.insert(EVENTS.to_owned(), events_family(window));
    }
    families
}

/// Adds the bearer token of Application Default Credentials (none for an
/// emulator).
#[derive(Clone)]
struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(bearer) = &self.0 {
            req.metadata_mut().insert("authorization", bearer.clone());
        }
        Ok(req)
    }
}

type AdminClient = BigtableTableAdminClient<InterceptedService<Channel, Auth>>;

/// A table admin client: plaintext to an emulator, else TLS with a token.
async fn admin_client(cfg: &BigtableConfig) -> Result<AdminClient, SetupError> {
    let connect = |e: tonic::transport::Error| SetupError::Connect(e.to_string());
    let (channel, auth) = match &cfg.emulator_host {
        Some(host) => {
            let channel = Channel::from_shared(format!("http://{host}"))
                .map_err(|e| SetupError::Connect(e.to_string()))?
                .connect()
                .await
                .map_err(connect)?;
            (channel, Auth(None))
        }
        None => {
            let provider = gcp_auth::provider()
                .await
                .map_err(|e| SetupError::Credentials(e.to_string()))?;
            let token = provider
                .token(&[ADMIN_SCOPE])
                .await
                .map_err(|e| SetupError::Credentials(e.to_string()))?;
            let bearer: MetadataValue<Ascii> = format!("Bearer {}", token.as_str())
                .parse()
                .map_err(|_| SetupError::Credentials("token is not a valid header value".into()))?;
            let channel = Channel::from_static("https://bigtableadmin.googleapis.com")
                .tls_config(
                    ClientTlsConfig::new()
                        .with_webpki_roots()
                        .domain_name("bigtableadmin.googleapis.com"),
                )
                .map_err(connect)?
                .connect()
                .await
                .map_err(connect)?;
            (channel, Auth(Some(bearer)))
        }
    };
    Ok(BigtableTableAdminClient::with_interceptor(channel, auth))
}

fn admin_error(s: &tonic::Status) -> SetupError {
    SetupError::Admin(format!("{}: {}", s.code(), s.message()))
}

fn table_name(cfg: &BigtableConfig) -> String {
    format!(
        "projects/{}/instances/{}/tables/{}",
        cfg.project, cfg.instance, cfg.table
    )
}

/// Creates `families` in a new table; `AlreadyExists` leaves the table as it is.
pub async fn create_table(
    cfg: &BigtableConfig,
    families: HashMap<String, ColumnFamily>,
) -> Result<BootstrapOutcome, SetupError> {
    let mut client = admin_client(cfg).await?;
    create_with(&mut client, cfg, families).await
}

async fn create_with(
    client: &mut AdminClient,
    cfg: &BigtableConfig,
    families: HashMap<String, ColumnFamily>,
) -> Result<BootstrapOutcome, SetupError> {
    let request = CreateTableRequest {
        parent: format!("projects/{}/instances/{}", cfg.project, cfg.instance),
        table_id: cfg.table.clone(),
        table: Some(Table {
            column_families: families,
            ..Table::default()
        }),
        initial_splits: vec![],
    };
    match client.create_table(request).await {
        Ok(_) => Ok(BootstrapOutcome::Created),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(BootstrapOutcome::AlreadyExists),
        Err(s) => Err(admin_error(&s)),
    }
}

/// The GC age of the table's dedup family: `Ok(None)` when it has none.
async fn events_family_age(
    client: &mut AdminClient,
    cfg: &BigtableConfig,
) -> Result<Option<Option<Duration>>, tonic::Status> {
    let table = client
        .get_table(GetTableRequest {
            name: table_name(cfg),
            view: table::View::SchemaView as i32,
        })
        .await?
        .into_inner();
    Ok(table.column_families.get(EVENTS).map(|f| {
        match f.gc_rule.as_ref().and_then(|r| r.rule.as_ref()) {
            Some(Rule::MaxAge(d)) => u64::try_from(d.seconds).ok().map(Duration::from_secs),
            _ => None,
        }
    }))
}

/// Creates the sessions table with the project's families when missing;
/// of an existing one, adds the dedup family (or sets its GC age to the
/// window) when deduplication is on.
pub async fn bootstrap(
    cfg: &BigtableConfig,
    ttls: Ttls,
    dedup_window: Option<Duration>,
) -> Result<BootstrapOutcome, SetupError> {
    let mut client = admin_client(cfg).await?;
    let outcome = create_with(&mut client, cfg, column_families(ttls, dedup_window)).await?;
    let Some(window) = dedup_window else {
        return Ok(outcome);
    };
    if outcome == BootstrapOutcome::Created {
        return Ok(outcome);
    }
    let modification = match events_family_age(&mut client, cfg)
        .await
        .map_err(|s| admin_error(&s))?
    {
        Some(Some(age)) if age == window => return Ok(outcome),
        Some(_) => (
            Mod::Update(events_family(window)),
            format!(
                "set the GC age of family {EVENTS} to the dedup window, {}s",
                window.as_secs()
            ),
        ),
        None => (
            Mod::Create(events_family(window)),
            format!(
                "added family {EVENTS} (dedup ids, GC after {}s)",
                window.as_secs()
            ),
        ),
    };
    let (change, said) = modification;
    client
        .modify_column_families(ModifyColumnFamiliesRequest {
            name: table_name(cfg),
            modifications: vec![Modification {
                id: EVENTS.to_owned(),
                r#mod: Some(change),
                ..Modification::default()
            }],
            ignore_warnings: false,
        })
        .await
        .map_err(|s| admin_error(&s))?;
    Ok(BootstrapOutcome::Updated(said))
}

/// Whether the table has the dedup family, asked at start when
/// deduplication is on: `Ok(false)` when the table answered without it
/// (every renewal would fail), `Err` when it could not be asked (no
/// permission to read the schema, Bigtable unreachable).
pub async fn has_events_family(cfg: &BigtableConfig) -> Result<bool, SetupError> {
    let mut client = admin_client(cfg).await?;
    events_family_age(&mut client, cfg)
        .await
        .map(|f| f.is_some())
        .map_err(|s| admin_error(&s))
}
