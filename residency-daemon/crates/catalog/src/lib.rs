//! The endpoint catalog: where LLM, CRM, SaaS, logging and storage
//! providers process data, keyed by host name.
//!
//! IP geolocation is not processing location: an anycast edge in Frankfurt
//! may hand a request to a model in Iowa. So a flow whose destination name
//! is known (the name the process resolved) is judged by this catalog, and
//! GeoIP only decides for names the catalog does not cover. Some names do
//! not fix the region at all (an Azure OpenAI resource, HubSpot's global
//! API): those are judged unknown until the operator says where the
//! account or resource lives, in `[catalog.deployments]`.
//!
//! Place in the data flow: configuration gives this crate its
//! `[[endpoint]]` entries and deployment settings; the daemon asks
//! [`Catalog::lookup`] for each name it sees, and compiles the
//! [`Pattern`]s (their [`Pattern::wire_suffix`] and [`Pattern::id`]) into
//! kernel maps. The catalog also lists public DNS-over-HTTPS resolvers, so
//! that flows that resolve names out of residency's sight can be flagged.
//!
//! The crate knows nothing of the kernel or of aya; it depends only on
//! `geoip` for country codes and jurisdiction sets.
//!
//! ```
//! use std::collections::BTreeMap;
//!
//! use geoip::Sets;
//! use residency_catalog::{Catalog, Judgement, JurisdictionSpec, RawEndpoint};
//!
//! #[derive(serde::Deserialize)]
//! struct Section {
//!     endpoint: Vec<RawEndpoint>,
//!     deployments: BTreeMap<String, JurisdictionSpec>,
//! }
//! let section: Section = toml::from_str(r#"
//!     [[endpoint]]
//!     id = "acme-llm"
//!     pattern = "llm.acme.example"
//!     jurisdiction = ["EEA", "CH"]
//!     source = "Acme DPA, annex 2"
//!
//!     [deployments]
//!     "acme-eu.openai.azure.com" = "EU"
//! "#)?;
//! let sets = Sets::new();
//! let catalog = Catalog::with(true, &section.endpoint, &section.deployments, &sets)?;
//! let eu = sets.resolve("EU")?;
//! let judge = |name: &str| catalog.lookup(name).map(|e| e.judge(&eu));
//! assert_eq!(judge("acme-eu.openai.azure.com"), Some(Judgement::Allowed));
//! assert!(matches!(judge("other.openai.azure.com"), Some(Judgement::Unknown(_))));
//! assert!(matches!(judge("api.openai.com"), Some(Judgement::Violation { .. })));
//! assert_eq!(judge("example.org"), None); // GeoIP decides
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod catalog;
mod endpoint;
mod jurisdiction;
mod pattern;

pub use catalog::{BUILTIN_TOML, Catalog, Override, Resolver};
pub use endpoint::{Confidence, Endpoint, Origin, RawEndpoint, Scope};
pub use jurisdiction::{
    Judgement, Jurisdiction, JurisdictionError, JurisdictionSpec, UnknownReason,
};
pub use pattern::{MAX_LABEL_LEN, MAX_WIRE_LEN, Pattern, PatternError, Specificity};

/// Why a catalog could not be built. Each error names the entry (its
/// origin, its 0-based position among the entries of that origin, and its
/// id or pattern) and the field, so that the daemon can point to the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// An endpoint entry is invalid, or clashes with another.
    #[error("{origin} endpoint[{index}] \"{label}\": {field}: {message}")]
    Endpoint {
        /// Built-in catalog or configuration.
        origin: Origin,
        /// Position among the `[[endpoint]]` entries of that origin.
        index: usize,
        /// The entry's id, or its pattern when it has no id.
        label: String,
        /// The field at fault.
        field: &'static str,
        /// What is wrong, in plain words.
        message: String,
    },
    /// A `[catalog.deployments]` setting is invalid or refines nothing.
    #[error("[catalog.deployments] \"{name}\": {message}")]
    Deployment {
        /// The setting's key, as written.
        name: String,
        /// What is wrong, in plain words.
        message: String,
    },
    /// A built-in resolver entry is invalid or clashes with another.
    #[error("built-in resolver[{index}] \"{label}\": {field}: {message}")]
    Resolver {
        /// Position among the `[[resolver]]` entries.
        index: usize,
        /// The resolver's id.
        label: String,
        /// The field at fault.
        field: &'static str,
        /// What is wrong, in plain words.
        message: String,
    },
    /// Two different patterns hash to one [`Pattern::id`].
    #[error(
        "the patterns \"{first}\" and \"{second}\" have the same id {id:#010x}; \
         the kernel could not tell them apart: change one of them"
    )]
    IdCollision {
        /// The pattern seen first.
        first: String,
        /// The pattern seen second.
        second: String,
        /// The shared id.
        id: u32,
    },
    /// The built-in catalog file does not parse (a bug in this crate).
    #[error("the built-in catalog does not parse: {0}")]
    Builtin(String),
}
