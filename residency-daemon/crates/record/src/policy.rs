//! What a record says about the policy that decided it.
//!
//! The daemon builds one [`PolicyView`] per policy generation, when it
//! installs that generation, from the configuration behind it: the names,
//! the modes, the configuration hash and what each policy allows under
//! GDPR Chapter V. A flow carries the view of the generation that decided
//! it, so that the encoder explains every record by the policy that
//! decided it and needs nothing else.

use std::sync::LazyLock;

use geoip::{CountryCode, country::MAX_INDEX, sets::Condition};
use residency_common::DestKind;

/// The legal basis a transfer relied on (GDPR Art. 44-49), as records and
/// the transfers summary name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferBasis {
    /// Within the EEA: no transfer under Chapter V.
    Eea,
    /// Art. 45 adequacy decision.
    Adequacy,
    /// The EU-U.S. Data Privacy Framework (the policy allowed the US
    /// through the `US-DPF` set; conditional on the recipient's
    /// certification).
    Dpf,
    /// Standard contractual clauses, Art. 46(2)(c) (an exception's basis).
    Scc,
    /// Binding corporate rules, Art. 47 (an exception's basis).
    Bcr,
    /// A derogation for a specific situation, Art. 49 (an exception's
    /// basis).
    Art49,
    /// Loopback, private and link-local destinations: not a transfer.
    Local,
    /// No basis.
    None,
}

impl TransferBasis {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            TransferBasis::Eea => "eea",
            TransferBasis::Adequacy => "adequacy",
            TransferBasis::Dpf => "dpf",
            TransferBasis::Scc => "scc",
            TransferBasis::Bcr => "bcr",
            TransferBasis::Art49 => "art49",
            TransferBasis::Local => "local",
            TransferBasis::None => "none",
        }
    }

    /// The condition on which this basis holds for `country`, if it holds
    /// only on one (`geoip::sets::CONDITIONS`): adequacy for Canada only
    /// for organisations subject to PIPEDA, the DPF only for certified
    /// recipients; none for the United Kingdom, the EEA or an SCC. It
    /// follows the basis and the country, however the policy named them.
    #[must_use]
    pub fn condition(self, country: Option<CountryCode>) -> Option<&'static Condition> {
        let set = match self {
            TransferBasis::Adequacy => "ADEQUACY",
            TransferBasis::Dpf => "US-DPF",
            _ => return None,
        };
        geoip::sets::condition(country?, set)
    }
}

/// The policy of one generation, as records name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyView {
    /// SHA-256 of the configuration file, hex: the policy version.
    pub hash: String,
    /// By policy index: 0 is the default policy, `i + 1` workload `i`.
    pub policies: Vec<PolicyEntry>,
    /// By rule id (the kernel's): 0 is the `GeoIP` tables; then the
    /// destination rules, then the exceptions.
    pub rules: Vec<RuleView>,
}

/// One policy (the default, or a workload's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    /// `monitor` or `enforce`.
    pub mode: &'static str,
    /// The workload it belongs to (`None`: the default policy).
    pub workload: Option<WorkloadView>,
    /// Whether it allows the US through the `US-DPF` set (for the default
    /// policy, `policy.allowed`; for a workload, any of its tenants).
    pub dpf: bool,
}

/// A workload, as records name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadView {
    pub name: String,
    /// `llm`, `crm-sync`, `logging`, `backup` or `other`.
    pub role: &'static str,
    pub tenants: Vec<String>,
}

/// A destination rule or an exception, by the id the kernel reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleView {
    pub name: String,
    /// Set for exceptions.
    pub exception: Option<ExceptionView>,
}

/// An exception, as records name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionView {
    /// `adequacy`, `dpf`, `scc`, `bcr` or `art49`.
    pub basis: TransferBasis,
    pub justification: String,
    pub expires: jiff::Timestamp,
}

impl PolicyView {
    /// The policy at `index`.
    #[must_use]
    pub fn policy(&self, index: u16) -> Option<&PolicyEntry> {
        self.policies.get(usize::from(index))
    }

    /// The rule or exception with a kernel rule id.
    #[must_use]
    pub fn rule(&self, id: u32) -> Option<&RuleView> {
        self.rules.get(usize::try_from(id).ok()?)
    }

    /// The basis a flow relied on: an exception names its own; local
    /// destinations need none; the EEA needs none; Art. 45 adequacy; the
    /// Data Privacy Framework where the policy allowed it; else none.
    #[must_use]
    pub fn transfer_basis(
        &self,
        policy: u16,
        kind: DestKind,
        rule_id: u32,
        country: Option<CountryCode>,
    ) -> TransferBasis {
        if kind == DestKind::Exception
            && let Some(e) = self.rule(rule_id).and_then(|r| r.exception.as_ref())
        {
            return e.basis;
        }
        // A policy index the view does not hold is judged as the default
        // policy, as its mode is.
        let dpf = self
            .policy(policy)
            .or_else(|| self.policy(0))
            .is_some_and(|p| p.dpf);
        basis_without_exception(kind, country, dpf)
    }
}

