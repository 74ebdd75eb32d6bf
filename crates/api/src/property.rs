//! `DODownloadProperty`: the 26 download properties, their types and access rules.

use std::fmt;

use serde_json::Value as Json;

use crate::{State, hresult};

/// A download property, with DO's numeric ids (`DODownloadProperty`, 0-based, consecutive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)] // Each variant is DO's property of the same name.
pub enum Property {
    Id = 0,
    Uri = 1,
    ContentId = 2,
    DisplayName = 3,
    LocalPath = 4,
    HttpCustomHeaders = 5,
    CostPolicy = 6,
    SecurityFlags = 7,
    CallbackFreqPercent = 8,
    CallbackFreqSeconds = 9,
    NoProgressTimeoutSeconds = 10,
    ForegroundPriority = 11,
    BlockingMode = 12,
    CallbackInterface = 13,
    StreamInterface = 14,
    SecurityContext = 15,
    NetworkToken = 16,
    CorrelationVector = 17,
    DecryptionInfo = 18,
    IntegrityCheckInfo = 19,
    IntegrityCheckMandatory = 20,
    TotalSizeBytes = 21,
    DisallowOnCellular = 22,
    HttpCustomAuthHeaders = 23,
    HttpAllowSecureToNonSecureRedirect = 24,
    NonVolatile = 25,
}

/// The VARIANT type of a property's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// BSTR: a string.
    Str,
    /// UI4: an unsigned 32-bit number.
    U32,
    /// UI8: an unsigned 64-bit number.
    U64,
    /// BOOL.
    Bool,
    /// UI1 array: bytes.
    Bytes,
    /// UNKNOWN: a COM interface pointer; it cannot cross a process boundary.
    Interface,
}

/// Who may read or write a property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Get only (`DO_E_READ_ONLY_PROPERTY` on set).
    ReadOnly,
    /// Get and set.
    ReadWrite,
    /// Set only (`DO_E_WRITE_ONLY_PROPERTY` on get).
    WriteOnly,
}

impl Property {
    /// Every property, in id order.
    pub const ALL: [Self; 26] = [
        Self::Id,
        Self::Uri,
        Self::ContentId,
        Self::DisplayName,
        Self::LocalPath,
        Self::HttpCustomHeaders,
        Self::CostPolicy,
        Self::SecurityFlags,
        Self::CallbackFreqPercent,
        Self::CallbackFreqSeconds,
        Self::NoProgressTimeoutSeconds,
        Self::ForegroundPriority,
        Self::BlockingMode,
        Self::CallbackInterface,
        Self::StreamInterface,
        Self::SecurityContext,
        Self::NetworkToken,
        Self::CorrelationVector,
        Self::DecryptionInfo,
        Self::IntegrityCheckInfo,
        Self::IntegrityCheckMandatory,
        Self::TotalSizeBytes,
        Self::DisallowOnCellular,
        Self::HttpCustomAuthHeaders,
        Self::HttpAllowSecureToNonSecureRedirect,
        Self::NonVolatile,
    ];

