//! Membership from Trove: the Redis replica sets of a project as Trove records them, kept as one inventory per set in the directory `watch --sets` reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::inventory::{GuestEntry, Inventory};
use super::trove_api::{Record, TroveApi};
use super::Error;

/// The Redis replica sets among Trove's records: each a master (no `replica_of`) with the
/// instances that replicate from it, transitively. A standalone instance is no set.
pub fn sets_of(records: &HashMap<String, Record>) -> Vec<BTreeMap<String, Option<String>>> {
    let redis = |id: &str| records.get(id).is_some_and(|r| r.datastore.as_deref().is_none_or(|d| d == "redis"));
    let root = |start: &str| -> String {
        let mut id = start.to_owned();
        let mut hops = 0;
        while let Some(next) = records.get(&id).and_then(|r| r.replica_of.clone()) {
            if !records.contains_key(&next) || hops > records.len() {
                break;
            }
            id = next;
            hops += 1;
        }
        id
    };
    let mut sets: BTreeMap<String, BTreeMap<String, Option<String>>> = BTreeMap::new();
    for (id, r) in records {
        if !redis(id) || r.replica_of.is_none() {
            continue;
        }
        let top = root(id);
        let set = sets.entry(top.clone()).or_default();
        set.insert(top, None);
        set.insert(id.clone(), r.replica_of.clone());
    }
    sets.into_values().collect()
}

/// Brings `dir` in line with Trove's sets, from `template` (transport, watchers, password,
/// `[trove]`): a set already in a file (any member in common) keeps its file and name and gains
/// or loses members (the watcher owns `replica_of` of the members it has; a member Trove records
/// as standalone stays until Trove deletes it or counts it in another set); a new set gets
/// `<its master's id>.toml`, named by that id. A file that no set claims is kept as it is while
/// Trove still has one of its members (a set whose last replica Trove detached keeps its name for
/// clients), and removed once Trove has none. Returns the files written and removed.
pub fn sync_dir(template: &Inventory, dir: &Path, sets: &[BTreeMap<String, Option<String>>], present: &BTreeSet<String>) -> Result<(Vec<PathBuf>, Vec<PathBuf>), Error> {
    let io = |p: &Path, e: std::io::Error| Error::Refused(format!("{}: {e}", p.display()));
    let mut files: Vec<(PathBuf, Inventory)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        if path.extension().is_some_and(|x| x == "toml") {
            if let Ok(inv) = Inventory::load(&path) {
                files.push((path, inv));
            }
        }
    }
    let (mut written, mut removed) = (Vec::new(), Vec::new());
    let mut claimed = BTreeSet::new();
    for set in sets {
        let file = files.iter_mut().enumerate().find(|(n, (_, inv))| !claimed.contains(n) && inv.guests.iter().any(|g| set.contains_key(&g.id)));
        let (n, path, inv) = match file {
            Some((n, (path, inv))) => (n, path.clone(), inv),
            None => {
                let master = set.iter().find(|(_, of)| of.is_none()).map(|(id, _)| id.clone()).unwrap_or_default();
                let mut inv = template.clone();
                inv.name = master.clone();
                inv.guests.clear();
                inv.path = dir.join(format!("{master}.toml"));
                files.push((inv.path.clone(), inv));
                let n = files.len() - 1;
                let (path, inv) = &mut files[n];
                (n, path.clone(), inv)
            }
        };
        claimed.insert(n);
        let before: Vec<String> = inv.guests.iter().map(|g| g.id.clone()).collect();
        // A member leaves when Trove deleted it or counts it in another set; one Trove records as
        // standalone stays (an old master Trove's eject left so is re-attached when it returns).
        inv.guests.retain(|g| set.contains_key(&g.id) || (present.contains(&g.id) && !sets.iter().any(|o| o.contains_key(&g.id))));
        for (id, of) in set {
            if !inv.guests.iter().any(|g| &g.id == id) {
                inv.guests.push(GuestEntry { id: id.clone(), key: None, replica_of: of.clone() });
            }
        }
        // A member that followed one who left follows what Trove records.
        let ids: BTreeSet<String> = inv.guests.iter().map(|g| g.id.clone()).collect();
        let mut repointed = false;
        for g in inv.guests.iter_mut() {
            if g.replica_of.as_ref().is_some_and(|m| !ids.contains(m)) {
                g.replica_of = set.get(&g.id).cloned().flatten();
                repointed = true;
            }
        }
        let after: Vec<String> = inv.guests.iter().map(|g| g.id.clone()).collect();
        if before != after || repointed || !path.exists() {
            inv.trove = template.trove.clone();
            inv.save().map_err(|e| Error::Refused(e.to_string()))?;
            written.push(path);
        }
    }
    for (n, (path, inv)) in files.iter().enumerate() {
        if !claimed.contains(&n) && !inv.guests.iter().any(|g| present.contains(&g.id)) {
            std::fs::remove_file(path).map_err(|e| io(path, e))?;
            removed.push(path.clone());
        }
    }
    Ok((written, removed))
}