/// The basis for a destination no exception covers: `dpf` says whether
/// the policy allowed the US through the `US-DPF` set.
#[must_use]
pub fn basis_without_exception(
    kind: DestKind,
    country: Option<CountryCode>,
    dpf: bool,
) -> TransferBasis {
    if kind == DestKind::Local {
        return TransferBasis::Local;
    }
    let Some(country) = country else {
        return TransferBasis::None;
    };
    match BY_COUNTRY
        .get(usize::from(country.index()))
        .copied()
        .unwrap_or(TransferBasis::None)
    {
        TransferBasis::Dpf if !dpf => TransferBasis::None,
        b => b,
    }
}

/// The basis by country index, from the jurisdiction sets (`geoip::sets`,
/// which cite their legal sources): EEA, then Art. 45 adequacy, then the
/// US under the DPF (which [`basis_without_exception`] grants only when
/// the policy allowed it).
static BY_COUNTRY: LazyLock<Vec<TransferBasis>> = LazyLock::new(|| {
    let mut table = vec![TransferBasis::None; usize::from(MAX_INDEX) + 1];
    let mut mark = |codes: &[&str], basis| {
        for c in codes {
            if let Ok(c) = c.parse::<CountryCode>()
                && let Some(slot) = table.get_mut(usize::from(c.index()))
                && *slot == TransferBasis::None
            {
                *slot = basis;
            }
        }
    };
    if let Some(eea) = geoip::sets::builtin("EEA") {
        mark(eea.countries, TransferBasis::Eea);
    }
    mark(geoip::sets::ADEQUACY, TransferBasis::Adequacy);
    mark(geoip::sets::US_DPF, TransferBasis::Dpf);
    table
});

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(s: &str) -> Option<CountryCode> {
        s.parse().ok()
    }

    fn view() -> PolicyView {
        let entry = |dpf| PolicyEntry {
            mode: "monitor",
            workload: None,
            dpf,
        };
        PolicyView {
            hash: "ab".into(),
            policies: vec![entry(false), entry(true)],
            rules: vec![
                RuleView {
                    name: "geoip".into(),
                    exception: None,
                },
                RuleView {
                    name: "us-vendor".into(),
                    exception: Some(ExceptionView {
                        basis: TransferBasis::Scc,
                        justification: "DPA".into(),
                        expires: jiff::Timestamp::MAX,
                    }),
                },
            ],
        }
    }

    #[test]
    fn bases_follow_the_sets_and_the_policy() {
        let v = view();
        let geo = DestKind::Geo;
        assert_eq!(v.transfer_basis(0, geo, 0, cc("DE")), TransferBasis::Eea);
        assert_eq!(v.transfer_basis(0, geo, 0, cc("NO")), TransferBasis::Eea);
        assert_eq!(
            v.transfer_basis(0, geo, 0, cc("JP")),
            TransferBasis::Adequacy
        );
        assert_eq!(v.transfer_basis(0, geo, 0, cc("US")), TransferBasis::None);
        assert_eq!(v.transfer_basis(1, geo, 0, cc("US")), TransferBasis::Dpf);
        assert_eq!(v.transfer_basis(1, geo, 0, cc("CN")), TransferBasis::None);
        assert_eq!(v.transfer_basis(1, geo, 0, None), TransferBasis::None);
        assert_eq!(
            v.transfer_basis(0, DestKind::Local, 0, None),
            TransferBasis::Local
        );
        assert_eq!(
            v.transfer_basis(0, DestKind::Exception, 1, cc("US")),
            TransferBasis::Scc,
            "an exception names its own basis"
        );
        assert_eq!(
            v.transfer_basis(9, geo, 0, cc("US")),
            TransferBasis::None,
            "a policy the view does not hold is judged as the default"
        );
    }

    #[test]
    fn conditions_follow_the_basis_and_the_country() {
        let v = view();
        let geo = DestKind::Geo;
        let condition = |policy, country: &str| {
            v.transfer_basis(policy, geo, 0, cc(country))
                .condition(cc(country))
                .map(|c| c.decision)
        };
        assert_eq!(condition(0, "GB"), None, "GB's adequacy is unconditional");
        assert_eq!(condition(0, "DE"), None);
        assert_eq!(condition(0, "CA"), Some("Decision 2002/2/EC"));
        assert_eq!(condition(1, "US"), Some("Decision (EU) 2023/1795"));
        assert_eq!(condition(0, "US"), None, "no basis, so no condition");
        assert_eq!(
            TransferBasis::Scc.condition(cc("CA")),
            None,
            "an SCC does not rely on the adequacy decision"
        );
        assert_eq!(
            TransferBasis::Adequacy
                .condition(cc("CA"))
                .map(|c| c.country),
            Some("CA"),
            "an exception on the basis of adequacy keeps its condition"
        );
    }
}
