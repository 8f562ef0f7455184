//! HTTP clients for the three interfaces, behind the shared [`Pacer`].
//!
//! Every request waits for its turn, is bounded by a timeout, and is retried
//! with exponential backoff on 429, 503, other 5xx, timeouts and connection
//! errors, honouring `Retry-After` (seconds or an HTTP date). A query page
//! that comes back empty although the result set is larger (arXiv does
//! that) is retried too. A 400 is final: its error feed says why.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use time::Date;

use crate::{
    ParseError,
    announce::{self, Announcement},
    oai::{self, OaiPage},
    pace::{PaceError, Pacer},
    query::{self, QueryPage},
};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub query_url: String,
    pub oai_url: String,
    pub rss_url: String,
    pub user_agent: String,
    pub request_timeout: Duration,
    /// Attempts per request, the first included.
    pub attempts: usize,
    /// Backoff between attempts when the server gives no `Retry-After`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            query_url: "https://export.arxiv.org/api/query".into(),
            oai_url: "https://oaipmh.arxiv.org/oai".into(),
            rss_url: "https://rss.arxiv.org/atom".into(),
            user_agent: "paperstream/0.1 (https://github.com/paperstream; metadata harvester)"
                .into(),
            request_timeout: Duration::from_secs(60),
            attempts: 5,
            min_backoff: Duration::from_secs(3),
            max_backoff: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request to arXiv failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("arXiv answered {status}{}", retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("arXiv sent an empty page of a larger result")]
    EmptyPage,
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Pace(#[from] PaceError),
}

impl ClientError {
    /// Worth another attempt.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Http(err) => {
                err.is_timeout() || err.is_connect() || err.is_request() || err.is_body()
            }
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::EmptyPage => true,
            Self::Parse(_) | Self::Pace(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Which OAI-PMH metadata format to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataFormat {
    /// Structured authors with affiliations; no versions.
    Arxiv,
    /// Authors as submitted; every version with its date.
    ArxivRaw,
}

impl MetadataFormat {
    fn prefix(self) -> &'static str {
        match self {
            Self::Arxiv => "arXiv",
            Self::ArxivRaw => "arXivRaw",
        }
    }
}

/// What to list from OAI-PMH: the first page of a window, or the page a
/// resumption token points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing<'a> {
    Window {
        format: MetadataFormat,
        set: Option<&'a str>,
        from: Date,
        until: Option<Date>,
    },
    Resume(&'a str),
}

#[derive(Debug, Clone)]
pub struct Client<P> {
    http: reqwest::Client,
    config: ClientConfig,
    pacer: P,
}