/// Reads Trove's records and brings `dir` in line (`sync_dir`).
pub async fn sync_from_trove(api: &TroveApi, template: &Inventory, dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), Error> {
    let records = api.instances().await?;
    let present = records.keys().cloned().collect();
    sync_dir(template, dir, &sets_of(&records), &present)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(of: Option<&str>, ds: &str) -> Record {
        Record { status: "ACTIVE".into(), replica_of: of.map(str::to_owned), datastore: Some(ds.into()) }
    }

    #[test]
    fn troves_records_become_one_inventory_per_set_that_keeps_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let tpl_path = dir.path().join("template.toml.in");
        std::fs::write(&tpl_path, "transport_url = \"rabbit://h/\"\nwatchers = [\"10.0.0.1:26379\"]\n[trove]\nurl = \"http://t/v1.0/p\"\ntoken_file = \"/t\"\n").unwrap();
        let template = Inventory::load(&tpl_path).unwrap();
        let sets_dir = dir.path().join("sets");
        std::fs::create_dir(&sets_dir).unwrap();
        let mut records: HashMap<String, Record> = [
            ("m1", rec(None, "redis")),
            ("r1", rec(Some("m1"), "redis")),
            ("r2", rec(Some("m1"), "redis")),
            ("alone", rec(None, "redis")),
            ("my", rec(None, "mysql")),
            ("myr", rec(Some("my"), "mysql")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let present = |r: &HashMap<String, Record>| r.keys().cloned().collect::<BTreeSet<String>>();
        let sets = sets_of(&records);
        assert_eq!(sets.len(), 1, "{sets:?}");
        let (written, _) = sync_dir(&template, &sets_dir, &sets, &present(&records)).unwrap();
        assert_eq!(written, vec![sets_dir.join("m1.toml")]);
        let inv = Inventory::load(&sets_dir.join("m1.toml")).unwrap();
        assert_eq!(inv.name, "m1");
        assert_eq!(inv.replicas_of("m1"), vec!["r1".to_string(), "r2".to_string()]);
        assert!(inv.trove.is_some() && inv.watchers == template.watchers);
        // A failover (Trove's records follow: r1 the master, m1 standalone after Trove's eject):
        // same file, same name, same members, no rewrite of replica_of (the watcher owns it).
        records.insert("r1".into(), rec(None, "redis"));
        records.insert("m1".into(), rec(None, "redis"));
        records.insert("r2".into(), rec(Some("r1"), "redis"));
        assert_eq!(sync_dir(&template, &sets_dir, &sets_of(&records), &present(&records)).unwrap(), (vec![], vec![]));
        let inv = Inventory::load(&sets_dir.join("m1.toml")).unwrap();
        assert_eq!(inv.name, "m1", "the set keeps its name");
        assert_eq!(inv.guests.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), ["m1", "r1", "r2"]);
        // Trove deletes m1: it leaves the set.
        records.remove("m1");
        let (written, _) = sync_dir(&template, &sets_dir, &sets_of(&records), &present(&records)).unwrap();
        assert_eq!(written, vec![sets_dir.join("m1.toml")]);
        let inv = Inventory::load(&sets_dir.join("m1.toml")).unwrap();
        assert_eq!(inv.guests.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), ["r1", "r2"]);
        assert_eq!(inv.guest("r1").unwrap().replica_of, None, "a member that followed a deleted one follows what Trove records");
        // Nothing changed: nothing written.
        assert_eq!(sync_dir(&template, &sets_dir, &sets_of(&records), &present(&records)).unwrap(), (vec![], vec![]));
        // Trove detached the last replica: no set, but the file stays while its members exist.
        records.insert("r2".into(), rec(None, "redis"));
        assert_eq!(sync_dir(&template, &sets_dir, &sets_of(&records), &present(&records)).unwrap(), (vec![], vec![]));
        // Its instances deleted: its file goes.
        records.remove("r1");
        records.remove("r2");
        let (_, removed) = sync_dir(&template, &sets_dir, &sets_of(&records), &present(&records)).unwrap();
        assert_eq!(removed, vec![sets_dir.join("m1.toml")]);
    }
}
