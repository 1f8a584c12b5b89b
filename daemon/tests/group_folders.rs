//! At start, the consumer service opens every group folder that holds a
//! group, and removes the ones that hold none (a creation or deletion a
//! crash cut short), instead of making them into new groups.

use std::path::Path;
use std::sync::Arc;

use sluice_daemon::consume::service::{Consumers, ConsumersConfig};
use sluice_daemon::consume::store::GroupStore;
use sluice_daemon::spool::fs::SpoolFs;
use sluice_daemon::spool::simfs::SimFs;
use sluice_daemon::spool::{Spool, SpoolConfig};

#[tokio::test]
async fn folders_without_a_group_are_removed_at_start() {
    let fs = SimFs::new();
    let spool = Arc::new(
        Spool::open_with(
            Arc::new(fs.clone()),
            Path::new("/data"),
            SpoolConfig::default(),
        )
        .unwrap(),
    );
    spool.stream("s").unwrap();
    let groups = Path::new("/data/streams/s/groups");
    GroupStore::create(Arc::new(fs.clone()), &groups.join("kept"), 0).unwrap();
    // A deletion that got as far as removing both files, and a creation
    // that left only its temporary snapshot.
    fs.create_dir_all(&groups.join("emptied")).unwrap();
    fs.create_dir_all(&groups.join("unfinished")).unwrap();
    fs.open(&groups.join("unfinished/snapshot.tmp"), true)
        .unwrap();

    let consumers = Consumers::new(spool, ConsumersConfig::default());
    consumers.start().await.unwrap();
    let names: Vec<String> = consumers.stats().into_iter().map(|g| g.group).collect();
    assert_eq!(names, ["kept"]);
    assert_eq!(fs.list(groups).unwrap(), ["kept"]);
    consumers.shutdown().await;
}
