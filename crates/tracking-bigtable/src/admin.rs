//! `tracking-api bootstrap` for Bigtable: creates the table with its column
//! families and GC rules when it is missing; never alters an existing one.

use std::collections::HashMap;
use std::time::Duration;

use googleapis_tonic_google_bigtable_admin_v2::google::bigtable::admin::v2::bigtable_table_admin_client::BigtableTableAdminClient;
use googleapis_tonic_google_bigtable_admin_v2::google::bigtable::admin::v2::gc_rule::{Rule, Union};
use googleapis_tonic_google_bigtable_admin_v2::google::bigtable::admin::v2::{
    ColumnFamily, CreateTableRequest, GcRule, Table,
};
use tonic::transport::{Channel, ClientTlsConfig};
use tracking_core::Ttls;

use crate::schema::{LONG, SHORT, VIA};
use crate::{BigtableConfig, SetupError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapOutcome {
    Created,
    AlreadyExists,
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

/// The families with their GC rules, for these TTLs.
pub fn column_families(ttls: Ttls) -> HashMap<String, ColumnFamily> {
    HashMap::from([
        (SHORT.to_owned(), backstop(ttls.short)),
        (LONG.to_owned(), backstop(ttls.long)),
        (VIA.to_owned(), backstop(ttls.via)),
    ])
}

/// Creates `families` in a new table; `AlreadyExists` leaves the table as it is.
pub async fn create_table(
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
    let result = match &cfg.emulator_host {
        Some(host) => {
            let channel = Channel::from_shared(format!("http://{host}"))
                .map_err(|e| SetupError::Connect(e.to_string()))?
                .connect()
                .await
                .map_err(|e| SetupError::Connect(e.to_string()))?;
            BigtableTableAdminClient::new(channel)
                .create_table(request)
                .await
        }
        None => {
            let provider = gcp_auth::provider()
                .await
                .map_err(|e| SetupError::Credentials(e.to_string()))?;
            let token = provider
                .token(&[ADMIN_SCOPE])
                .await
                .map_err(|e| SetupError::Credentials(e.to_string()))?;
            let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {}", token.as_str())
                .parse()
                .map_err(|_| SetupError::Credentials("token is not a valid header value".into()))?;
            let channel = Channel::from_static("https://bigtableadmin.googleapis.com")
                .tls_config(
                    ClientTlsConfig::new()
                        .with_webpki_roots()
                        .domain_name("bigtableadmin.googleapis.com"),
                )
                .map_err(|e| SetupError::Connect(e.to_string()))?
                .connect()
                .await
                .map_err(|e| SetupError::Connect(e.to_string()))?;
            BigtableTableAdminClient::with_interceptor(
                channel,
                move |mut req: tonic::Request<()>| {
                    req.metadata_mut().insert("authorization", bearer.clone());
                    Ok(req)
                },
            )
            .create_table(request)
            .await
        }
    };
    match result {
        Ok(_) => Ok(BootstrapOutcome::Created),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(BootstrapOutcome::AlreadyExists),
        Err(s) => Err(SetupError::Admin(format!("{}: {}", s.code(), s.message()))),
    }
}

/// Creates the sessions table with the project's families when missing.
pub async fn bootstrap(cfg: &BigtableConfig, ttls: Ttls) -> Result<BootstrapOutcome, SetupError> {
    create_table(cfg, column_families(ttls)).await
}
