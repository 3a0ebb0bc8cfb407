//! Geo-IP lookups from a MaxMind-format database file (GeoIP2 / GeoLite2
//! City or Country).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use maxminddb::{Reader, geoip2};
use tracking_core::Geo;

#[derive(Debug)]
pub struct GeoLookup {
    reader: Reader<Vec<u8>>,
}

impl GeoLookup {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let reader = Reader::open_readfile(path)
            .map_err(|e| anyhow::anyhow!("cannot open geo-IP database {}: {e}", path.display()))?;
        Ok(Self { reader })
    }

    /// Country, region and city of `ip` (the full address, looked up before
    /// anonymisation; only these coarse fields leave this function).
    pub fn lookup(&self, ip: IpAddr) -> Option<Arc<Geo>> {
        let found = self.reader.lookup(ip).ok()?;
        let city: geoip2::City<'_> = found.decode().ok().flatten()?;
        let geo = Geo {
            country: city.country.iso_code.map(Box::from),
            region: city
                .subdivisions
                .first()
                .and_then(|s| s.iso_code)
                .map(Box::from),
            city: city.city.names.english.map(Box::from),
        };
        (geo.country.is_some() || geo.region.is_some() || geo.city.is_some()).then(|| Arc::new(geo))
    }
}