    /// The property with DO id `id`.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.get(id as usize).copied()
    }

    /// The property named `name` (case-insensitive), or given by its numeric id.
    pub fn parse(name: &str) -> Option<Self> {
        if let Ok(id) = name.parse::<u32>() {
            return Self::from_id(id);
        }
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// DO's numeric id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// DO's name (`DODownloadProperty_<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Id => "Id",
            Self::Uri => "Uri",
            Self::ContentId => "ContentId",
            Self::DisplayName => "DisplayName",
            Self::LocalPath => "LocalPath",
            Self::HttpCustomHeaders => "HttpCustomHeaders",
            Self::CostPolicy => "CostPolicy",
            Self::SecurityFlags => "SecurityFlags",
            Self::CallbackFreqPercent => "CallbackFreqPercent",
            Self::CallbackFreqSeconds => "CallbackFreqSeconds",
            Self::NoProgressTimeoutSeconds => "NoProgressTimeoutSeconds",
            Self::ForegroundPriority => "ForegroundPriority",
            Self::BlockingMode => "BlockingMode",
            Self::CallbackInterface => "CallbackInterface",
            Self::StreamInterface => "StreamInterface",
            Self::SecurityContext => "SecurityContext",
            Self::NetworkToken => "NetworkToken",
            Self::CorrelationVector => "CorrelationVector",
            Self::DecryptionInfo => "DecryptionInfo",
            Self::IntegrityCheckInfo => "IntegrityCheckInfo",
            Self::IntegrityCheckMandatory => "IntegrityCheckMandatory",
            Self::TotalSizeBytes => "TotalSizeBytes",
            Self::DisallowOnCellular => "DisallowOnCellular",
            Self::HttpCustomAuthHeaders => "HttpCustomAuthHeaders",
            Self::HttpAllowSecureToNonSecureRedirect => "HttpAllowSecureToNonSecureRedirect",
            Self::NonVolatile => "NonVolatile",
        }
    }

    /// The value's type.
    pub fn kind(self) -> Kind {
        match self {
            Self::Id
            | Self::Uri
            | Self::ContentId
            | Self::DisplayName
            | Self::LocalPath
            | Self::HttpCustomHeaders
            | Self::CorrelationVector
            | Self::DecryptionInfo
            | Self::IntegrityCheckInfo
            | Self::HttpCustomAuthHeaders => Kind::Str,
            Self::CostPolicy
            | Self::SecurityFlags
            | Self::CallbackFreqPercent
            | Self::CallbackFreqSeconds
            | Self::NoProgressTimeoutSeconds => Kind::U32,
            Self::TotalSizeBytes => Kind::U64,
            Self::ForegroundPriority
            | Self::BlockingMode
            | Self::NetworkToken
            | Self::IntegrityCheckMandatory
            | Self::DisallowOnCellular
            | Self::HttpAllowSecureToNonSecureRedirect
            | Self::NonVolatile => Kind::Bool,
            Self::SecurityContext => Kind::Bytes,
            Self::CallbackInterface | Self::StreamInterface => Kind::Interface,
        }
    }

    /// Who may read or write it.
    pub fn access(self) -> Access {
        match self {
            Self::Id => Access::ReadOnly,
            Self::SecurityFlags
            | Self::SecurityContext
            | Self::NetworkToken
            | Self::DecryptionInfo
            | Self::IntegrityCheckInfo => Access::WriteOnly,
            _ => Access::ReadWrite,
        }
    }

    /// True when the property may be set while the download is in `state`. What shapes the
    /// transfer itself (source, destination, identity, integrity) is fixed once it starts; the
    /// URI may also change while paused; the rest may change at any time before the end.
    pub fn settable_in(self, state: State) -> bool {
        match state {
            State::Finalized | State::Aborted => false,
            State::Created => true,
            State::Paused if self == Self::Uri => true,
            _ => !matches!(
                self,
                Self::Uri
                    | Self::ContentId
                    | Self::LocalPath
                    | Self::StreamInterface
                    | Self::DecryptionInfo
                    | Self::IntegrityCheckInfo
                    | Self::IntegrityCheckMandatory
                    | Self::TotalSizeBytes
                    | Self::NonVolatile
                    | Self::HttpCustomHeaders
            ),
        }
    }

    /// The value a property has before anyone sets it.
    pub fn default_value(self) -> Json {
        match self {
            Self::CallbackFreqSeconds => Json::from(1),
            Self::CostPolicy => Json::from(2),
            Self::NoProgressTimeoutSeconds => Json::from(120),
            _ => match self.kind() {
                Kind::Str => Json::from(""),
                Kind::U32 | Kind::U64 => Json::from(0),
                Kind::Bool => Json::from(false),
                Kind::Bytes | Kind::Interface => Json::Null,
            },
        }
    }

    /// Checks a JSON value against the property's type and range; returns it normalised.
    pub fn check_value(self, value: &Json) -> Result<Json, u32> {
        let ok = match self.kind() {
            Kind::Str => value.is_string(),
            Kind::U32 => value.as_u64().is_some_and(|v| v <= u64::from(u32::MAX)),
            Kind::U64 => value.as_u64().is_some(),
            Kind::Bool => value.is_boolean(),
            Kind::Bytes => value
                .as_array()
                .is_some_and(|a| a.iter().all(|b| b.as_u64().is_some_and(|b| b <= 255))),
            Kind::Interface => return Err(hresult::E_NOTIMPL),
        };
        let in_range = match self {
            Self::CostPolicy => value.as_u64().is_some_and(|v| v <= 5),
            Self::CallbackFreqPercent => value.as_u64().is_some_and(|v| v <= 100),
            Self::NoProgressTimeoutSeconds => value.as_u64().is_some_and(|v| v >= 10),
            _ => true,
        };
        if ok && in_range {
            Ok(value.clone())
        } else {
            Err(hresult::E_INVALIDARG)
        }
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_consecutive_and_names_round_trip() {
        for (i, p) in Property::ALL.into_iter().enumerate() {
            assert_eq!(p.id() as usize, i);
            assert_eq!(Property::parse(p.name()), Some(p));
            assert_eq!(Property::parse(&i.to_string()), Some(p));
            assert_eq!(Property::parse(&p.name().to_ascii_lowercase()), Some(p));
        }
        assert_eq!(Property::from_id(26), None);
        assert_eq!(Property::parse("Colour"), None);
    }

    #[test]
    fn values_are_checked_against_types_and_ranges() {
        assert!(Property::Uri.check_value(&Json::from("http://x")).is_ok());
        assert_eq!(
            Property::Uri.check_value(&Json::from(3)),
            Err(hresult::E_INVALIDARG)
        );
        assert_eq!(
            Property::CostPolicy.check_value(&Json::from(6)),
            Err(hresult::E_INVALIDARG)
        );
        assert_eq!(
            Property::NoProgressTimeoutSeconds.check_value(&Json::from(9)),
            Err(hresult::E_INVALIDARG)
        );
        assert!(
            Property::ForegroundPriority
                .check_value(&Json::from(true))
                .is_ok()
        );
        assert_eq!(
            Property::CallbackInterface.check_value(&Json::Null),
            Err(hresult::E_NOTIMPL)
        );
        assert!(
            Property::SecurityContext
                .check_value(&serde_json::json!([1, 2, 255]))
                .is_ok()
        );
        assert_eq!(
            Property::SecurityContext.check_value(&serde_json::json!([256])),
            Err(hresult::E_INVALIDARG)
        );
    }

    #[test]
    fn what_shapes_the_transfer_is_fixed_once_started() {
        assert!(Property::LocalPath.settable_in(State::Created));
        assert!(!Property::LocalPath.settable_in(State::Paused));
        assert!(Property::Uri.settable_in(State::Paused));
        assert!(!Property::Uri.settable_in(State::Transferring));
        assert!(Property::ForegroundPriority.settable_in(State::Transferring));
        assert!(!Property::DisplayName.settable_in(State::Finalized));
    }
}
