//! Shared test fixtures.
#![allow(clippy::unwrap_used, reason = "test helpers may panic")]
#![allow(dead_code, reason = "not every test file uses every fixture")]

use statedb::{Db, Index, Table, TableDef, key_from_str, key_from_u64};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Obj {
    pub id: u64,
    pub name: String,
    pub tags: Vec<String>,
}

pub fn obj(id: u64, name: &str, tags: &[&str]) -> Obj {
    Obj {
        id,
        name: name.to_string(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

pub fn id_index() -> Index<Obj> {
    Index::primary("id", |o: &Obj| key_from_u64(o.id))
}

pub fn name_index() -> Index<Obj> {
    Index::unique("name", |o: &Obj| smallvec::smallvec![key_from_str(&o.name)])
}

pub fn tag_index() -> Index<Obj> {
    Index::non_unique("tag", |o: &Obj| {
        o.tags.iter().map(|t| key_from_str(t)).collect()
    })
}

pub fn objs_table(db: &Db, name: &str) -> Table<Obj> {
    db.register_table(
        TableDef::new(name, id_index())
            .with_index(name_index())
            .with_index(tag_index()),
    )
    .unwrap()
}
