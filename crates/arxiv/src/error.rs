/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("response is not well-formed: {0}")]
    Xml(#[from] quick_xml::DeError),
    #[error("{what} is not valid: {detail}")]
    Invalid { what: &'static str, detail: String },
    /// The query API answered with its error feed (HTTP 400 for bad ids or
    /// arguments).
    #[error("arXiv API error: {message}")]
    Api { message: String },
    /// OAI-PMH answered with an error other than `noRecordsMatch`.
    #[error("OAI-PMH error {code}: {message}")]
    Oai { code: String, message: String },
}

impl ParseError {
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            detail: detail.into(),
        }
    }
}
