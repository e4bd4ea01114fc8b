//! `show`: each guest's role, master, link, offset, lag, read-only and health, live.

use serde::Serialize;
use serde_json::Value;

use super::{Live, Taskmanager};

#[derive(Debug, Serialize)]
pub struct Row {
    pub id: String,
    pub role: String,
    pub master: String,
    pub link: String,
    pub offset: Option<i64>,
    pub lag_bytes: Option<i64>,
    pub lag_seconds: Option<i64>,
    pub read_only: Option<bool>,
    pub health: String,
    pub inventory_replica_of: Option<String>,
    /// The server the guest drives, e.g. `valkey 9.1.2` (in `show --json`).
    pub server: Option<String>,
}

impl Taskmanager {
    pub async fn show(&self) -> (Vec<Row>, Vec<String>) {
        let live = self.live_all().await;
        let disagreements = self.disagreements(&live);
        (rows(self, &live), disagreements)
    }
}

fn rows(tm: &Taskmanager, live: &[Live]) -> Vec<Row> {
    let by_addr: std::collections::HashMap<(String, u64), &Live> = live.iter().filter_map(|l| Some((l.addr()?, l))).collect();
    live.iter()
        .map(|l| {
            let inv = tm.inventory.guest(&l.id).and_then(|g| g.replica_of.clone());
            let Some(s) = &l.status else {
                return Row {
                    id: l.id.clone(), role: "-".into(), master: "-".into(), link: "-".into(), offset: None,
                    lag_bytes: None, lag_seconds: None, read_only: None,
                    health: format!("unreachable: {}", l.error.clone().unwrap_or_default()),
                    inventory_replica_of: inv,
                    server: None,
                };
            };
            let master_live = l.master_addr().and_then(|a| by_addr.get(&a).copied());
            let master = match (l.master_addr(), master_live) {
                (Some(_), Some(m)) => m.id.clone(),
                (Some((h, p)), None) => format!("{h}:{p}"),
                (None, _) => "-".into(),
            };
            let lag_bytes = master_live
                .and_then(|m| m.status.as_ref()?.get("master_repl_offset")?.as_i64())
                .map(|mo| (mo - l.offset()).max(0));
            let link = match s.get("link_up").and_then(Value::as_bool) {
                Some(true) if s["sync_in_progress"] == true => "syncing".into(),
                Some(true) => "up".into(),
                Some(false) => "down".into(),
                None => "-".into(),
            };
            let mut health = "ok".to_string();
            if s["fenced"] == true {
                health = "ok (write fence)".into();
            }
            if s["pending_failover_detach"] == true {
                health.push_str(" (failover detach pending)");
            }
            Row {
                id: l.id.clone(),
                role: l.role().unwrap_or("?").into(),
                master,
                link,
                offset: Some(l.offset()),
                lag_bytes,
                lag_seconds: s.get("master_last_io_seconds_ago").and_then(Value::as_i64),
                read_only: s.get("read_only").and_then(Value::as_bool),
                health,
                inventory_replica_of: inv,
                server: s.get("server").and_then(|v| Some(format!("{} {}", v.get("name")?.as_str()?, v.get("version")?.as_str()?))),
            }
        })
        .collect()
}

/// A plain-text table.
pub fn table(rows: &[Row]) -> String {
    let header = ["ID", "ROLE", "MASTER", "LINK", "OFFSET", "LAG_B", "LAG_S", "RO", "HEALTH"];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let o = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            vec![
                r.id.clone(), r.role.clone(), r.master.clone(), r.link.clone(), o(r.offset), o(r.lag_bytes), o(r.lag_seconds),
                r.read_only.map(|b| if b { "yes" } else { "no" }.to_string()).unwrap_or_else(|| "-".into()),
                r.health.clone(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |row: Vec<String>| {
        row.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    out.push('\n');
    for row in cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}
