//! The named indexes one server answers for: each its own [`Engine`] (reader, caches, model
//! check), selected by clip-retrieval's `indice_name` or `/v1/search`'s `index`.

use std::sync::Arc;

use clipedge_api::clip_retrieval::{check_index_name, index_position};
use clipedge_api::ApiError;
use thiserror::Error;

use crate::Engine;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IndexesError {
    #[error("no index to serve")]
    Empty,
    #[error("two indexes are named {name:?}: give each --index its own NAME=")]
    DuplicateName { name: String },
}

/// The served indexes, in `GET /indices-list` order; the first is the default (`/v1/*` without
/// `index`, the page, `/media/…`).
pub struct Indexes {
    engines: Vec<Arc<Engine>>,
    names: Vec<String>,
}

impl Indexes {
    /// Serves `engines` under their names; names must be distinct.
    pub fn new(engines: Vec<Engine>) -> Result<Indexes, IndexesError> {
        if engines.is_empty() {
            return Err(IndexesError::Empty);
        }
        let names: Vec<String> = engines
            .iter()
            .map(|engine| engine.name().to_string())
            .collect();
        for (position, name) in names.iter().enumerate() {
            if names[..position].contains(name) {
                return Err(IndexesError::DuplicateName { name: name.clone() });
            }
        }
        Ok(Indexes {
            engines: engines.into_iter().map(Arc::new).collect(),
            names,
        })
    }

    /// The names `indice_name` may take, in order (`GET /indices-list`).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The first index: what the `/v1` routes and the page serve unless told otherwise.
    pub fn default_engine(&self) -> &Arc<Engine> {
        &self.engines[0]
    }

    /// The index named `name`, or the default one without a name; 404 `unknown_index` naming
    /// the known ones.
    pub fn select(&self, name: Option<&str>) -> Result<&Arc<Engine>, ApiError> {
        match name {
            None => Ok(self.default_engine()),
            Some(name) => Ok(&self.engines[index_position(name, &self.names)?]),
        }
    }

    /// The index clip-retrieval's `indice_name` names: 400 when it is missing (as for one
    /// index), 404 `unknown_index` when it names none.
    pub fn by_indice_name(&self, indice_name: Option<&str>) -> Result<&Arc<Engine>, ApiError> {
        let name = check_index_name(indice_name, &self.names)?;
        self.select(Some(&name))
    }
}

impl From<Engine> for Indexes {
    fn from(engine: Engine) -> Indexes {
        Indexes {
            names: vec![engine.name().to_string()],
            engines: vec![Arc::new(engine)],
        }
    }
}