impl<P: Pacer> Client<P> {
    pub fn new(config: ClientConfig, pacer: P) -> Result<Self, ClientError> {
        for interface in ["query", "oai", "rss"] {
            metrics::counter!("crawler_rate_limited_total", "interface" => interface).increment(0);
        }
        let http = reqwest::Client::builder()
            .user_agent(&config.user_agent)
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            http,
            config,
            pacer,
        })
    }

    /// Papers by id, with or without versions (`2104.12255`, `2104.12255v1`).
    pub async fn papers(&self, ids: &[&str]) -> Result<QueryPage, ClientError> {
        let id_list = ids.join(",");
        let max = ids.len().to_string();
        self.query(
            &[("id_list", id_list.as_str()), ("max_results", max.as_str())],
            0,
        )
        .await
    }

    /// One page of a search (`search_query` syntax), newest submissions first.
    pub async fn search(
        &self,
        search_query: &str,
        start: u64,
        max_results: u64,
    ) -> Result<QueryPage, ClientError> {
        let (start_text, max) = (start.to_string(), max_results.to_string());
        self.query(
            &[
                ("search_query", search_query),
                ("start", start_text.as_str()),
                ("max_results", max.as_str()),
                ("sortBy", "submittedDate"),
                ("sortOrder", "descending"),
            ],
            start,
        )
        .await
    }

    async fn query(&self, params: &[(&str, &str)], start: u64) -> Result<QueryPage, ClientError> {
        self.fetch("query", &self.config.query_url, params, |body| {
            let page = query::parse(body)?;
            if page.papers.is_empty() && page.total_results > start {
                return Err(ClientError::EmptyPage);
            }
            Ok(page)
        })
        .await
    }

    /// One page of OAI-PMH `ListRecords`.
    pub async fn list_records(&self, listing: Listing<'_>) -> Result<OaiPage, ClientError> {
        let params: Vec<(&str, String)> = match listing {
            Listing::Window {
                format,
                set,
                from,
                until,
            } => {
                let mut p = vec![
                    ("verb", "ListRecords".to_owned()),
                    ("metadataPrefix", format.prefix().to_owned()),
                    ("from", from.to_string()),
                ];
                if let Some(set) = set {
                    p.push(("set", set.to_owned()));
                }
                if let Some(until) = until {
                    p.push(("until", until.to_string()));
                }
                p
            }
            // With a token, OAI-PMH allows nothing else but the verb.
            Listing::Resume(token) => vec![
                ("verb", "ListRecords".to_owned()),
                ("resumptionToken", token.to_owned()),
            ],
        };
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.fetch("oai", &self.config.oai_url, &params, |body| {
            Ok(oai::parse(body)?)
        })
        .await
    }

    /// Today's announcements in `categories` (`cs.LG`, `cs.AI`, ...).
    pub async fn announcements(
        &self,
        categories: &[&str],
    ) -> Result<Vec<Announcement>, ClientError> {
        let url = format!(
            "{}/{}",
            self.config.rss_url.trim_end_matches('/'),
            categories.join("+")
        );
        self.fetch("rss", &url, &[], |body| Ok(announce::parse(body)?))
            .await
    }

    /// Whether arXiv answers: one small query, paced like any other.
    pub async fn probe(&self) -> Result<(), ClientError> {
        self.fetch(
            "probe",
            &self.config.query_url,
            &[("id_list", "2104.12255"), ("max_results", "1")],
            |body| query::parse(body).map(|_| ()).map_err(ClientError::from),
        )
        .await
    }

    async fn fetch<T>(
        &self,
        interface: &'static str,
        url: &str,
        params: &[(&str, &str)],
        parse: impl Fn(&str) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let attempt = || async {
            let body = self.get(interface, url, params).await?;
            parse(&body)
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_jitter()
            .with_max_times(self.config.attempts.saturating_sub(1));
        attempt
            .retry(backoff)
            .when(ClientError::is_transient)
            // The server's Retry-After wins over our own schedule.
            .adjust(|err, planned| err.retry_after().or(planned))
            .notify(|err, wait| {
                tracing::warn!(interface, %err, ?wait, "arXiv request failed; retrying");
                metrics::counter!("crawler_retries_total", "interface" => interface).increment(1);
            })
            .await
    }

    /// One paced request; the body of a 2xx or 400 answer.
    async fn get(
        &self,
        interface: &'static str,
        url: &str,
        params: &[(&str, &str)],
    ) -> Result<String, ClientError> {
        let turn = self.pacer.turn().await?;
        let sent = self.http.get(url).query(params).send().await;
        let result = match sent {
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                metrics::counter!(
                    "crawler_requests_total",
                    "interface" => interface,
                    "status" => status.as_u16().to_string()
                )
                .increment(1);
                if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    metrics::counter!("crawler_rate_limited_total", "interface" => interface)
                        .increment(1);
                }
                if status.is_success() || status == reqwest::StatusCode::BAD_REQUEST {
                    response.text().await.map_err(ClientError::from)
                } else {
                    Err(ClientError::Status {
                        status: status.as_u16(),
                        retry_after,
                    })
                }
            }
            Err(err) => {
                metrics::counter!("crawler_requests_total", "interface" => interface, "status" => "error").increment(1);
                Err(err.into())
            }
        };
        self.pacer.done(turn).await;
        result
    }
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_both_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let wait = parse_retry_after(&httpdate::fmt_http_date(later)).expect("date");
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
